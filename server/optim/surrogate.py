"""Gaussian-process surrogates with warm-started, capped hyperparameter fits.

:class:`GPFitter` builds BoTorch ``SingleTaskGP`` models (float64, ``Standardize``
outcome transform, BoTorch's default dimension-scaled priors) on unit-box inputs and keeps
their hyperparameters between calls. A fit is

- *full* (up to ``full_maxiter`` L-BFGS-B iterations) on the first call and whenever
  ``refit_every`` observations arrived since the last full fit;
- *warm* (up to ``warm_maxiter`` iterations, starting at the previous optimum) otherwise.

With more than ``fit_subset`` points the hyperparameters are fitted on a deterministic
subset (the best quarter plus evenly spaced others) and the model is then conditioned on
all points, so the cost of a suggestion grows slowly with the number of observations.
Exact (Cholesky) inference is used up to :data:`MAX_CHOLESKY` points (GPyTorch would
switch to stochastic CG at 800), which keeps fits and acquisitions deterministic. Fitting uses no
random numbers: equal inputs and history give equal models.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import gpytorch
import torch
from botorch.models import SingleTaskGP
from botorch.models.transforms.outcome import Standardize
from botorch.optim.fit import fit_gpytorch_mll_scipy
from gpytorch.mlls import ExactMarginalLogLikelihood
from torch import Tensor

from promptbo.server import telemetry

log = logging.getLogger(__name__)

#: Exact inference up to this many points (GPyTorch's default switches to CG at 800).
#: GPyTorch settings are process-wide class attributes, not thread-local, so a context
#: manager per call would race between studies suggesting in parallel threads; the
#: engines set the process default once instead.
MAX_CHOLESKY = 20_000
gpytorch.settings.max_cholesky_size._set_value(MAX_CHOLESKY)


@dataclass
class FitSettings:
    full_maxiter: int = 100
    warm_maxiter: int = 8
    refit_every: int = 10
    fit_subset: int = 256


class GPFitter:
    """Fits GPs on `n x d` unit-box inputs and `n` values, warm-starting each fit."""

    def __init__(self, settings: FitSettings | None = None) -> None:
        self.settings = settings or FitSettings()
        self._state: dict[str, Tensor] | None = None
        self._last_full_n = 0
        self.num_fits = 0

    def fit(self, X: Tensor, Y: Tensor) -> SingleTaskGP:
        """A GP on all of ``X`` (`n x d`) and ``Y`` (`n`), hyperparameters refreshed."""
        X = X.double()
        Y = Y.double().reshape(-1, 1)
        n = X.shape[0]
        s = self.settings
        full = self._state is None or n - self._last_full_n >= s.refit_every
        maxiter = s.full_maxiter if full else s.warm_maxiter
        subset = subset_indices(Y.squeeze(-1), s.fit_subset)
        with telemetry.fit_timer():
            if maxiter > 0:
                fit_model = self._model(X[subset], Y[subset])
                self._optimize(fit_model, maxiter)
                self._state = hyperparameters(fit_model)
                self.num_fits += 1
                if full:
                    self._last_full_n = n
            model = self._model(X, Y)
            model.eval()
        return model

    def _model(self, X: Tensor, Y: Tensor) -> SingleTaskGP:
        model = SingleTaskGP(X, Y, outcome_transform=Standardize(m=1))
        if self._state is not None:
            model.load_state_dict(self._state, strict=False)
        return model

    def _optimize(self, model: SingleTaskGP, maxiter: int) -> None:
        mll = ExactMarginalLogLikelihood(model.likelihood, model)
        before = hyperparameters(model)
        mll.train()
        try:
            fit_gpytorch_mll_scipy(mll, options={"maxiter": maxiter})
        except Exception as exc:  # numerical trouble: keep the previous hyperparameters
            log.warning("GP hyperparameter fit failed (%s); keeping previous values", exc)
            model.load_state_dict(before, strict=False)
        mll.eval()


def hyperparameters(model: SingleTaskGP) -> dict[str, Tensor]:
    """The model's learnable state without data-dependent buffers (training data, outcome
    transform statistics), to seed the next fit."""
    return {
        k: v.detach().clone()
        for k, v in model.state_dict().items()
        if not k.startswith("outcome_transform") and "train" not in k
    }


def subset_indices(y: Tensor, size: int) -> Tensor:
    """At most ``size`` indices of ``y`` (`n`): the best quarter plus evenly spaced others,
    sorted; all indices when ``n <= size``."""
    n = y.shape[0]
    if n <= size:
        return torch.arange(n)
    top = max(1, size // 4)
    best = torch.argsort(y, descending=True, stable=True)[:top]
    rest_mask = torch.ones(n, dtype=torch.bool)
    rest_mask[best] = False
    rest = torch.nonzero(rest_mask).squeeze(-1)
    picks = torch.linspace(0, len(rest) - 1, size - top).round().long()
    return torch.sort(torch.cat([best, rest[picks]])).values
