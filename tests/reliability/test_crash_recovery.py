"""Crash drill: kill -9 a real `promptbo serve` at random moments while worker processes
run, restart it on the same SQLite file, and check that nothing acknowledged is lost or
counted twice and that the study stops at exactly its budget.

PROMPTBO_CRASH_KILLS sets the number of kills (CI: 20); scripts/crash_drill.sh runs a
longer drill.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import promptbo
from promptbo.server.domain import TrialState
from promptbo.server.manager import StudyManager
from promptbo.server.storage import open_storage

HERE = Path(__file__).parent
KILLS = int(os.environ.get("PROMPTBO_CRASH_KILLS", "20"))
BUDGET = int(os.environ.get("PROMPTBO_CRASH_BUDGET", str(60 * KILLS)))
WORKERS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: Path, port: int, log) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "promptbo.cli", "--log-level", "warning", "serve",
         "--storage", f"sqlite:///{db}", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=log,
    )


def wait_ready(address: str, timeout: float = 60) -> None:
    with promptbo.Client(address) as c:
        c.wait_ready(timeout)


@pytest.mark.slow
def test_kill_9_server_repeatedly(tmp_path):
    db, port = tmp_path / "crash.db", free_port()
    address = f"127.0.0.1:{port}"
    server_log = (tmp_path / "server.log").open("w")  # noqa: SIM115 - lives across restarts
    server = start_server(db, port, server_log)
    wait_ready(address)
    with promptbo.Client(address) as c:
        c.create_study("drill", promptbo.SoftPromptSpace(2, 2), strategy="random",
                       max_trials=BUDGET, lease_seconds=3)
    logs = [tmp_path / f"worker{i}.jsonl" for i in range(WORKERS)]
    workers = [
        subprocess.Popen([sys.executable, str(HERE / "crash_worker.py"), address, "drill",
                          str(logs[i]), f"w{i}"])
        for i in range(WORKERS)
    ]
    rng = random.Random(0)
    kills = 0
    deadline = time.monotonic() + 600
    try:
        while kills < KILLS and time.monotonic() < deadline:
            time.sleep(rng.uniform(0.2, 1.0))
            if all(w.poll() is not None for w in workers):
                break
            server.send_signal(signal.SIGKILL)
            server.wait()
            kills += 1
            server = start_server(db, port, server_log)
            wait_ready(address)
        for w in workers:
            w.wait(timeout=max(10, deadline - time.monotonic()))
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    assert kills == KILLS, f"the workers finished after only {kills} kills; raise the budget"
    assert all(w.returncode == 0 for w in workers)

    acked: dict[int, float] = {}
    for path in logs:
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            # Two workers can hold one trial when a lease expired during a restart; the
            # second identical tell is then a no-op that acknowledges the stored result.
            assert acked.get(rec["id"], rec["value"]) == rec["value"], (
                f"trial {rec['id']} acknowledged with two different values")
            acked[rec["id"]] = rec["value"]
    storage = open_storage(f"sqlite:///{db}")
    assert storage.check_integrity() == []
    completed = storage.list_trials("drill", TrialState.COMPLETED)
    assert len(completed) == BUDGET
    stored = {t.id: t.value for t in completed}
    assert acked == stored  # every acknowledged result stored once, nothing else completed
    # A fresh manager rebuilds the engine from storage and the study stays finished.
    manager = StudyManager(storage)
    assert manager.suggest_trials("drill", 1, "late") == ([], True)
    assert manager.get_study("drill").state.value == "completed"
    storage.close()
