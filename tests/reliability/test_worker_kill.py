"""`promptbo worker` processes stopped mid-trial. SIGKILL: the trial the worker held comes
back when its lease expires and another worker completes it, so the study ends with exactly
its budget of trials, each completed once with its own prompt's score. SIGTERM: the worker
finishes the trial in hand, reports exactly what it completed and leaves nothing active."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest

import promptbo
from promptbo.server.app import ServerOptions, create_server

OBJECTIVE = Path(__file__).with_name("slow_objective.py")
T = TypeVar("T")


def worker(address: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "promptbo.cli", "worker", "--server", address, "--study", "k",
         "--evaluator", "python", "-o", f"function={OBJECTIVE}:score", "--quiet", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def wait_for(condition: Callable[[], T], timeout: float, what: str) -> T:
    """``condition()``'s first truthy result, polled every 0.1 s; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


def score(trial) -> float:
    """What slow_objective.score gives the trial's prompt."""
    return -float(np.sum(np.asarray(trial.prompt.vector) ** 2))


def reported(out: str) -> tuple[int, int]:
    """(completed, failed) from the worker's closing line."""
    match = re.search(r"worker done: (\d+) completed, (\d+) failed", out)
    assert match, out
    return int(match[1]), int(match[2])


@pytest.fixture
def address(tmp_path):
    server, port, _ = create_server(f"sqlite:///{tmp_path / 'k.db'}", ServerOptions(port=0))
    procs: list[subprocess.Popen] = []
    yield f"127.0.0.1:{port}", procs
    for proc in procs:  # a failed assertion leaves no worker behind
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    server.stop(None).wait()


@pytest.mark.slow
def test_killed_worker_trial_is_reissued_and_completed_once(address):
    address, procs = address
    with promptbo.Client(address) as c:
        study = c.create_study("k", promptbo.SoftPromptSpace(1, 2), strategy="random",
                               max_trials=4, lease_seconds=2)
        victim = worker(address)
        procs.append(victim)
        (held,) = wait_for(lambda: list(study.trials(state="active")), 60,
                           "the first worker to take a trial")
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        survivor = worker(address)
        procs.append(survivor)
        out, _ = survivor.communicate(timeout=120)
        assert survivor.returncode == 0, out
        trials = list(study.trials())
        info = study.refresh()
    # The budget, exactly: ids 1..4, all completed, none failed, none left active. While
    # the victim's trial was active the budget allowed only three new ones, so the
    # survivor finished only because that trial's lease expired and it was handed over.
    assert [t.id for t in trials] == [1, 2, 3, 4]
    assert all(t.state == "completed" for t in trials), trials
    assert (info.completed_count, info.active_count, info.failed_count) == (4, 0, 0)
    again = trials[held.id - 1]
    assert np.array_equal(again.prompt.vector, held.prompt.vector)  # the same trial, re-handed
    # The survivor completed the victim's trial and every trial the victim did not finish
    # (all four when the victim died in its first), and reports exactly those.
    by_victim = [t.id for t in trials if t.client_id == held.client_id]
    assert held.id not in by_victim and len(by_victim) < held.id
    assert len({t.client_id for t in trials} - {held.client_id}) == 1
    assert reported(out) == (4 - len(by_victim), 0)
    for t in trials:
        assert t.value == pytest.approx(score(t), rel=1e-6), t.id


@pytest.mark.slow
def test_sigterm_finishes_current_trial(address):
    address, procs = address
    with promptbo.Client(address) as c:
        study = c.create_study("k", promptbo.SoftPromptSpace(1, 2), strategy="random",
                               max_trials=50)
        proc = worker(address)
        procs.append(proc)
        (held,) = wait_for(lambda: list(study.trials(state="active")), 60,
                           "the worker to take a trial")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        trials = list(study.trials())
    completed, failed = reported(out)
    # It finished the trial in hand (or, if that one was done just before the signal, the
    # next one) and took no other: exactly the trials it reports, all completed by it.
    assert failed == 0 and completed in (held.id, held.id + 1), out
    assert [t.id for t in trials] == list(range(1, completed + 1))
    assert all(t.state == "completed" and t.client_id == held.client_id for t in trials)
    for t in trials:
        assert t.value == pytest.approx(score(t), rel=1e-6), t.id
