"""``zopo``: localized zeroth-order search over a candidate pool with an NTK-GP.

After Hu et al. (2024), "Localized Zeroth-Order Prompt Optimization". The objective over
the pool's embedding features ``x`` (unit length, :func:`.pool_features`) is modelled by a
GP whose kernel is the empirical neural tangent kernel of a small random MLP
``f(x) = w2 . tanh(W1 x + b1) / sqrt(m) + b2`` (``m`` hidden units, Gaussian weights,
fixed): ``k(x, x') = grad_theta f(x) . grad_theta f(x')``, which in closed form is

    k(x, x') = (h.h' + (a.a') (x.x' + 1)) / m + 1,  h = tanh(W1 x + b1),  a = w2 * (1 - h^2)

normalized to unit prior variance on the training points. Each suggestion:

1. *Local model.* The GP is fitted on the ``local_size`` observed candidates nearest the
   incumbent (the best observed candidate); pending candidates among them enter as
   fantasies at their posterior mean, so parallel workers spread out.
2. *Uncertainty-informed local exploration.* If the mean posterior standard deviation of
   the incumbent's ``neighbors`` nearest unobserved candidates exceeds
   ``explore_threshold`` (relative to the prior), the local gradient is poorly known: the
   neighbour maximizing ``mean + beta * std`` is proposed.
3. *Gradient step.* Otherwise the point ``x* + step * r * g / |g|`` is formed, ``g`` the
   gradient of the posterior mean at the incumbent ``x*`` and ``r`` the median distance to
   those neighbours, and *projected* to the nearest unobserved, non-pending candidate.
4. *Restart when stuck.* After ``patience`` observations without a new best, the search
   restarts from the best candidate with a fresh random MLP and a neighbourhood (local
   set and step) twice as wide, up to 8 times; a new best resets it.

The first ``num_initial`` candidates are uniformly random. Every step costs a few
`N x D` distance products plus a GP on at most ``local_size`` points: milliseconds on a
10,000-candidate pool.

Options: ``num_initial`` [10], ``width`` [64] hidden units, ``weight_scale`` [1.5]
standard deviation of ``W1``'s entries, ``local_size`` [40], ``neighbors`` [10],
``noise`` [0.01], ``step`` [1.0], ``explore_threshold`` [0.5], ``beta`` [1.0],
``patience`` [8].
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from promptbo.server.optim.pool_engines import (
    PoolEngine,
    gp_fit,
    gp_posterior,
    register_pool_strategy,
    standardize,
)
from promptbo.server.optim.spaces import derive_seed

_NET_TAG = 0x2090


class NtkKernel:
    """The empirical NTK of a random one-hidden-layer tanh MLP on `D`-dim inputs."""

    def __init__(self, dim: int, width: int, weight_scale: float, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.w1 = torch.randn(width, dim, generator=gen, dtype=torch.float64) * weight_scale
        self.b1 = torch.randn(width, generator=gen, dtype=torch.float64) * 0.1
        self.w2 = torch.randn(width, generator=gen, dtype=torch.float64)
        self.width = width

    def parts(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(h, a)``, each `n x m`, for inputs `n x D`."""
        h = torch.tanh(x @ self.w1.T + self.b1)
        return h, self.w2 * (1 - h * h)

    def __call__(self, xa: Tensor, xb: Tensor) -> Tensor:
        ha, aa = self.parts(xa)
        hb, ab = self.parts(xb)
        return (ha @ hb.T + (aa @ ab.T) * (xa @ xb.T + 1)) / self.width + 1

    def diag(self, x: Tensor) -> Tensor:
        h, a = self.parts(x)
        return ((h * h).sum(1) + (a * a).sum(1) * ((x * x).sum(1) + 1)) / self.width + 1


@register_pool_strategy("zopo")
class ZopoEngine(PoolEngine):
    """See the module docstring."""

    name = "zopo"
    OPTIONS: ClassVar[dict[str, tuple[type, Any, float, float]]] = {
        "num_initial": (int, 10, 1, 10_000),
        "width": (int, 64, 1, 4096),
        "weight_scale": (float, 1.5, 1e-3, 100.0),
        "local_size": (int, 40, 2, 10_000),
        "neighbors": (int, 10, 1, 10_000),
        "noise": (float, 0.01, 1e-6, 10.0),
        "step": (float, 1.0, 0.0, 100.0),
        "explore_threshold": (float, 0.5, 0.0, 10.0),
        "beta": (float, 1.0, 0.0, 100.0),
        "patience": (int, 8, 1, 10_000),
    }
    MAX_WIDEN = 8

    def __init__(self, embeddings: np.ndarray, options: dict[str, str], seed: int) -> None:
        super().__init__(embeddings, options, seed)
        self.best_y = -math.inf
        self.stall = 0
        self.restarts = 0
        self._kernel = self._new_kernel()
        #: Counts of the two kinds of model-based steps (for tests and diagnostics).
        self.steps = {"explore": 0, "gradient": 0}

    def _new_kernel(self) -> NtkKernel:
        o = self.opts
        seed = derive_seed(self.seed, self.restarts, _NET_TAG)
        return NtkKernel(int(self.x.shape[1]), o["width"], o["weight_scale"], seed)

    def _observed(self, index: int, value: float) -> None:
        if value > self.best_y:
            if self.best_y > -math.inf:
                self.stall = 0
                if self.restarts:
                    self.restarts = 0
                    self._kernel = self._new_kernel()
            self.best_y = value
        elif len(self.obs_y) >= self.opts["num_initial"]:
            self.stall += 1
            if self.stall >= self.opts["patience"]:
                self.stall = 0
                self.restarts += 1
                self._kernel = self._new_kernel()

    @property
    def widen(self) -> int:
        return min(2**self.restarts, self.MAX_WIDEN)

    def _pick(self, free: np.ndarray, pending: list[int], gen: np.random.Generator) -> int:
        o = self.opts
        if len(self.obs_idx) < o["num_initial"]:
            return self._random(free, gen)
        best = int(np.argmax(self.obs_y))
        inc = self.obs_idx[best]
        x_inc = self.x[inc]
        # 1. the local training set: observed candidates nearest the incumbent
        obs = torch.tensor(self.obs_idx)
        d_obs = (self.x[obs] - x_inc).norm(dim=1)
        take = torch.argsort(d_obs)[: o["local_size"] * self.widen]
        xs = self.x[obs[take]]
        ys = standardize(torch.tensor(self.obs_y, dtype=torch.float64)[take])
        kern = self._kernel
        k = kern(xs, xs)
        scale = float(k.diagonal().mean())
        chol, alpha, _ = gp_fit(k / scale, ys, o["noise"])
        if pending:
            xp = self.x[pending]
            near = (xp - x_inc).norm(dim=1) <= float(d_obs[take].max())
            if near.any():
                xp = xp[near]
                fantasy, _ = gp_posterior(kern(xp, xs) / scale, kern.diag(xp) / scale, chol, alpha)
                xs, ys = torch.cat([xs, xp]), torch.cat([ys, fantasy])
                chol, alpha, _ = gp_fit(kern(xs, xs) / scale, ys, o["noise"])
        # 2. the incumbent's unobserved neighbours and their uncertainty
        cand = np.flatnonzero(free)
        d_free = (self.x[cand] - x_inc).norm(dim=1)
        nb_pos = torch.argsort(d_free)[: o["neighbors"]]
        nb = cand[nb_pos.numpy()]
        x_nb = self.x[nb]
        prior = kern.diag(x_nb) / scale
        mean, std = gp_posterior(kern(x_nb, xs) / scale, prior, chol, alpha)
        rel_std = float((std / prior.sqrt()).mean())
        # 3. the gradient of the posterior mean at the incumbent
        x_req = x_inc.clone().unsqueeze(0).requires_grad_(True)
        mu = (kern(x_req, xs) / scale) @ alpha
        (grad,) = torch.autograd.grad(mu.sum(), x_req)
        g = grad.squeeze(0)
        if rel_std > o["explore_threshold"] or float(g.norm()) < 1e-12 or o["step"] == 0:
            self.steps["explore"] += 1
            return int(nb[int((mean + o["beta"] * std).argmax())])
        self.steps["gradient"] += 1
        radius = float(d_free[nb_pos].median()) * self.widen
        target = x_inc + o["step"] * radius * g / g.norm()
        # 4. projection to the nearest free candidate
        return int(cand[int((self.x[cand] - target).norm(dim=1).argmin())])
