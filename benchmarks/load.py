"""Load benchmark: many concurrent workers doing ask/tell against one server on loopback.

Starts ``promptbo serve`` as a subprocess (SQLite by default), runs ``--workers`` client
threads spread over ``--procs`` processes for ``--seconds`` on a soft-prompt study with the
random strategy, in three loops (``--modes``): ``ask-tell`` calls SuggestTrials(1) then
CompleteTrial for each trial (two RPCs); ``tell-and-ask`` asks once, then sends each result
with ``suggest_count=1`` and gets the next trial in the same reply (one RPC per trial, as
:class:`promptbo.Worker` with ``batch_size=1``); ``batch`` works on ``--batch``
trials at a time and sends their results in one CompleteTrials that brings the next batch
(one RPC per batch, the Worker with ``batch_size=--batch``). Reports completed trials/s,
p50/p99 latency per RPC, and errors (which must be zero).

``--storage`` takes several comma-separated URLs (``sqlite`` alone: a fresh SQLite file);
each gets its own server, all started up front, and every loop and worker count runs on
each in turn, back to back, so the rows compare backends under the same machine load; the
"vs first" column is the throughput relative to the first storage's row.

    python -m benchmarks.load --workers 64 --seconds 60
    python -m benchmarks.load --workers 1,8,32 --seconds 20     # a row per worker count
    python -m benchmarks.load --modes ask-tell --workers 32 --seconds 20 \
        --storage sqlite,postgresql://postgres@127.0.0.1:5432/promptbo   # a row per backend
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence

import numpy as np


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc(address: str, study: str, threads: int, start_at: float, seconds: float, mode: str,
          batch: int, out: mp.Queue, idx: int):
    import promptbo

    results = {"suggest": [], "complete": [], "errors": [], "trials": 0}
    lock = threading.Lock()
    time.sleep(max(0.0, start_at - time.time()))  # all processes load in the same window
    stop_at = time.monotonic() + seconds

    def run(tid: int) -> None:
        client = promptbo.Client(address, client_id=f"p{idx}t{tid}")
        s = client.get_study(study)
        sug, comp, errs, n = [], [], [], 0
        queued: list = []
        while time.monotonic() < stop_at:
            try:
                t0 = time.perf_counter()
                if not queued:
                    queued = s.ask(batch if mode == "batch" else 1)
                    sug.append(time.perf_counter() - t0)
                if mode == "batch":
                    scored = [(t, float(t.prompt.vector.sum())) for t in queued]
                    t1 = time.perf_counter()
                    _, queued = s.tell_many(scored, batch)
                    comp.append(time.perf_counter() - t1)
                    n += len(scored)
                    continue
                trial = queued.pop()
                t1 = time.perf_counter()
                value = float(trial.prompt.vector.sum())
                if mode == "tell-and-ask":
                    _, queued = s.tell_and_ask(trial, value)
                else:
                    s.tell(trial, value)
                comp.append(time.perf_counter() - t1)
                n += 1
            except Exception as exc:  # counted and reported, the benchmark goes on
                errs.append(f"{type(exc).__name__}: {exc}")
                queued = []
        client.close()
        with lock:
            results["suggest"] += sug
            results["complete"] += comp
            results["errors"] += errs
            results["trials"] += n

    ts = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out.put(results)


def run_load(address: str, workers: int, procs: int, seconds: float,
             mode: str = "ask-tell", batch: int = 8) -> dict:
    import promptbo

    name = f"load-{workers}-{time.time_ns()}"
    with promptbo.Client(address) as c:
        c.create_study(name, promptbo.SoftPromptSpace(2, 4), strategy="random")
    # Spawned, not forked: this process has used gRPC, and a forked child can hang in it.
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = max(1, min(procs, workers))
    per = [workers // procs + (1 if i < workers % procs else 0) for i in range(procs)]
    start_at = time.time() + 5.0  # time for the spawned processes to import
    ps = [ctx.Process(target=_proc, args=(address, name, n, start_at, seconds, mode, batch, q, i))
          for i, n in enumerate(per)]
    for p in ps:
        p.start()
    parts = [q.get() for _ in ps]
    for p in ps:
        p.join()
    sug = np.concatenate([np.asarray(p["suggest"]) for p in parts]) * 1e3
    comp = np.concatenate([np.asarray(p["complete"]) for p in parts]) * 1e3
    errors = [e for p in parts for e in p["errors"]]
    trials = sum(p["trials"] for p in parts)
    return {
        "workers": workers, "mode": mode, "trials": trials, "trials_per_s": trials / seconds,
        "suggest_p50": float(np.percentile(sug, 50)) if len(sug) else float("nan"),
        "suggest_p99": float(np.percentile(sug, 99)) if len(sug) else float("nan"),
        "complete_p50": float(np.percentile(comp, 50)) if len(comp) else float("nan"),
        "complete_p99": float(np.percentile(comp, 99)) if len(comp) else float("nan"),
        "errors": len(errors), "first_error": errors[0] if errors else "",
    }


def _start_server(storage: str, server_args: Sequence[str] = (),
                  new_session: bool = False) -> tuple[subprocess.Popen, str]:
    """``promptbo serve`` on ``storage`` (``sqlite``: a fresh SQLite file) and its address;
    ``server_args`` are further ``serve`` flags (e.g. ``--prefetch 0``); ``new_session``
    starts it in a session and process group of its own, which its children join."""
    if storage == "sqlite":
        storage = f"sqlite:///{tempfile.mkdtemp()}/load.db"
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "promptbo.cli", "--log-level", "warning", "serve",
         "--storage", storage, "--port", str(port), *server_args],
        stdout=subprocess.DEVNULL, env={**os.environ}, start_new_session=new_session,
    )
    return proc, f"127.0.0.1:{port}"


def _backend(storage: str) -> str:
    """A storage URL's scheme, for the table (no host or password)."""
    return storage.split(":", 1)[0] if storage else "sqlite"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", default="64", help="comma-separated worker counts")
    ap.add_argument("--procs", type=int, default=4, help="client processes")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--modes", default="ask-tell,tell-and-ask,batch",
                    help="ask-tell: SuggestTrials then CompleteTrial per trial (2 RPCs); "
                         "tell-and-ask: CompleteTrial with suggest_count=1 (1 RPC); "
                         "batch: CompleteTrials of --batch results (1 RPC per batch)")
    ap.add_argument("--batch", type=int, default=8, help="trials per batch in 'batch' mode")
    ap.add_argument("--storage", default="sqlite",
                    help="comma-separated storage URLs, a server and a row each "
                         "('sqlite': a fresh SQLite file, the default)")
    ap.add_argument("--server", default="", help="use a running server instead")
    args = ap.parse_args(argv)
    procs: list[subprocess.Popen] = []
    targets: list[tuple[str, str]] = []  # (backend, address)
    if args.server:
        targets.append(("server", args.server))
    else:
        for storage in args.storage.split(","):
            proc, address = _start_server(storage)
            procs.append(proc)
            targets.append((_backend(storage), address))
    import promptbo

    try:
        for _, address in targets:
            with promptbo.Client(address) as c:
                c.wait_ready(60)
        print(f"servers {', '.join(f'{n} {a}' for n, a in targets)}; {os.cpu_count()} CPUs "
              "shared by servers and clients")
        print("| storage | loop | workers | trials/s | vs first | Suggest p50 ms "
              "| Suggest p99 ms | Complete p50 ms | Complete p99 ms | errors |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        failed = False
        runs = [(m, int(w)) for m in args.modes.split(",") for w in args.workers.split(",")]
        for mode, w in runs:
            first = None
            for backend, address in targets:
                r = run_load(address, w, args.procs, args.seconds, mode, args.batch)
                first = first or r["trials_per_s"]
                loop = f"batch of {args.batch}" if mode == "batch" else mode
                print(f"| {backend} | {loop} | {w} | {r['trials_per_s']:.0f} | "
                      f"{r['trials_per_s'] / first:.2f} | {r['suggest_p50']:.2f} | "
                      f"{r['suggest_p99']:.2f} | {r['complete_p50']:.2f} | "
                      f"{r['complete_p99']:.2f} | {r['errors']} |", flush=True)
                if r["errors"]:
                    print(f"  first error: {r['first_error']}")
                    failed = True
        return 1 if failed else 0
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    sys.exit(main())
