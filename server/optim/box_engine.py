"""Shared machinery of the engines that search a unit box.

:class:`BoxEngine` owns a :class:`~promptbo.server.optim.spaces.PromptBox`, the
observation history in box coordinates (`n x dim` float64 inputs, `n` values), option
parsing (:func:`read_options`) and the random streams. Subclasses implement
:meth:`BoxEngine._suggest`.

Determinism: every random choice of a :meth:`suggest` call comes from generators seeded
by ``(seed, num_suggested)``, and the observation history is replayed in the order it was
observed. An engine rebuilt by observing the stored trials and setting ``num_suggested``
is therefore a deterministic function of (seed, observations, num_suggested, pending);
model-based engines also warm-start hyperparameters from their previous fits, so an
engine that saw the same observations in several chunks may differ slightly from one
that saw them at once.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from promptbo.errors import InvalidArgumentError
from promptbo.options import Kind, Option, parse_options
from promptbo.server.domain import PoolSpace, SearchSpace, SoftPromptSpace
from promptbo.server.optim.acquisition import quiet, sobol_points
from promptbo.server.optim.base import Engine
from promptbo.server.optim.spaces import PromptBox, derive_seed, make_box


def read_options(
    strategy: str,
    options: dict[str, str],
    spec: dict[str, tuple[type, Any, float, float]],
    choices: dict[str, tuple[str, ...]] | None = None,
) -> dict[str, Any]:
    """Parses ``options`` against ``spec`` (name -> (type, default, min, max); a default
    of None means "automatic") and ``choices`` (name -> allowed words, the first the
    default), with the parser of :mod:`promptbo.options`.

    Raises:
        InvalidArgumentError: an unknown name, or a value of the wrong type or range.
    """
    declared = [strategy_option(name, *entry) for name, entry in spec.items()]
    declared += [Option(name, "str", allowed[0], choices=allowed)
                 for name, allowed in (choices or {}).items()]
    return parse_options(declared, options, owner=f"strategy {strategy!r}")


def strategy_option(name: str, kind: type, default: Any, low: float, high: float) -> Option:
    """The :class:`~promptbo.options.Option` of one ``(type, default, min, max)`` entry."""
    kinds: dict[type, Kind] = {int: "int", float: "float", bool: "bool"}
    if kind is bool:
        return Option(name, "bool", default)
    return Option(name, kinds[kind], default, minimum=low, maximum=high)


class BoxEngine(Engine):
    """Base of the unit-box strategies.

    Args:
        space: the study's search space.
        options: strategy options (strings), checked against :attr:`OPTIONS`.
        seed: the study seed.
        embeddings: the vocabulary's `V x D` table (hard prompts).
    """

    #: Strategy name (for error messages).
    name: ClassVar[str] = ""
    #: Options: name -> (type, default, min, max); a default of None means "automatic".
    OPTIONS: ClassVar[dict[str, tuple[type, Any, float, float]]] = {}
    #: Whether the strategy handles soft prompts.
    SUPPORTS_SOFT: ClassVar[bool] = True

    def __init__(
        self,
        space: SearchSpace,
        options: dict[str, str],
        seed: int,
        embeddings: np.ndarray | None,
    ) -> None:
        if isinstance(space, PoolSpace):  # make_engine gives pools to pool_engines
            raise InvalidArgumentError(
                f"strategy {self.name!r} searches token or embedding spaces, not pools"
            )
        if isinstance(space, SoftPromptSpace) and not self.SUPPORTS_SOFT:
            raise InvalidArgumentError(
                f"strategy {self.name!r} supports hard prompts only; choose gp, turbo, "
                "cmaes or random for soft prompts"
            )
        self.space = space
        self.seed = int(seed)
        self.num_suggested = 0
        self.opts = read_options(self.name, dict(options), self.OPTIONS)
        self.box: PromptBox = self._make_box(space, embeddings)
        # Observation history in buffers that grow geometrically, so observing one point
        # costs O(dim), not a copy of the whole history; X and Y are views of the filled part.
        self._X = torch.empty(16, self.box.dim, dtype=torch.float64)
        self._Y = torch.empty(16, dtype=torch.float64)
        self._n = 0
        self.seen: set[bytes] = set()
        self._setup()

    @property
    def X(self) -> Tensor:
        """Observed points in box coordinates, `n x dim` float64 (a view; do not write)."""
        return self._X[: self._n]

    @property
    def Y(self) -> Tensor:
        """Observed values, `n` float64 (a view; do not write)."""
        return self._Y[: self._n]

    def _make_box(self, space: SearchSpace, embeddings: np.ndarray | None) -> PromptBox:
        return make_box(space, embeddings, self.seed)

    # --- Engine API -------------------------------------------------------------------
    def observe(self, candidates: Tensor, values: Tensor) -> None:
        values = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
        if candidates.shape[0] != values.shape[0]:
            raise InvalidArgumentError(
                f"observe got {candidates.shape[0]} candidates and {values.shape[0]} values"
            )
        if not torch.isfinite(values).all():
            raise InvalidArgumentError("observed values must be finite numbers")
        if values.shape[0] == 0:
            return
        u = self.box.to_unit(candidates)
        if self.box.discrete:
            self.seen.update(self.box.keys(candidates))
        n, k = self._n, values.shape[0]
        if n + k > self._Y.shape[0]:
            capacity = max(2 * self._Y.shape[0], n + k)
            self._X = torch.cat([self._X[:n], self._X.new_empty(capacity - n, self.box.dim)])
            self._Y = torch.cat([self._Y[:n], self._Y.new_empty(capacity - n)])
        self._X[n : n + k] = u
        self._Y[n : n + k] = values
        self._n = n + k
        self._observed(u, values)

    def suggest(self, n: int, pending: Tensor | None = None) -> Tensor:
        if n < 0:
            raise InvalidArgumentError(f"cannot suggest {n} candidates")
        pending_u = None
        avoid = set(self.seen)
        if pending is not None and pending.shape[0]:
            pending_u = self.box.to_unit(pending)
            if self.box.discrete:
                avoid.update(self.box.keys(pending))
        if n == 0:
            return self.box.project(torch.empty(0, self.box.dim), set(), torch.Generator())[0]
        gen = torch.Generator().manual_seed(derive_seed(self.seed, self.num_suggested, 1))
        with quiet():
            out = self._suggest(n, pending_u, avoid, gen)
        self.num_suggested += n
        return out

    # --- for subclasses ---------------------------------------------------------------
    def _setup(self) -> None:
        """Hook: strategy state built from ``self.opts``, ``self.box`` and ``self.seed``
        (called at the end of ``__init__``; an override calls ``super()._setup()``)."""

    def _observed(self, u: Tensor, values: Tensor) -> None:
        """Hook: new observations (`n x dim` box points, `n` values) were appended."""

    def _suggest(
        self, n: int, pending: Tensor | None, avoid: set[bytes], gen: torch.Generator
    ) -> Tensor:
        raise NotImplementedError

    def initial_design(self, n: int, avoid: set[bytes], gen: torch.Generator) -> Tensor:
        """The next ``n`` points of the study's scrambled Sobol sequence, as candidates."""
        u = sobol_points(n, self.box.dim, derive_seed(self.seed, 2), skip=self.num_suggested)
        return self.box.project(u, avoid, gen)[0]

    @property
    def num_observed(self) -> int:
        return self._n
