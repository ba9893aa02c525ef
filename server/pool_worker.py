"""The worker side of a suggestion pool: study engines replayed from their history.

A pool worker (a process of :class:`~promptbo.server.suggest_pool.SuggestPool`, or a Ray
actor of :mod:`~promptbo.server.ray_pool`) runs an :class:`EngineHost`: an LRU of study
engines, each built from the study's :class:`~promptbo.server.engine_recipe.EngineRecipe`
and fed the study's observations as the server's runtime observed them, batch by batch
(its *history*). A :class:`Job` asks for ``n`` suggestions of one study; it carries the
recipe only when the worker does not hold that study's engine, and only the history
batches the worker has not seen, so a warm worker gets a few new results, a cold one the
whole history. Fed the same batches in the same order, a replica makes the same calls as
the in-process engine and so suggests the same prompts.

Messages are pickled with :mod:`pickle` (tensors copied, never shared memory). The
protocol (the pool's side is in :mod:`~promptbo.server.suggest_pool`):

- :class:`Job` -> :class:`Reply` with ``status`` ``ok`` (candidates and the side
  information the runtime reads), ``cancelled`` (the caller's ``should_stop`` fired,
  forwarded as :meth:`EngineHost.run`'s ``should_stop``), ``failed`` (the engine raised:
  ``error``), or ``missing`` (the worker lacks the engine or batches before
  ``Job.start``: send again with the recipe and the whole history);
- every reply says how many batches the worker's engine has now seen (None: not held).
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from promptbo.errors import CancelledError
from promptbo.server import telemetry

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from promptbo.server.engine_recipe import EngineRecipe
    from promptbo.server.optim.base import Engine

log = logging.getLogger(__name__)

#: Study engines a worker keeps by default; the least recently used one is dropped.
DEFAULT_CAPACITY = 16


@dataclass(frozen=True)
class Batch:
    """One ``observe`` (``variances`` None) or ``observe_noisy`` call: candidates
    (`n x ...`, the engine's encoding), values `n`, and for ``observe_noisy`` variances
    `n` (NaN where unknown) and counts `n`."""

    candidates: Tensor
    values: Tensor
    variances: Tensor | None = None
    counts: Tensor | None = None


@dataclass
class Job:
    """``n`` suggestions of study ``key``.

    ``recipe``: set when the worker may not hold the engine; ``start``: the index in the
    study's history of ``batches[0]``; ``num_suggested``: the engine's count before this
    suggestion (it seeds the engine's random choices); ``pending``: encoded in-flight
    candidates or None.
    """

    job_id: int
    key: str
    n: int
    pending: Tensor | None
    num_suggested: int
    start: int
    batches: list[Batch]
    recipe: EngineRecipe | None = None
    #: Studies (keys) whose engines the worker drops first (deleted studies).
    forget: list[str] = field(default_factory=list)


@dataclass
class Reply:
    """The answer to job ``job_id`` (see the module doc for ``status``)."""

    job_id: int
    status: str
    #: Batches of history the worker's engine has seen after the job (None: not held).
    seen: int | None = None
    candidates: Tensor | None = None
    num_suggested: int = 0
    last_examples: list[int] | None = None
    weights: dict[str, float] | None = None
    counts: dict[str, int] = field(default_factory=dict)
    transferred: list[bool] = field(default_factory=list)
    error: BaseException | None = None
    #: Seconds of each GP fit the job ran (the pool reports them as the server's own).
    fits: list[float] = field(default_factory=list)


class _FitLog:
    """Collects the GP fit times the engines report (``telemetry.fit_timer``) in a
    worker, for the job's reply."""

    def __init__(self) -> None:
        self.fits: list[float] = []
        #: Whether a job runs (fits outside jobs are not kept).
        self.active = False

    def observe_suggestion(self, strategy: str, seconds: float) -> None:
        pass

    def observe_fit(self, strategy: str, seconds: float) -> None:
        if self.active:
            self.fits.append(seconds)

    def lease_expired(self, study: str, count: int) -> None:
        pass


_fit_log = _FitLog()


def row_keys(candidates: Tensor) -> list[bytes]:
    """One key per row, equal for rows equal after the runtime's decode/encode round trip
    (float rows compared as float32, integer rows as int64)."""
    t = candidates.detach().cpu()
    t = t.to(torch.float32) if t.is_floating_point() else t.to(torch.int64)
    return [row.numpy().tobytes() for row in t.reshape(t.shape[0], -1).contiguous()]


def dumps_reply(reply: Reply) -> bytes:
    """Pickles a reply; an error that does not pickle is sent as a RuntimeError."""
    try:
        return pickle.dumps(reply)
    except Exception:
        err = reply.error
        reply.error = RuntimeError(f"{type(err).__name__}: {err}")
        return pickle.dumps(reply)


def feed(engine: Engine, batch: Batch) -> None:
    """Replays one history batch as the runtime would have fed it: ``observe_noisy`` for a
    batch with noise where the engine has it, else ``observe``."""
    noisy = getattr(engine, "observe_noisy", None)
    if noisy is not None and batch.variances is not None:
        counts = batch.counts
        if counts is None:
            counts = torch.zeros(batch.values.shape[0], dtype=torch.long)
        noisy(batch.candidates, batch.values, batch.variances, counts)
    else:
        engine.observe(batch.candidates, batch.values)


class EngineHost:
    """A worker's study engines (at most ``capacity``, least recently used dropped)."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"an engine host holds at least 1 engine, got {capacity}")
        self.capacity = capacity
        #: Study key -> [engine, batches seen].
        self._engines: OrderedDict[str, list[Any]] = OrderedDict()

    def held(self) -> dict[str, int]:
        """Batches seen per held study (oldest use first)."""
        return {k: v[1] for k, v in self._engines.items()}

    def run(self, job: Job, should_stop: Callable[[], bool] | None = None) -> Reply:
        """Runs one job; never raises (failures are replies)."""
        if not telemetry.enabled():
            telemetry.add_observer(_fit_log)
        _fit_log.fits, _fit_log.active = [], True
        try:
            reply = self._run(job, should_stop)
        finally:
            _fit_log.active = False
        reply.fits, _fit_log.fits = _fit_log.fits, []
        return reply

    def _run(self, job: Job, should_stop: Callable[[], bool] | None) -> Reply:
        for key in job.forget:
            self._engines.pop(key, None)
        entry = self._engines.get(job.key)
        if entry is not None:
            self._engines.move_to_end(job.key)
        if entry is None or entry[1] < job.start:
            if job.recipe is None or job.start != 0:
                return Reply(job.job_id, "missing", seen=None if entry is None else entry[1])
            try:
                entry = [job.recipe.build(), 0]
            except Exception as exc:
                return Reply(job.job_id, "failed", error=exc)
            self._engines.pop(job.key, None)
            self._engines[job.key] = entry
            while len(self._engines) > self.capacity:
                self._engines.popitem(last=False)
        engine: Engine = entry[0]
        try:
            for batch in job.batches[entry[1] - job.start:]:
                entry[1] += 1  # a batch the engine refused is not offered again
                feed(engine, batch)
            engine.num_suggested = job.num_suggested
            engine.should_stop = should_stop
            try:
                cands = engine.suggest(job.n, job.pending)
            finally:
                engine.should_stop = None
        except CancelledError:
            return Reply(job.job_id, "cancelled", seen=entry[1])
        except Exception as exc:
            return Reply(job.job_id, "failed", seen=entry[1], error=exc)
        check = getattr(engine, "is_transferred", None)
        wanted = getattr(engine, "last_examples", None)
        return Reply(
            job.job_id, "ok", seen=entry[1], candidates=cands,
            num_suggested=engine.num_suggested,
            last_examples=None if wanted is None else [int(k) for k in wanted],
            weights=getattr(engine, "weights", None),
            counts=dict(getattr(engine, "counts", {})),
            transferred=list(check(cands)) if check is not None and len(cands) else [],
        )


def process_main(conn: Connection, cancel: Any, threads: int, capacity: int) -> None:
    """A pool worker process: reads pickled jobs from ``conn`` until it closes or an
    empty message arrives, answers each with a pickled reply. ``cancel`` (a shared
    64-bit integer) holds the id of the job the pool cancelled. Torch runs on ``threads``
    threads (fewer if ``OMP_NUM_THREADS`` says so)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server handles Ctrl-C and stops us
    cap = os.environ.get("OMP_NUM_THREADS", "")
    if cap.isdigit() and int(cap) > 0:  # the operator's own bound wins
        threads = min(threads, int(cap))
    torch.set_num_threads(max(1, threads))
    from promptbo.server.optim.base import _load_builtin

    _load_builtin()
    host = EngineHost(capacity)
    log.debug("suggestion worker %d ready (%d torch threads)", os.getpid(), threads)
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if not data:
            return
        job: Job = pickle.loads(data)
        def stop(job_id: int = job.job_id) -> bool:
            return bool(cancel.value == job_id)

        reply = host.run(job, stop)
        try:
            conn.send_bytes(dumps_reply(reply))
        except OSError:
            return
