"""The ask/tell engine interface and the strategy registry.

An :class:`Engine` proposes prompts and learns from their values. It is a plain Python
object: tensors in, tensors out, no gRPC, no storage. The server's study manager keeps
one engine per study and rebuilds it after a restart by replaying the stored trials
through :meth:`Engine.observe`.

Candidates are encoded as

- hard prompts: ``LongTensor`` of shape `n x L`, rows of the (uploaded) vocabulary;
- soft prompts: ``Tensor`` of shape `n x (L * D)`, the flattened prompt vectors;
- pool prompts: ``LongTensor`` of shape `n x 1`, indices into the uploaded pool
  (strategies of their own, see :mod:`.pool_engines`).

Values are always maximized; the manager negates them for minimization studies.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from promptbo.errors import CancelledError, InvalidArgumentError
from promptbo.server.domain import HardPromptSpace, PoolSpace, SearchSpace, SoftPromptSpace


class Engine(abc.ABC):
    """Ask/tell optimizer over one study's search space."""

    #: Number of candidates handed out by :meth:`suggest` so far (used to derive seeds,
    #: so a rebuilt engine continues its random stream instead of repeating it).
    num_suggested: int = 0
    #: True when a suggestion costs microseconds whatever was observed (random search):
    #: the server then computes suggestions inline instead of prefetching them.
    cheap: bool = False
    #: Set by the caller around :meth:`suggest`: returns True when nobody waits for the
    #: result any more. Long computations poll it between steps and then raise
    #: :class:`~promptbo.errors.CancelledError`.
    should_stop: Callable[[], bool] | None = None

    def check_stop(self) -> None:
        """Raises CancelledError if :attr:`should_stop` says the caller is gone."""
        if self.should_stop is not None and self.should_stop():
            raise CancelledError("the suggestion was cancelled: its caller is gone")

    @property
    def uses_pending(self) -> bool:
        """Whether :meth:`suggest` looks at ``pending`` (False lets callers skip encoding
        the in-flight candidates, e.g. for random soft prompts)."""
        return True

    @abc.abstractmethod
    def suggest(self, n: int, pending: Tensor | None = None) -> Tensor:
        """Returns ``n`` new candidates (`n x L` rows or `n x (L*D)` vectors).

        ``pending`` holds candidates handed out but not yet observed, in the same
        encoding; hard-prompt engines never return a prompt that is pending or was
        observed while unseen prompts remain.
        """

    @abc.abstractmethod
    def observe(self, candidates: Tensor, values: Tensor) -> None:
        """Records evaluated candidates (same encoding as :meth:`suggest`) and their
        finite values (shape `n`, larger is better)."""


EngineFactory = Callable[..., Engine]
_REGISTRY: dict[str, EngineFactory] = {}


def register_strategy(name: str) -> Callable[[EngineFactory], EngineFactory]:
    """Class decorator registering a strategy under ``name``; duplicates are refused."""

    def deco(factory: EngineFactory) -> EngineFactory:
        if name in _REGISTRY:
            raise ValueError(f"strategy {name!r} is already registered by {_REGISTRY[name]!r}")
        _REGISTRY[name] = factory
        return factory

    return deco


def strategy_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def make_engine(
    space: SearchSpace,
    strategy: str = "gp",
    options: dict[str, str] | None = None,
    seed: int = 0,
    embeddings: np.ndarray | None = None,
) -> Engine:
    """Builds the engine for a study.

    Args:
        space: the study's search space.
        strategy: a registered strategy name (see :func:`strategy_names`).
        options: strategy options as strings (each strategy documents its own).
        seed: seeds every random choice; equal inputs give equal suggestions.
        embeddings: for hard prompts, the vocabulary's `V x D` float32 embedding table
            (the whole uploaded table; the engine applies the space's filter itself and
            always returns rows of the whole table); for pool prompts, the pool's `N x D`
            table.

    Raises:
        InvalidArgumentError: unknown strategy, bad option, or a strategy that does not
            support the space's kind.
    """
    if isinstance(space, PoolSpace):
        from promptbo.server.optim.pool_engines import make_pool_engine

        return make_pool_engine(strategy, dict(options or {}), seed, embeddings)
    _load_builtin()
    factory = _REGISTRY.get(strategy or "gp")
    if factory is None:
        raise InvalidArgumentError(
            f"unknown strategy {strategy!r}; choose one of {', '.join(sorted(_REGISTRY))}"
        )
    if isinstance(space, HardPromptSpace) and embeddings is None:
        raise InvalidArgumentError("a hard-prompt engine needs the vocabulary's embeddings")
    return factory(space=space, options=dict(options or {}), seed=seed, embeddings=embeddings)


def _load_builtin() -> None:
    # Importing the strategy modules registers them.
    from promptbo.server.optim import strategies  # noqa: F401


__all__ = [
    "Engine",
    "HardPromptSpace",
    "SoftPromptSpace",
    "make_engine",
    "register_strategy",
    "strategy_names",
    "torch",
]
