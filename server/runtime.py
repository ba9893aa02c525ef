"""A study's in-memory runtime: its engine, prompt encoding, and prefetched suggestions.

:class:`StudyRuntime` wraps one :class:`~promptbo.server.optim.Engine` for the study
manager. It converts stored prompts to engine tensors and back (hard prompts: the model's
token ids <-> vocabulary rows; soft prompts: flat float vectors; pool prompts: pool
indices, as `n x 1` LongTensors), queues observations so
that recording a result never waits for a running suggestion, and can keep a few
suggestions ready, computed in the background, so that ``SuggestTrials`` returns at once.

Locks, always taken in this order: the study lock (owned, taken and released by
:class:`~promptbo.server.study_cache.StudyCache`), then ``engine_lock``, then a compute
slot (:class:`~promptbo.server.compute.ComputeSlots`, shared by the server's studies),
then ``inbox_lock`` (a leaf). The background refill never holds the study lock while it
holds the engine lock. With a suggestion pool (:mod:`~promptbo.server.suggest_pool`), an
expensive engine is a :class:`~promptbo.server.remote_engine.RemoteEngine` built from the
same :class:`~promptbo.server.engine_recipe.EngineRecipe`; its computations take no
compute slot (the pool bounds them) and run in the pool's workers.

Ready suggestions carry the :class:`~promptbo.server.prefetch.DataVersion` they were
computed on and are handed out only while :func:`~promptbo.server.prefetch.still_valid`
says so.

With prefetching on, which suggestion a worker gets depends on timing, so runs are
reproducible only with ``prefetch=0`` (the manager's default).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

import numpy as np
import torch

from promptbo.errors import CancelledError
from promptbo.server import telemetry
from promptbo.server.compute import ComputeSlots
from promptbo.server.domain import (
    HardPromptSpace,
    Pool,
    PoolSpace,
    Prompt,
    SoftPromptSpace,
    StudySpec,
    Vocabulary,
)
from promptbo.server.engine_recipe import EngineRecipe
from promptbo.server.prefetch import DataVersion, Pace, still_valid
from promptbo.server.remote_engine import RemoteEngine
from promptbo.server.transfer_sources import LoadedSource

if TYPE_CHECKING:
    from promptbo.server.optim.base import Engine
    from promptbo.server.optim.transfer import SourceData
    from promptbo.server.suggest_pool import SuggestPool

log = logging.getLogger(__name__)


class StudyRuntime:
    """The engine of one study and what surrounds it.

    Args:
        spec: the study's spec.
        vocab: its vocabulary (hard prompts), its pool (pool prompts) or None (soft prompts).
        engine_factory: ``make_engine``-compatible callable.
        sources, source_notes: the study's transfer sources and notes on unusable ones.
        slots: bounds the server's concurrent engine computations (None: unbounded).
        suggest_pool: computes the suggestions of an expensive engine in worker processes
            (a :class:`~promptbo.server.remote_engine.RemoteEngine` then stands in for the
            engine; ``slots`` are not taken, the pool bounds its own computations); None:
            in this process.
    """

    def __init__(self, spec: StudySpec, vocab: Vocabulary | Pool | None,
                 engine_factory: Callable, sources: Sequence[LoadedSource] = (),
                 source_notes: dict[str, str] | None = None,
                 slots: ComputeSlots | None = None,
                 suggest_pool: SuggestPool | None = None):
        self.spec = spec
        #: The strategy's name, as telemetry labels it.
        self.strategy = spec.strategy or "gp"
        self.pool = vocab if isinstance(vocab, Pool) else None
        vocab = None if isinstance(vocab, Pool) else vocab
        self.vocab = vocab
        self.row_of: dict[int, int] = (
            {} if vocab is None else {tid: row for row, tid in enumerate(vocab.token_ids)}
        )
        #: Why a transfer source is not used (by name); see :mod:`..transfer_sources`.
        self.source_notes = dict(source_notes or {})
        #: Builds the study's engine, here or on a suggestion pool's worker.
        self.recipe = EngineRecipe(
            space=spec.space, strategy=spec.strategy, options=dict(spec.strategy_options),
            seed=spec.seed,
            embeddings=self.pool.embeddings if self.pool is not None
            else None if vocab is None else vocab.embeddings,
            pool_size=spec.pool_size, examples_per_trial=spec.examples_per_trial,
            transfer=spec.transfer, transfer_from=bool(spec.transfer_from),
            sources=[self._source_data(s) for s in sources] if spec.transfer_from else (),
            factory=engine_factory,
        )
        engine = self.recipe.build()
        #: Whether suggestions are computed by ``suggest_pool`` (expensive engines only).
        self.remote = suggest_pool is not None and not engine.cheap
        if suggest_pool is not None and self.remote:
            engine = RemoteEngine(self.recipe, suggest_pool, probe=engine)
        self.engine: Engine = engine
        self.engine_lock = threading.Lock()
        self.inbox_lock = threading.Lock()
        self._inbox: list[tuple[Prompt, float, float | None, int]] = []
        self._slots = slots
        #: Prefetched prompts, computed on data version :attr:`ready_version`; read them
        #: through :meth:`ready_count` and :meth:`take_ready`, which drop stale ones.
        self.ready: list[Prompt] = []
        self.ready_version = DataVersion()
        #: Bumped by :meth:`queue_observation` with ``invalidate`` (see :attr:`version`).
        self._epoch = 0
        self._queued = 0
        #: The data version the engine has drained (set by ``_drain``).
        self.engine_version = DataVersion()
        #: Prefetched batches dropped because new data made them stale.
        self.discarded = 0
        #: A finished refill's prompts, kept (under ``inbox_lock``) between the moment it
        #: releases the engine and the moment it stores them, so that a foreground
        #: suggestion that waited for the engine takes them instead of computing again;
        #: computed on :attr:`_handoff_version`.
        self._handoff: list[Prompt] = []
        self._handoff_version = DataVersion()
        #: Measured suggestion and evaluation times (they set the prefetch depth).
        self.pace = Pace()
        #: The prefetch depth last chosen (see :func:`~promptbo.server.prefetch.adaptive_depth`).
        self.depth = 0
        #: Examples the engine asked for, per suggested prompt's key (multi-fidelity
        #: engines set ``last_examples``); the manager pops them when it makes the trial.
        self.requested: dict[tuple, int] = {}
        self.refilling = False
        #: Keys of the prompts handed out since the running refill took its snapshot
        #: (None when no refill runs); the refill's result leaves them out.
        self.issued: set[tuple] | None = None
        self.num_observed = 0

    # --- observations -----------------------------------------------------------------
    def queue_observation(
        self,
        prompts: Sequence[Prompt],
        values: Sequence[float],
        variances: Sequence[float | None] | None = None,
        counts: Sequence[int] | None = None,
        invalidate: bool = False,
    ) -> None:
        """Records results for the engine; they reach it before its next suggestion.
        ``variances`` (noise variance of each value, None where unknown) and ``counts``
        (examples each value averages, 0 where unknown) reach engines that take them
        (``observe_noisy``). Each result advances :attr:`version`; ``invalidate``
        (``AddTrials``) also starts a new epoch, so no suggestion computed before is
        handed out."""
        n = len(prompts)
        var = list(variances) if variances is not None else [None] * n
        cnt = list(counts) if counts is not None else [0] * n
        with self.inbox_lock:
            self._inbox.extend(zip(prompts, values, var, cnt, strict=True))
            self._queued += n
            if invalidate:
                self._epoch += 1

    @property
    def version(self) -> DataVersion:
        """The version of the study's data: what a suggestion computed now would see."""
        with self.inbox_lock:
            return DataVersion(self._epoch, self._queued)

    def _drain(self) -> None:
        """Feeds queued observations to the engine. Caller holds ``engine_lock``."""
        with self.inbox_lock:
            items, self._inbox = self._inbox, []
            self.engine_version = DataVersion(self._epoch, self._queued)
        if items:
            x = self.encode([it[0] for it in items])
            y = torch.as_tensor([it[1] for it in items], dtype=torch.float64)
            noisy = getattr(self.engine, "observe_noisy", None)
            with telemetry.strategy_context(self.strategy):  # engines that fit on observe
                if noisy is not None:
                    var = torch.as_tensor(
                        [math.nan if it[2] is None else it[2] for it in items],
                        dtype=torch.float64,
                    )
                    cnt = torch.as_tensor([it[3] for it in items], dtype=torch.long)
                    noisy(x, y, var, cnt)
                else:
                    self.engine.observe(x, y)
            self.num_observed += len(items)

    def _suggest_locked(self, n: int, pending: Sequence[Prompt],
                        cancelled: Callable[[], bool] | None = None,
                        background: bool = False) -> list[Prompt]:
        """The engine's suggestions, remembering the examples it asks for. Caller holds
        ``engine_lock``; ``cancelled`` is polled while the engine computes;
        ``background``: a prefetch refill (a pool queues it after foreground ones)."""
        engine = self.engine
        engine.should_stop = cancelled
        if isinstance(engine, RemoteEngine):
            engine.background = background
        t0 = time.perf_counter()
        try:
            with telemetry.strategy_context(self.strategy):
                prompts = self.decode(engine.suggest(n, self._pending(pending)))
        finally:
            engine.should_stop = None
            if isinstance(engine, RemoteEngine):
                engine.background = False
        seconds = time.perf_counter() - t0
        self.pace.suggested(seconds)
        telemetry.observe_suggestion(self.strategy, seconds)
        wanted = getattr(self.engine, "last_examples", None)
        if wanted is not None:
            for p, k in zip(prompts, wanted, strict=True):
                self.requested[p.key()] = int(k)
        return prompts

    # --- suggestions ------------------------------------------------------------------
    def suggest(self, n: int, pending: Sequence[Prompt],
                cancelled: Callable[[], bool] | None = None) -> list[Prompt]:
        """``n`` new prompts, none equal to a pending one (hard prompts). ``cancelled``
        is polled while the engine computes (see ``Engine.should_stop``).

        A suggestion that waited for a refill holding the engine first takes that refill's
        prompts (while they are still valid) and computes only the rest: the refill's work
        is used, not thrown away."""
        with self.engine_lock:
            taken = self._take_handoff(n, pending)
            if len(taken) == n:
                return taken
            with self._slot():
                self._drain()
                return taken + self._suggest_locked(n - len(taken), [*pending, *taken],
                                                    cancelled)

    def _take_handoff(self, n: int, pending: Sequence[Prompt]) -> list[Prompt]:
        """Up to ``n`` of a finished refill's prompts that are still valid and not pending;
        they leave the hand-off. ``n`` < 0: all of them."""
        with self.inbox_lock:
            if not self._handoff:
                return []
            if not still_valid(self._handoff_version, DataVersion(self._epoch, self._queued)):
                self._handoff = []
                return []
            busy = {p.key() for p in pending}
            taken: list[Prompt] = []
            keep: list[Prompt] = []
            for p in self._handoff:
                if (n < 0 or len(taken) < n) and p.key() not in busy:
                    taken.append(p)
                    busy.add(p.key())
                else:
                    keep.append(p)
            self._handoff = keep
            return taken

    def _yield(self, version: DataVersion) -> bool:
        """Whether a refill computing on ``version`` should stop: new data made it stale.
        A foreground suggestion waiting for the engine does not stop it; it takes the
        refill's prompts when it finishes (see :meth:`suggest`)."""
        return not still_valid(version, self.version)

    def _slot(self) -> AbstractContextManager[None]:
        return nullcontext() if self._slots is None or self.remote else self._slots.hold()

    def ready_count(self) -> int:
        """Prefetched prompts that may still be handed out; a stale batch is dropped.
        Caller holds the study lock."""
        if self.ready and not still_valid(self.ready_version, self.version):
            self.ready = []
            self.discarded += 1
        return len(self.ready)

    def take_ready(self, n: int, pending: Sequence[Prompt]) -> list[Prompt]:
        """Up to ``n`` prefetched prompts, skipping any that became pending meanwhile; none
        if new data made them stale. Caller holds the study lock."""
        taken: list[Prompt] = []
        if not self.ready_count():
            return taken
        busy = {p.key() for p in pending}
        keep: list[Prompt] = []
        for p in self.ready:
            if len(taken) < n and p.key() not in busy:
                taken.append(p)
                busy.add(p.key())
            elif p.key() not in busy:
                keep.append(p)
        self.ready = keep
        return taken

    def refill(self, count: int, snapshot: Callable[[], list[Prompt]],
               store: Callable[[list[Prompt] | None, DataVersion], None]) -> None:
        """Computes ``count`` suggestions in the background thread that calls it.

        ``snapshot`` (takes the study lock) returns the pending prompts; ``store`` (takes
        the study lock) gets the result and the data version it was computed on: the
        prompts a foreground suggestion did not take from the hand-off meanwhile (see
        :meth:`suggest`), or None if the computation was cancelled because new data made
        it stale. A failed one stores no prompts. Never holds the study lock with the
        engine's.
        """
        version = self.version
        try:
            pending = snapshot()
            with self.engine_lock, self._slot():
                self._drain()
                version = self.engine_version
                prompts = self._suggest_locked(count, pending, lambda: self._yield(version),
                                               background=True)
                with self.inbox_lock:
                    self._handoff, self._handoff_version = list(prompts), version
            store(self._take_handoff(-1, ()), version)
        except CancelledError:
            log.debug("a prefetch went stale")
            store(None, version)
        except Exception:  # a failed prefetch only costs latency; the sync path still works
            log.exception("prefetching suggestions failed")
            store([], version)

    @property
    def cheap(self) -> bool:
        """Whether the engine's suggestions cost microseconds (see ``Engine.cheap``): they
        are then computed inline, never prefetched."""
        return self.engine.cheap

    def _pending(self, pending: Sequence[Prompt]) -> torch.Tensor | None:
        return self.encode(pending) if pending and self.engine.uses_pending else None

    # --- transfer ---------------------------------------------------------------------
    def _source_data(self, source: LoadedSource) -> SourceData:
        from promptbo.server.optim.transfer import SourceData

        if self.vocab is not None:  # the same vocabulary, but be safe with stray ids
            pairs = [(p, v) for p, v in zip(source.prompts, source.values, strict=True)
                     if all(t in self.row_of for t in p.token_ids)]
        else:
            pairs = list(zip(source.prompts, source.values, strict=True))
        space = self.spec.space
        if pairs:
            encoded = self.encode([p for p, _ in pairs])
        elif isinstance(space, SoftPromptSpace):
            encoded = torch.empty(0, space.size, dtype=torch.float32)
        elif isinstance(space, HardPromptSpace):
            encoded = torch.empty(0, space.prompt_length, dtype=torch.long)
        else:  # a pool: n x 1 indices
            encoded = torch.empty(0, 1, dtype=torch.long)
        values = torch.tensor([v for _, v in pairs], dtype=torch.float64)
        if source.embeddings is not None:  # another pool: the engine maps its candidates
            emb = torch.as_tensor(np.asarray(source.embeddings, dtype=np.float32))
            return SourceData(source.name, encoded, values, emb)
        return SourceData(source.name, encoded, values)

    def transferred(self, prompts: Sequence[Prompt]) -> list[bool]:
        """Whether each prompt was handed out as a transfer source's prompt."""
        check = getattr(self.engine, "is_transferred", None)
        if check is None or not prompts:
            return [False] * len(prompts)
        return check(self.encode(prompts))

    def transfer_weights(self) -> tuple[dict[str, float] | None, dict[str, int]]:
        """The sources' current weights (None before the first model) and trial counts."""
        if not self.spec.transfer_from:
            return None, {}
        return getattr(self.engine, "weights", None), dict(getattr(self.engine, "counts", {}))

    # --- encoding ---------------------------------------------------------------------
    def encode(self, prompts: Sequence[Prompt]) -> torch.Tensor:
        """Hard: LongTensor `n x L` of vocabulary rows; soft: float tensor `n x (L*D)`;
        pool: LongTensor `n x 1` of pool indices."""
        if isinstance(self.spec.space, PoolSpace):
            return torch.tensor([[p.pool_index] for p in prompts], dtype=torch.long)
        if isinstance(self.spec.space, SoftPromptSpace):
            return torch.tensor(np.array([p.vector for p in prompts], dtype=np.float32))
        rows = [[self.row_of[tid] for tid in p.token_ids] for p in prompts]
        return torch.tensor(rows, dtype=torch.long)

    def decode(self, candidates: torch.Tensor) -> list[Prompt]:
        if isinstance(self.spec.space, PoolSpace):
            return self.decode_pool(candidates.reshape(-1).tolist())
        if isinstance(self.spec.space, SoftPromptSpace):
            arr = candidates.detach().cpu().numpy().astype(np.float32)
            return [Prompt(vector=tuple(float(v) for v in row)) for row in arr]
        vocab = self.vocab
        assert vocab is not None
        out = []
        for row in candidates.tolist():
            tokens = tuple(vocab.tokens[r] for r in row)
            out.append(Prompt(token_ids=tuple(vocab.token_ids[r] for r in row), tokens=tokens,
                              text="".join(tokens)))
        return out

    @property
    def pool_size(self) -> int:
        return 0 if self.pool is None else self.pool.size

    def decode_pool(self, indices: Sequence[int]) -> list[Prompt]:
        """Pool prompts (index and text) for pool indices (all in range)."""
        pool = self.pool
        assert pool is not None
        return [Prompt(text=pool.texts[i], pool_index=int(i)) for i in indices]

    def render(self, token_ids: Sequence[int]) -> Prompt:
        """A hard prompt from model token ids (all must be in ``row_of``)."""
        vocab = self.vocab
        assert vocab is not None
        tokens = tuple(vocab.tokens[self.row_of[tid]] for tid in token_ids)
        return Prompt(token_ids=tuple(token_ids), tokens=tokens, text="".join(tokens))
