"""A `promptbo worker` process killed mid-trial: its trial comes back after the lease and
is completed exactly once by another worker."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import promptbo
from promptbo.server.app import ServerOptions, create_server

OBJECTIVE = Path(__file__).with_name("slow_objective.py")


def worker(address: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "promptbo.cli", "worker", "--server", address, "--study", "k",
         "--evaluator", "python", "-o", f"function={OBJECTIVE}:score", "--quiet", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


@pytest.mark.slow
def test_killed_worker_trial_is_reissued_and_completed_once(tmp_path):
    server, port, _ = create_server(f"sqlite:///{tmp_path / 'k.db'}", ServerOptions(port=0))
    address = f"127.0.0.1:{port}"
    try:
        with promptbo.Client(address) as c:
            study = c.create_study("k", promptbo.SoftPromptSpace(1, 2), strategy="random",
                                   max_trials=4, lease_seconds=2)
            victim = worker(address)
            deadline = time.monotonic() + 60
            while not list(study.trials(state="active")) and time.monotonic() < deadline:
                time.sleep(0.1)
            (held,) = list(study.trials(state="active"))
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            survivor = worker(address)
            out, _ = survivor.communicate(timeout=120)
            assert survivor.returncode == 0, out
            trials = {t.id: t for t in study.trials()}
            assert trials[held.id].state == "completed"
            assert trials[held.id].client_id != held.client_id
            assert sum(t.state == "completed" for t in trials.values()) == 4
            assert len(trials) == 4  # the killed worker's trial was re-issued, not replaced
    finally:
        server.stop(None).wait()


@pytest.mark.slow
def test_sigterm_finishes_current_trial(tmp_path):
    server, port, _ = create_server(f"sqlite:///{tmp_path / 't.db'}", ServerOptions(port=0))
    address = f"127.0.0.1:{port}"
    try:
        with promptbo.Client(address) as c:
            study = c.create_study("k", promptbo.SoftPromptSpace(1, 2), strategy="random",
                                   max_trials=50)
            proc = worker(address)
            deadline = time.monotonic() + 60
            while not list(study.trials(state="active")) and time.monotonic() < deadline:
                time.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=60)
            assert proc.returncode == 0, out
            assert "worker done" in out
            assert list(study.trials(state="active")) == []
            assert len(list(study.trials(state="completed"))) >= 1
    finally:
        server.stop(None).wait()
