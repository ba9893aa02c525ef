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

    make_study(server, "fleet", 40, lease=10.0)
    fleet = WorkerFleet(server, "fleet", "python", {"function": "objectives:negative_norm"},
                        num_workers=1, resources={"num_cpus": 0.5}, max_restarts=2).start()
    fleet.scale(2)
    assert fleet.size == 2
    clients = [f"ray-{a._actor_id.hex()[:12]}" for a in fleet.actors]  # each actor's client id
    # Kill one actor's process: Ray restarts it (same actor, same client id) and reruns its
    # loop, which gets the trial it held back first.
    ray.kill(fleet.actors[0], no_restart=False)
    stats = fleet.wait(timeout=300)
    with promptbo.Client(server) as c:
        study = c.get_study("fleet")
        trials = list(study.trials())
        info = study.info
    # Every trial handed out was completed exactly once, none lost, none added past the
    # budget: ids 1..40, all completed, none failed or left active.
    assert study.done and (info.completed_count, info.active_count, info.failed_count) == (
        40, 0, 0)
    assert [t.id for t in trials] == list(range(1, 41))
    assert all(t.state == "completed" for t in trials)
    # Each value is the objective (objectives.negative_norm) of that trial's own prompt.
    for t in trials:
        assert t.value == pytest.approx(-float((t.prompt.vector ** 2).sum()), rel=1e-6), t.id
    # Every completion came from the fleet; the actor never killed reports exactly the
    # trials it completed, the restarted one at most its own (its first run's are not in
    # its rerun's stats).
    done_by = {cid: sum(t.client_id == cid for t in trials) for cid in clients}
    assert sum(done_by.values()) == 40
    assert stats[1]["completed"] == done_by[clients[1]]
    assert stats[0]["completed"] <= done_by[clients[0]]
    assert all(s["failed"] == 0 for s in stats)
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
        trials = list(s.trials())
    # One promptbo trial per Tune trial, each completed once with what its Tune trial
    # reported, which is the objective of its prompt.
    assert s.info.completed_count == 6 and s.info.failed_count == 0
    assert [t.id for t in trials] == list(range(1, 7))
    assert all(t.state == "completed" for t in trials)
    assert len({t.client_id for t in trials}) == 6
    assert all(t.client_id.startswith("tune-") for t in trials)
    for t in trials:
        assert t.value == pytest.approx(-float((t.prompt.vector ** 2).sum()), rel=1e-6)
    reported = sorted(r.metrics["value"] for r in results)
    assert reported == pytest.approx(sorted(t.value for t in trials), rel=1e-6)
