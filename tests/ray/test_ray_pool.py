"""The suggestion pool on Ray actors, on a local Ray instance (2 CPUs)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from promptbo.server.domain import Prompt, SoftPromptSpace, StudySpec  # noqa: E402
from promptbo.server.ray_pool import RayWorker  # noqa: E402
from promptbo.server.runtime import StudyRuntime  # noqa: E402
from promptbo.server.suggest_pool import make_pool  # noqa: E402
from tests.service.pool_engines_helper import slow_engine  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray_pool():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
                 [str(ROOT), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}})
    pool = make_pool("ray", workers=1)
    assert pool is not None
    yield pool
    pool.close()
    ray.shutdown()


def drive(rt: StudyRuntime, steps: int) -> list[tuple[float, ...]]:
    out = []
    for _ in range(steps):
        (p,) = rt.suggest(1, [])
        rt.queue_observation([p], [-float(np.sum(np.square(p.vector)))])
        out.append(p.vector)
    return out


def test_ray_actors_suggest_as_in_process_and_a_lost_actor_is_replaced(ray_pool):
    spec = StudySpec(space=SoftPromptSpace(1, 2), strategy="slow", seed=5,
                     strategy_options={"delay": "0"})
    remote = StudyRuntime(spec, None, slow_engine, suggest_pool=ray_pool)
    local = StudyRuntime(spec, None, slow_engine)
    assert drive(remote, 3) == drive(local, 3)

    slow = StudySpec(space=SoftPromptSpace(1, 2), strategy="slow",
                     strategy_options={"delay": "2"})
    rt = StudyRuntime(slow, None, slow_engine, suggest_pool=ray_pool)
    rt.queue_observation([Prompt(vector=(0.1, 0.2))], [0.5])
    got: list = []
    asker = threading.Thread(target=lambda: got.append(rt.suggest(1, [])))
    asker.start()
    deadline = time.monotonic() + 60
    while ray_pool.stats()["busy"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.5)
    actor = ray_pool.handle(0)
    assert isinstance(actor, RayWorker)
    ray.kill(actor.actor, no_restart=True)
    asker.join(120)
    assert not asker.is_alive() and len(got) == 1 and len(got[0]) == 1
    stats = ray_pool.stats()
    assert stats["retried"] == 1 and stats["replaced"] == 1
    assert ray_pool.handle(0) is not actor


def test_more_actors_than_the_cluster_has_cpus_fail_at_startup(ray_pool):
    from promptbo.errors import FailedPreconditionError

    started = time.monotonic()
    with pytest.raises(FailedPreconditionError, match=r"--suggest-workers") as info:
        make_pool("ray", workers=3)  # 3 actors of 1 CPU on a 2-CPU cluster
    assert "of its 2 CPUs" in str(info.value) and "needs 3" in str(info.value)
    assert time.monotonic() - started < 10  # no wait: the cluster can never place them


def test_actors_without_free_cpus_fail_after_a_bounded_wait(ray_pool):
    from promptbo.errors import FailedPreconditionError
    from promptbo.server.ray_pool import ray_worker_factory

    assert isinstance(ray_pool.handle(0), RayWorker)  # the module's pool holds 1 CPU
    deadline = time.monotonic() + 60
    while ray.available_resources().get("CPU", 0) > 1:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    started = time.monotonic()
    with pytest.raises(FailedPreconditionError, match=r"1 of its 2 CPUs free after waiting"):
        ray_worker_factory(1, 4, workers=2, wait_seconds=1.0)
    assert 1.0 <= time.monotonic() - started < 10
    assert ray.is_initialized()  # a Ray it did not start is left connected
