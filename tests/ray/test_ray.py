"""Ray launcher and Ray Tune searcher on a local Ray instance (2 CPUs)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

import promptbo  # noqa: E402
from promptbo.server.app import ServerOptions, create_server  # noqa: E402

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
                 [str(HERE), os.environ.get("PYTHONPATH", "")])}})
    yield
    ray.shutdown()


@pytest.fixture
def server(tmp_path):
    srv, port, _ = create_server(f"sqlite:///{tmp_path / 'ray.db'}", ServerOptions(port=0))
    yield f"127.0.0.1:{port}"
    srv.stop(None).wait()


def make_study(address, name, budget, lease=2.0):
    with promptbo.Client(address) as c:
        return c.create_study(name, promptbo.SoftPromptSpace(1, 3), strategy="random",
                              max_trials=budget, lease_seconds=lease)


@pytest.mark.slow
def test_fleet_serves_study_scales_and_survives_actor_loss(ray_local, server):
    from promptbo.ray import WorkerFleet

    make_study(server, "fleet", 40)
    fleet = WorkerFleet(server, "fleet", "python", {"function": "objectives:negative_norm"},
                        num_workers=1, resources={"num_cpus": 0.5}, max_restarts=2).start()
    fleet.scale(2)
    assert fleet.size == 2
    # Kill one actor's process: Ray restarts it and reruns its loop; its trial comes back
    # through the lease.
    ray.kill(fleet.actors[0], no_restart=False)
    stats = fleet.wait(timeout=300)
    with promptbo.Client(server) as c:
        study = c.get_study("fleet")
        assert study.info.completed_count == 40 and study.done
        assert len({t.id for t in study.trials(state="completed")}) == 40
    assert sum(s["completed"] for s in stats) <= 40
    fleet.stop()
    assert fleet.size == 0


@pytest.mark.slow
def test_tune_searcher_drives_tune_trials(ray_local, server):
    from ray import tune

    from promptbo.ray import PromptboSearcher

    study = make_study(server, "tune", 6, lease=60)

    def trainable(config):
        v = np.asarray(config["vector"], dtype=np.float32)
        tune.report({"value": -float((v ** 2).sum())})

    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=PromptboSearcher(server, study.name), num_samples=6,
                                    max_concurrent_trials=2),
    )
    results = tuner.fit()
    assert len(results) == 6 and not results.errors
    with promptbo.Client(server) as c:
        s = c.get_study("tune")
        assert s.info.completed_count == 6
        assert all(t.client_id.startswith("tune-") for t in s.trials())
