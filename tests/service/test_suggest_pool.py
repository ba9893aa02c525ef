"""The suggestion pool: engines computed in worker processes, replayed from history.

Real worker processes (``spawn``); the pool of most tests has one worker on one torch
thread and is shared by the module (a worker takes seconds to import torch).
"""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

import promptbo
from promptbo.errors import CancelledError, InvalidArgumentError
from promptbo.server.app import ServerOptions, create_server
from promptbo.server.domain import SoftPromptSpace, StudySpec
from promptbo.server.engine_recipe import EngineRecipe
from promptbo.server.optim import make_engine
from promptbo.server.pool_worker import Batch, EngineHost, Job
from promptbo.server.remote_engine import RemoteEngine
from promptbo.server.runtime import StudyRuntime
from promptbo.server.suggest_pool import ProcessWorker, SuggestPool, make_pool, wait_idle
from tests.service.pool_engines_helper import slow_engine

GP_OPTIONS = {"num_initial": "3", "num_restarts": "2", "maxiter": "20", "mc_samples": "32"}


@pytest.fixture(scope="module")
def pool():
    p = SuggestPool(1, lambda: ProcessWorker(threads=1, capacity=8), capacity=8)
    yield p
    p.close()


def objective(vector) -> float:
    return -float(np.sum((np.asarray(vector) - 0.3) ** 2))


def drive(rt: StudyRuntime, steps: int) -> list[tuple[float, ...]]:
    """Asks and tells ``steps`` times, one prompt each; the prompts' vectors."""
    out = []
    for _ in range(steps):
        (p,) = rt.suggest(1, [])
        rt.queue_observation([p], [objective(p.vector)])
        out.append(p.vector)
    return out


def test_a_gp_study_through_the_pool_suggests_what_it_suggests_in_process(pool):
    spec = StudySpec(space=SoftPromptSpace(1, 2), strategy="gp", seed=7,
                     strategy_options=GP_OPTIONS)
    local = StudyRuntime(spec, None, make_engine)
    remote = StudyRuntime(spec, None, make_engine, suggest_pool=pool)
    assert isinstance(remote.engine, RemoteEngine) and not remote.cheap
    shipped = pool.stats()["batches_shipped"]
    assert drive(remote, 5) == drive(local, 5)
    # The warm worker got each batch once: 4 tells before the 5th ask, one batch each.
    assert len(remote.engine.history) == 4
    assert pool.stats()["batches_shipped"] - shipped == 4


def test_cheap_engines_stay_in_process(pool):
    spec = StudySpec(space=SoftPromptSpace(1, 2), strategy="random")
    rt = StudyRuntime(spec, None, make_engine, suggest_pool=pool)
    assert not isinstance(rt.engine, RemoteEngine) and rt.cheap


def test_a_worker_killed_mid_job_is_replaced_and_the_job_retried(pool):
    spec = StudySpec(space=SoftPromptSpace(1, 2), strategy="slow",
                     strategy_options={"delay": "1.5"})
    rt = StudyRuntime(spec, None, slow_engine, suggest_pool=pool)
    rt.queue_observation(*_results(3))
    before = pool.stats()
    got: list = []
    asker = threading.Thread(target=lambda: got.append(rt.suggest(1, [])))
    asker.start()
    _wait_for(lambda: pool.stats()["busy"] == 1, 30)
    time.sleep(0.3)  # the job is computing on the worker
    handle = pool.handle(0)
    assert isinstance(handle, ProcessWorker) and handle.pid is not None
    os.kill(handle.pid, signal.SIGKILL)
    asker.join(120)
    assert not asker.is_alive() and len(got) == 1 and len(got[0]) == 1
    after = pool.stats()
    assert after["retried"] == before["retried"] + 1
    assert after["replaced"] == before["replaced"] + 1
    new = pool.handle(0)
    assert isinstance(new, ProcessWorker) and new.pid != handle.pid and new.alive()
    # The new worker got the whole history again (one batch).
    assert after["batches_shipped"] >= before["batches_shipped"] + 2


def test_a_refill_made_stale_by_new_data_stops_the_remote_computation(pool):
    spec = StudySpec(space=SoftPromptSpace(1, 2), strategy="slow",
                     strategy_options={"delay": "60"})
    rt = StudyRuntime(spec, None, slow_engine, suggest_pool=pool)
    stored: list = []
    t0 = time.monotonic()
    refill = threading.Thread(target=rt.refill, args=(
        2, lambda: [], lambda prompts, version: stored.append(prompts)))
    refill.start()
    _wait_for(lambda: pool.stats()["busy"] == 1, 30)
    time.sleep(0.3)
    rt.queue_observation(*_results(3))  # more than a refill tolerates
    refill.join(30)
    assert not refill.is_alive() and stored == [None]  # cancelled
    assert time.monotonic() - t0 < 30  # well before the 60 s computation would end
    assert wait_idle(pool, 5)  # the worker is free again


def test_with_one_worker_two_studies_both_progress(pool):
    spec = StudySpec(space=SoftPromptSpace(1, 2), strategy="slow",
                     strategy_options={"delay": "0.2"})
    done: list[str] = []
    lock = threading.Lock()

    def study(name: str) -> None:
        rt = StudyRuntime(spec, None, slow_engine, suggest_pool=pool)
        for _ in range(4):
            (p,) = rt.suggest(1, [])
            rt.queue_observation([p], [objective(p.vector)])
            with lock:
                done.append(name)

    threads = [threading.Thread(target=study, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(done) == ["a"] * 4 + ["b"] * 4
    # FIFO per request: neither study finished all its asks before the other got one.
    assert set(done[:4]) == {"a", "b"} and set(done[-4:]) == {"a", "b"}


def test_an_engine_error_reaches_the_caller_without_retries(pool):
    recipe = EngineRecipe(space=SoftPromptSpace(1, 2), strategy="slow",
                          options={"delay": "not a number"}, factory=slow_engine)
    before = pool.stats()
    engine = RemoteEngine(recipe, pool, make_engine(SoftPromptSpace(1, 2), "gp"))
    with pytest.raises(ValueError):
        engine.suggest(1)
    assert pool.stats()["retried"] == before["retried"]


def test_a_request_cancelled_while_it_waits_leaves_the_queue(pool):
    def engine(delay: str) -> RemoteEngine:
        recipe = EngineRecipe(space=SoftPromptSpace(1, 2), strategy="slow",
                              options={"delay": delay}, factory=slow_engine)
        return RemoteEngine(recipe, pool, make_engine(SoftPromptSpace(1, 2), "gp"))

    busy, waiting = engine("60"), engine("0")
    release = threading.Event()
    busy.should_stop = release.is_set
    errors: list = []

    def hold() -> None:
        try:
            busy.suggest(1)
        except CancelledError as exc:
            errors.append(exc)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        _wait_for(lambda: pool.stats()["busy"] == 1, 30)
        t0 = time.monotonic()
        waiting.should_stop = lambda: time.monotonic() - t0 > 0.3
        with pytest.raises(CancelledError):
            waiting.suggest(1)
        assert pool.stats()["queued"] == 0
    finally:
        release.set()
        holder.join(30)
    assert len(errors) == 1 and wait_idle(pool, 5)


def test_an_engine_host_replays_batches_once_and_asks_for_what_it_lacks():
    recipe = EngineRecipe(space=SoftPromptSpace(1, 2), strategy="random", seed=1)
    host = EngineHost(capacity=1)
    x, y = _results(2)
    batch = Batch(*_tensors(x, y))
    reply = host.run(Job(1, "s", 1, None, 0, 1, [batch]))  # not held, no recipe
    assert reply.status == "missing" and reply.seen is None
    reply = host.run(Job(2, "s", 1, None, 0, 0, [batch, batch], recipe))
    assert reply.status == "ok" and reply.seen == 2 and reply.num_suggested == 1
    reply = host.run(Job(3, "s", 1, None, 1, 3, [batch]))  # a gap: batch 2 never came
    assert reply.status == "missing" and reply.seen == 2
    host.run(Job(4, "t", 1, None, 0, 0, [], recipe))  # capacity 1: "s" is dropped
    assert list(host.held()) == ["t"]


def test_make_pool_kinds():
    assert make_pool("thread") is None
    with pytest.raises(InvalidArgumentError):
        make_pool("fork")


def test_grpc_server_with_a_process_pool_runs_a_gp_study(tmp_path):
    from promptbo.server.http import Metrics

    server, port, manager = create_server(
        f"sqlite:///{tmp_path / 'pool.db'}",
        ServerOptions(port=0, suggest_pool="process", suggest_workers=1),
    )
    metrics = Metrics(manager)
    try:
        with promptbo.Client(f"127.0.0.1:{port}") as c:
            study = c.create_study("gp", promptbo.SoftPromptSpace(1, 2), strategy="gp",
                                   strategy_options=dict(GP_OPTIONS), seed=3)
            for _ in range(5):
                (trial,) = study.ask()
                study.tell(trial, objective(trial.prompt.vector))
        pool = manager.studies.suggest_pool
        assert pool is not None
        stats = pool.stats()
        assert stats["alive"] == 1 and stats["jobs_done"] >= 2
        text = metrics.text().decode()
        assert "promptbo_pool_workers_alive 1.0" in text
        assert "promptbo_pool_history_batches_shipped_total" in text
        # GP fits run in the worker are reported by the server as its own.
        assert 'promptbo_gp_fit_seconds_count{strategy="gp"}' in text
    finally:
        metrics.close()
        server.stop(None).wait()
        manager.close()
    assert pool.handle(0) is None  # stopped


def _results(n: int) -> tuple[list, list[float]]:
    from promptbo.server.domain import Prompt

    rng = np.random.default_rng(n)
    prompts = [Prompt(vector=tuple(float(v) for v in rng.random(2))) for _ in range(n)]
    return prompts, [objective(p.vector) for p in prompts]


def _tensors(prompts, values):
    import torch

    x = torch.tensor(np.array([p.vector for p in prompts], dtype=np.float32))
    return x, torch.tensor(values, dtype=torch.float64)


def _wait_for(check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
