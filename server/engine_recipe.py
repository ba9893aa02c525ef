"""What it takes to build one study's engine, as a picklable value.

An :class:`EngineRecipe` holds a study's search space, strategy, options, seed, the
embedding table its engine searches, its fidelity settings and its transfer sources
(already in the engine's encoding). :meth:`EngineRecipe.build` makes the engine exactly as
the server's runtime needs it: ``make_engine``, then ``configure_fidelity``, then the
:class:`~promptbo.server.optim.transfer.TransferEngine` wrapper for a study with transfer
sources. The study runtime builds its in-process engine through it and a suggestion pool
worker (:mod:`~promptbo.server.pool_worker`) builds its replica through it, so both are
built by one code path and, fed the same observations, suggest the same prompts.

Nothing here reads storage or knows gRPC.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from promptbo.server.domain import SearchSpace

if TYPE_CHECKING:
    from promptbo.server.optim.base import Engine
    from promptbo.server.optim.transfer import SourceData


def _default_factory(*args: Any, **kwargs: Any) -> Engine:
    from promptbo.server.optim import make_engine

    return make_engine(*args, **kwargs)


@dataclass(frozen=True)
class EngineRecipe:
    """Everything :meth:`build` needs; picklable when ``factory`` is a module-level
    callable (the default is :func:`~promptbo.server.optim.make_engine`).

    Attributes:
        space, strategy, options, seed: as the study's spec gives them.
        embeddings: the vocabulary's `V x D` table (hard prompts), the pool's `N x D`
            table (pool prompts) or None (soft prompts).
        pool_size, examples_per_trial: the fidelity settings (``configure_fidelity``).
        transfer: the study's transfer mode, used when ``transfer_from`` is true.
        transfer_from: whether the study names transfer sources (even if none of them is
            usable: the engine is then still wrapped, with no sources).
        sources: the usable sources' observations in the engine's encoding.
        factory: ``make_engine``-compatible callable.
    """

    space: SearchSpace
    strategy: str = "gp"
    options: Mapping[str, str] = field(default_factory=dict)
    seed: int = 0
    embeddings: np.ndarray | None = None
    pool_size: int = 0
    examples_per_trial: int = 0
    transfer: str = "both"
    transfer_from: bool = False
    sources: Sequence[SourceData] = ()
    factory: Callable[..., Engine] = _default_factory

    def build(self) -> Engine:
        """A fresh engine (nothing observed, ``num_suggested`` 0).

        Raises:
            InvalidArgumentError: as ``make_engine`` and ``TransferEngine`` do.
        """
        engine = self.factory(self.space, self.strategy, dict(self.options), self.seed,
                              self.embeddings)
        configure = getattr(engine, "configure_fidelity", None)
        if configure is not None:
            configure(self.pool_size, self.examples_per_trial)
        if self.transfer_from:
            from promptbo.server.optim.transfer import TransferEngine

            engine = TransferEngine(engine, list(self.sources), self.transfer, self.strategy)
        return engine
