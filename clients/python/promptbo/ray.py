"""Evaluator fleets on Ray, and a Ray Tune searcher backed by a promptbo study.

Needs the ``ray`` extra. :class:`WorkerFleet` starts N promptbo workers as Ray actors on
an existing cluster (``ray.init(address=...)`` first), each with its own resource request
(e.g. one GPU), all serving one study on a promptbo server::

    fleet = WorkerFleet("10.0.0.5:50051", "sst2", "hf-causal",
                        {"model": "roberta-large", "data": "/data/sst2"},
                        num_workers=8, resources={"num_gpus": 1})
    fleet.start(); fleet.scale(16); stats = fleet.wait()

Ray restarts a failed actor (``max_restarts``) and reruns its loop; the trial the actor
held comes back to the fleet through the trial's lease on the server.

:class:`PromptboSearcher` lets Ray Tune draw its trials from a promptbo study: each Tune
trial id becomes the promptbo ``client_id`` of the trial it evaluates.
"""

from __future__ import annotations

import time
from typing import Any

import ray
from ray.tune.search import Searcher

from promptbo.client import Client, Study
from promptbo.errors import PromptboError


class _WorkerActor:
    """One promptbo worker inside a Ray actor (threaded: ``stop`` runs beside ``run``)."""

    def __init__(self, address, study, evaluator, options, client_kwargs, batch_size):
        from promptbo.evaluators import create_evaluator

        actor_id = ray.get_runtime_context().get_actor_id()
        if actor_id is None:
            raise RuntimeError("a promptbo Ray worker runs only inside a Ray actor")
        self.client = Client(address, client_id=f"ray-{actor_id[:12]}", **client_kwargs)
        self.study = self.client.get_study(study)
        self.evaluator = create_evaluator(evaluator, **(options or {}))
        self.batch_size = batch_size
        self.worker = None

    def run(self) -> dict[str, Any]:
        from promptbo.worker import Worker

        self.worker = Worker(self.study, self.evaluator, batch_size=self.batch_size)
        stats = self.worker.run()
        return {"completed": stats.completed, "failed": stats.failed,
                "best_value": stats.best_value, "seconds": stats.seconds}

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()


class WorkerFleet:
    """N promptbo workers as Ray actors serving one study.

    Args:
        address: the promptbo server's ``host:port`` as reachable from the cluster's nodes.
        study: the study to serve (it must exist).
        evaluator: evaluator name; ``options`` its keyword options.
        num_workers: actors to start.
        resources: each actor's Ray resource request, e.g. ``{"num_gpus": 1}``
            (default one CPU).
        max_restarts: how often Ray restarts a failed actor (-1: always).
        client_kwargs: passed to :class:`promptbo.Client` (``token``, ``ca_file``...).
    """

    def __init__(
        self,
        address: str,
        study: str,
        evaluator: str,
        options: dict[str, Any] | None = None,
        *,
        num_workers: int = 1,
        resources: dict[str, float] | None = None,
        batch_size: int = 1,
        max_restarts: int = 3,
        client_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.args = (address, study, evaluator, dict(options or {}), dict(client_kwargs or {}),
                     batch_size)
        self.num_workers = num_workers
        self.resources = dict(resources or {"num_cpus": 1})
        self.max_restarts = max_restarts
        self._actor_cls: Any = ray.remote(_WorkerActor).options(
            max_restarts=max_restarts, max_task_retries=-1 if max_restarts else 0,
            max_concurrency=2, **self.resources,
        )
        self.actors: list = []
        self.runs: list = []

    def start(self) -> WorkerFleet:
        self.scale(self.num_workers)
        return self

    @property
    def size(self) -> int:
        return len(self.actors)

    def scale(self, n: int) -> None:
        """Grows or shrinks the fleet to ``n`` actors; removed ones finish their batch."""
        if n < 0:
            raise ValueError("a fleet has at least 0 workers")
        while len(self.actors) < n:
            actor = self._actor_cls.remote(*self.args)
            self.actors.append(actor)
            self.runs.append(actor.run.remote())
        while len(self.actors) > n:
            actor = self.actors.pop()
            run = self.runs.pop()
            ray.get(actor.stop.remote())
            ray.get(run)
            ray.kill(actor)

    def wait(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """Waits until every actor's loop ends (the study's budget is used up)."""
        stats = ray.get(self.runs, timeout=timeout)
        return stats

    def stop(self) -> None:
        self.scale(0)


class PromptboSearcher(Searcher):
    """A Ray Tune searcher whose suggestions are the trials of a promptbo study.

    Each suggested config holds ``prompt_text``, ``token_ids`` and ``vector`` (soft
    prompts, as nested lists) plus ``promptbo_trial``. The Tune trial's final
    ``result[metric]`` is told to the study; an errored Tune trial fails its trial.
    ``mode`` defaults to the study's goal. The searcher pickles without its connection
    (Tune checkpoints it), so it takes the server ``address`` rather than a client.
    """

    def __init__(self, address: str, study: str, metric: str = "value",
                 mode: str | None = None, **client_kwargs: Any) -> None:
        self.address, self.study_name, self.client_kwargs = address, study, client_kwargs
        self._study: Study | None = None
        if mode is None:
            mode = "min" if self.study.info.spec.goal == 2 else "max"
        super().__init__(metric=metric, mode=mode)
        self._trials: dict[str, int] = {}

    @property
    def study(self) -> Study:
        if self._study is None:
            self._study = Client(self.address, **self.client_kwargs).get_study(self.study_name)
        return self._study

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_study"] = None
        return state

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        trials = self.study.ask(1, client_id=f"tune-{trial_id}")
        if not trials:
            # Ray's FINISHED sentinel is a str, although Searcher.suggest is typed Optional[Dict].
            return Searcher.FINISHED if self.study.done else None  # type: ignore[return-value]
        t = trials[0]
        self._trials[trial_id] = t.id
        vector = None if t.prompt.vector is None else t.prompt.vector.tolist()
        return {"promptbo_trial": t.id, "prompt_text": t.prompt.text,
                "token_ids": list(t.prompt.token_ids), "vector": vector}

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        tid = self._trials.pop(trial_id, None)
        if tid is None:
            return
        cid = f"tune-{trial_id}"
        for attempt in range(5):
            try:
                if error or not result or self.metric not in result:
                    self.study.fail(tid, "the Ray Tune trial errored or reported no "
                                         f"{self.metric!r}", client_id=cid)
                else:
                    metrics = {k: float(v) for k, v in result.items()
                               if k in ("accuracy", "loss") and isinstance(v, (int, float))}
                    self.study.tell(tid, float(result[self.metric]), metrics, client_id=cid)
                return
            except PromptboError:
                if attempt == 4:
                    raise
                time.sleep(0.5 * 2**attempt)
