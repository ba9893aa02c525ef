"""Many studies on one server: suggestions served per second and the server's CPU per
suggestion, against the engine's own in-process cost.

The problem is the soft-prompt form of the planted prompt (:class:`~benchmarks.synthetic.
PlantedSoftPrompt`: ``L = 5`` positions of ``d = 16`` dimensions, an 80-dimensional box,
scored instantly), the strategy ``gp``.

1. *Engine cost*, for each ``n`` of ``--sizes``: the gp engine built in this process (the
   spec of the server's studies, torch on one thread) observes ``n`` random points, makes
   one untimed (cold) suggestion, then ``--repeats`` warm ones, each after observing the
   previous one's result (the steady state of a running study). Each is timed in CPU
   seconds of this process (``time.process_time``: the suggestion and the observation of
   its result); the table's cost is their mean (a full refit every few observations
   included, as in a running study), the JSON also holds the median.
2. *Server run*, for each config, ``K`` of ``--ks`` and ``n``: ``promptbo serve`` (a fresh
   SQLite file, the config's flags) in a subprocess; ``K`` gp studies, seeded, each
   preloaded with ``n`` random observations in one AddTrials; then one worker thread per
   study in this process (so that the server's CPU is measured alone) loops ask(1) ->
   instant objective -> tell. Once every worker has been served (cold fits done) and
   ``--warmup`` seconds have passed, a window of ``--seconds`` is measured: suggestions
   served (trials handed out by asks that returned in the window), ask latency p50/p90,
   and the CPU seconds (user + system) of the server process and all its descendants
   (pool processes; exited children it reaped included), from psutil or ``/proc``.

Reported per row: suggestions/s; target = 0.75 x cores / engine cost (the throughput
that keeps three quarters of the cores on useful suggestion compute); server CPU seconds
per served suggestion; and ratio = that over the engine cost (1.0: the server spends on
a served suggestion exactly what the engine alone does; prefetched suggestions thrown
away, RPC handling and storage raise it).

Server flags: ``--server-args "--suggest-workers 2"`` for one config, or ``--configs
"thread=--suggest-pool thread;process=--suggest-pool process"`` for a row per config,
side by side under the same load. ``--options`` passes gp strategy options to the studies
and to the in-process engine alike (``--quick`` uses a cheap acquisition search).

Each row's server is started as the previous window closes (the first one while the
engine is timed, which counts this process's CPU only) and killed with its process group
once its own window closes, so that start-up and shutdown overlap no measurement.

    python -m benchmarks.many_studies --ks 1,8,16 --sizes 200,1000 --seconds 60
    python -m benchmarks.many_studies --configs "p0=--prefetch 0;p2=--prefetch 2" --ks 8
    python -m benchmarks.many_studies --quick     # K = 1, 2; n = 20; 3 s (a smoke test)

prints a markdown table and writes ``<out>.md`` and ``<out>.json`` (progress on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.load import _start_server
from benchmarks.suggest_speed import LENGTH, PCA_DIMS, timed
from benchmarks.synthetic import PlantedSoftPrompt
from promptbo.server.compute import available_cores

#: Throughput target: this share of the cores busy with useful suggestion compute.
CORE_SHARE = 0.75
#: The gp options of ``--quick``: a cheaper acquisition search, for a short smoke test.
QUICK_OPTIONS = ("raw_samples=16,num_restarts=1,maxiter=5,mc_samples=16,full_maxiter=20,"
                 "warm_maxiter=2")
#: Table columns, in order (the JSON rows carry the same figures under their keys).
COLUMNS = ["config", "K", "n", "suggestions/s", "target", "ask p50 ms", "ask p90 ms",
           "server CPU s / suggestion", "engine cost s", "ratio"]


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the engine alone --------------------------------------------------------------------
def engine_cost(n: int, repeats: int, seed: int = 0,
                options: dict[str, str] | None = None) -> dict[str, float]:
    """CPU seconds of this process per warm gp suggestion (and the observation of its
    result) after ``n`` random observations: ``mean_s``, ``median_s`` over ``repeats``,
    and the cold first suggestion's ``cold_s`` (not in the mean). ``options``: the gp's
    strategy options, as the server's studies get them."""
    from promptbo.server.domain import SoftPromptSpace
    from promptbo.server.optim import make_engine

    problem = PlantedSoftPrompt(LENGTH, PCA_DIMS, seed)
    space = SoftPromptSpace(prompt_length=LENGTH, embedding_dim=PCA_DIMS)
    engine = make_engine(space, "gp", dict(options or {}), seed)
    x = problem.random(n, seed)
    engine.observe(x, problem(x))
    holder: dict[str, torch.Tensor] = {}

    def step() -> float:
        cpu = timed(lambda: holder.__setitem__("x", engine.suggest(1)), time.process_time)
        x, y = holder["x"], problem(holder["x"])  # the instant objective, not timed
        return cpu + timed(lambda: engine.observe(x, y), time.process_time)

    cold = step()
    times = [step() for _ in range(repeats)]
    return {"n": n, "repeats": repeats, "cold_s": cold, "mean_s": statistics.fmean(times),
            "median_s": statistics.median(times)}


# --- the server's CPU ----------------------------------------------------------------------
def tree_cpu_seconds(pid: int) -> tuple[float, int]:
    """User + system CPU seconds of process ``pid`` and its live descendants (each with
    its reaped children's), and how many processes that was (0: ``pid`` is gone)."""
    try:
        import psutil
    except ImportError:
        return _proc_tree_cpu_seconds(pid)
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0, 0
    total, count = 0.0, 0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.Error:  # exited between the listing and the read
            continue
        total += t.user + t.system + t.children_user + t.children_system
        count += 1
    return total, count


def _proc_tree_cpu_seconds(pid: int) -> tuple[float, int]:
    """:func:`tree_cpu_seconds` from ``/proc/<pid>/stat`` (Linux, without psutil)."""
    tick = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the name: state, ppid, ... utime (14th field), stime, cutime, cstime.
        parent[int(entry)] = int(fields[1])
        ticks[int(entry)] = sum(int(v) for v in fields[11:15])
    tree, frontier = {pid} & ticks.keys(), [pid]
    while frontier:
        children = [c for c, p in parent.items() if p in frontier and c not in tree]
        tree.update(children)
        frontier = children
    return sum(ticks[p] for p in tree) / tick, len(tree)


# --- the server run ------------------------------------------------------------------------
@dataclass
class Config:
    """A server configuration: its name in the table and its ``promptbo serve`` flags."""

    name: str
    args: list[str] = field(default_factory=list)


def parse_configs(text: str) -> list[Config]:
    """``"name=flags;name2=flags"`` (flags split as a shell would) -> configs."""
    configs = []
    for part in text.split(";"):
        if not part.strip():
            continue
        name, sep, flags = part.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"a config is NAME=FLAGS, got {part!r}")
        configs.append(Config(name.strip(), shlex.split(flags)))
    if len({c.name for c in configs}) != len(configs):
        raise ValueError(f"config names repeat in {text!r}")
    return configs


@dataclass
class _Worker:
    """One study's ask -> instant objective -> tell loop and what it saw."""

    address: str
    study: str
    problem: PlantedSoftPrompt
    stop: threading.Event
    #: (monotonic time the ask returned, seconds it took, trials it handed out).
    asks: list[tuple[float, float, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    client: Any = None

    def run(self) -> None:
        """Loops until :attr:`stop` is set (or the server goes away after it is)."""
        import promptbo

        try:
            self.client = client = promptbo.Client(self.address, client_id=f"w-{self.study}",
                                                   timeout=600)
            study = client.get_study(self.study)
        except Exception as exc:  # reported with the row
            self.errors.append(f"{type(exc).__name__}: {exc}")
            return
        try:
            while not self.stop.is_set():
                try:
                    t0 = time.perf_counter()
                    trials = study.ask(1)
                    t1 = time.perf_counter()
                    self.asks.append((time.monotonic(), t1 - t0, len(trials)))
                    for t in trials:
                        study.tell(t, float(self.problem(t.prompt.vector[None])[0]))
                    if not trials:
                        time.sleep(0.01)
                except Exception as exc:  # counted and reported; the run goes on
                    if self.stop.is_set():  # the server stopped under a call
                        break
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    time.sleep(0.1)
        finally:
            client.close()


def _preload(address: str, k: int, n: int, seed: int,
             options: dict[str, str] | None = None) -> list[str]:
    """Creates ``k`` gp studies of the soft space (strategy ``options``) and adds ``n``
    random results to each."""
    import promptbo

    names = []
    with promptbo.Client(address, timeout=600) as c:
        for i in range(k):
            name = f"many-{i}"
            problem = PlantedSoftPrompt(LENGTH, PCA_DIMS, seed + i)
            study = c.create_study(name, promptbo.SoftPromptSpace(LENGTH, PCA_DIMS),
                                   strategy="gp", strategy_options=options or None,
                                   seed=seed + i)
            if n:
                x = problem.random(n, seed + i)
                y = problem(x)
                study.add_trials(
                    (promptbo.Prompt(vector=row.reshape(LENGTH, PCA_DIMS).numpy()), float(v))
                    for row, v in zip(x, y, strict=True)
                )
            names.append(name)
    return names


class _Server:
    """``promptbo serve`` with ``config``'s flags on a fresh SQLite file, started at once
    in a process group of its own."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.tmp = tempfile.mkdtemp(prefix="promptbo-many-")
        self.proc, self.address = _start_server(f"sqlite:///{self.tmp}/many.db", config.args,
                                                new_session=True)

    def stop(self) -> None:
        """Kills the server and its children (its process group): the run's state is
        thrown away, and a graceful drain would only delay the next run."""
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


def run_server(server: _Server, k: int, n: int, seconds: float, warmup: float,
               warmup_timeout: float, seed: int = 0, options: dict[str, str] | None = None,
               window_closed: Callable[[], object] | None = None) -> dict:
    """One server run (see the module docstring) on a just started ``server``, which it
    stops; its figures, engine cost not included. ``window_closed`` is called as the
    window closes, before the server is stopped (the next row's server starts then, so
    that its start overlaps this one's stop and no measurement)."""
    import promptbo

    proc, address = server.proc, server.address
    stop = threading.Event()
    workers: list[_Worker] = []
    threads: list[threading.Thread] = []
    try:
        t0 = time.monotonic()
        with promptbo.Client(address) as c:
            c.wait_ready(120)
        t1 = time.monotonic()
        names = _preload(address, k, n, seed, options)
        progress(f"  server up in {t1 - t0:.1f} s, {k} studies preloaded in "
                 f"{time.monotonic() - t1:.1f} s")
        workers = [_Worker(address, name, PlantedSoftPrompt(LENGTH, PCA_DIMS, seed + i), stop)
                   for i, name in enumerate(names)]
        threads = [threading.Thread(target=w.run, daemon=True) for w in workers]
        started = time.monotonic()
        for t in threads:
            t.start()
        while time.monotonic() - started < warmup_timeout and (
                time.monotonic() - started < warmup or not all(w.asks for w in workers)):
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}")
            time.sleep(0.05)
        warm = time.monotonic() - started
        progress(f"  warm-up {warm:.1f} s; measuring")
        cpu0, _ = tree_cpu_seconds(proc.pid)
        w0 = time.monotonic()
        time.sleep(seconds)
        cpu1, processes = tree_cpu_seconds(proc.pid)
        w1 = time.monotonic()
    finally:
        stop.set()
        for w in workers:  # cancels the calls in flight (their errors are not counted)
            if w.client is not None:
                w.client.close()
        try:
            if window_closed is not None:
                window_closed()
        finally:
            server.stop()
            for t in threads:
                t.join(timeout=10)
    window = [a for w in workers for a in w.asks if w0 <= a[0] <= w1]
    served = sum(a[2] for a in window)
    latency = np.asarray([a[1] for a in window]) * 1e3
    errors = [e for w in workers for e in w.errors]
    elapsed = w1 - w0
    return {
        "config": server.config.name, "server_args": server.config.args, "K": k, "n": n,
        "warmup_s": round(warm, 2), "window_s": elapsed, "suggestions": served,
        "suggestions_per_s": served / elapsed,
        "ask_p50_ms": float(np.percentile(latency, 50)) if len(latency) else float("nan"),
        "ask_p90_ms": float(np.percentile(latency, 90)) if len(latency) else float("nan"),
        "server_cpu_s": cpu1 - cpu0, "server_processes": processes,
        "server_cpu_per_suggestion_s": (cpu1 - cpu0) / served if served else float("nan"),
        "errors": len(errors), "first_error": errors[0] if errors else "",
    }


# --- the report ----------------------------------------------------------------------------
def with_targets(row: dict, cost: dict, cores: int) -> dict:
    """``row`` with the engine cost, the throughput target and the CPU ratio added."""
    mean = cost["mean_s"]
    return {**row, "engine_cost_s": mean, "engine_cost_median_s": cost["median_s"],
            "target_per_s": CORE_SHARE * cores / mean,
            "ratio": row["server_cpu_per_suggestion_s"] / mean}


def markdown(rows: list[dict]) -> str:
    """The result table (seconds unless the column says ms)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * (len(COLUMNS) - 1)]
    for r in rows:
        cells = [r["config"], str(r["K"]), str(r["n"]), f"{r['suggestions_per_s']:.2f}",
                 f"{r['target_per_s']:.2f}", f"{r['ask_p50_ms']:.0f}", f"{r['ask_p90_ms']:.0f}",
                 f"{r['server_cpu_per_suggestion_s']:.3f}", f"{r['engine_cost_s']:.3f}",
                 f"{r['ratio']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ks", default="1,8,16", help="comma-separated study counts")
    ap.add_argument("--sizes", default="200,1000",
                    help="comma-separated observations per study")
    ap.add_argument("--seconds", type=float, default=60, help="measured window per row")
    ap.add_argument("--warmup", type=float, default=10,
                    help="seconds before the window (at least until every study was served)")
    ap.add_argument("--warmup-timeout", type=float, default=600,
                    help="start the window after this long even if a study was never served")
    ap.add_argument("--repeats", type=int, default=20,
                    help="warm in-process suggestions timed per size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--options", default="",
                    help="gp strategy options of the studies and of the in-process engine, "
                         "'name=value,...' (default: none, the server's defaults)")
    flags = ap.add_mutually_exclusive_group()
    flags.add_argument("--server-args", default="",
                       help="promptbo serve flags of the one config, e.g. '--prefetch 0'")
    flags.add_argument("--configs", default="",
                       help="'name=flags;name2=flags': a server and a row per config")
    ap.add_argument("--out", default="benchmarks/results/many-studies",
                    help="writes OUT.md and OUT.json")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke test: K = 1, 2; n = 20; 3 s windows; 3 repeats; the "
                         f"first config; a cheap gp ({QUICK_OPTIONS}) unless --options")
    args = ap.parse_args(argv)
    if args.quick:
        args.ks, args.sizes, args.seconds, args.warmup, args.repeats = "1,2", "20", 3, 0, 3
        args.options = args.options or QUICK_OPTIONS
    options = dict(kv.split("=", 1) for kv in args.options.split(",") if kv.strip())
    try:
        configs = (parse_configs(args.configs) if args.configs
                   else [Config("default", shlex.split(args.server_args))])
    except ValueError as exc:
        ap.error(str(exc))
    if args.quick:
        configs = configs[:1]
    ks, sizes = _ints(args.ks), _ints(args.sizes)
    torch.set_num_threads(1)
    cores = available_cores()
    load0 = os.getloadavg()
    progress(f"{cores} cores, load average {load0[0]:.2f}; configs "
             + "; ".join(f"{c.name}: {shlex.join(c.args) or '(defaults)'}" for c in configs))

    rows: list[dict] = []
    jobs = [(config, k, n) for n in sizes for k in ks for config in configs]
    started: dict[int, _Server] = {}  # job index -> its server, started one job ahead

    def start(i: int) -> None:
        if i < len(jobs):
            started[i] = _Server(jobs[i][0])

    try:
        start(0)  # it loads while the engine is timed (CPU time of this process only)
        costs: dict[int, dict[str, float]] = {}
        for n in sizes:
            progress(f"engine in-process, n={n}: {args.repeats} warm suggestions")
            costs[n] = engine_cost(n, args.repeats, args.seed, options)
            progress(f"  mean {costs[n]['mean_s']:.3f} CPU s, median {costs[n]['median_s']:.3f}")
        for i, (config, k, n) in enumerate(jobs):
            progress(f"server {config.name}, K={k}, n={n}: preload, warm-up, "
                     f"{args.seconds:g} s window")
            row = run_server(started.pop(i), k, n, args.seconds, args.warmup,
                             args.warmup_timeout, args.seed, options,
                             window_closed=lambda i=i: start(i + 1))
            row = with_targets(row, costs[n], cores)
            rows.append(row)
            progress(f"  {row['suggestions_per_s']:.2f}/s (target "
                     f"{row['target_per_s']:.2f}), {row['server_cpu_per_suggestion_s']:.3f}"
                     f" CPU s per suggestion, ratio {row['ratio']:.2f}, "
                     f"{row['errors']} errors")
    finally:
        for server in started.values():
            server.stop()
    load1 = os.getloadavg()
    table = markdown(rows)
    notes = (f"{cores} cores ({platform.machine()}), torch {torch.__version__}, Python "
             f"{platform.python_version()}; load average {load0[0]:.2f} at the start, "
             f"{load1[0]:.2f} at the end; {args.seconds:g} s windows; gp options: "
             f"{args.options or 'defaults'}; engine cost: mean CPU s "
             f"of {args.repeats} warm in-process suggestions; target = {CORE_SHARE} x cores "
             "/ engine cost.")
    errors = [r for r in rows if r["errors"]]
    if errors:
        notes += " Errors: " + "; ".join(
            f"{r['config']} K={r['K']} n={r['n']}: {r['errors']} ({r['first_error']})"
            for r in errors)
    print(table + "\n" + notes)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(table + "\n" + notes + "\n")
    out.with_suffix(".json").write_text(json.dumps({
        "cores": cores, "machine": platform.machine(), "torch": torch.__version__,
        "load_average": {"start": load0, "end": load1},
        "args": vars(args), "configs": [{"name": c.name, "args": c.args} for c in configs],
        "engine": {str(n): c for n, c in costs.items()}, "rows": rows,
    }, indent=1) + "\n")
    progress(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
