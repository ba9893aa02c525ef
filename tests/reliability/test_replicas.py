"""Several replicas on one database: every replica serves every study, and handouts,
budgets, caps, leases and repeated completions stay exact across them.

Two layers:

- in-process: three :class:`StudyManager` objects on one shared SQLite file (always) and
  on one PostgreSQL schema (when ``PROMPTBO_TEST_POSTGRES_URL`` is set, as the storage
  contract tests), calls spread over them;
- real servers: two ``promptbo serve --shared-storage`` processes on one SQLite file;
  three ``promptbo serve`` processes on port 0 sharing one PostgreSQL
  schema, clients spread over them, and a kill -9 drill (one replica killed at a time,
  restarted, clients failing over): every acknowledged result stored, no trial held by
  two clients at once, counts within budget, ``promptbo admin check`` clean.
  PROMPTBO_REPLICA_KILLS sets the drill's kills (default 3); ``python -m
  benchmarks.replicas`` runs a longer one.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest

import promptbo
from benchmarks.replicas import Replica, run_drill
from promptbo.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    ResourceExhaustedError,
)
from promptbo.server.domain import SoftPromptSpace, StudySpec, StudyState, TrialState
from promptbo.server.manager import StudyManager
from promptbo.server.storage.sql import SqlStorage
from tests.storage.conftest import _postgres_schema, postgres_url


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def spec(**kw) -> StudySpec:
    kw.setdefault("strategy", "random")
    return StudySpec(space=SoftPromptSpace(2, 3), lease_seconds=10, **kw)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request, tmp_path) -> Iterator[str]:
    """The URL of an empty database the replicas share."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'replicas.db'}"
        return
    url, drop = _postgres_schema(postgres_url())
    yield url
    drop()


@pytest.fixture
def replicas(database) -> Iterator[tuple[list[StudyManager], Clock]]:
    """Three managers, each with its own storage connection, on one shared database."""
    clock = Clock()
    stores = [SqlStorage(database) for _ in range(3)]
    for s in stores:
        s.shared = True
    managers = [StudyManager(s, clock=clock) for s in stores]
    yield managers, clock
    for m in managers:
        m.close()
        m.storage.close()


def test_a_storage_says_whether_it_is_shared(database):
    store = SqlStorage(database)
    try:
        assert store.shared == database.startswith("postgresql")
    finally:
        store.close()


def test_any_replica_serves_any_study(replicas):
    (a, b, c), _ = replicas
    a.create_study("s", spec(max_trials=4))
    assert b.create_study("s", spec(max_trials=4))[1] is False  # get, not create
    (t1,), _ = b.suggest_trials("s", 1, "w1")
    (t2,), _ = c.suggest_trials("s", 1, "w2")
    assert t1.id != t2.id
    a.complete_trial("s", t1.id, 1.0, client_id="w1")
    c.complete_trial("s", t2.id, 3.0, client_id="w2")
    for m in (a, b, c):
        counts = m.study_counts("s")
        assert (counts[TrialState.COMPLETED], counts[TrialState.ACTIVE]) == (2, 0)
        assert m.best_trial("s").id == t2.id


def test_the_budget_is_exact_across_replicas(replicas):
    (a, b, c), _ = replicas
    a.create_study("s", spec(max_trials=5))
    handed = [m.suggest_trials("s", 2, f"w{i}")[0] for i, m in enumerate((a, b, c))]
    assert [len(h) for h in handed] == [2, 2, 1]
    ids = [t.id for h in handed for t in h]
    assert sorted(ids) == [1, 2, 3, 4, 5]
    for i, h in enumerate(handed):
        for t in h:
            (a, b, c)[(i + 1) % 3].complete_trial("s", t.id, float(t.id), client_id=f"w{i}")
    for m in (a, b, c):
        assert m.suggest_trials("s", 1, "late") == ([], True)
        assert m.get_study("s").state is StudyState.COMPLETED


def test_the_active_cap_is_exact_across_replicas(replicas):
    (a, b, c), _ = replicas
    a.create_study("s", spec(max_active_trials=2))
    a.suggest_trials("s", 1, "w0")
    b.suggest_trials("s", 1, "w1")
    with pytest.raises(ResourceExhaustedError):
        c.suggest_trials("s", 1, "w2")


def test_a_stale_replica_never_exceeds_the_budget(replicas):
    (a, b, _), _ = replicas
    a.create_study("s", spec(max_trials=3))
    b.study_counts("s")  # b caches the study while it is empty
    (t,), _ = a.suggest_trials("s", 1, "w0")
    assert len(a.suggest_trials("s", 2, "w1")[0]) == 2
    assert b.suggest_trials("s", 5, "w2") == ([], False)  # nothing left, none stored
    assert len(b.storage.list_trials("s")) == 3


def test_study_updates_on_two_replicas_lose_nothing(replicas):
    (a, b, _), _ = replicas
    a.create_study("s", spec(max_trials=10))
    b.study_counts("s")  # b caches the study as it is now
    a.update_study("s", labels={"team": "x"})
    study = b.update_study("s", max_trials=20)  # from its stale view: caught up first
    assert study.spec.labels == {"team": "x"} and study.spec.max_trials == 20
    for m in (a, b):
        assert m.get_study("s").spec.labels == {"team": "x"}
        assert m.get_study("s").spec.max_trials == 20


def test_a_stale_study_update_gets_the_error_the_stored_trials_call_for(replicas):
    (a, b, _), _ = replicas
    a.create_study("s", spec(max_trials=10))
    b.study_counts("s")  # b caches the study while it is empty
    handed, _ = a.suggest_trials("s", 3, "w0")
    a.complete_trial("s", handed[0].id, 1.0, client_id="w0")
    with pytest.raises(InvalidArgumentError, match="below the 3 trials"):
        b.update_study("s", max_trials=2)
    assert b.update_study("s", max_trials=3).spec.max_trials == 3
    a.complete_trial("s", handed[1].id, 1.0, client_id="w0")
    a.complete_trial("s", handed[2].id, 1.0, client_id="w0")
    assert a.get_study("s").state is StudyState.COMPLETED
    assert b.update_study("s", max_trials=4).state is StudyState.ACTIVE  # room again
    assert a.suggest_trials("s", 5, "w1")[0][0].id == 4


def test_a_study_update_racing_results_on_other_replicas_stays_exact(replicas):
    (a, b, c), _ = replicas
    a.create_study("s", spec(max_trials=0))
    errors: list[BaseException] = []
    stop = threading.Event()

    def work(m: StudyManager, worker: str) -> None:
        try:
            while not stop.is_set():
                for t in m.suggest_trials("s", 1, worker)[0]:
                    m.complete_trial("s", t.id, 1.0, client_id=worker)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(m, f"w{i}")) for i, m in enumerate((b, c))]
    for th in threads:
        th.start()
    try:
        for k in range(10):
            a.update_study("s", labels={"round": str(k)})
    finally:
        stop.set()
        for th in threads:
            th.join(timeout=60)
    assert not errors, errors
    for m in (a, b, c):
        assert m.get_study("s").spec.labels == {"round": "9"}


def test_a_watch_on_one_replica_sees_the_other_replicas_progress(replicas):
    (a, b, c), _ = replicas
    a.create_study("s", spec(max_trials=3))
    stop = threading.Event()
    events: list[tuple[str, int | None, int]] = []
    states: list[StudyState] = []

    def watch() -> None:
        for e in a.watch("s", stop):
            events.append((e.kind, e.trial.id if e.trial else None,
                           e.counts[TrialState.COMPLETED]))
            states.append(e.study.state)

    watching = threading.Thread(target=watch)
    watching.start()
    try:
        time.sleep(0.2)
        handed, _ = b.suggest_trials("s", 2, "w1")
        (last,), _ = c.suggest_trials("s", 1, "w2")
        for t in handed:
            c.complete_trial("s", t.id, 1.0, client_id="w1")
        b.complete_trial("s", last.id, 2.0, client_id="w2")
        watching.join(timeout=30)
        assert not watching.is_alive()
    finally:
        stop.set()
    # A catch-up shows each trial as it is then: one handed out and finished between
    # two polls is seen finished only.
    kinds = [k for k, _, _ in events]
    assert kinds.count("completed") == 3 and set(kinds) <= {"suggested", "completed", "done"}
    assert kinds[-1] == "done" and events[-1][2] == 3
    assert states[-1] is StudyState.COMPLETED  # events carry the caught-up study
    assert sorted(i for k, i, _ in events if k == "completed") == [1, 2, 3]


def test_a_study_left_active_with_its_budget_used_is_finished_on_the_next_ask(replicas):
    (a, b, _), _ = replicas
    a.create_study("s", spec(max_trials=1))
    (t,), _ = a.suggest_trials("s", 1, "w0")
    # What a replica killed after storing the last result, before marking the study
    # COMPLETED, leaves behind.
    a.storage.update_trials([t.evolve(state=TrialState.COMPLETED, value=1.0,
                                      complete_time=1.0)])
    assert b.suggest_trials("s", 1, "w1") == ([], True)
    assert a.get_study("s").state is StudyState.COMPLETED


def test_an_expired_trial_goes_to_one_client_only(replicas):
    (a, b, c), clock = replicas
    a.create_study("s", spec(max_trials=1))
    (t,), _ = a.suggest_trials("s", 1, "w0")
    b.study_counts("s")
    c.study_counts("s")
    clock.now += 11  # w0's lease ran out
    (t1,), _ = b.suggest_trials("s", 1, "w1")
    assert t1.id == t.id and t1.client_id == "w1"
    assert c.suggest_trials("s", 1, "w2") == ([], False)  # w1 holds it now
    with pytest.raises(FailedPreconditionError, match="held by another worker"):
        c.complete_trial("s", t.id, 1.0, client_id="w0")
    with pytest.raises(FailedPreconditionError, match="held by another worker"):
        a.heartbeat_trial("s", t.id, "w0")


def test_a_completion_retried_on_another_replica_is_acknowledged_once(replicas):
    (a, b, c), _ = replicas
    a.create_study("s", spec(max_trials=2))
    (t,), _ = a.suggest_trials("s", 1, "w0")
    done = a.complete_trial("s", t.id, 0.5, client_id="w0")
    again = b.complete_trial("s", t.id, 0.5, client_id="w0")  # a retry after a failover
    assert again == done
    with pytest.raises(FailedPreconditionError, match="completed once"):
        c.complete_trial("s", t.id, 0.7, client_id="w0")
    assert [x.value for x in c.storage.list_trials("s")] == [0.5]


def test_racing_completions_store_one_result(replicas):
    (a, b, _), _ = replicas
    a.create_study("s", spec())
    (t,), _ = a.suggest_trials("s", 1, "")
    b.study_counts("s")  # b holds the trial as active too
    a.complete_trial("s", t.id, 1.0)
    with pytest.raises(FailedPreconditionError, match="completed once"):
        b.complete_trial("s", t.id, 2.0)
    assert b.storage.get_trial("s", t.id).value == 1.0


def test_every_replicas_engine_learns_every_result(replicas):
    (a, b, c), _ = replicas
    a.create_study("s", spec(max_trials=6))
    for i, m in enumerate((a, b, c)):
        m.suggest_trials("s", 1, f"w{i}")  # every replica builds its engine
    trials = a.storage.list_trials("s")
    assert len(trials) == 3
    for i, t in enumerate(trials):
        (a, b, c)[i].complete_trial("s", t.id, float(i))
    for m in (a, b, c):
        m.study_counts("s")  # catches up
        live = m.studies.peek("s")
        assert live is not None and live.runtime is not None
        assert live.runtime.version.observed == 3


def test_an_engine_built_late_learns_each_result_once(replicas):
    (a, b, _), _ = replicas
    a.create_study("s", spec())
    (t,), _ = a.suggest_trials("s", 1, "w0")
    b.study_counts("s")  # b holds t as active and has no engine yet
    a.complete_trial("s", t.id, 1.0, client_id="w0")
    b.suggest_trials("s", 1, "w1")  # b builds its engine from storage
    (u,), _ = a.suggest_trials("s", 1, "w2")
    a.complete_trial("s", u.id, 2.0, client_id="w2")
    b.study_counts("s")
    assert b.studies.peek("s").runtime.version.observed == 2


def test_results_from_elsewhere_invalidate_prefetched_suggestions(replicas):
    (a, b, _), _ = replicas
    a.create_study("s", spec())
    a.suggest_trials("s", 1, "w")
    rt = a.studies.peek("s").runtime
    epoch = rt.version.epoch
    (t,), _ = b.suggest_trials("s", 1, "x")
    b.complete_trial("s", t.id, 1.0, client_id="x")
    a.study_counts("s")
    assert rt.version.epoch > epoch  # suggestions computed before are not handed out


def test_a_study_deleted_on_one_replica_is_gone_on_all(replicas):
    (a, b, _), _ = replicas
    a.create_study("s", spec())
    b.study_counts("s")
    a.delete_study("s")
    from promptbo.errors import NotFoundError

    with pytest.raises(NotFoundError):
        b.suggest_trials("s", 1, "w")


def test_a_study_created_again_elsewhere_is_loaded_afresh(replicas):
    (a, b, _), clock = replicas
    a.create_study("s", spec())
    for i in range(3):
        (t,), _ = a.suggest_trials("s", 1, f"w{i}")
        a.complete_trial("s", t.id, 1.0, client_id=f"w{i}")
    assert b.study_counts("s")[TrialState.COMPLETED] == 3
    a.delete_study("s")
    clock.now += 1
    a.create_study("s", spec())
    (t,), _ = a.suggest_trials("s", 1, "w")
    counts = b.study_counts("s")
    assert (counts[TrialState.COMPLETED], counts[TrialState.ACTIVE]) == (0, 1)


def test_concurrent_workers_on_three_replicas_stay_exact(replicas):
    managers, _ = replicas
    budget = 60
    managers[0].create_study("s", spec(max_trials=budget, max_active_trials=4))
    acked: dict[int, float] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        try:
            for step in range(400):
                m = managers[(k + step) % 3]
                try:
                    trials, done = m.suggest_trials("s", 1, f"w{k}")
                except ResourceExhaustedError:
                    continue
                if done:
                    return
                for t in trials:
                    value = float(t.id) + k / 10
                    m2 = managers[(k + step + 1) % 3]
                    try:
                        out = m2.complete_trial("s", t.id, value, client_id=f"w{k}")
                    except FailedPreconditionError:
                        continue
                    with lock:
                        assert t.id not in acked
                        acked[t.id] = out.value
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not errors, errors
    stored = managers[0].storage.list_trials("s")
    assert {t.id: t.value for t in stored if t.state is TrialState.COMPLETED} == acked
    assert len(acked) == budget and len(stored) == budget
    assert managers[0].storage.check_integrity() == []



# --- real servers on one PostgreSQL --------------------------------------------------------
@pytest.fixture
def pg_url() -> Iterator[str]:
    url, drop = _postgres_schema(postgres_url())
    yield url
    drop()


@pytest.fixture
def servers(pg_url, tmp_path) -> Iterator[list[Replica]]:
    """Three ``promptbo serve`` processes on port 0 sharing one PostgreSQL schema."""
    started = [Replica(pg_url, tmp_path, i) for i in range(3)]
    try:
        for s in started:
            s.start()
        yield started
    finally:
        for s in started:
            s.stop()


def test_two_servers_share_a_sqlite_file_when_told(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    started = [Replica(url, tmp_path, i, extra=("--shared-storage",)) for i in range(2)]
    try:
        for s in started:
            s.start()
        a, b = (promptbo.Client(s.address, client_id="w", timeout=30) for s in started)
        with a, b:
            a.create_study("s", promptbo.SoftPromptSpace(2, 2), strategy="random",
                           max_trials=2, lease_seconds=60)
            (t1,) = b.get_study("s").ask(1)
            (t2,) = a.get_study("s").ask(1, client_id="other")
            assert t1.id != t2.id and a.get_study("s").ask(1, client_id="third") == []
            a.get_study("s").tell(t1, 1.0)
            b.get_study("s").tell(t2, 2.0, client_id="other")
            assert a.get_study("s").done and b.get_study("s").best_trial().id == t2.id
    finally:
        for s in started:
            s.stop()


@pytest.mark.postgres
def test_three_servers_serve_one_study(servers):
    a, b, c = (promptbo.Client(s.address, client_id="w", timeout=30) for s in servers)
    try:
        created = a.create_study("s", promptbo.SoftPromptSpace(2, 2), strategy="random",
                                 max_trials=4, max_active_trials=2, lease_seconds=60)
        same = b.create_study("s", promptbo.SoftPromptSpace(2, 2), strategy="random",
                              max_trials=4, max_active_trials=2, lease_seconds=60)
        assert same.name == created.name
        on_b, on_c = b.get_study("s"), c.get_study("s")
        (t1,) = on_b.ask(1)
        assert [t.id for t in on_c.ask(1)] == [t1.id]  # the same client's own trial back
        (t2,) = on_c.ask(1, client_id="other")
        with pytest.raises(promptbo.ResourceExhaustedError):  # the cap, counted on a
            a.get_study("s").ask(1, client_id="third")
        on_c.tell(t1, 1.0)
        assert on_b.tell(t1, 1.0).value == 1.0  # a repeat on another replica: acknowledged
        with pytest.raises(promptbo.FailedPreconditionError):
            a.get_study("s").tell(t1, 2.0)
        on_b.tell(t2, 3.0, client_id="other")
        rest = a.get_study("s").ask(5, client_id="third")
        assert len(rest) == 2  # the budget: 4 in all
        for t in rest:
            b.get_study("s").tell(t, 0.5, client_id="third")
        for client in (a, b, c):
            study = client.get_study("s")
            assert study.done and study.best_trial().id == t2.id
            assert sorted(t.id for t in study.trials()) == [1, 2, 3, 4]
    finally:
        for client in (a, b, c):
            client.close()


@pytest.mark.postgres
@pytest.mark.slow
def test_kill_9_one_replica_at_a_time_loses_nothing(pg_url, tmp_path):
    kills = int(os.environ.get("PROMPTBO_REPLICA_KILLS", "3"))
    # A budget the load cannot use up before the kills are done; then it is lowered to
    # what the studies hold plus 10, and the load ends with both studies complete.
    figures = run_drill(pg_url, replicas=3, workers=4, studies=2, budget=100_000,
                        kills=kills, kill_every=1.0, seconds=300, folder=tmp_path,
                        wind_down=10)
    print(figures)
    assert figures["replicas_killed"] == kills, "the load ended first: raise the budget"
    assert figures["results_lost"] == 0 and figures["acknowledged_twice_differently"] == 0
    assert figures["double_handouts"] == 0 and figures["over_budget"] == []
    assert figures["studies_complete"]
    assert figures["results_stored"] == figures["results_acknowledged"]
    assert figures["integrity_problems"] == [] and figures["admin_check_rc"] == 0
    assert figures["worker_errors"] == []
