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
import torch

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


def test_transfer_side_information_comes_back_from_the_worker(pool):
    from promptbo.server.transfer_sources import LoadedSource

    prompts, values = _results(12)
    source = LoadedSource("src", prompts, values)
    spec = StudySpec(space=SoftPromptSpace(1, 2), strategy="gp", seed=2,
                     strategy_options=GP_OPTIONS, transfer_from=("src",))
    local = StudyRuntime(spec, None, make_engine, [source])
    remote = StudyRuntime(spec, None, make_engine, [source], suggest_pool=pool)
    assert remote.transfer_weights() == local.transfer_weights() == (None, {"src": 12})
    assert drive(remote, 6) == drive(local, 6)
    first = remote.decode(remote.engine.history[0].candidates)
    assert remote.transferred(first) == local.transferred(first) == [True]
    weights, counts = remote.transfer_weights()
    assert weights is not None and (weights, counts) == local.transfer_weights()


def test_a_multi_fidelity_study_gets_the_same_trials_and_examples_through_a_process_pool():
    from promptbo.server.manager import StudyManager, TrialResult
    from promptbo.server.storage import open_storage

    spec = StudySpec(space=SoftPromptSpace(1, 2), strategy="mf", seed=4, pool_size=20,
                     max_examples=60, strategy_options={**GP_OPTIONS, "min_examples": "5",
                                                        "eta": "2"})

    def run(kind: str) -> list[tuple]:
        manager = StudyManager(open_storage("memory:"), suggest_pool=kind, suggest_workers=1)
        try:
            manager.create_study("mf", spec)
            out = []
            while True:
                trials, _ = manager.suggest_trials("mf", 2, "w")
                if not trials:
                    return out
                out += [(t.prompt.vector, t.examples) for t in trials]
                manager.complete_trials("mf", [
                    TrialResult(t.id, objective(t.prompt.vector), {}, value_stderr=0.1)
                    for t in trials], "w")
        finally:
            manager.close()

    local = run("thread")
    assert len({len(e) for _, e in local}) > 1  # some prompts were promoted to more examples
    assert run("process") == local


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
    host = EngineHost(capacity=2)
    host.run(Job(5, "s", 1, None, 0, 0, [], recipe))
    host.run(Job(6, "t", 1, None, 0, 0, [], recipe, forget=["s"]))  # "s" was deleted
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
    x = torch.tensor(np.array([p.vector for p in prompts], dtype=np.float32))
    return x, torch.tensor(values, dtype=torch.float64)


def _wait_for(check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _children(pid: int) -> set[int]:
    """Live processes whose parent is ``pid`` (Linux /proc)."""
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.add(int(entry))
    return out


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="lists child processes in /proc")
def test_promptbo_serve_with_a_process_pool_serves_a_gp_study_and_stops_its_workers(tmp_path):
    import subprocess
    import sys

    port_file = tmp_path / "port"
    log = (tmp_path / "server.log").open("w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [sys.executable, "-m", "promptbo.cli", "--log-level", "warning", "serve",
         "--storage", f"sqlite:///{tmp_path / 'serve.db'}", "--port", "0",
         "--port-file", str(port_file), "--suggest-pool", "process", "--suggest-workers", "1",
         "--prefetch", "0"],
        stdout=log, stderr=log, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        _wait_for(port_file.exists, 60)
        address = f"127.0.0.1:{port_file.read_text()}"
        with promptbo.Client(address) as c:
            c.wait_ready(60)
            study = c.create_study("gp", promptbo.SoftPromptSpace(1, 2), strategy="gp",
                                   strategy_options=dict(GP_OPTIONS), seed=1)
            for _ in range(4):
                (trial,) = study.ask()
                study.tell(trial, objective(trial.prompt.vector))
        workers = _children(server.pid) - {server.pid}
        assert workers  # the pool's worker (and multiprocessing's resource tracker)
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0
        _wait_for(lambda: not _alive(workers), 30)  # nothing left running
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
        log.close()


def _alive(pids: set[int]) -> bool:
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    return True
        except OSError:
            continue
    return False


def test_each_study_keeps_a_home_worker_and_moves_only_to_even_the_load():
    pool = SuggestPool(2, make_worker=lambda: pytest.fail("no worker is started"))
    with pool._cond:
        assert pool._home_locked("a", [0, 1]) == 0  # the first study: worker 0
        assert pool._home_locked("b", [1]) == 1
        assert pool._home_locked("a", [1]) is None  # its home is busy: "a" waits
        pool._homes["c"] = 0
        assert pool._home_locked("a", [1]) is None  # 2 against 1: not worth a rebuild
        pool._homes["d"] = 0
        assert pool._home_locked("a", [1]) == 1  # 3 against 1: "a" moves for good
        assert pool._home_locked("a", [0, 1]) == 1
    pool.forget("a")
    assert "a" not in pool._homes
