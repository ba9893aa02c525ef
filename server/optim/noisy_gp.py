"""Heteroskedastic observations: pooling a prompt's evaluations and a fixed-noise GP.

A prompt scored on a minibatch of ``n`` examples gives a value with noise variance
``se^2``, the square of the standard error the evaluator computed from its per-example
scores. A prompt scored several times (on fresh examples each time) is one point of the
surrogate, its values pooled by example count (:func:`pool_by_key`). BoTorch's
``SingleTaskGP`` with ``train_Yvar`` then treats each point's noise as known
(:func:`fit_fixed_noise_gp`), so a lucky 1.0 on 8 examples is believed much less than
0.8 on 256.

The variances are floored (:func:`noise_floor`): a minibatch whose examples all scored
alike (every answer right) has a standard error of 0, which would make the GP
interpolate it exactly. The floor is the study's typical per-example variance divided by
the point's example count.
"""

from __future__ import annotations

import logging

import torch
from botorch.models import SingleTaskGP
from botorch.models.transforms.outcome import Standardize
from botorch.optim.fit import fit_gpytorch_mll_scipy
from gpytorch.mlls import ExactMarginalLogLikelihood
from torch import Tensor

from promptbo.server.optim.acquisition import quiet
from promptbo.server.optim.surrogate import hyperparameters

log = logging.getLogger(__name__)


def noise_floor(variances: Tensor, counts: Tensor, values: Tensor) -> Tensor:
    """Per-point noise variances (`n`), never below the typical per-example variance over
    the point's example count.

    Args:
        variances: told noise variances (`n`, NaN where unknown).
        counts: examples behind each point (`n`, >= 1).
        values: the points' values (`n`), used when no variance was told at all.
    """
    counts = counts.double().clamp(min=1)
    known = torch.isfinite(variances)
    if known.any():
        per_example = (variances[known] * counts[known]).median()
    else:
        spread = values.var() if values.numel() > 1 else values.new_tensor(1.0)
        per_example = spread * counts.median()
    per_example = per_example.clamp(min=1e-6)
    floor = per_example / counts
    told = torch.where(known, variances, floor)
    return torch.maximum(told, 0.25 * floor)


def pool_by_key(
    keys: list[bytes], values: Tensor, variances: Tensor, counts: Tensor
) -> tuple[list[int], Tensor, Tensor, Tensor]:
    """Merges the observations of equal keys (a prompt scored several times).

    Returns ``(first, mean, var, n)``: for each distinct key (in order of first
    appearance) the index of its first observation, the count-weighted mean value, the
    variance of that mean (from the floored per-observation variances) and the total
    example count.
    """
    groups: dict[bytes, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    first, means, vars_, ns = [], [], [], []
    w_all = counts.double().clamp(min=1)
    for idx in groups.values():
        ii = torch.tensor(idx)
        w = w_all[ii]
        total = w.sum()
        first.append(idx[0])
        means.append(float((w * values[ii]).sum() / total))
        vars_.append(float(((w**2) * variances[ii]).sum() / total**2))
        ns.append(float(total))
    dt = torch.float64
    return (first, torch.tensor(means, dtype=dt), torch.tensor(vars_, dtype=dt),
            torch.tensor(ns, dtype=dt))


def fit_fixed_noise_gp(
    X: Tensor, Y: Tensor, Yvar: Tensor, state: dict[str, Tensor] | None = None,
    maxiter: int = 100,
) -> SingleTaskGP:
    """A GP on `n x d` unit-box inputs with known per-point noise variances (`n`).

    Hyperparameters start from ``state`` (a previous fit's :func:`hyperparameters`, for a
    warm start) and are fitted by maximum marginal likelihood with at most ``maxiter``
    L-BFGS-B iterations (0: no fit); a failed fit keeps where it started.
    """
    X = X.double()
    Y = Y.double().reshape(-1, 1)
    Yvar = Yvar.double().reshape(-1, 1).clamp(min=1e-10)
    model = SingleTaskGP(X, Y, train_Yvar=Yvar, outcome_transform=Standardize(m=1))
    if state is not None:
        model.load_state_dict(state, strict=False)
    if maxiter > 0:
        mll = ExactMarginalLogLikelihood(model.likelihood, model)
        before = hyperparameters(model)
        mll.train()
        with quiet():
            try:
                fit_gpytorch_mll_scipy(mll, options={"maxiter": maxiter})
            except Exception as exc:  # numerical trouble: keep the starting values
                log.warning("fixed-noise GP fit failed (%s); keeping previous values", exc)
                model.load_state_dict(before, strict=False)
        mll.eval()
    model.eval()
    return model


def posterior_mean_sd(model: SingleTaskGP, X: Tensor) -> tuple[Tensor, Tensor]:
    """The posterior mean and standard deviation of the latent objective at `m x d`
    points (the noise-free value, not a new noisy observation)."""
    with torch.no_grad(), quiet():
        post = model.posterior(X.double())
        mean = post.mean.squeeze(-1)
        sd = post.variance.clamp(min=0).sqrt().squeeze(-1)
    return mean, sd


#: The two-sided 95% quantile of the standard normal.
Z95 = 1.959963984540054
