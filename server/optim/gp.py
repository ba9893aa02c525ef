"""The ``gp`` strategy: global Bayesian optimization with a GP and qLogNEI.

After a scrambled Sobol initial design (``num_initial`` points), each suggestion fits a
``SingleTaskGP`` (see :mod:`~promptbo.server.optim.surrogate`) on the observed box points
(for hard prompts: the coordinates of the tokens that were actually evaluated), builds
qLogNoisyExpectedImprovement with the pending candidates as ``X_pending`` and maximizes
it in the box (see :mod:`~promptbo.server.optim.acquisition`). Every restart's result and
starting point is then projected to a prompt (nearest tokens, de-duplicated against
observed and pending prompts) and the projected batch with the highest acquisition value
is returned. Batches larger than ``max_batch`` are built in chunks, each chunk pending
for the next.

Options (strings; defaults in brackets):

- ``num_initial`` [max(10, 2 * prompt_length)]: Sobol points before the first model.
- ``raw_samples`` [256]: pool of acquisition starting points (half Sobol, half local
  variations of the five best prompts).
- ``num_restarts`` [4]: L-BFGS-B runs per batch; ``maxiter`` [50]: their iterations.
- ``large_n`` [300]: above this many observations each acquisition evaluation costs
  O(n) kernel rows, so the iterations shrink to ``maxiter * large_n / n`` (at least 10):
  the time per suggestion stays near-flat in n, and the starting pool (local variations of
  the best prompts) already holds good starts.
- ``mc_samples`` [128]: quasi-MC samples of the acquisition; ``max_batch`` [8].
- ``full_maxiter`` [100], ``warm_maxiter`` [8], ``refit_every`` [10], ``fit_subset``
  [256]: hyperparameter fitting (see :class:`~promptbo.server.optim.surrogate.GPFitter`).
- ``max_points`` [2048]: the model is conditioned on at most this many observations (the
  best quarter plus evenly spaced others), which bounds its memory (`n^2` kernel) whatever
  the number of trials.

Values are passed through :func:`~promptbo.server.optim.robust.robust_standardize` before
the fit, so any finite values (``±1e308``, a huge outlier, constants) give a usable model;
should a fit or acquisition still fail numerically, the suggestion falls back to the Sobol
design instead of failing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from botorch.exceptions.errors import BotorchError
from botorch.models import SingleTaskGP
from botorch.models.model import Model
from torch import Tensor

from promptbo.server.optim.acquisition import log_nei, optimize_in_box, score, sobol_points
from promptbo.server.optim.base import register_strategy
from promptbo.server.optim.box_engine import BoxEngine
from promptbo.server.optim.robust import robust_standardize
from promptbo.server.optim.surrogate import FitSettings, GPFitter, subset_indices

log = logging.getLogger(__name__)

#: Best observed points whose local variations seed the acquisition optimizer.
_NUM_CENTERS = 5

GP_OPTIONS: dict[str, tuple[type, Any, float, float]] = {
    "num_initial": (int, None, 1, 100_000),
    "raw_samples": (int, 256, 4, 100_000),
    "num_restarts": (int, 4, 1, 1024),
    "maxiter": (int, 50, 0, 100_000),
    "large_n": (int, 300, 1, 10_000_000),
    "mc_samples": (int, 128, 8, 8192),
    "max_batch": (int, 8, 1, 1024),
    "full_maxiter": (int, 100, 0, 100_000),
    "warm_maxiter": (int, 8, 0, 100_000),
    "refit_every": (int, 10, 1, 1_000_000),
    "fit_subset": (int, 256, 8, 1_000_000),
    "max_points": (int, 2048, 8, 20_000),
}


@register_strategy("gp")
class GPEngine(BoxEngine):
    """Global GP-based Bayesian optimization over hard or soft prompts."""

    name: ClassVar[str] = "gp"
    OPTIONS: ClassVar[dict[str, tuple[type, Any, float, float]]] = GP_OPTIONS
    #: Replaces the plain GP fit when set (transfer learning, :mod:`.transfer`): takes the
    #: standardized `n x dim` inputs and `n` values and returns the surrogate model.
    surrogate: Callable[[Tensor, Tensor], Model] | None = None

    def _setup(self) -> None:
        super()._setup()
        o = self.opts
        self.num_initial = o["num_initial"] or max(10, 2 * self.space.prompt_length)
        self.fitter = GPFitter(
            FitSettings(
                full_maxiter=o["full_maxiter"],
                warm_maxiter=o["warm_maxiter"],
                refit_every=o["refit_every"],
                fit_subset=o["fit_subset"],
            )
        )

    def _suggest(
        self, n: int, pending: Tensor | None, avoid: set[bytes], gen: torch.Generator
    ) -> Tensor:
        if self.num_observed < max(self.num_initial, 2):
            return self.initial_design(n, avoid, gen)
        X, Y = self.training_data()
        self.check_stop()
        if X.shape[0] > self.opts["max_points"]:
            keep = subset_indices(Y, self.opts["max_points"])
            X, Y = X[keep], Y[keep]
        Y = robust_standardize(Y)
        try:
            model: Any = (self.surrogate or self.fitter.fit)(X, Y)
            return self.acquire(model, X, Y, n, pending, avoid, gen, self.search_bounds(model))
        except (RuntimeError, ValueError, ArithmeticError, BotorchError) as exc:
            # Numerical trouble the transform did not prevent (a singular kernel, a
            # failed Cholesky) must not fail the request: fall back to the Sobol design.
            log.warning("%s suggestion fell back to the Sobol design: %s", self.name, exc)
            return self.initial_design(n, avoid, gen)

    # --- hooks for trust-region variants -------------------------------------------------
    def training_data(self) -> tuple[Tensor, Tensor]:
        """Inputs (`n x dim`) and values (`n`) the surrogate is fitted on."""
        return self.X, self.Y

    def search_bounds(self, model: SingleTaskGP) -> Tensor:
        """`2 x dim` bounds of the acquisition search."""
        dim = self.box.dim
        return torch.stack([torch.zeros(dim), torch.ones(dim)]).double()

    def centers(self) -> Tensor:
        """Points (`c x dim`) whose local variations join the starting pool."""
        top = torch.argsort(self.Y, descending=True, stable=True)[:_NUM_CENTERS]
        return self.X[top]

    # --- acquisition ------------------------------------------------------------------
    def acquire(
        self,
        model: SingleTaskGP,
        X: Tensor,
        Y: Tensor,
        n: int,
        pending: Tensor | None,
        avoid: set[bytes],
        gen: torch.Generator,
        bounds: Tensor,
    ) -> Tensor:
        """``n`` candidates maximizing qLogNEI within ``bounds``, after projection."""
        o = self.opts
        chosen: list[Tensor] = []
        chosen_u: list[Tensor] = [] if pending is None else [pending]
        while sum(c.shape[0] for c in chosen) < n:
            self.check_stop()
            q = min(n - sum(c.shape[0] for c in chosen), o["max_batch"])
            pend = torch.cat(chosen_u) if chosen_u else None
            acq = log_nei(model, X, Y, pend, _draw_seed(gen), o["mc_samples"])
            pool = self._pool(bounds, gen)
            maxiter = acquisition_iterations(o["maxiter"], o["large_n"], X.shape[0])
            starts, results = optimize_in_box(acq, bounds, pool, q, o["num_restarts"], maxiter)
            batches = torch.cat([results, starts])
            cands, points = [], []
            for batch in batches:
                c, u = self.box.project(batch, set(avoid), gen)
                cands.append(c)
                points.append(u)
            best = int(torch.argmax(score(acq, torch.stack(points))))
            chosen.append(cands[best])
            chosen_u.append(points[best])
            avoid.update(self.box.keys(cands[best]))
        return torch.cat(chosen)

    def _pool(self, bounds: Tensor, gen: torch.Generator) -> Tensor:
        """Starting-point pool in ``bounds``: Sobol points and local variations of the
        best observations (`raw_samples x dim`)."""
        raw = self.opts["raw_samples"]
        n_local = raw // 2
        lo, hi = bounds[0], bounds[1]
        sob = lo + (hi - lo) * sobol_points(raw - n_local, self.box.dim, _draw_seed(gen))
        centers = self.centers()
        local = self.box.perturb(centers[torch.arange(n_local) % centers.shape[0]], gen)
        return torch.cat([sob, torch.minimum(torch.maximum(local, lo), hi)])


def acquisition_iterations(maxiter: int, large_n: int, n: int) -> int:
    """L-BFGS-B iterations for the acquisition with ``n`` observations (see ``large_n``)."""
    if n <= large_n or maxiter <= 10:
        return maxiter
    return max(10, maxiter * large_n // n)


def _draw_seed(gen: torch.Generator) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=gen))
