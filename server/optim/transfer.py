"""Transfer learning from earlier studies: warm-start initialization and an RGPE surrogate.

A study created with ``transfer_from`` gets a :class:`TransferEngine` wrapped around its
strategy's engine. The wrapper is given each source study's observations (``SourceData``:
candidates in the target's encoding, values to maximize) and uses them in up to two ways
(the study's ``transfer`` mode):

``init``
    The study's first ``num_initial`` trials alternate between the sources' best prompts
    and the study's own Sobol design, a source prompt first (slots 0, 2, 4, ... of the
    initial design). Source prompts are ranked by the sum over sources of ``2 q - 1``,
    ``q`` being the prompt's rank quantile in that source (1 = its best), so a prompt good
    on several sources comes before one good on a single source, and a prompt a source
    found bad is pushed back. Hard prompts are projected into the target's filter (nearest
    allowed tokens), soft prompts into its subspace; pool candidates are taken as they
    are (a source on the same pool) or as the nearest candidate of this pool by their
    embeddings (a source on another pool embedded by the same model).

    The guard: once the study has observed at least one source prompt and one of its own
    design points, a source prompt is handed out only while the median value of the
    source prompts observed so far is at least the median value of its own design points
    observed so far; otherwise the slot goes to the Sobol design. So an unrelated source
    costs the study at most the first slot, plus the slots already handed out when the
    evidence arrives (asynchronous batches), while a related source keeps about half of
    the initial design. When the guard trips, a design shortened for transfer (``both``:
    ``min(num_initial, 5)``) gets back the strategy's own ``num_initial`` Sobol slots, as
    a cold study has. A rule of ranks on the study's own observations, with no threshold
    to tune.
``surrogate`` (``gp`` strategy only, on any space)
    After a short initial design (``min(num_initial, 5)`` points) the GP is replaced by a
    ranking-weighted ensemble (RGPE, Feurer et al. 2018) of one GP per source (fitted once
    on that source's standardized values) and the study's own GP. The ensemble's posterior
    is ``N(sum_i w_i mu_i, sum_i w_i^2 Sigma_i)``. The weights are recomputed at every
    suggestion from how well each model ranks the study's own observations: ``S`` samples
    of each source GP's posterior at the observed points and of the study GP's
    cross-validated predictions give ranking losses (misordered pairs); a model's weight is
    the share of samples in which it has the lowest loss (ties shared). A source whose
    median loss is above the study GP's median loss, or not below chance (half the pairs
    misordered), gets weight 0, so a source unrelated to the study fades out as its own
    observations accumulate.

    The study GP's predictions are ``NUM_FOLDS``-fold cross-validated with hyperparameters
    fitted without the held-out fold (point ``i`` is in fold ``i mod NUM_FOLDS``, so a
    fold's fitter warm-starts across suggestions): the closed-form leave-one-out of a GP
    whose hyperparameters were fitted on all points, RGPE's usual shortcut, leaks the
    held-out points through the hyperparameters. With ARD lengthscales on a hard-prompt
    space (tens of dimensions, a handful of points) that leak made the study GP rank its
    own points almost perfectly (Spearman 0.8 to 0.97, against 0.2 to 0.6 when refitted
    without the point), so it won every sample and even a related source's weight was 0.

    On a candidate pool the ``gp`` strategy gets the same ensemble (:class:`PoolEnsemble`):
    one exact GP per source on the pool candidates it observed, with the pool GP's kernel
    and grid, its predictions at every candidate computed once.
``both`` (default)
    Initialization from the sources (``min(num_initial, 5)`` prompts) and then the RGPE
    surrogate. With a strategy other than ``gp`` (on hard or soft prompts or a pool),
    ``both`` means ``init``.

Nothing here reads storage or knows gRPC: the server loads the sources' trials from its
storage (so transfer survives restarts) and passes them in.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from botorch.models import SingleTaskGP
from botorch.models.gpytorch import GPyTorchModel
from botorch.models.model import Model
from gpytorch.distributions import MultivariateNormal
from gpytorch.models import GP
from linear_operator.operators import SumLinearOperator
from torch import Tensor
from torch.nn import ModuleList

from promptbo.errors import InvalidArgumentError
from promptbo.server.optim.base import Engine
from promptbo.server.optim.box_engine import BoxEngine
from promptbo.server.optim.gp import GPEngine
from promptbo.server.optim.pool_engines import (
    GpPoolEngine,
    PoolEngine,
    gp_fit,
    gp_posterior,
    grid_hyperparameters,
    nearest_candidates,
    rbf,
    standardize,
)
from promptbo.server.optim.robust import robust_standardize
from promptbo.server.optim.spaces import derive_seed
from promptbo.server.optim.surrogate import (
    FitSettings,
    GPFitter,
    subset_indices,
)

log = logging.getLogger(__name__)

#: Initial points before the first RGPE model (the sources stand in for a longer design).
TRANSFER_INITIAL = 5
#: Posterior samples per model for the ranking losses.
NUM_RANK_SAMPLES = 256
#: At most this many of the study's observations are used to compute the weights.
MAX_RANK_POINTS = 100
#: At most this many observations per source GP.
MAX_SOURCE_POINTS = 256
#: Folds of the study GP's cross-validated predictions for the weights.
NUM_FOLDS = 5


@dataclass(frozen=True)
class SourceData:
    """One source study's observations in the target engine's encoding.

    ``candidates``: `n x L` vocabulary rows (hard), `n x (L*D)` vectors (soft) or `n x 1`
    pool indices; ``values``: `n` finite floats, larger is better. ``embeddings``: for a
    source that searched another pool embedded by the same model, the `n x D` embedding
    rows of its candidates (its ``candidates`` are then indices into *its* pool);
    :class:`TransferEngine` maps each to its nearest candidate of this pool (what
    transfer initialization hands out) and the pool ensemble fits the source's GP on
    their features in this pool's feature space (:meth:`.PoolEngine.features_of`).
    None otherwise.
    """

    name: str
    candidates: Tensor
    values: Tensor
    embeddings: Tensor | None = None


def rank_prompts(sources: Sequence[SourceData], keys: Sequence[Sequence[bytes]]) -> list[
    tuple[int, int]
]:
    """Source prompts ordered for transfer initialization, best first.

    Args:
        sources: the sources.
        keys: per source, the identity of each of its candidates (equal prompts of
            different sources have equal keys).

    Returns:
        ``(source index, row)`` of each distinct prompt (its first occurrence), sorted by
        the sum over sources of ``2 q - 1`` (``q``: the prompt's rank quantile there, 1 for
        the best), then by its best quantile, then by first occurrence.
    """
    score: dict[bytes, float] = {}
    best_q: dict[bytes, float] = {}
    first: dict[bytes, tuple[int, int]] = {}
    for s, (src, ks) in enumerate(zip(sources, keys, strict=True)):
        n = src.values.shape[0]
        if n == 0:
            continue
        order = torch.argsort(src.values, stable=True)
        q = torch.empty(n, dtype=torch.float64)
        q[order] = torch.arange(1, n + 1, dtype=torch.float64) / n
        per_source: dict[bytes, float] = {}
        for row, key in enumerate(ks):
            per_source[key] = max(per_source.get(key, 0.0), float(q[row]))
            first.setdefault(key, (s, row))
        for key, qk in per_source.items():
            score[key] = score.get(key, 0.0) + 2.0 * qk - 1.0
            best_q[key] = max(best_q.get(key, 0.0), qk)
    ordered = sorted(first, key=lambda k: (-score[k], -best_q[k], first[k]))
    return [first[k] for k in ordered]


def ranking_loss(samples: Tensor, y: Tensor) -> Tensor:
    """Misordered pairs of each sample (`S x n`) against the observed values (`n`): `S`."""
    pred = samples.unsqueeze(-1) < samples.unsqueeze(-2)
    true = (y.unsqueeze(-1) < y.unsqueeze(-2)).unsqueeze(0)
    return (pred ^ true).sum(dim=(-1, -2))


def loo_predictions(model: SingleTaskGP) -> tuple[Tensor, Tensor]:
    """Leave-one-out predictive means and variances (`n` each) of an exact GP at its own
    training points, with its fitted hyperparameters (closed form, in the model's
    transformed outcome scale)."""
    X = model.train_inputs[0]
    y = model.train_targets
    with torch.no_grad():
        K = model.covar_module(X).to_dense()
        noise = model.likelihood.noise.reshape(-1)[0]
        K = K + noise * torch.eye(K.shape[-1], dtype=K.dtype)
        L, info = torch.linalg.cholesky_ex(K)
        if int(info) != 0:
            K = K + 1e-6 * torch.eye(K.shape[-1], dtype=K.dtype)
            L = torch.linalg.cholesky(K)
        Kinv = torch.cholesky_inverse(L)
        resid = y - model.mean_module(X)
        alpha = Kinv @ resid
        diag = torch.diagonal(Kinv).clamp_min(1e-12)
        return y - alpha / diag, 1.0 / diag


def sample_posterior(model: torch.nn.Module, X: Tensor, num: int, gen: torch.Generator) -> Tensor:
    """``num`` joint samples (`num x n`) of ``model``'s posterior at ``X`` (`n x d`)."""
    with torch.no_grad():
        post = model.posterior(X)  # type: ignore[operator]
        mean = post.mean.reshape(-1)
        cov = post.distribution.covariance_matrix.reshape(mean.shape[0], mean.shape[0])
        return sample_normal(mean, cov, num, gen)


def sample_normal(mean: Tensor, cov: Tensor, num: int, gen: torch.Generator) -> Tensor:
    """``num`` samples (`num x n`) of ``N(mean, cov)`` (a tiny jitter; the diagonal alone
    when ``cov`` is not positive definite)."""
    eye = torch.eye(mean.shape[0], dtype=cov.dtype)
    L, info = torch.linalg.cholesky_ex(cov + 1e-8 * eye)
    if int(info) != 0:
        L = torch.diag(torch.diagonal(cov).clamp_min(1e-12).sqrt())
    z = torch.randn(num, mean.shape[0], generator=gen, dtype=mean.dtype)
    return mean + z @ L.T


def cv_predictions(
    X: Tensor, Y: Tensor, fitters: Sequence[GPFitter]
) -> tuple[Tensor, Tensor]:
    """Cross-validated predictive means and variances (`n` each) at ``X`` (`n x d`) for
    the values ``Y`` (`n`): point ``i`` is predicted by a GP fitted (hyperparameters
    included) by ``fitters[i % k]`` on the points of the other folds, ``k = len(fitters)``
    folds (fewer when ``n < k``). Predictions with observation noise, in ``Y``'s scale. A
    point whose fold leaves fewer than 2 training points gets ``Y``'s mean and variance.
    """

    def predict(f: int, Xt: Tensor, Yt: Tensor, Xh: Tensor) -> tuple[Tensor, Tensor]:
        model = fitters[f].fit(Xt, Yt)
        with torch.no_grad():
            post = model.posterior(Xh, observation_noise=True)
        return post.mean.reshape(-1).double(), post.variance.reshape(-1).double()

    return k_fold(X, Y, len(fitters), predict)


def k_fold(
    X: Tensor, Y: Tensor, folds: int,
    predict: Callable[[int, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]],
) -> tuple[Tensor, Tensor]:
    """Out-of-fold predictive means and variances (`n` each) of ``Y`` (`n`) at ``X``
    (`n x d`): point ``i`` is in fold ``i % k`` (``k = min(folds, n)``) and predicted by
    ``predict(fold, X_train, Y_train, X_held)`` from the other folds' points. A point whose
    fold leaves fewer than 2 training points gets ``Y``'s mean and variance."""
    n = X.shape[0]
    k = max(1, min(folds, n))
    fold = torch.arange(n) % k
    mean = torch.full((n,), float(Y.mean()), dtype=torch.float64)
    var = torch.full((n,), float(Y.var()) if n > 1 else 1.0, dtype=torch.float64)
    for f in range(k):
        held = fold == f
        if int((~held).sum()) < 2:
            continue
        m, v = predict(f, X[~held], Y[~held], X[held])
        mean[held] = m
        var[held] = v.clamp_min(1e-12)
    return mean, var


def rgpe_weights(
    sources: Sequence[torch.nn.Module], X: Tensor, y: Tensor, target_mean: Tensor,
    target_var: Tensor, num_samples: int, seed: int,
) -> Tensor:
    """RGPE weights of the sources' models and the target model (`len(sources) + 1`, the
    target last; they sum to 1), from ranking losses on the target's observations ``X``
    (`n x d`), ``y`` (`n`). ``target_mean`` and ``target_var`` (`n` each) are the target
    model's out-of-sample predictions there (:func:`cv_predictions` or
    :func:`loo_predictions`); the sources' posteriors are sampled jointly.

    A source whose median loss is above the target's median loss, or not below chance
    (half of the ordered pairs of distinct values misordered), gets weight 0.
    """
    gen = torch.Generator().manual_seed(seed % (2**63))
    samples = [sample_posterior(model, X, num_samples, gen) for model in sources]
    return weights_from_samples(samples, y, target_mean, target_var, gen)


def weights_from_samples(
    source_samples: Sequence[Tensor], y: Tensor, target_mean: Tensor, target_var: Tensor,
    gen: torch.Generator,
) -> Tensor:
    """:func:`rgpe_weights` from the sources' joint posterior samples at the target's
    observations (each `S x n`) instead of their models; ``gen`` draws the target's."""
    y = y.double().reshape(-1)
    losses = [ranking_loss(s, y).double() for s in source_samples]
    num_samples = source_samples[0].shape[0] if source_samples else NUM_RANK_SAMPLES
    mean, var = target_mean.double(), target_var.double()
    z = torch.randn(num_samples, mean.shape[0], generator=gen, dtype=mean.dtype)
    losses.append(ranking_loss(mean + z * var.sqrt(), y).double())
    loss = torch.stack(losses)  # (m + 1) x S
    target_median = loss[-1].median()
    chance = float((y.unsqueeze(-1) != y.unsqueeze(-2)).sum()) / 2
    for i in range(len(source_samples)):
        if loss[i].median() > target_median or loss[i].median() >= chance:
            loss[i] = float("inf")
    best = loss == loss.min(dim=0, keepdim=True).values
    share = best.double() / best.sum(dim=0, keepdim=True)
    return share.mean(dim=1)


class EnsembleModel(GP, GPyTorchModel):
    """``N(sum_i w_i mu_i(x), sum_i w_i^2 Sigma_i(x))`` over fitted single-output GPs."""

    _num_outputs = 1

    def __init__(self, models: Sequence[torch.nn.Module], weights: Tensor) -> None:
        super().__init__()
        self.models = ModuleList(models)
        self.weights = weights.double()

    @property
    def batch_shape(self) -> torch.Size:
        return torch.Size([])

    def forward(self, x: Tensor) -> MultivariateNormal:
        means, covs = [], []
        for w, model in zip(self.weights, self.models, strict=True):
            post = model.posterior(x)  # type: ignore[operator]
            means.append(w * post.mean.squeeze(-1))
            covs.append(post.distribution.lazy_covariance_matrix * (w * w))
        mean = torch.stack(means).sum(0)
        cov = covs[0] if len(covs) == 1 else SumLinearOperator(*covs)
        return MultivariateNormal(mean, cov)


@dataclass(frozen=True)
class _PoolSourceGP:
    """A source's exact GP on the pool (features `n x d`, the grid's lengthscale, the
    Cholesky factor and ``alpha`` of :func:`gp_fit`) and its posterior mean, standard
    deviation and coverage at every candidate (`N` each): the coverage is ``1 - sd^2``,
    the share of the prior variance its data explains there (0 far from its points)."""

    x: Tensor
    lengthscale: float
    chol: Tensor
    alpha: Tensor
    mu: Tensor
    sd: Tensor
    coverage: Tensor


class PoolEnsemble:
    """RGPE for the pool ``gp`` strategy (:class:`~.pool_engines.GpPoolEngine`), the
    counterpart of the box ensemble above on a candidate pool.

    One exact GP per source on the candidates it observed (on the same pool, their
    features; on another pool embedded by the same model, its candidates' features in
    this pool's feature space, from :attr:`SourceData.embeddings`; its values standardized, its
    lengthscale and noise chosen on the pool GP's grid), fitted once; its posterior mean
    and standard deviation at every pool candidate are computed once too. The weights
    come from ranking losses on the study's own observations, as for the box ensemble
    (the study GP's predictions ``NUM_FOLDS``-fold cross-validated, its grid refitted
    without the held-out fold), and are recomputed when the study has observed more.

    A source's weight applies where it has data: at candidate ``x`` source ``i`` counts
    with ``w_i c_i(x)``, ``c_i = 1 - sigma_i^2`` its coverage (the share of its prior
    variance its observations explain there), and the rest of its weight goes to the
    study's own GP. So at the free candidates the ensemble is ``N(sum_i w_i c_i mu_i +
    v mu, sum_i (w_i c_i)^2 sigma_i^2 + v^2 sigma^2)`` with ``v = w_study + sum_i w_i (1 -
    c_i)`` and ``mu, sigma`` the study GP's (pending fantasies included). Far from every
    source's points (another task's pool, an unexplored region) the study's own model
    decides, however well a source ranked the few points it has seen. ``on_weights``
    receives the weights (sources in order, then the study's) each time they change.
    """

    def __init__(
        self, engine: GpPoolEngine, sources: Sequence[SourceData], seed: int,
        on_weights: Callable[[Tensor], None],
    ) -> None:
        self.engine = engine
        self.seed = seed
        self.on_weights = on_weights
        #: Per source: its GP, or None when it has fewer than 2 distinct values here.
        self.models: list[_PoolSourceGP | None] = []
        x_all = engine.x
        for src in sources:
            y = src.values.double().reshape(-1)
            if src.embeddings is not None:  # another pool: the source's own points
                x = engine.features_of(src.embeddings).to(x_all.dtype)
            else:
                idx = src.candidates.reshape(-1).long()
                ok = (idx >= 0) & (idx < engine.size)
                x, y = x_all[idx[ok]], y[ok]
            if y.numel() > MAX_SOURCE_POINTS:
                keep = subset_indices(y, MAX_SOURCE_POINTS)
                x, y = x[keep], y[keep]
            if y.numel() < 2 or float(y.std()) == 0.0:
                self.models.append(None)
                continue
            y = standardize(y)
            ls, noise = grid_hyperparameters(x, y)
            chol, alpha, _ = gp_fit(rbf(x, x, ls), y, noise)
            ones = torch.ones(engine.size, dtype=x.dtype)
            mu, sd = gp_posterior(rbf(x_all, x, ls), ones, chol, alpha)
            coverage = (1.0 - sd.square()).clamp(0.0, 1.0)
            self.models.append(_PoolSourceGP(x, ls, chol, alpha, mu, sd, coverage))
        self._w: Tensor | None = None
        self._at = -1

    def __call__(self, cand: np.ndarray, mean: Tensor, std: Tensor) -> tuple[Tensor, Tensor]:
        w = self.weights()
        if float(w[:-1].sum()) == 0.0:
            return mean, std
        idx = torch.as_tensor(cand, dtype=torch.long)
        own = torch.full_like(mean, float(w[-1]))  # the study GP's weight per candidate
        out_mean = torch.zeros_like(mean)
        out_var = torch.zeros_like(mean)
        for m, wi in zip(self.models, w[:-1].tolist(), strict=True):
            if m is not None and wi > 0:
                local = wi * m.coverage[idx]  # where the source has no data, its share
                own = own + (wi - local)      # goes to the study's own GP
                out_mean = out_mean + local * m.mu[idx]
                out_var = out_var + local.square() * m.sd[idx].square()
        out_mean = out_mean + own * mean
        out_var = out_var + own.square() * std.square()
        return out_mean, out_var.clamp_min(1e-12).sqrt()

    def weights(self) -> Tensor:
        """The current weights (`len(sources) + 1`, the study's last; they sum to 1)."""
        engine = self.engine
        n = engine.num_observed
        if self._w is not None and self._at == n:
            return self._w
        ys = standardize(torch.tensor(engine.obs_y, dtype=torch.float64))
        xs = engine.x[engine.obs_idx]
        if n > MAX_RANK_POINTS:
            keep = subset_indices(ys, MAX_RANK_POINTS)
            xs, ys = xs[keep], ys[keep]
        usable = [m for m in self.models if m is not None]
        if usable and n >= 2:
            gen = torch.Generator().manual_seed(derive_seed(self.seed, n, 0x9E1F) % (2**63))
            samples = [self._joint_samples(m, xs, gen) for m in usable]
            mean, var = self._cv(xs, ys)
            w_usable = weights_from_samples(samples, ys, mean, var, gen).tolist()
        else:
            w_usable = [0.0] * len(usable) + [1.0]
        it = iter(w_usable[:-1])
        full = [next(it) if m is not None else 0.0 for m in self.models]
        self._w = torch.tensor(full + [w_usable[-1]], dtype=torch.float64)
        self._at = n
        self.on_weights(self._w)
        return self._w

    @staticmethod
    def _joint_samples(m: _PoolSourceGP, xq: Tensor, gen: torch.Generator) -> Tensor:
        """`NUM_RANK_SAMPLES x n` joint posterior samples of a source GP at ``xq``."""
        ks = rbf(xq, m.x, m.lengthscale)
        v = torch.linalg.solve_triangular(m.chol, ks.T, upper=False)
        cov = rbf(xq, xq, m.lengthscale) - v.T @ v
        return sample_normal(ks @ m.alpha, cov, NUM_RANK_SAMPLES, gen)

    @staticmethod
    def _cv(xs: Tensor, ys: Tensor) -> tuple[Tensor, Tensor]:
        """The study GP's ``NUM_FOLDS``-fold predictions (with noise) at its points."""

        def predict(fold: int, xt: Tensor, yt: Tensor, xh: Tensor) -> tuple[Tensor, Tensor]:
            ls, noise = grid_hyperparameters(xt, yt)
            chol, alpha, _ = gp_fit(rbf(xt, xt, ls), yt, noise)
            ones = torch.ones(xh.shape[0], dtype=xs.dtype)
            m, sd = gp_posterior(rbf(xh, xt, ls), ones, chol, alpha)
            return m, sd.square() + noise

        return k_fold(xs, ys, NUM_FOLDS, predict)


class TransferEngine(Engine):
    """Wraps a strategy's engine with transfer from source studies (see the module doc).

    Args:
        inner: the study's own engine (a unit-box engine, or a pool engine: then ``init``
            only).
        sources: the sources' observations, in ``inner``'s encoding.
        mode: ``both``, ``init`` or ``surrogate``.
        strategy: the study's strategy name (the surrogate needs ``gp``).
    """

    def __init__(
        self, inner: Engine, sources: Sequence[SourceData], mode: str, strategy: str
    ) -> None:
        if not isinstance(inner, (BoxEngine, PoolEngine)):
            raise InvalidArgumentError(f"strategy {strategy!r} does not support transfer")
        surrogate = mode in ("both", "surrogate") and type(inner) in (GPEngine, GpPoolEngine)
        if mode == "surrogate" and not surrogate:
            raise InvalidArgumentError(
                f"transfer=surrogate needs the gp strategy, not {strategy!r}; use "
                f"transfer=init (or both, which means init here)"
            )
        self.inner = inner
        self.mode = mode
        if isinstance(inner, PoolEngine):
            sources = [self._on_this_pool(inner, s) for s in sources]
        self.sources = [s for s in sources if s.values.shape[0]]
        self.names = [s.name for s in sources]
        self.counts = {s.name: int(s.values.shape[0]) for s in sources}
        num_initial = int(getattr(inner, "num_initial", 10))
        #: The strategy's own initial design length (restored when the guard trips).
        self.own_initial = num_initial
        init = mode in ("both", "init")
        if surrogate and isinstance(inner, GPEngine):
            num_initial = min(num_initial, TRANSFER_INITIAL)
            inner.num_initial = num_initial
            if self.sources:
                inner.surrogate = self._ensemble
        elif surrogate and isinstance(inner, GpPoolEngine):
            num_initial = min(num_initial, TRANSFER_INITIAL)
            inner.opts["num_initial"] = num_initial
            if self.sources:
                inner.ensemble = PoolEnsemble(inner, self.sources,
                                              derive_seed(inner.seed, 0x26BE),
                                              self._record_weights)
        #: Slots of the initial design (source prompts go to the even ones, see the guard).
        self.init_count = num_initial if init else 0
        self.init_candidates = self._initial_candidates() if init else None
        self._source_keys: set[bytes] = (
            set() if self.init_candidates is None else set(self._keys(self.init_candidates))
        )
        self._source_models: list[SingleTaskGP | None] | None = None
        self._fold_fitters: list[GPFitter] = []
        self._transferred: set[bytes] = set()
        self._design: set[bytes] = set()
        self._observed: set[bytes] = set()
        #: Observed values of source prompts and of the study's own initial design points.
        self.source_values: list[float] = []
        self.design_values: list[float] = []
        #: Current weight per source name (None until the first model is built).
        self.weights: dict[str, float] | None = None
        self.target_weight: float | None = None

    # --- Engine API ---------------------------------------------------------------------
    @property
    def num_suggested(self) -> int:
        return self.inner.num_suggested

    @num_suggested.setter
    def num_suggested(self, value: int) -> None:
        self.inner.num_suggested = value

    @property
    def cheap(self) -> bool:  # type: ignore[override]
        return self.inner.cheap

    def _keys(self, candidates: Tensor) -> list[bytes]:
        """The identity of each candidate (equal prompts, equal keys)."""
        if isinstance(self.inner, PoolEngine):
            return self.inner.keys(candidates)
        assert isinstance(self.inner, BoxEngine)
        return self.inner.box.keys(candidates)

    def _num_observed(self) -> int:
        assert isinstance(self.inner, (BoxEngine, PoolEngine))
        return self.inner.num_observed

    def observe(self, candidates: Tensor, values: Tensor) -> None:
        inner = self.inner
        before = self._num_observed()
        inner.observe(candidates, values)
        if self.init_candidates is None:
            return
        keys = self._keys(candidates)
        self._observed.update(keys)
        flat = torch.as_tensor(values, dtype=torch.float64).reshape(-1).tolist()
        for i, (key, value) in enumerate(zip(keys, flat, strict=True)):
            # What this engine handed out decides; replayed history (after a restart)
            # counts a prompt among the source candidates as a source prompt.
            if key in self._transferred:
                self.source_values.append(value)
            elif key in self._design:
                self.design_values.append(value)
            elif key in self._source_keys:
                self.source_values.append(value)
            elif before + i < self.init_count:
                self.design_values.append(value)

    def sources_rank_well(self) -> bool:
        """The guard (see the module doc): no evidence yet, or the median of the source
        prompts observed so far is at least the median of the study's own design points.
        When it fails, the initial design gets back the strategy's own length (the
        shortened transfer design assumed the sources would stand in for it)."""
        if not self.source_values or not self.design_values:
            return True
        if statistics.median(self.source_values) >= statistics.median(self.design_values):
            return True
        if self.init_count < self.own_initial:
            self.init_count = self.own_initial
            if isinstance(self.inner, GPEngine):
                self.inner.num_initial = self.own_initial
            elif isinstance(self.inner, GpPoolEngine):
                self.inner.opts["num_initial"] = self.own_initial
        return False

    def suggest(self, n: int, pending: Tensor | None = None) -> Tensor:
        inner = self.inner
        inner.should_stop = self.should_stop
        if self.init_candidates is not None:
            self.sources_rank_well()  # a tripped guard restores the initial design first
        taken = self._take_initial(n, pending)
        own = n - len(taken)
        if own <= 0:
            return torch.stack([row for _, row in taken])
        if taken:
            rows = torch.stack([row for _, row in taken])
            pending = rows if pending is None else torch.cat([pending, rows])
        design = self._num_observed() < self.init_count
        rest = inner.suggest(own, pending)
        if design and self.init_candidates is not None:
            self._design.update(self._keys(rest))
        if not taken:
            return rest
        # In slot order: the source prompts on their slots, the strategy's rows between.
        out: list[Tensor] = []
        it = iter(rest)
        slots = dict(taken)
        for i in range(n):
            out.append(slots[i] if i in slots else next(it))
        return torch.stack(out)

    def is_transferred(self, candidates: Tensor) -> list[bool]:
        """Whether each candidate was handed out as a source's prompt (init)."""
        return [k in self._transferred for k in self._keys(candidates)]

    # --- initialization ---------------------------------------------------------------
    @staticmethod
    def _on_this_pool(inner: PoolEngine, source: SourceData) -> SourceData:
        """A source on another pool (``embeddings`` given) with each candidate replaced by
        the nearest candidate of this pool by cosine; other sources as they are."""
        if source.embeddings is None:
            return source
        near = nearest_candidates(inner.x, inner.features_of(source.embeddings))
        return replace(source, candidates=near)

    def _initial_candidates(self) -> Tensor | None:
        inner = self.inner
        if not self.sources:
            return None
        keys = [self._keys(s.candidates) for s in self.sources]
        order = rank_prompts(self.sources, keys)[: 4 * max(self.init_count, 1)]
        if isinstance(inner, PoolEngine):  # indices (another pool's: nearest ones here)
            order = [(s, r) for s, r in order
                     if 0 <= int(self.sources[s].candidates[r, 0]) < inner.size]
        if not order:
            return None
        raw = torch.stack([self.sources[s].candidates[r] for s, r in order])
        if isinstance(inner, PoolEngine):
            return raw.long()
        assert isinstance(inner, BoxEngine)
        gen = torch.Generator().manual_seed(derive_seed(inner.seed, 0x7A5F))
        # Into the target's space: nearest allowed tokens / the target's subspace.
        return inner.box.project(inner.box.to_unit(raw), set(), gen)[0]

    def _take_initial(self, n: int, pending: Tensor | None) -> list[tuple[int, Tensor]]:
        """Source prompts for this request: ``(position in the request, row)`` for each
        even slot of the initial design among the request's, while the guard holds."""
        cands = self.init_candidates
        npending = 0 if pending is None else pending.shape[0]
        first = self._num_observed() + npending  # the initial-design slot of position 0
        slots = [i for i in range(n) if first + i < self.init_count and (first + i) % 2 == 0]
        if cands is None or not slots or not self.sources_rank_well():
            return []
        busy = self._observed | self._transferred
        if pending is not None and npending:
            busy.update(self._keys(pending))
        picked: list[tuple[int, Tensor]] = []
        for row, key in zip(cands, self._keys(cands), strict=True):
            if len(picked) >= len(slots):
                break
            if key not in busy:
                picked.append((slots[len(picked)], row))
                busy.add(key)
                self._transferred.add(key)
        return picked

    # --- surrogate --------------------------------------------------------------------
    def _record_weights(self, w: Tensor) -> None:
        """The pool ensemble's weights (sources in order, the study's last)."""
        self.weights = dict.fromkeys(self.names, 0.0)
        for src, wi in zip(self.sources, w[:-1].tolist(), strict=True):
            self.weights[src.name] = float(wi)
        self.target_weight = float(w[-1])

    def _fit_sources(self) -> list[SingleTaskGP | None]:
        inner = self.inner
        assert isinstance(inner, GPEngine)
        models: list[SingleTaskGP | None] = []
        for src in self.sources:
            y = src.values.double()
            X = inner.box.to_unit(src.candidates)
            keep = subset_indices(y, MAX_SOURCE_POINTS)
            X, y = X[keep], y[keep]
            if y.shape[0] < 2:
                models.append(None)
                continue
            try:
                fitter = GPFitter(FitSettings(full_maxiter=inner.opts["full_maxiter"]))
                models.append(fitter.fit(X, robust_standardize(y)))
            except (RuntimeError, ValueError, ArithmeticError) as exc:
                log.warning("transfer source %s: GP fit failed (%s); not used", src.name, exc)
                models.append(None)
        return models

    def _ensemble(self, X: Tensor, Y: Tensor) -> Model:
        inner = self.inner
        assert isinstance(inner, GPEngine)
        target = inner.fitter.fit(X, Y)
        if self._source_models is None:
            self._source_models = self._fit_sources()
        usable = [(s, m) for s, m in zip(self.sources, self._source_models, strict=True)
                  if m is not None]
        Xr, Yr = X, Y
        if X.shape[0] > MAX_RANK_POINTS:
            keep = subset_indices(Y, MAX_RANK_POINTS)
            Xr, Yr = X[keep], Y[keep]
        seed = derive_seed(inner.seed, inner.num_suggested, 0x26BE)
        if usable:
            if not self._fold_fitters:
                settings = FitSettings(full_maxiter=inner.opts["full_maxiter"])
                self._fold_fitters = [GPFitter(settings) for _ in range(NUM_FOLDS)]
            mean, var = cv_predictions(Xr, Yr, self._fold_fitters)
            w = rgpe_weights([m for _, m in usable], Xr, Yr, mean, var, NUM_RANK_SAMPLES,
                             seed)
        else:
            w = torch.ones(1, dtype=torch.float64)
        weights = dict.fromkeys(self.names, 0.0)
        for (src, _), wi in zip(usable, w[:-1].tolist(), strict=True):
            weights[src.name] = wi
        self.weights, self.target_weight = weights, float(w[-1])
        chosen = [(m, wi) for (_, m), wi in zip(usable, w[:-1], strict=True) if wi > 0]
        if not chosen:
            return target
        models = [m for m, _ in chosen] + [target]
        return EnsembleModel(models, torch.stack([wi for _, wi in chosen] + [w[-1]]))
