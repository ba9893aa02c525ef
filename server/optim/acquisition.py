"""Acquisition functions and their optimization in a box, without global random state.

:func:`log_nei` builds qLogNoisyExpectedImprovement with seeded quasi-Monte-Carlo
samplers (the baseline is pruned with a seeded sampler too) and falls back to qLogEI when
it cannot be built. :func:`optimize_in_box` scores a pool of starting points, starts
L-BFGS-B from the best ones and returns every restart's result, so that callers can
project the results to prompts and re-score the projected points. Nothing here draws from
the global torch RNG, so suggestions stay reproducible with several studies suggesting
in parallel threads.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from botorch.acquisition import AcquisitionFunction
from botorch.acquisition.logei import qLogExpectedImprovement, qLogNoisyExpectedImprovement
from botorch.acquisition.utils import prune_inferior_points
from botorch.exceptions.warnings import BotorchWarning
from botorch.models.model import Model
from botorch.optim import optimize_acqf
from botorch.sampling import SobolQMCNormalSampler
from linear_operator.utils.warnings import NumericalWarning
from torch import Tensor
from torch.quasirandom import SobolEngine

from promptbo.server.optim.spaces import derive_seed

log = logging.getLogger(__name__)

#: SobolEngine's largest supported dimension.
SOBOL_MAX_DIM = 21201
#: Pool points scored per batch (bounds memory for large pools and pending sets).
_SCORE_CHUNK = 256


@contextmanager
def quiet() -> Iterator[None]:
    """Silences BoTorch/linear-operator numerical and optimizer warnings (capped
    iterations and added jitter are expected here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BotorchWarning)
        warnings.simplefilter("ignore", NumericalWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


def log_nei(
    model: Model,
    X_baseline: Tensor,
    Y_baseline: Tensor,
    X_pending: Tensor | None,
    seed: int,
    mc_samples: int = 128,
) -> AcquisitionFunction:
    """qLogNEI over `n x d` observed inputs with `p x d` pending inputs (or None).

    Falls back to qLogEI with the best observed value as incumbent if qLogNEI fails.
    """
    sampler = SobolQMCNormalSampler(torch.Size([mc_samples]), seed=derive_seed(seed, 11))
    pending = X_pending if X_pending is not None and X_pending.shape[0] else None
    try:
        baseline = prune_inferior_points(
            model,
            X_baseline,
            sampler=SobolQMCNormalSampler(torch.Size([512]), seed=derive_seed(seed, 12)),
        )
        return qLogNoisyExpectedImprovement(
            model, baseline, sampler=sampler, X_pending=pending, prune_baseline=False
        )
    except Exception as exc:  # pragma: no cover - numerical corner cases
        log.warning("qLogNEI failed (%s); using qLogEI", exc)
        return qLogExpectedImprovement(
            model, best_f=Y_baseline.max(), sampler=sampler, X_pending=pending
        )


def sobol_points(n: int, dim: int, seed: int, skip: int = 0) -> Tensor:
    """``n`` scrambled Sobol points in `[0, 1]^dim` (`n x dim`, float64), skipping the
    first ``skip`` of the sequence; uniform random points above Sobol's dimension limit."""
    if dim > SOBOL_MAX_DIM:
        g = torch.Generator().manual_seed(derive_seed(seed, skip))
        return torch.rand(n, dim, generator=g, dtype=torch.float64)
    engine = SobolEngine(dim, scramble=True, seed=seed % (2**31))
    if skip:
        engine.fast_forward(skip)
    return engine.draw(n, dtype=torch.float64)


def score(acq: AcquisitionFunction, X: Tensor) -> Tensor:
    """Acquisition values of `b x q x d` batches (`b`), computed in chunks without grad."""
    out = []
    with torch.no_grad():
        for start in range(0, X.shape[0], _SCORE_CHUNK):
            out.append(acq(X[start : start + _SCORE_CHUNK]))
    return torch.cat(out) if out else torch.empty(0, dtype=X.dtype)


def optimize_in_box(
    acq: AcquisitionFunction,
    bounds: Tensor,
    pool: Tensor,
    q: int,
    num_restarts: int,
    maxiter: int,
) -> tuple[Tensor, Tensor]:
    """Maximizes ``acq`` over q-batches in ``bounds`` (`2 x d`).

    The pool (`m x d`, inside the bounds) is scored point by point; the best
    ``num_restarts * q`` points, dealt round-robin into ``num_restarts`` q-batches, start
    L-BFGS-B runs of at most ``maxiter`` iterations.

    Returns:
        ``(starts, results)``, both `r x q x d`: the starting batches and where each run
        ended (``r = min(num_restarts, m // q)``).
    """
    values = score(acq, pool.unsqueeze(1))
    restarts = max(1, min(num_restarts, pool.shape[0] // q))
    top = torch.argsort(values, descending=True, stable=True)[: restarts * q]
    starts = pool[top].reshape(q, restarts, -1).transpose(0, 1).contiguous()
    if maxiter <= 0:
        return starts, starts.clone()
    try:
        results, _ = optimize_acqf(
            acq,
            bounds=bounds,
            q=q,
            num_restarts=restarts,
            batch_initial_conditions=starts,
            options={"maxiter": maxiter, "batch_limit": restarts},
            return_best_only=False,
            retry_on_optimization_warning=False,
        )
    except Exception as exc:  # pragma: no cover - numerical corner cases
        log.warning("acquisition optimization failed (%s); using its starting points", exc)
        results = starts.clone()
    return starts, results.detach().reshape(restarts, q, -1)
