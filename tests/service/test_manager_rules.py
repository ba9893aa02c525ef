"""Lease, budget and restart rules of the study manager, with a fake clock."""

from __future__ import annotations

import pytest

from promptbo.errors import FailedPreconditionError, ResourceExhaustedError
from promptbo.server.domain import SoftPromptSpace, StudySpec, StudyState, TrialState
from promptbo.server.manager import StudyManager
from promptbo.server.storage import open_storage


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def spec(**kw) -> StudySpec:
    kw.setdefault("strategy", "random")
    return StudySpec(space=SoftPromptSpace(2, 3), lease_seconds=10, **kw)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def manager(clock):
    return StudyManager(open_storage("memory:"), clock=clock)


def test_expired_lease_is_reissued_to_next_client(manager, clock):
    manager.create_study("s", spec())
    (t,), _ = manager.suggest_trials("s", 1, "a")
    clock.now += 11
    (t2,), _ = manager.suggest_trials("s", 1, "b")
    assert t2.id == t.id and t2.client_id == "b" and t2.prompt == t.prompt
    # a's late result is refused while b holds the lease ...
    with pytest.raises(FailedPreconditionError, match="held by another worker"):
        manager.complete_trial("s", t.id, 1.0, client_id="a")
    # ... and accepted once nobody holds it.
    clock.now += 11
    done = manager.complete_trial("s", t.id, 1.0, client_id="a")
    assert done.state is TrialState.COMPLETED


def test_heartbeat_extends_lease(manager, clock):
    manager.create_study("s", spec())
    (t,), _ = manager.suggest_trials("s", 1, "a")
    for _ in range(5):
        clock.now += 8
        manager.heartbeat_trial("s", t.id, "a")
    (other,), _ = manager.suggest_trials("s", 1, "b")
    assert other.id != t.id


def test_budget_is_exact_and_counts_only_completed(manager):
    manager.create_study("s", spec(max_trials=4))
    trials, _ = manager.suggest_trials("s", 10, "a")
    assert len(trials) == 4
    manager.complete_trial("s", trials[0].id, 0.0, failure_reason="oom")
    for t in trials[1:]:
        manager.complete_trial("s", t.id, 1.0)
    (again,), done = manager.suggest_trials("s", 10, "a")
    assert not done
    manager.complete_trial("s", again.id, 2.0)
    assert manager.suggest_trials("s", 1, "a") == ([], True)
    assert manager.get_study("s").state is StudyState.COMPLETED
    counts = manager.study_counts("s")
    assert counts[TrialState.COMPLETED] == 4 and counts[TrialState.FAILED] == 1


def test_active_cap(manager):
    manager.create_study("s", spec(max_active_trials=1))
    manager.suggest_trials("s", 3, "a")
    with pytest.raises(ResourceExhaustedError):
        manager.suggest_trials("s", 1, "b")


def test_restart_rebuilds_engine_state(tmp_path, clock):
    url = f"sqlite:///{tmp_path / 's.db'}"
    m1 = StudyManager(open_storage(url), clock=clock)
    m1.create_study("s", spec(max_trials=6))
    first, _ = m1.suggest_trials("s", 3, "a")
    for t in first:
        m1.complete_trial("s", t.id, float(t.id))
    m1.storage.close()
    m2 = StudyManager(open_storage(url), clock=clock)
    more, _ = m2.suggest_trials("s", 3, "a")
    assert [t.id for t in more] == [4, 5, 6]
    assert {t.prompt for t in more}.isdisjoint({t.prompt for t in first})
    assert m2.best_trial("s").id == 3
