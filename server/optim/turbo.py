"""The ``turbo`` strategy: a TuRBO-1 style trust region around the best prompt.

The search is confined to a box (the trust region, TR) centred on the best point observed
since the last restart, with side ``length`` stretched per dimension by the GP's
lengthscales (their geometric mean normalized to one). Inside it, qLogNEI is maximized
exactly as in :mod:`~promptbo.server.optim.gp` (projection to prompts and de-duplication
included). The TR state is updated once per observation, in observation order, so that
an engine rebuilt from the stored trials reaches the same state however the results were
batched:

- a value above the TR's best by more than ``1e-3 * |best|`` is a success, anything else
  a failure; ``success_tolerance`` successes in a row double the length (at most
  ``length_max``), ``failure_tolerance`` failures in a row halve it;
- when the length falls below ``length_min`` the TR restarts: a fresh Sobol design of
  ``num_initial`` points, then a new TR around the best of them. Earlier data still feeds
  the GP where it lies near the new TR.

With more than ``max_local`` observations the GP is fitted on the ``max_local`` points
nearest to the TR centre (lengthscale-weighted sup-norm), which keeps suggestions fast.

Options: everything of ``gp`` plus ``length_init`` [0.8], ``length_min`` [0.5^7],
``length_max`` [1.6], ``success_tolerance`` [3], ``failure_tolerance``
[ceil(max(4, dim / 4))], ``max_local`` [256].
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from botorch.models import SingleTaskGP
from torch import Tensor

from promptbo.errors import InvalidArgumentError
from promptbo.server.optim.base import register_strategy
from promptbo.server.optim.gp import GP_OPTIONS, GPEngine

TURBO_OPTIONS: dict[str, tuple[type, Any, float, float]] = {
    **GP_OPTIONS,
    "length_init": (float, 0.8, 1e-6, 2.0),
    "length_min": (float, 0.5**7, 1e-9, 1.0),
    "length_max": (float, 1.6, 1e-6, 2.0),
    "success_tolerance": (int, 3, 1, 100_000),
    "failure_tolerance": (int, None, 1, 100_000),
    "max_local": (int, 256, 8, 1_000_000),
}


@register_strategy("turbo")
class TurboEngine(GPEngine):
    """Trust-region Bayesian optimization (TuRBO-1) over hard or soft prompts."""

    name: ClassVar[str] = "turbo"
    OPTIONS: ClassVar[dict[str, tuple[type, Any, float, float]]] = TURBO_OPTIONS

    def _setup(self) -> None:
        super()._setup()
        o = self.opts
        if not o["length_min"] < o["length_init"] <= o["length_max"]:
            raise InvalidArgumentError(
                "turbo needs length_min < length_init <= length_max, got "
                f"{o['length_min']}, {o['length_init']}, {o['length_max']}"
            )
        self.failure_tolerance = o["failure_tolerance"] or math.ceil(max(4.0, self.box.dim / 4))
        self.length = o["length_init"]
        self.successes = 0
        self.failures = 0
        self.restarts = 0
        self.restart_at = 0  # index of the first observation of the current TR
        self.best = -math.inf  # best value since the last restart
        self._weights = torch.ones(self.box.dim, dtype=torch.float64)

    # --- trust-region state -----------------------------------------------------------
    def _observed(self, u: Tensor, values: Tensor) -> None:
        first = self.num_observed - values.shape[0]
        for i, y in enumerate(values.tolist()):
            since = first + i - self.restart_at  # observations of this TR before this one
            if since >= self.num_initial:
                if y > self.best + 1e-3 * abs(self.best):
                    self.successes += 1
                    self.failures = 0
                else:
                    self.failures += 1
                    self.successes = 0
                if self.successes >= self.opts["success_tolerance"]:
                    self.length = min(2.0 * self.length, self.opts["length_max"])
                    self.successes = 0
                elif self.failures >= self.failure_tolerance:
                    self.length /= 2.0
                    self.failures = 0
            self.best = max(self.best, y)
            if self.length < self.opts["length_min"]:
                self.restarts += 1
                self.restart_at = first + i + 1
                self.length = self.opts["length_init"]
                self.successes = self.failures = 0
                self.best = -math.inf

    def center(self) -> Tensor:
        """The best box point (`dim`) observed since the last restart."""
        y = self.Y[self.restart_at :]
        return self.X[self.restart_at + int(torch.argmax(y))]

    # --- GPEngine hooks ---------------------------------------------------------------
    def _suggest(
        self, n: int, pending: Tensor | None, avoid: set[bytes], gen: torch.Generator
    ) -> Tensor:
        if self.num_observed - self.restart_at < max(self.num_initial, 2):
            return self.initial_design(n, avoid, gen)
        return super()._suggest(n, pending, avoid, gen)

    def training_data(self) -> tuple[Tensor, Tensor]:
        limit = self.opts["max_local"]
        if self.num_observed <= limit:
            return self.X, self.Y
        dist = ((self.X - self.center()).abs() / self._weights).amax(-1)
        near = torch.sort(torch.argsort(dist, stable=True)[:limit]).values
        return self.X[near], self.Y[near]

    def search_bounds(self, model: SingleTaskGP) -> Tensor:
        ls = _lengthscales(model)
        weights = ls / ls.mean()
        weights = weights / torch.exp(torch.log(weights).mean())
        self._weights = weights
        center = self.center()
        half = weights * self.length / 2.0
        return torch.stack([(center - half).clamp(0.0, 1.0), (center + half).clamp(0.0, 1.0)])

    def centers(self) -> Tensor:
        return self.center().unsqueeze(0)


def _lengthscales(model: SingleTaskGP) -> Tensor:
    """ARD lengthscales (`dim`, float64) of a GP's kernel (scaled or not)."""
    kernel = model.covar_module
    kernel = getattr(kernel, "base_kernel", kernel)
    return kernel.lengthscale.detach().reshape(-1).double()
