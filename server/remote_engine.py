"""An engine whose suggestions are computed by a suggestion pool's workers.

:class:`RemoteEngine` is the :class:`~promptbo.server.optim.base.Engine` a study runtime
holds when its server runs a :class:`~promptbo.server.suggest_pool.SuggestPool` and the
study's engine is not cheap. ``observe``/``observe_noisy`` only append the batch, as
given, to the study's history (a list of :class:`~promptbo.server.pool_worker.Batch`);
``suggest`` sends a job to a worker and waits, polling ``should_stop`` and forwarding a
cancel to the worker. The job carries the recipe only when the worker does not hold the
study's engine, and only the batches it has not seen. A worker's replica thus makes the
same calls as an in-process engine would, and suggests the same prompts.

What the runtime reads besides the candidates comes back with each result and is kept
here: ``last_examples`` (multi-fidelity), the transfer ``weights`` and ``counts``, and
which candidates were transferred (:meth:`RemoteEngine.is_transferred`), and the GP
fit times (reported here as if fitted in this process). ``cheap`` and
``uses_pending`` come from an in-process engine built once from the recipe (the probe,
which also validates the study's options) and dropped.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from torch import Tensor

from promptbo.server import telemetry
from promptbo.server.optim.base import Engine
from promptbo.server.pool_worker import Batch, Job, row_keys

if TYPE_CHECKING:
    from promptbo.server.engine_recipe import EngineRecipe
    from promptbo.server.suggest_pool import SuggestPool


class RemoteEngine(Engine):
    """Forwards a study's suggestions to ``pool`` (see the module doc).

    Args:
        recipe: builds the study's engine on a worker.
        pool: the server's suggestion pool.
        probe: an engine freshly built from ``recipe``, asked for ``cheap``,
            ``uses_pending`` and the transfer ``counts``; not kept.
    """

    def __init__(self, recipe: EngineRecipe, pool: SuggestPool, probe: Engine) -> None:
        self.recipe = recipe
        self.pool = pool
        #: Names this engine's replicas on the workers (a rebuilt runtime gets a new one).
        self.key = uuid.uuid4().hex
        self.cheap = probe.cheap
        self._uses_pending = probe.uses_pending
        self.num_suggested = probe.num_suggested
        #: Every batch observed, in order.
        self.history: list[Batch] = []
        #: Set by the runtime around a prefetch refill's ``suggest`` (queued after
        #: foreground suggestions).
        self.background = False
        self.last_examples: list[int] | None = None
        self.weights: dict[str, float] | None = getattr(probe, "weights", None)
        self.counts: dict[str, int] = dict(getattr(probe, "counts", {}))
        self._transferred: set[bytes] = set()

    @property
    def uses_pending(self) -> bool:
        return self._uses_pending

    def observe(self, candidates: Tensor, values: Tensor) -> None:
        self.history.append(Batch(candidates.clone(), values.clone()))

    def observe_noisy(self, candidates: Tensor, values: Tensor, variances: Tensor,
                      counts: Tensor) -> None:
        self.history.append(Batch(candidates.clone(), values.clone(), variances.clone(),
                                  counts.clone()))

    def _job(self, n: int, pending: Tensor | None, seen: int | None) -> Job:
        start = 0 if seen is None else min(seen, len(self.history))
        return Job(0, self.key, n, pending, self.num_suggested, start,
                   self.history[start:], self.recipe if seen is None else None)

    def suggest(self, n: int, pending: Tensor | None = None) -> Tensor:
        """``n`` candidates computed by a pool worker.

        Raises:
            CancelledError: ``should_stop`` fired while it waited or computed.
        """
        reply = self.pool.run(self.key, lambda seen: self._job(n, pending, seen),
                              self.should_stop, self.background)
        for seconds in reply.fits:
            telemetry.fit_done(seconds)
        cands = reply.candidates
        assert cands is not None
        self.num_suggested = reply.num_suggested
        self.last_examples = reply.last_examples
        self.weights = reply.weights
        if reply.counts:
            self.counts = reply.counts
        for key, moved in zip(row_keys(cands), reply.transferred, strict=False):
            if moved:
                self._transferred.add(key)
        return cands

    def is_transferred(self, candidates: Tensor) -> list[bool]:
        """Whether each candidate was handed out as a transfer source's prompt."""
        return [k in self._transferred for k in row_keys(candidates)]
