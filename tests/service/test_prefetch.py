"""Prefetched suggestions are handed out only while they are valid for the study's data,
and engine computations share the server's compute slots."""

from __future__ import annotations

import threading
import time
from typing import ClassVar

import numpy as np
import pytest

import promptbo
from promptbo.server import compute
from promptbo.server.app import ServerOptions, create_server
from promptbo.server.domain import Prompt, SoftPromptSpace, StudySpec
from promptbo.server.manager import KnownTrial, StudyManager
from promptbo.server.optim import base as optim_base
from promptbo.server.optim import make_engine
from promptbo.server.optim.base import register_strategy
from promptbo.server.optim.baselines import RandomEngine
from promptbo.server.prefetch import DataVersion, Pace, adaptive_depth, still_valid, tolerated
from promptbo.server.runtime import StudyRuntime
from promptbo.server.storage import open_storage

#: Cleared by a test to hold ObservingEngine's suggestions until it is set again.
GATE = threading.Event()
#: Set by ObservingEngine when a suggestion starts computing.
ENTERED = threading.Event()


def key(vector) -> tuple[float, ...]:
    return tuple(round(float(v), 5) for v in np.asarray(vector).reshape(-1))


class ObservingEngine(RandomEngine):
    """Random suggestions of an expensive engine that record how many observations the
    engine had when it computed each one, and stop when asked to."""

    name: ClassVar[str] = "test-observing"
    cheap = False
    #: Observations seen when each suggested vector was computed, by vector.
    seen: ClassVar[dict[tuple[float, ...], int]] = {}
    cancelled: ClassVar[int] = 0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.count = 0

    def observe(self, candidates, values) -> None:
        super().observe(candidates, values)
        self.count += int(values.reshape(-1).shape[0])

    def suggest(self, n, pending=None):
        ENTERED.set()
        assert GATE.wait(30), "the test never opened the gate"
        if self.should_stop is not None and self.should_stop():
            ObservingEngine.cancelled += 1
        self.check_stop()
        out = super().suggest(n, pending)
        for row in out:
            ObservingEngine.seen[key(row.tolist())] = self.count
        return out


@pytest.fixture(autouse=True)
def observing_strategy():
    register_strategy("test-observing")(ObservingEngine)
    ObservingEngine.seen = {}
    ObservingEngine.cancelled = 0
    GATE.set()
    ENTERED.clear()
    yield
    GATE.set()
    optim_base._REGISTRY.pop("test-observing", None)


def soft(**kw) -> StudySpec:
    kw.setdefault("strategy", "test-observing")
    return StudySpec(space=SoftPromptSpace(2, 3), **kw)


def known(n: int) -> list[KnownTrial]:
    return [KnownTrial(Prompt(vector=tuple(0.1 * i + 0.01 * j for j in range(6))),
                       float(i), {}) for i in range(n)]


def ready_count(manager: StudyManager, name: str) -> int:
    with manager.studies.lock(name):
        rt = manager.studies.get(name).runtime
        return 0 if rt is None else rt.ready_count()


def wait_ready(manager: StudyManager, name: str, n: int) -> None:
    deadline = time.monotonic() + 20
    while ready_count(manager, name) < n:
        assert time.monotonic() < deadline, "no suggestions were prefetched"
        time.sleep(0.01)


# --- the rule -------------------------------------------------------------------------
def test_a_suggestion_survives_a_few_tells_but_no_added_trials():
    at = DataVersion(epoch=0, observed=10)
    assert still_valid(at, at)
    assert still_valid(at, DataVersion(0, 12))  # two single tells
    assert not still_valid(at, DataVersion(0, 13))  # a batch
    assert not still_valid(at, DataVersion(1, 10))  # an AddTrials, however small
    big = DataVersion(0, 500)
    assert tolerated(big) == 25  # 5% of a large data set
    assert still_valid(big, DataVersion(0, 525)) and not still_valid(big, DataVersion(0, 526))


def test_runtime_drops_ready_suggestions_once_new_data_makes_them_stale():
    spec = soft(strategy="random")
    rt = StudyRuntime(spec, None, make_engine)
    prompts = rt.suggest(2, [])
    rt.ready, rt.ready_version = list(prompts), rt.engine_version
    rt.queue_observation([prompts[0]], [1.0])
    assert rt.ready_count() == 2  # one tell: still valid
    rt.queue_observation([Prompt(vector=(0.0,) * 6)], [0.5], invalidate=True)
    assert rt.ready_count() == 0 and rt.ready == [] and rt.discarded == 1
    assert rt.take_ready(1, []) == []
    assert rt.version == DataVersion(epoch=1, observed=2)


# --- through the manager --------------------------------------------------------------
def test_the_ask_after_add_trials_is_computed_on_the_added_trials():
    """The measured bug: a suggestion prefetched before a bulk AddTrials was handed out by
    the next ask, ignoring the added trials."""
    manager = StudyManager(open_storage("memory:"), prefetch=2)
    try:
        manager.create_study("s", soft())
        wait_ready(manager, "s", 2)
        manager.add_trials("s", known(20))
        (t,), _ = manager.suggest_trials("s", 1, "w")
        assert ObservingEngine.seen[key(t.prompt.vector)] == 20
        # The refill that started after AddTrials is computed on the new data too.
        wait_ready(manager, "s", 2)
        ready = manager.studies.get("s").runtime.ready
        assert {ObservingEngine.seen[key(p.vector)] for p in ready} == {20}
    finally:
        manager.close()


def test_a_prefetched_suggestion_is_handed_out_after_a_single_tell():
    manager = StudyManager(open_storage("memory:"), prefetch=2)
    try:
        manager.create_study("s", soft())
        manager.add_trials("s", known(20))
        wait_ready(manager, "s", 2)
        GATE.clear()  # from here on, an engine computation would block
        ENTERED.clear()
        rt = manager.studies.get("s").runtime
        first = list(rt.ready)
        (t,), _ = manager.suggest_trials("s", 1, "w")  # served from the ready ones
        assert t.prompt == first[0]
        assert ENTERED.wait(10)  # the refill after the hand-out now waits on the gate
        manager.complete_trial("s", t.id, 1.0, client_id="w")
        (u,), _ = manager.suggest_trials("s", 1, "w")  # one tell later: still valid
        assert u.prompt == first[1]
    finally:
        GATE.set()
        manager.close()


def test_a_refill_that_went_stale_is_cancelled_and_started_again():
    GATE.clear()
    manager = StudyManager(open_storage("memory:"), prefetch=2)
    try:
        manager.create_study("s", soft())
        assert ENTERED.wait(10), "the first refill never started"
        manager.add_trials("s", known(5))  # arrives while the refill computes
        GATE.set()
        wait_ready(manager, "s", 2)
        rt = manager.studies.get("s").runtime
        assert ObservingEngine.cancelled == 1 and rt.discarded == 1
        assert {ObservingEngine.seen[key(p.vector)] for p in rt.ready} == {5}
    finally:
        GATE.set()
        manager.close()


def test_an_ask_waiting_for_a_refill_takes_its_prompts_and_nothing_is_computed_twice():
    GATE.clear()
    manager = StudyManager(open_storage("memory:"), prefetch=2)
    try:
        manager.create_study("s", soft())
        assert ENTERED.wait(10), "the first refill never started"
        asked: list = []
        asking = threading.Thread(
            target=lambda: asked.extend(manager.suggest_trials("s", 1, "w")[0]))
        asking.start()
        time.sleep(0.2)  # the ask now waits for the engine the refill holds
        GATE.set()
        asking.join(20)
        assert len(asked) == 1 and ObservingEngine.cancelled == 0  # taken, not cancelled
        wait_ready(manager, "s", 2)  # topped up with one more after the ask
        assert len(ObservingEngine.seen) == 3  # the refill's pair and the top-up
        assert key(asked[0].prompt.vector) in ObservingEngine.seen
        assert manager.studies.get("s").runtime.discarded == 0
    finally:
        GATE.set()
        manager.close()


def test_a_refill_computes_only_the_ready_ones_that_are_missing():
    manager = StudyManager(open_storage("memory:"), prefetch=2)
    try:
        manager.create_study("s", soft())
        wait_ready(manager, "s", 2)
        rt = manager.studies.get("s").runtime
        first = list(rt.ready)
        (t,), _ = manager.suggest_trials("s", 1, "w")
        assert t.prompt == first[0]
        wait_ready(manager, "s", 2)
        assert rt.ready[0] == first[1]  # still valid: kept, not recomputed
        assert len(ObservingEngine.seen) == 3
        manager.complete_trial("s", t.id, 1.0, client_id="w")  # one tell: still valid
        time.sleep(0.2)
        assert len(ObservingEngine.seen) == 3 and rt.ready[0] == first[1]
    finally:
        manager.close()


def test_add_trials_over_grpc_is_seen_by_the_next_ask(tmp_path):
    server, port, manager = create_server(
        f"sqlite:///{tmp_path / 'p.db'}", ServerOptions(port=0, prefetch=2))
    try:
        with promptbo.Client(f"127.0.0.1:{port}") as c:
            study = c.create_study("g", promptbo.SoftPromptSpace(2, 3),
                                   strategy="test-observing")
            wait_ready(manager, "g", 2)
            GATE.clear()  # the refill after AddTrials must not replace the ready ones first
            study.add_trials([
                (promptbo.Prompt(vector=np.array(k.prompt.vector, np.float32).reshape(2, 3)),
                 k.value) for k in known(30)])
            asked: list = []
            asking = threading.Thread(target=lambda: asked.extend(study.ask(1)))
            asking.start()
            asking.join(0.5)
            GATE.set()
            asking.join(20)
            (t,) = asked
            assert ObservingEngine.seen[key(t.prompt.vector)] == 30
    finally:
        server.stop(0).wait(10)
        manager.close()


# --- compute slots --------------------------------------------------------------------
def test_compute_slots_bound_concurrent_computations():
    slots = compute.ComputeSlots(2)
    peak = [0]
    lock = threading.Lock()

    def work() -> None:
        with slots.hold():
            with lock:
                peak[0] = max(peak[0], slots.busy)
            time.sleep(0.02)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(10)
    assert peak[0] == 2 and slots.busy == 0


def test_threads_per_worker_never_oversubscribes():
    assert compute.threads_per_worker(1, cores=16) == 16
    assert compute.threads_per_worker(4, cores=16) == 4
    assert compute.threads_per_worker(16, cores=16) == 1
    assert compute.threads_per_worker(32, cores=16) == 1
    assert compute.suggest_workers(0) == compute.available_cores()
    with pytest.raises(ValueError):
        compute.suggest_workers(-1)


def test_the_manager_shares_its_slots_with_every_study():
    manager = StudyManager(open_storage("memory:"), suggest_workers=1)
    try:
        assert manager.studies.slots.size == 1
        GATE.clear()
        manager.create_study("a", soft())
        manager.create_study("b", soft(seed=1))
        first = threading.Thread(target=manager.suggest_trials, args=("a", 1, "w"))
        first.start()
        assert ENTERED.wait(10)
        ENTERED.clear()
        second = threading.Thread(target=manager.suggest_trials, args=("b", 1, "w"))
        second.start()
        time.sleep(0.2)
        assert not ENTERED.is_set()  # "b" waits for the one slot "a" holds
        GATE.set()
        first.join(10)
        second.join(10)
        assert ENTERED.is_set() and len(ObservingEngine.seen) == 2
    finally:
        GATE.set()
        manager.close()


# --- adaptive depth -------------------------------------------------------------------
def test_depth_is_none_for_cheap_suggestions_and_deep_for_fast_workers():
    assert adaptive_depth(4, None, None, 1) == 4  # nothing measured yet
    assert adaptive_depth(4, 0.5, None, 1) == 4
    assert adaptive_depth(4, 0.04, 1.0, 8) == 0  # suggestions cheap next to evaluations
    assert adaptive_depth(4, 2.0, 10.0, 1) == 1  # one ask per suggestion time
    assert adaptive_depth(4, 2.0, 1.0, 1) == 2  # fast worker: two asks per suggestion
    assert adaptive_depth(4, 2.0, 0.01, 1) == 4  # capped by --prefetch
    assert adaptive_depth(0, 2.0, 0.01, 1) == 0
    pace = Pace()
    pace.suggested(1.0)
    pace.suggested(2.0)
    assert pace.suggest_s == pytest.approx(1.3)


def test_a_study_with_cheap_suggestions_stops_prefetching_and_metrics_show_it():
    from promptbo.server.http import Metrics

    manager = StudyManager(open_storage("memory:"), prefetch=2)
    metrics = Metrics(manager)
    try:
        manager.create_study("s", soft())
        wait_ready(manager, "s", 2)
        rt = manager.studies.get("s").runtime
        rt.pace.suggested(0.001)
        rt.pace.evaluated(10.0)  # as if workers took 10 s per trial
        (t,), _ = manager.suggest_trials("s", 1, "w")  # from the ready ones
        assert rt.depth == 0 and not rt.refilling  # no refill: on demand from now on
        text = metrics.text().decode()
        assert 'promptbo_prefetch_depth{study="s"} 0.0' in text
        assert 'promptbo_prefetch_ready{study="s"} 1.0' in text
        assert "promptbo_compute_slots " in text
    finally:
        metrics.close()
        manager.close()
