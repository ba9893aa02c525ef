"""The worker's hot path: a result and the next trial in one RPC, calls served on the event
loop when they cannot block, slow ones on threads, and prefetched suggestions."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

import numpy as np
import pytest

import promptbo
from promptbo.server.app import ServerOptions, create_server
from promptbo.server.domain import SoftPromptSpace, StudySpec
from promptbo.server.local import LocalStub
from promptbo.server.manager import StudyManager
from promptbo.server.optim import base as optim_base
from promptbo.server.optim.base import register_strategy
from promptbo.server.optim.baselines import RandomEngine
from promptbo.server.servicer import OptimizerServicer
from promptbo.server.storage import open_storage
from promptbo.types import Score
from promptbo.worker import Worker

#: Set by a test to let BlockingEngine's suggestions through.
RELEASE = threading.Event()
#: Set by BlockingEngine when a suggestion starts computing.
ENTERED = threading.Event()


class BlockingEngine(RandomEngine):
    """Random suggestions that wait for :data:`RELEASE` (an expensive model, in effect)."""

    name: ClassVar[str] = "test-blocking"
    cheap = False

    def _suggest(self, n, pending, avoid, gen):
        ENTERED.set()
        assert RELEASE.wait(30), "the test never released the blocking engine"
        return super()._suggest(n, pending, avoid, gen)


class CountingEngine(RandomEngine):
    """Random suggestions (a cheap engine) that count the prompts they computed."""

    name: ClassVar[str] = "test-counting"
    computed: ClassVar[list[int]] = []

    def _suggest(self, n, pending, avoid, gen):
        CountingEngine.computed.append(n)
        return super()._suggest(n, pending, avoid, gen)


@pytest.fixture(autouse=True)
def test_strategies():
    """Registers ``test-blocking`` and ``test-counting`` for one test (the registry is
    process-wide)."""
    register_strategy("test-blocking")(BlockingEngine)
    register_strategy("test-counting")(CountingEngine)
    CountingEngine.computed = []
    ENTERED.clear()
    yield
    optim_base._REGISTRY.pop("test-blocking", None)
    optim_base._REGISTRY.pop("test-counting", None)
    RELEASE.set()


def quick_elsewhere(manager: StudyManager, name: str, suggest_count: int = 0) -> bool:
    """Whether ``manager.quick`` grants the study to a thread other than the caller's
    (the study lock is re-entrant, so the caller's own thread would always get it)."""
    def probe() -> bool:
        with manager.quick(name, suggest_count) as quick:
            return quick

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(probe).result(timeout=10)


def soft(**kw) -> StudySpec:
    kw.setdefault("strategy", "random")
    return StudySpec(space=SoftPromptSpace(2, 3), **kw)


def test_tell_and_ask_hands_out_the_next_trial_until_done(client):
    study = client.create_study("s", promptbo.SoftPromptSpace(2, 3), strategy="random",
                                max_trials=3)
    (trial,) = study.ask(1)
    told = []
    while trial is not None:
        done, following = study.tell_and_ask(trial, float(len(told)))
        assert done.state == "completed" and done.id == trial.id
        told.append(done.id)
        assert len(following) <= 1
        trial = following[0] if following else None
    assert len(told) == 3 and len(set(told)) == 3
    assert study.done
    assert [t.value for t in study.trials(state="completed")] == [0.0, 1.0, 2.0]


def test_tell_and_ask_keeps_the_result_when_no_trial_can_be_handed_out(client):
    study = client.create_study("s", promptbo.SoftPromptSpace(2, 3), strategy="random")
    (trial,) = study.ask(1)
    done, following = study.tell_and_ask(trial, 1.5, n=5000)  # over the count limit
    assert done.state == "completed" and following == [] and not study.done
    assert study.best_trial().value == 1.5
    with pytest.raises(promptbo.InvalidArgumentError, match="count must be in"):
        study.ask(5000)


class CountingServicer(OptimizerServicer):
    def __init__(self, manager: StudyManager) -> None:
        super().__init__(manager)
        self.calls: dict[str, int] = {}

    def SuggestTrials(self, request, context):
        self.calls["SuggestTrials"] = self.calls.get("SuggestTrials", 0) + 1
        return super().SuggestTrials(request, context)

    def CompleteTrial(self, request, context):
        self.calls["CompleteTrial"] = self.calls.get("CompleteTrial", 0) + 1
        return super().CompleteTrial(request, context)

    def CompleteTrials(self, request, context):
        self.calls["CompleteTrials"] = self.calls.get("CompleteTrials", 0) + 1
        return super().CompleteTrials(request, context)


class SumOfVector:
    def score(self, prompts):
        return [Score(float(np.sum(p.vector))) for p in prompts]


@pytest.mark.parametrize("batch_size, max_trials, batches", [(1, 5, 5), (2, 5, 3), (3, 7, 3)])
def test_worker_sends_one_rpc_per_batch(batch_size, max_trials, batches):
    servicer = CountingServicer(StudyManager(open_storage("memory:")))
    client = promptbo.Client(stub=LocalStub(servicer))
    study = client.create_study("s", promptbo.SoftPromptSpace(2, 3), strategy="random")
    stats = Worker(study, SumOfVector(), batch_size=batch_size, max_trials=max_trials).run()
    assert stats.completed == max_trials and stats.failed == 0
    # One ask to start, then each batch's results bring the next batch back.
    assert servicer.calls == {"SuggestTrials": 1, "CompleteTrials": batches}
    assert len(list(study.trials(state="completed"))) == max_trials
    assert list(study.trials(state="active")) == []


def test_tell_many_records_a_batch_and_hands_out_the_next(client):
    study = client.create_study("s", promptbo.SoftPromptSpace(2, 3), strategy="random",
                                max_trials=5)
    batch = study.ask(3)
    told, following = study.tell_many(
        [(batch[0], 1.0), (batch[1], 2.0, {"acc": 0.5}), (batch[2].id, 3.0)], n=3
    )
    assert [t.id for t in told] == [t.id for t in batch]
    assert [t.state for t in told] == ["completed"] * 3
    assert told[1].metrics == {"acc": 0.5}
    assert len(following) == 2  # the budget of 5 leaves room for two more
    told, following = study.tell_many([(t, 0.0) for t in following], n=3)
    assert following == [] and study.done
    assert study.best_trial().value == 3.0
    # Repeating identical results is a no-op, as for CompleteTrial.
    again, _ = study.tell_many([(batch[0], 1.0)])
    assert again[0].value == 1.0


@pytest.mark.parametrize("bad, error, match", [
    ("nan", promptbo.InvalidArgumentError, r"result 1 \(trial \d+\): value must be a finite"),
    ("unknown", promptbo.NotFoundError, "trial 999 not found"),
    ("duplicate", promptbo.InvalidArgumentError, "appear more than once"),
    ("conflict", promptbo.FailedPreconditionError, "already completed with a different result"),
])
def test_tell_many_records_all_or_nothing(client, bad, error, match):
    study = client.create_study("s", promptbo.SoftPromptSpace(2, 3), strategy="random")
    first, second, third = study.ask(3)
    study.tell(third, 7.0)
    results = [(first, 1.0), (second, 2.0)]
    if bad == "nan":
        results[1] = (second, float("nan"))
    elif bad == "unknown":
        results.append((999, 3.0))
    elif bad == "duplicate":
        results.append((first, 1.0))
    else:
        results.append((third, 8.0))
    with pytest.raises(error, match=match):
        study.tell_many(results)
    assert [t.id for t in study.trials(state="active")] == [first.id, second.id]
    assert [t.value for t in study.trials(state="completed")] == [7.0]


def test_tell_many_rejects_a_batch_with_a_trial_held_by_another_worker(tmp_path):
    t = [1000.0]
    manager = StudyManager(open_storage(f"sqlite:///{tmp_path / 'f.db'}"), clock=lambda: t[0])
    servicer = OptimizerServicer(manager)
    a = promptbo.Client(stub=LocalStub(servicer), client_id="a")
    b = promptbo.Client(stub=LocalStub(servicer), client_id="b")
    study_a = a.create_study("s", promptbo.SoftPromptSpace(2, 3), strategy="random",
                             lease_seconds=10)
    first, second = study_a.ask(2)
    t[0] += 11  # a's leases expire; b picks both trials up
    assert {x.id for x in b.get_study("s").ask(2)} == {first.id, second.id}
    with pytest.raises(promptbo.FailedPreconditionError, match="held by another worker"):
        study_a.tell_many([(first, 1.0), (second, 2.0)])
    assert list(study_a.trials(state="completed")) == []


def test_slow_suggestion_runs_off_the_event_loop(tmp_path):
    RELEASE.clear()
    server, port, manager = create_server(f"sqlite:///{tmp_path / 'f.db'}", ServerOptions(port=0))
    try:
        with promptbo.Client(f"127.0.0.1:{port}") as c:
            slow = c.create_study("slow", promptbo.SoftPromptSpace(2, 3), strategy="test-blocking")
            fast = c.create_study("fast", promptbo.SoftPromptSpace(2, 3), strategy="random")
            waiting = threading.Thread(target=slow.ask, args=(1,), daemon=True)
            waiting.start()
            assert ENTERED.wait(20), "the slow suggestion never started"
            results = []

            def work() -> None:
                for i in range(20):
                    (t,) = fast.ask(1)
                    results.append(fast.tell(t, float(i)).state)

            worker = threading.Thread(target=work, daemon=True)
            worker.start()
            worker.join(20)
            served_meanwhile = not worker.is_alive() and waiting.is_alive()
            RELEASE.set()
            waiting.join(20)
            assert served_meanwhile, "the fast study waited for the slow suggestion"
            assert results == ["completed"] * 20
            assert slow.refresh().active_count == 1
    finally:
        RELEASE.set()
        server.stop(None).wait()
        manager.close()


def test_quick_only_when_the_call_cannot_block():
    RELEASE.set()
    storage = open_storage("memory:")
    manager = StudyManager(storage)
    manager.create_study("r", soft())
    manager.create_study("b", soft(strategy="test-blocking"))
    with StudyManager(storage).quick("r") as quick:
        assert not quick  # not loaded: storage reads
    manager.suggest_trials("r", 1, "w")
    manager.suggest_trials("b", 1, "w")
    assert quick_elsewhere(manager, "r", 1)  # a cheap engine
    assert quick_elsewhere(manager, "b")  # no suggestion wanted
    assert not quick_elsewhere(manager, "b", 1)  # a suggestion from an expensive engine
    held = threading.Event()
    done = threading.Event()

    def hold() -> None:
        with manager.quick("r") as quick:
            assert quick
            held.set()
            done.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    assert held.wait(10)
    try:
        assert not quick_elsewhere(manager, "r")  # busy study: go to a thread
    finally:
        done.set()
        t.join()
    assert quick_elsewhere(manager, "r")  # released at the end of the block
    with pytest.raises(RuntimeError), manager.quick("r") as quick:
        assert quick
        raise RuntimeError("the call failed")
    assert quick_elsewhere(manager, "r")  # released when the call inside fails too
    assert manager.studies.locks_in_use == 0
    manager.close()


def test_prefetch_keeps_suggestions_ready_for_expensive_engines_only():
    RELEASE.set()
    manager = StudyManager(open_storage("memory:"), prefetch=2)
    try:
        manager.create_study("r", soft(strategy="test-counting"))
        manager.create_study("b", soft(strategy="test-blocking"))
        manager.suggest_trials("r", 1, "w1")
        manager.suggest_trials("b", 1, "w1")
        # Two suggestions of the expensive engine become ready in the background: a call
        # wanting two can then be served on the event loop.
        deadline = time.monotonic() + 20
        while not quick_elsewhere(manager, "b", 2):
            assert time.monotonic() < deadline, "no suggestions were prefetched"
            time.sleep(0.01)
        RELEASE.clear()  # the engine would now block: only a ready suggestion comes back
        with ThreadPoolExecutor(1) as pool:
            (t,), done = pool.submit(manager.suggest_trials, "b", 1, "w2").result(timeout=10)
        assert t.state.value == "active" and not done
        # The cheap engine computed its one prompt on request, never ahead (the prefetch
        # thread runs refills in order, so one for "r" would have run before "b"'s).
        assert CountingEngine.computed == [1]
    finally:
        RELEASE.set()
        manager.close()


def test_worker_tells_one_by_one_when_another_worker_took_a_trial_of_its_batch(tmp_path):
    t = [1000.0]
    manager = StudyManager(open_storage(f"sqlite:///{tmp_path / 'f.db'}"), clock=lambda: t[0])
    servicer = OptimizerServicer(manager)
    other = promptbo.Client(stub=LocalStub(servicer), client_id="other")
    study = promptbo.Client(stub=LocalStub(servicer), client_id="slow").create_study(
        "s", promptbo.SoftPromptSpace(2, 3), strategy="random", lease_seconds=10,
        max_trials=2,
    )

    class SlowThenStolen(SumOfVector):
        def score(self, prompts):
            t[0] += 11  # our leases expire while we score; the other worker takes one
            theirs = other.get_study("s")
            (taken,) = theirs.ask(1)
            theirs.tell(taken, -1.0)
            return super().score(prompts)

    stats = Worker(study, SlowThenStolen(), batch_size=2, max_trials=2).run()
    assert stats.completed == 1 and stats.failed == 0  # the stolen trial's result is refused
    completed = list(study.trials(state="completed"))
    assert sorted(t.client_id for t in completed) == ["other", "slow"]
    study.refresh()
    assert study.done
