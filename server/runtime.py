"""A study's in-memory runtime: its engine, prompt encoding, and prefetched suggestions.

:class:`StudyRuntime` wraps one :class:`~promptbo.server.optim.Engine` for the study
manager. It converts stored prompts to engine tensors and back (hard prompts: the model's
token ids <-> vocabulary rows; soft prompts: flat float vectors), queues observations so
that recording a result never waits for a running suggestion, and can keep a few
suggestions ready, computed in the background, so that ``SuggestTrials`` returns at once.

Locks, always taken in this order: the manager's study lock, then ``engine_lock``, then
``inbox_lock`` (a leaf). The background refill never holds the study lock while it holds
the engine lock.

With prefetching on, which suggestion a worker gets depends on timing, so runs are
reproducible only with ``prefetch=0`` (the manager's default).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from promptbo.server.domain import Prompt, SoftPromptSpace, StudySpec, Vocabulary
from promptbo.server.transfer_sources import LoadedSource

if TYPE_CHECKING:
    from promptbo.server.optim.transfer import SourceData

log = logging.getLogger(__name__)


class StudyRuntime:
    """The engine of one study and what surrounds it.

    Args:
        spec: the study's spec.
        vocab: its vocabulary (hard prompts) or None (soft prompts).
        engine_factory: ``make_engine``-compatible callable.
    """

    def __init__(self, spec: StudySpec, vocab: Vocabulary | None, engine_factory: Callable,
                 sources: Sequence[LoadedSource] = (), source_notes: dict[str, str] | None = None):
        self.spec = spec
        self.vocab = vocab
        self.engine = engine_factory(
            spec.space, spec.strategy, spec.strategy_options, spec.seed,
            None if vocab is None else vocab.embeddings,
        )
        self.row_of: dict[int, int] = (
            {} if vocab is None else {tid: row for row, tid in enumerate(vocab.token_ids)}
        )
        #: Why a transfer source is not used (by name); see :mod:`..transfer_sources`.
        self.source_notes = dict(source_notes or {})
        if spec.transfer_from:
            from promptbo.server.optim.transfer import TransferEngine

            self.engine = TransferEngine(self.engine, [self._source_data(s) for s in sources],
                                         spec.transfer, spec.strategy)
        self.engine_lock = threading.Lock()
        self.inbox_lock = threading.Lock()
        self._inbox: list[tuple[Prompt, float]] = []
        self.ready: list[Prompt] = []
        self.refilling = False
        self.num_observed = 0

    # --- observations -----------------------------------------------------------------
    def queue_observation(self, prompts: Sequence[Prompt], values: Sequence[float]) -> None:
        """Records results for the engine; they reach it before its next suggestion."""
        with self.inbox_lock:
            self._inbox.extend(zip(prompts, values, strict=True))

    def _drain(self) -> None:
        """Feeds queued observations to the engine. Caller holds ``engine_lock``."""
        with self.inbox_lock:
            items, self._inbox = self._inbox, []
        if items:
            x = self.encode([p for p, _ in items])
            y = torch.as_tensor([v for _, v in items], dtype=torch.float64)
            self.engine.observe(x, y)
            self.num_observed += len(items)

    # --- suggestions ------------------------------------------------------------------
    def suggest(self, n: int, pending: Sequence[Prompt],
                cancelled: Callable[[], bool] | None = None) -> list[Prompt]:
        """``n`` new prompts, none equal to a pending one (hard prompts). ``cancelled``
        is polled while the engine computes (see ``Engine.should_stop``)."""
        with self.engine_lock:
            self._drain()
            self.engine.should_stop = cancelled
            try:
                return self.decode(self.engine.suggest(n, self._pending(pending)))
            finally:
                self.engine.should_stop = None

    def take_ready(self, n: int, pending: Sequence[Prompt]) -> list[Prompt]:
        """Up to ``n`` prefetched prompts, skipping any that became pending meanwhile.
        Caller holds the study lock."""
        taken: list[Prompt] = []
        if not self.ready:
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
               store: Callable[[list[Prompt]], None]) -> None:
        """Computes ``count`` suggestions in the background thread that calls it.

        ``snapshot`` (takes the study lock) returns the pending prompts; ``store`` (takes
        the study lock) installs the result. Never holds the study lock with the engine's.
        """
        try:
            pending = snapshot()
            with self.engine_lock:
                self._drain()
                prompts = self.decode(self.engine.suggest(count, self._pending(pending)))
            store(prompts)
        except Exception:  # a failed prefetch only costs latency; the sync path still works
            log.exception("prefetching suggestions failed")
            store([])

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
        else:
            encoded = torch.empty(0, space.prompt_length, dtype=torch.long)
        values = torch.tensor([v for _, v in pairs], dtype=torch.float64)
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
        """Hard: LongTensor `n x L` of vocabulary rows; soft: float tensor `n x (L*D)`."""
        if isinstance(self.spec.space, SoftPromptSpace):
            return torch.tensor(np.array([p.vector for p in prompts], dtype=np.float32))
        rows = [[self.row_of[tid] for tid in p.token_ids] for p in prompts]
        return torch.tensor(rows, dtype=torch.long)

    def decode(self, candidates: torch.Tensor) -> list[Prompt]:
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

    def render(self, token_ids: Sequence[int]) -> Prompt:
        """A hard prompt from model token ids (all must be in ``row_of``)."""
        vocab = self.vocab
        assert vocab is not None
        tokens = tuple(vocab.tokens[self.row_of[tid]] for tid in token_ids)
        return Prompt(token_ids=tuple(token_ids), tokens=tokens, text="".join(tokens))
