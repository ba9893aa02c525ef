"""Soak benchmark: many workers for a long time while a chaos loop kills the server and
workers at random; checks that no acknowledged result is lost and that the server's
memory stays bounded.

Starts ``promptbo serve`` as a subprocess on ``--storage`` (an SQLite file in a temporary
folder by default, or a PostgreSQL URL), creates one soft-prompt study (``--strategy``,
random by default) and runs ``--workers`` worker processes that ask, score a cheap
objective, tell, and log every acknowledged result. Every ``--chaos-seconds`` on average
the chaos loop ``kill -9``s either the server (then restarts it on the same storage) or one
worker (then starts a new one under the same client id). The server's RSS is sampled every
``--sample-seconds``. At the end every acknowledged result must be stored, completed, with
its value; every worker error other than UNAVAILABLE (and a lost lease, FAILED_PRECONDITION,
when a restart outlived a lease) is reported.

    python -m benchmarks.soak --workers 64 --seconds 600                    # the issue's size
    python -m benchmarks.soak --workers 8 --seconds 60 --storage postgresql://u@h/db
    python -m benchmarks.soak worker ADDRESS STUDY LOG CLIENT_ID            # one worker (internal)

Prints one JSON object of figures (and writes it to ``--out`` if given).
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

STUDY = "soak"
#: Where the worker processes run, so that ``benchmarks`` is importable there.
REPO_ROOT = Path(__file__).resolve().parents[1]


# --- the worker process ------------------------------------------------------------------
def worker(address: str, study_name: str, log_path: str, client_id: str) -> None:
    """Asks, evaluates, tells until the study is done; logs acks and errors as JSON lines."""
    import numpy as np

    import promptbo

    client = promptbo.Client(address, client_id=client_id, timeout=10)
    with open(log_path, "a") as log:

        def note(kind: str, **fields) -> None:
            log.write(json.dumps({"kind": kind, **fields}) + "\n")
            log.flush()

        study = None
        while True:
            try:
                if study is None:
                    study = client.get_study(study_name)
                trials = study.ask(2)
                if not trials:
                    if study.done:
                        return
                    time.sleep(0.05)
                    continue
                for t in trials:
                    value = -float(np.sum(np.asarray(t.prompt.vector) ** 2))
                    while True:
                        try:
                            done = study.tell(t, value)
                            note("ack", id=done.id, value=done.value)
                            break
                        except promptbo.UnavailableError:
                            note("error", code="UNAVAILABLE")
                            time.sleep(0.2)
                        except promptbo.FailedPreconditionError:
                            note("error", code="LEASE_LOST")
                            break
            except promptbo.UnavailableError:
                note("error", code="UNAVAILABLE")
                time.sleep(0.2)
            except promptbo.PromptboError as err:
                note("error", code=getattr(err, "code", "UNKNOWN"), details=str(err)[:200])
                time.sleep(0.2)


# --- the driver ---------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(storage: str, port: int, log) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "promptbo.cli", "--log-level", "warning", "serve",
         "--storage", storage, "--host", "127.0.0.1", "--port", str(port), "--prefetch", "0"],
        stdout=log, stderr=log,
    )


def _start_worker(address: str, log: Path, client_id: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "benchmarks.soak", "worker", address, STUDY,
                             str(log.resolve()), client_id], cwd=REPO_ROOT)


def _rss(pid: int) -> int:
    import psutil

    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0


def run_soak(
    workers: int,
    seconds: float,
    workdir: Path,
    storage: str = "",
    chaos_seconds: float = 5.0,
    sample_seconds: float = 0.5,
    strategy: str = "random",
    seed: int = 0,
) -> dict:
    """Runs one soak (see the module docstring) in ``workdir``; returns its figures."""
    import promptbo

    storage = storage or f"sqlite:///{workdir / 'soak.db'}"
    port = _free_port()
    address = f"127.0.0.1:{port}"
    server_log = (workdir / "server.log").open("a")
    server = _start_server(storage, port, server_log)
    with promptbo.Client(address) as c:
        c.wait_ready(60)
        c.create_study(STUDY, promptbo.SoftPromptSpace(2, 4), strategy=strategy,
                       max_trials=10**9, lease_seconds=5)
    logs = [workdir / f"worker{i}.jsonl" for i in range(workers)]
    procs = [_start_worker(address, logs[i], f"w{i}") for i in range(workers)]
    rng = random.Random(seed)
    rss: list[tuple[float, int]] = []
    server_kills = worker_kills = 0
    start = time.monotonic()
    next_chaos = start + rng.expovariate(1 / chaos_seconds)
    try:
        while time.monotonic() - start < seconds:
            time.sleep(sample_seconds)
            now = time.monotonic()
            rss.append((now - start, _rss(server.pid)))
            if now < next_chaos:
                continue
            next_chaos = now + rng.expovariate(1 / chaos_seconds)
            if rng.random() < 0.5:
                server.send_signal(signal.SIGKILL)
                server.wait()
                server_kills += 1
                server = _start_server(storage, port, server_log)
                with promptbo.Client(address) as c:
                    c.wait_ready(60)
            else:
                i = rng.randrange(workers)
                procs[i].send_signal(signal.SIGKILL)
                procs[i].wait()
                worker_kills += 1
                procs[i] = _start_worker(address, logs[i], f"w{i}")
        elapsed = time.monotonic() - start
    finally:
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.wait()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        server_log.close()
    return _figures(storage, logs, rss, elapsed, workers, server_kills, worker_kills)


def _figures(storage: str, logs: list[Path], rss: list[tuple[float, int]], elapsed: float,
             workers: int, server_kills: int, worker_kills: int) -> dict:
    from promptbo.server.domain import TrialState
    from promptbo.server.storage import open_storage

    acked: dict[int, float] = {}
    conflicting = 0
    errors: Counter[str] = Counter()
    samples: list[str] = []
    for path in logs:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a worker killed mid-write
                continue
            if rec["kind"] == "ack":
                if acked.get(rec["id"], rec["value"]) != rec["value"]:
                    conflicting += 1
                acked[rec["id"]] = rec["value"]
            else:
                errors[rec["code"]] += 1
                if rec["code"] not in ("UNAVAILABLE", "LEASE_LOST") and len(samples) < 5:
                    samples.append(rec.get("details", rec["code"]))
    store = open_storage(storage)
    try:
        stored = {t.id: t.value for t in store.list_trials(STUDY, TrialState.COMPLETED)}
        problems = store.check_integrity()
    finally:
        store.close()
    lost = sum(1 for i, v in acked.items() if stored.get(i) != v)
    values = [r for _, r in rss if r]
    quarter = max(1, len(values) // 4)
    return {
        "workers": workers,
        "seconds": round(elapsed, 1),
        "server_kills": server_kills,
        "worker_kills": worker_kills,
        "acknowledged": len(acked),
        "stored_completed": len(stored),
        "lost": lost,
        "conflicting_acks": conflicting,
        "integrity_problems": problems,
        "completed_per_second": round(len(stored) / max(elapsed, 1e-9), 1),
        "errors": dict(errors),
        "unexpected_errors": sum(n for c, n in errors.items()
                                 if c not in ("UNAVAILABLE", "LEASE_LOST")),
        "unexpected_samples": samples,
        "rss_mb_first_quarter_max": round(max(values[:quarter], default=0) / 2**20, 1),
        "rss_mb_last_quarter_max": round(max(values[-quarter:], default=0) / 2**20, 1),
        "rss_mb_max": round(max(values, default=0) / 2**20, 1),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        worker(*argv[1:5])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=64)
    p.add_argument("--seconds", type=float, default=600)
    p.add_argument("--storage", default="", help="storage URL (default: a fresh SQLite file)")
    p.add_argument("--chaos-seconds", type=float, default=5.0,
                   help="mean seconds between kills (server or a worker, even odds)")
    p.add_argument("--sample-seconds", type=float, default=0.5)
    p.add_argument("--strategy", default="random")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="promptbo-soak-") as tmp:
        figures = run_soak(args.workers, args.seconds, Path(tmp), args.storage,
                           args.chaos_seconds, args.sample_seconds, args.strategy, args.seed)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    ok = figures["lost"] == 0 and figures["unexpected_errors"] == 0 and \
        not figures["integrity_problems"] and figures["conflicting_acks"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
