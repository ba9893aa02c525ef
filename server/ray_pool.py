"""Suggestion pool workers as Ray actors (``promptbo serve --suggest-pool ray``).

Each worker of the :class:`~promptbo.server.suggest_pool.SuggestPool` is one actor
running the same :class:`~promptbo.server.pool_worker.EngineHost` as a worker process. The
actor is threaded (two calls at once) so that :meth:`_HostActor.cancel` reaches it while
:meth:`_HostActor.run` computes; the engine's ``should_stop`` reads the flag it sets. A
lost actor (its process killed, its node gone) surfaces as a Ray actor error on the
job's result: the pool replaces the actor and retries the job on a new one with the whole
history.

Ray is the ``promptbo[ray]`` extra; it is imported only when this pool is used. The pool
connects to ``ray_address`` or, with none, to the Ray this process already initialized,
or starts a local one. It then checks that the cluster has free CPUs for all of its
actors, waiting at most :data:`RAY_CPU_WAIT_SECONDS` for them (other jobs finishing, an
autoscaler adding nodes): an actor Ray cannot place would otherwise stay pending, and
every suggestion sent to it wait, for ever. Without them the server does not start
(FailedPreconditionError naming ``--suggest-workers`` and the cluster's CPUs).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import time
from collections.abc import Callable
from typing import Any

import torch

from promptbo.errors import FailedPreconditionError
from promptbo.server.pool_worker import EngineHost, dumps_reply
from promptbo.server.suggest_pool import WorkerHandle, WorkerLost

#: CPUs each actor reserves from the Ray cluster.
ACTOR_CPUS = 1.0
#: How long the pool waits at startup for the cluster to have CPUs free for its actors.
RAY_CPU_WAIT_SECONDS = 30.0


class _HostActor:
    """The body of a worker actor (wrapped with ``ray.remote`` by the factory)."""

    def __init__(self, threads: int, capacity: int) -> None:
        torch.set_num_threads(max(1, threads))
        from promptbo.server.optim.base import _load_builtin

        _load_builtin()
        self.host = EngineHost(capacity)
        self.cancelled = 0

    def run(self, data: bytes) -> bytes:
        job = pickle.loads(data)
        return dumps_reply(self.host.run(job, lambda: self.cancelled == job.job_id))

    def cancel(self, job_id: int) -> None:
        self.cancelled = job_id

    def pid(self) -> int:
        return os.getpid()


class RayWorker(WorkerHandle):
    """One actor; a job is one ``run`` call whose result the pool polls."""

    def __init__(self, actor_class: Any, threads: int, capacity: int) -> None:
        import ray

        self._ray = ray
        self.actor = actor_class.remote(threads, capacity)
        self._ref: Any = None
        self._lost = False

    def submit(self, job_id: int, data: bytes) -> None:
        if self._lost:
            raise WorkerLost("the actor is gone")
        self._ref = self.actor.run.remote(data)

    def wait(self, timeout: float) -> bytes | None:
        ray = self._ray
        ready, _ = ray.wait([self._ref], timeout=timeout)
        if not ready:
            return None
        try:
            return bytes(ray.get(self._ref))
        except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                ray.exceptions.ObjectLostError) as exc:
            self._lost = True
            raise WorkerLost(str(exc).splitlines()[0] if str(exc) else repr(exc)) from exc

    def cancel(self, job_id: int) -> None:
        self.actor.cancel.remote(job_id)

    def alive(self) -> bool:
        return not self._lost

    def stop(self, timeout: float = 5.0) -> None:
        with contextlib.suppress(Exception):  # already gone, or Ray shut down first
            self._ray.kill(self.actor, no_restart=True)


def ray_worker_factory(
    threads: int, capacity: int, address: str = "", cpus: float = ACTOR_CPUS,
    workers: int = 0, wait_seconds: float = RAY_CPU_WAIT_SECONDS,
) -> tuple[Callable[[], WorkerHandle], Callable[[], None] | None]:
    """Connects to Ray (``address``, the already initialized one, or a new local one).
    Returns a maker of worker actors, each reserving ``cpus`` CPUs, and what disconnects
    from Ray if this call connected (None if Ray was initialized before). With
    ``workers``, first waits up to ``wait_seconds`` for that many actors' CPUs to be free
    in the cluster (see :func:`wait_for_cpus`)."""
    import ray

    leave = None
    if not ray.is_initialized():
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False)
        leave = ray.shutdown
    if workers:
        try:
            wait_for_cpus(workers * cpus, wait_seconds, workers)
        except BaseException:
            if leave is not None:
                leave()
            raise
    actor_class: Any = ray.remote(_HostActor).options(
        max_concurrency=2, num_cpus=cpus, max_restarts=0)
    return (lambda: RayWorker(actor_class, threads, capacity)), leave


def wait_for_cpus(needed: float, wait_seconds: float, workers: int) -> None:
    """Returns once the connected Ray cluster has ``needed`` CPUs free (for ``workers``
    actors); FailedPreconditionError after ``wait_seconds`` without, at once if the
    whole cluster has fewer."""
    import ray

    deadline = time.monotonic() + wait_seconds
    while True:
        total = float(ray.cluster_resources().get("CPU", 0.0))
        free = float(ray.available_resources().get("CPU", 0.0))
        if free >= needed:
            return
        if total < needed or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    waited = "" if total < needed else f" after waiting {wait_seconds:g} s"
    raise FailedPreconditionError(
        f"the Ray cluster has {free:g} of its {total:g} CPUs free{waited}, but the "
        f"suggestion pool needs {needed:g} for {workers} actors ({needed / workers:g} CPU each); "
        "start the server with fewer --suggest-workers, or give the cluster more CPUs"
    )
