"""A suggestion pool: engine computations in worker processes (or Ray actors).

Suggestions of expensive engines (GP fits, acquisition optimisation) are Python-heavy; run
in threads of the API server they share its GIL with gRPC handling and with each other.
A :class:`SuggestPool` runs them in ``workers`` separate workers instead, each on
``threads`` torch threads (``workers x threads <= cores``). The study runtime talks to it
through a :class:`~promptbo.server.remote_engine.RemoteEngine`; the workers run
:mod:`~promptbo.server.pool_worker`'s :class:`~promptbo.server.pool_worker.EngineHost`.

Scheduling (:meth:`SuggestPool.run`):

- requests wait in two FIFO queues, foreground suggestions before prefetch refills; the
  oldest request whose study is not running goes first, so no study starves another, and
  a study's jobs never run twice at once;
- each study has a home worker (the free one with the fewest studies at its first job)
  and its jobs wait for it, so its engine stays warm in one place; a study moves only
  to even out a free worker that has two studies fewer (a cold worker gets the recipe
  and the whole history); the pool mirrors each worker's LRU to know what it holds and
  which history batches it has seen (a worker that answers ``missing`` gets everything
  again);
- the caller's thread waits for its reply, polling its ``should_stop``: once it fires, a
  queued request is dropped and a running job is told to stop (the engine polls a shared
  flag), and the caller gets :class:`~promptbo.errors.CancelledError`;
- a worker found dead (killed, crashed: its process exited or its Ray actor is lost) is
  replaced and its job retried on a worker with the whole history, up to
  :data:`MAX_ATTEMPTS` times; an engine exception is raised to the caller, not retried.

Workers start lazily on the first job (or :meth:`SuggestPool.start`); :meth:`close` stops
them. :func:`make_pool` builds one for ``--suggest-pool process|ray``.
"""

from __future__ import annotations

import abc
import contextlib
import itertools
import logging
import multiprocessing
import pickle
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from promptbo.errors import CancelledError, InvalidArgumentError
from promptbo.server import compute
from promptbo.server.pool_worker import DEFAULT_CAPACITY, Job, Reply, process_main

log = logging.getLogger(__name__)

#: Times one job is tried on workers that die under it before the caller gets an error.
MAX_ATTEMPTS = 3
#: Seconds between two polls of the caller's ``should_stop`` while it waits.
POLL_SECONDS = 0.02
#: The kinds ``--suggest-pool`` accepts (``thread``: no pool, in-process threads).
POOL_KINDS = ("thread", "process", "ray")


class WorkerLost(Exception):
    """The worker died (its process exited, its actor was lost) before it replied."""


class WorkerHandle(abc.ABC):
    """The pool's end of one worker; one job at a time."""

    @abc.abstractmethod
    def submit(self, job_id: int, data: bytes) -> None:
        """Sends a pickled :class:`~promptbo.server.pool_worker.Job` (WorkerLost if the
        worker is gone)."""

    @abc.abstractmethod
    def wait(self, timeout: float) -> bytes | None:
        """The pickled reply to the submitted job, or None if none came within
        ``timeout`` seconds. Raises WorkerLost if the worker died."""

    @abc.abstractmethod
    def cancel(self, job_id: int) -> None:
        """Asks the worker to stop job ``job_id`` (its engine's ``should_stop`` fires)."""

    @abc.abstractmethod
    def alive(self) -> bool:
        """Whether the worker may still answer (False once known dead)."""

    @abc.abstractmethod
    def stop(self, timeout: float = 5.0) -> None:
        """Ends the worker, waiting up to ``timeout`` seconds before forcing it."""


class ProcessWorker(WorkerHandle):
    """A worker process (``spawn`` start method) fed through a pipe."""

    def __init__(self, threads: int, capacity: int, name: str = "promptbo-suggest") -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._cancel = ctx.RawValue("q", 0)
        self.process = ctx.Process(target=process_main, name=name, daemon=True,
                                   args=(child, self._cancel, threads, capacity))
        self.process.start()
        child.close()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def submit(self, job_id: int, data: bytes) -> None:
        self._cancel.value = 0
        try:
            self._conn.send_bytes(data)
        except (OSError, EOFError) as exc:
            raise WorkerLost(str(exc)) from exc

    def wait(self, timeout: float) -> bytes | None:
        try:
            if self._conn.poll(timeout):
                return self._conn.recv_bytes()
        except (OSError, EOFError) as exc:
            raise WorkerLost(str(exc)) from exc
        if not self.process.is_alive():
            raise WorkerLost(f"worker process exited with code {self.process.exitcode}")
        return None

    def cancel(self, job_id: int) -> None:
        self._cancel.value = job_id

    def alive(self) -> bool:
        return self.process.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        with contextlib.suppress(OSError, EOFError):
            self._conn.send_bytes(b"")
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout)
        self._conn.close()


@dataclass(eq=False)
class _Request:
    key: str
    background: bool
    worker: int | None = None
    attempts: int = 0


class SuggestPool:
    """``workers`` workers made by ``make_worker`` (see the module doc).

    Args:
        workers: how many workers (>= 1).
        make_worker: builds the handle of a new worker (called lazily, again for each
            replacement).
        capacity: study engines each worker keeps (its LRU's size).
        on_close: called once the workers are stopped (e.g. to leave a Ray it started).
    """

    def __init__(self, workers: int, make_worker: Callable[[], WorkerHandle],
                 capacity: int = DEFAULT_CAPACITY,
                 on_close: Callable[[], None] | None = None) -> None:
        if workers < 1:
            raise ValueError(f"a suggestion pool needs at least 1 worker, got {workers}")
        self.size = workers
        self.capacity = capacity
        self._make_worker = make_worker
        self._on_close = on_close
        self._cond = threading.Condition()
        self._handles: list[WorkerHandle | None] = [None] * workers
        self._busy = [False] * workers
        #: Per worker, the mirror of its LRU: study key -> history batches it has seen.
        self._held: list[OrderedDict[str, int]] = [OrderedDict() for _ in range(workers)]
        #: Each study's home worker (see :meth:`_home_locked`).
        self._homes: dict[str, int] = {}
        #: Per worker, studies it should drop with its next job (see :meth:`forget`).
        self._drop: list[set[str]] = [set() for _ in range(workers)]
        self._fg: deque[_Request] = deque()
        self._bg: deque[_Request] = deque()
        self._running: set[str] = set()
        self._ids = itertools.count(1)
        self._closed = False
        #: Jobs retried because their worker died.
        self.retried = 0
        #: Workers replaced after they died.
        self.replaced = 0
        #: History batches sent to workers.
        self.batches_shipped = 0
        #: Jobs answered (any status).
        self.jobs_done = 0

    # --- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        """Starts every worker not started yet (they load their libraries meanwhile)."""
        with self._cond:
            for i in range(self.size):
                if self._handles[i] is None and not self._closed:
                    self._handles[i] = self._make_worker()

    def close(self) -> None:
        """Stops every worker; waiting and later jobs fail with CancelledError."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            handles, self._handles = self._handles, [None] * self.size
            self._cond.notify_all()
        for h in handles:
            if h is not None:
                try:
                    h.stop()
                except Exception:
                    log.exception("stopping a suggestion worker failed")
        if self._on_close is not None:
            self._on_close()

    def handle(self, index: int) -> WorkerHandle | None:
        """Worker ``index``'s handle (None before it started); for tests and metrics."""
        return self._handles[index]

    def forget(self, key: str) -> None:
        """Study ``key`` is gone: every worker holding its engine drops it with its next
        job."""
        with self._cond:
            self._homes.pop(key, None)
            for i in range(self.size):
                if self._held[i].pop(key, None) is not None:
                    self._drop[i].add(key)

    # --- state for metrics --------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """``workers``, ``alive``, ``busy``, ``queued``, ``retried``, ``replaced``,
        ``batches_shipped``, ``jobs_done``."""
        with self._cond:
            handles = list(self._handles)
            return {
                "workers": self.size,
                "alive": sum(1 for h in handles if h is not None and h.alive()),
                "busy": sum(self._busy),
                "queued": len(self._fg) + len(self._bg),
                "retried": self.retried,
                "replaced": self.replaced,
                "batches_shipped": self.batches_shipped,
                "jobs_done": self.jobs_done,
            }

    # --- scheduling -------------------------------------------------------------------
    def _dispatch_locked(self) -> None:
        """Gives free workers to the oldest runnable requests. Caller holds the lock."""
        free = [i for i in range(self.size) if not self._busy[i]]
        if not free or self._closed:
            return
        for queue in (self._fg, self._bg):
            for req in list(queue):
                if not free:
                    return
                if req.key in self._running:
                    continue
                i = self._home_locked(req.key, free)
                if i is None:
                    continue  # its home worker is busy: it waits for it
                free.remove(i)
                queue.remove(req)
                self._busy[i] = True
                self._running.add(req.key)
                req.worker = i
        # notify_all by the caller

    def _home_locked(self, key: str, free: list[int]) -> int | None:
        """The worker that runs study ``key``'s job now, or None to wait for its home.

        Each study has a home worker, chosen at its first job as the free worker with the
        fewest studies, so its engine is built once and stays warm there. A study whose
        home is busy waits for it, unless a free worker has at least two studies fewer:
        the study then moves there for good (rebuilt once from its history), which
        evens the load out without moving studies back and forth."""
        counts = [0] * self.size
        for h in self._homes.values():
            counts[h] += 1
        home = self._homes.get(key)
        if home is not None and home in free:
            return home
        j = min(free, key=lambda w: (counts[w], w))
        if home is not None and counts[home] - counts[j] < 2:
            return None
        self._homes[key] = j
        return j

    def _ensure_worker_locked(self, i: int) -> WorkerHandle:
        h = self._handles[i]
        if h is None or not h.alive():
            if h is not None:
                self._replace_locked(i, h)
            h = self._handles[i] = self._make_worker()
        return h

    def _replace_locked(self, i: int, dead: WorkerHandle) -> None:
        self.replaced += 1
        self._held[i].clear()
        self._drop[i].clear()
        self._handles[i] = None
        threading.Thread(target=dead.stop, args=(1.0,), daemon=True).start()

    def _release(self, req: _Request) -> None:
        with self._cond:
            if req.worker is not None:
                self._busy[req.worker] = False
                req.worker = None
            self._running.discard(req.key)
            self._dispatch_locked()
            self._cond.notify_all()

    def _await_worker(self, req: _Request, should_stop: Callable[[], bool] | None,
                      front: bool = False) -> tuple[int, WorkerHandle, int | None]:
        """Queues ``req`` and waits for a worker: its index, handle and the batches of
        the study it has seen (None: it does not hold the engine)."""
        with self._cond:
            if self._closed:
                raise CancelledError("the suggestion pool is closed")
            queue = self._bg if req.background else self._fg
            queue.appendleft(req) if front else queue.append(req)
            self._dispatch_locked()
            self._cond.notify_all()
            while req.worker is None:
                if self._closed or (should_stop is not None and should_stop()):
                    queue.remove(req)
                    raise CancelledError("the suggestion was cancelled while it waited")
                self._cond.wait(POLL_SECONDS * 5)
            i = req.worker
            try:
                handle = self._ensure_worker_locked(i)
            except BaseException:
                self._busy[i] = False
                self._running.discard(req.key)
                req.worker = None
                raise
            held = self._held[i]
            seen = held.get(req.key)
            held[req.key] = -1 if seen is None else seen  # the worker touches it too
            held.move_to_end(req.key)
            while len(held) > self.capacity:
                held.popitem(last=False)
            return i, handle, seen

    def run(self, key: str, make_job: Callable[[int | None], Job],
            should_stop: Callable[[], bool] | None = None, background: bool = False) -> Reply:
        """Runs one suggestion of study ``key`` on a worker and returns its ``ok`` reply.

        ``make_job(seen)`` builds the job for a worker that has seen ``seen`` batches of
        the study's history (None: it lacks the engine; send the recipe and everything).
        ``background``: a prefetch refill (queued after foreground suggestions).

        Raises:
            CancelledError: ``should_stop`` fired (or the pool closed).
            Exception: the engine's own exception.
            RuntimeError: workers died under this job :data:`MAX_ATTEMPTS` times.
        """
        req = _Request(key, background)
        front = False
        while True:
            i, handle, seen = self._await_worker(req, should_stop, front)
            try:
                reply = self._run_on(i, handle, req, make_job, seen, should_stop)
            except WorkerLost as exc:
                req.attempts += 1
                with self._cond:
                    closing = self._closed
                    self.retried += 1
                    if self._handles[i] is handle:
                        self._replace_locked(i, handle)
                log.warning("suggestion worker %d died (%s); retrying the job elsewhere", i,
                            exc)
                self._release(req)
                if closing:
                    raise CancelledError("the suggestion pool is closed") from exc
                if req.attempts >= MAX_ATTEMPTS:
                    raise RuntimeError(
                        f"suggestion workers died {req.attempts} times under one job"
                    ) from exc
                front = True
                continue
            except BaseException:
                self._release(req)
                raise
            self._release(req)
            if reply.status == "cancelled":
                raise CancelledError("the suggestion was cancelled: its caller is gone")
            if reply.status == "failed":
                assert reply.error is not None
                raise reply.error
            return reply

    def _run_on(self, i: int, handle: WorkerHandle, req: _Request,
                make_job: Callable[[int | None], Job], seen: int | None,
                should_stop: Callable[[], bool] | None) -> Reply:
        for _ in range(2):  # a second time with everything if the worker lacks something
            job = make_job(seen if seen is None or seen >= 0 else None)
            job.job_id = next(self._ids)
            with self._cond:
                self.batches_shipped += len(job.batches)
                job.forget, self._drop[i] = sorted(self._drop[i] - {req.key}), set()
            handle.submit(job.job_id, pickle.dumps(job))
            cancelled = False
            while True:
                data = handle.wait(POLL_SECONDS)
                if data is not None:
                    break
                if not cancelled and should_stop is not None and should_stop():
                    handle.cancel(job.job_id)
                    cancelled = True
            reply: Reply = pickle.loads(data)
            with self._cond:
                self.jobs_done += 1
                held = self._held[i]
                if reply.seen is None:
                    held.pop(req.key, None)
                elif req.key in held:
                    held[req.key] = reply.seen
            if reply.status != "missing":
                return reply
            seen = None
        raise RuntimeError("a suggestion worker refused a job carrying the whole history")


def make_pool(kind: str, workers: int = 0, capacity: int = DEFAULT_CAPACITY,
              ray_address: str = "") -> SuggestPool | None:
    """The pool for ``--suggest-pool``: None for ``thread``; ``process``: worker
    processes; ``ray``: Ray actors (see :mod:`~promptbo.server.ray_pool`). ``workers``: 0
    for one per available core; each worker gets ``cores / workers`` torch threads."""
    if kind not in POOL_KINDS:
        raise InvalidArgumentError(
            f"unknown suggestion pool {kind!r}; choose one of {', '.join(POOL_KINDS)}"
        )
    if kind == "thread":
        return None
    n = compute.suggest_workers(workers)
    threads = compute.threads_per_worker(n)
    if kind == "ray":
        from promptbo.server.ray_pool import ray_worker_factory

        factory, leave = ray_worker_factory(threads, capacity, ray_address, workers=n)
        return SuggestPool(n, factory, capacity, on_close=leave)
    return SuggestPool(n, lambda: ProcessWorker(threads, capacity), capacity)


def wait_idle(pool: SuggestPool, timeout: float = 10.0) -> bool:
    """Waits until no job runs or waits (tests); True if it got there in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = pool.stats()
        if not s["busy"] and not s["queued"]:
            return True
        time.sleep(POLL_SECONDS)
    return False
