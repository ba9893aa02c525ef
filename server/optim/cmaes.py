"""The ``cmaes`` strategy: CMA-ES in the style of black-box tuning (BBT).

Soft prompts are searched in the intrinsic space ``z`` (the unit box of
:class:`~promptbo.server.optim.spaces.SoftPromptBox`, i.e. ``[-b, b]^k`` through the fixed
random projection), as BBT does; hard prompts in the scaled PCA box, each sample projected
to its nearest unused tokens. The ``cma`` package runs the evolution strategy with box
bounds ``[0, 1]`` (values are negated: CMA-ES minimizes).

The engine decouples the ask/tell generations from the service's ask/observe calls:

- :meth:`suggest` hands out samples of the current generation, asking the strategy for a
  new population whenever the current one is used up, so any ``n`` works;
- :meth:`observe` buffers results in arrival order and tells the strategy each time a
  full population (``popsize`` results) has been buffered; results may arrive in any
  order and from any generation. Each tell discards samples of the old distribution that
  were not handed out. The told points are the box points actually evaluated (for hard
  prompts, the tokens' coordinates), so replaying stored trials rebuilds the same state.

When CMA-ES reports convergence it restarts from the initial mean and step size.

Options: ``popsize`` [4 + 3 ln(dim), cma's default], ``sigma0`` [hard: the mean per-
coordinate std of the token coordinates; soft: 0.2, in unit-box units].
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import cma
import numpy as np
import torch
from torch import Tensor

from promptbo.server.optim.base import register_strategy
from promptbo.server.optim.box_engine import BoxEngine
from promptbo.server.optim.spaces import HardPromptBox, derive_seed


@register_strategy("cmaes")
class CMAESEngine(BoxEngine):
    """CMA-ES over hard or soft prompts with an ask/observe buffer."""

    name: ClassVar[str] = "cmaes"
    OPTIONS: ClassVar[dict[str, tuple[type, Any, float, float]]] = {
        "popsize": (int, None, 2, 100_000),
        "sigma0": (float, None, 1e-9, 1.0),
    }

    def _setup(self) -> None:
        super()._setup()
        dim = self.box.dim
        box = self.box
        if isinstance(box, HardPromptBox):
            self.x0 = box.coords.mean(0).repeat(box.length).numpy()
            default_sigma = float(box.coords.std(0).mean())
        else:
            self.x0 = np.full(dim, 0.5)
            default_sigma = 0.2
        self.sigma0 = self.opts["sigma0"] or max(default_sigma, 1e-3)
        self.popsize = self.opts["popsize"] or 4 + int(3 * math.log(dim))
        self.generation = 0
        self.restarts = 0
        self._rng = np.random.default_rng(derive_seed(self.seed, 3))
        self._es = self._new_strategy()
        self._queue: list[np.ndarray] = []
        self._buffer: list[tuple[np.ndarray, float]] = []
        self._needs_ask = True

    def _new_strategy(self) -> cma.CMAEvolutionStrategy:
        opts = {
            "popsize": self.popsize,
            "bounds": [0.0, 1.0],
            "seed": np.nan,  # never touch numpy's global RNG; samples come from _randn
            "randn": self._randn,
            "verbose": -9,
        }
        return cma.CMAEvolutionStrategy(self.x0.tolist(), self.sigma0, opts)

    def _randn(self, *shape: int) -> np.ndarray:
        return self._rng.standard_normal(shape)

    def _ask(self, *seed_parts: int) -> list[np.ndarray]:
        self._rng = np.random.default_rng(derive_seed(self.seed, *seed_parts))
        self._needs_ask = False
        return [np.asarray(x, dtype=np.float64) for x in self._es.ask()]

    # --- BoxEngine hooks ---------------------------------------------------------------
    def _observed(self, u: Tensor, values: Tensor) -> None:
        self._buffer.extend(zip(u.numpy(), values.tolist(), strict=True))
        while len(self._buffer) >= self.popsize:
            batch = self._buffer[: self.popsize]
            self._buffer = self._buffer[self.popsize :]
            if self._needs_ask:  # cma wants an ask before every tell
                self._ask(4, self.restarts, self.generation)
            self._es.tell([x for x, _ in batch], [-y for _, y in batch])
            self._needs_ask = True
            self._queue = []
            self.generation += 1
            if self._es.stop():
                self.restarts += 1
                self._es = self._new_strategy()

    def _suggest(
        self, n: int, pending: Tensor | None, avoid: set[bytes], gen: torch.Generator
    ) -> Tensor:
        out = []
        for i in range(n):
            if not self._queue:
                self._queue = self._ask(5, self.restarts, self.generation, self.num_suggested + i)
            x = torch.from_numpy(self._queue.pop(0)).unsqueeze(0)
            out.append(self.box.project(x, avoid, gen)[0])
        return torch.cat(out)
