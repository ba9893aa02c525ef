"""Strategies on candidate pools (:class:`~promptbo.server.domain.PoolSpace`).

A pool study picks one of ``N`` uploaded candidates per trial. Its engines see the pool's
`N x D` embedding table and encode candidates as `n x 1` LongTensors of pool indices.
They never return a pending candidate or one already observed while unobserved ones
remain; once every candidate was observed they re-propose the best ones.

=========  ===============================================================================
name       what it does
=========  ===============================================================================
``gp``     exact GP (RBF kernel on the embeddings, hyperparameters by marginal likelihood
           over a grid), expected improvement maximized over the unobserved pool
``zopo``   localized zeroth-order search with an NTK-GP (:mod:`.zopo`)
``random`` uniformly random unobserved candidates
=========  ===============================================================================

Embeddings are used as *features*: centred on the pool mean and scaled to unit length
(:func:`pool_features`), so distances are comparable across embedding models.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from promptbo.errors import InvalidArgumentError
from promptbo.server import telemetry
from promptbo.server.optim.base import Engine
from promptbo.server.optim.box_engine import read_options
from promptbo.server.optim.spaces import derive_seed

PoolFactory = Callable[..., Engine]
POOL_STRATEGIES: dict[str, PoolFactory] = {}

#: Tag mixed into the seed of every suggestion's random stream.
_SEED_TAG = 0x9001


def register_pool_strategy(name: str) -> Callable[[PoolFactory], PoolFactory]:
    """Class decorator registering a pool strategy under ``name``."""

    def deco(factory: PoolFactory) -> PoolFactory:
        if name in POOL_STRATEGIES:
            raise ValueError(f"pool strategy {name!r} is already registered")
        POOL_STRATEGIES[name] = factory
        return factory

    return deco


def pool_strategy_names() -> list[str]:
    from promptbo.server.optim import zopo  # noqa: F401 - registers zopo

    return sorted(POOL_STRATEGIES)


def make_pool_engine(
    strategy: str, options: dict[str, str], seed: int, embeddings: np.ndarray | None
) -> Engine:
    """The engine of a pool study; ``embeddings`` is the pool's `N x D` table."""
    names = pool_strategy_names()
    factory = POOL_STRATEGIES.get(strategy or "gp")
    if factory is None:
        raise InvalidArgumentError(
            f"strategy {strategy!r} does not search candidate pools; choose one of "
            f"{', '.join(names)}"
        )
    if embeddings is None:
        raise InvalidArgumentError("a pool engine needs the pool's embeddings")
    return factory(embeddings=embeddings, options=dict(options), seed=seed)


def pool_features(embeddings: np.ndarray, center: Tensor | None = None) -> Tensor:
    """`N x D` float64: the embeddings centred on ``center`` (`D`; default: their own
    mean), each row scaled to unit length (a row equal to the centre stays zero)."""
    x = torch.as_tensor(np.asarray(embeddings, dtype=np.float64))
    x = x - (x.mean(0, keepdim=True) if center is None else center.reshape(1, -1))
    norms = x.norm(dim=1, keepdim=True)
    return x / torch.where(norms > 0, norms, torch.ones_like(norms))


def nearest_candidates(features: Tensor, others: Tensor) -> Tensor:
    """For each row of ``others`` (`m x D` features, e.g. :meth:`PoolEngine.features_of`
    of another pool's embeddings), the index of the nearest of ``features`` (`N x D`,
    unit rows) by cosine similarity: LongTensor `m x 1`."""
    if others.shape[0] == 0:
        return torch.empty(0, 1, dtype=torch.long)
    return (others.to(features.dtype) @ features.T).argmax(dim=1).reshape(-1, 1)


class PoolEngine(Engine):
    """Base of the pool strategies: bookkeeping of observations and the free candidates.

    Subclasses implement :meth:`_pick`, choosing one index among the free ones.
    """

    name: ClassVar[str] = ""
    #: name -> (type, default, min, max), see :func:`read_options`.
    OPTIONS: ClassVar[dict[str, tuple[type, Any, float, float]]] = {}
    #: name -> allowed values (the first is the default), for options that are words.
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init__(self, embeddings: np.ndarray, options: dict[str, str], seed: int) -> None:
        if embeddings.ndim != 2 or embeddings.shape[0] == 0:
            raise InvalidArgumentError(
                f"a pool's embeddings must be a non-empty N x D table, got {embeddings.shape}"
            )
        self.opts = read_options(self.name, options, self.OPTIONS, self.CHOICES)
        #: The pool's mean embedding (`D`), the centre of its features.
        self.center = torch.as_tensor(np.asarray(embeddings, dtype=np.float64)).mean(0)
        self.x = pool_features(embeddings, self.center)
        self.size = int(self.x.shape[0])
        self.seed = seed
        self.obs_idx: list[int] = []
        self.obs_y: list[float] = []
        self.seen = np.zeros(self.size, dtype=bool)

    @property
    def num_observed(self) -> int:
        return len(self.obs_idx)

    @property
    def num_initial(self) -> int:
        """Random candidates before the strategy's model (its ``num_initial`` option; 10
        for a strategy without one, as for transfer's initial design)."""
        return int(self.opts.get("num_initial", 10))

    def features_of(self, embeddings: np.ndarray | Tensor) -> Tensor:
        """`m x D` features of embeddings from another pool in the same embedding space,
        transformed as this pool's own (centred on its mean, unit length)."""
        return pool_features(np.asarray(embeddings, dtype=np.float64), self.center)

    @staticmethod
    def keys(candidates: Tensor) -> list[bytes]:
        """The identity of each candidate (`n x 1` indices): equal indices, equal keys."""
        return [int(i).to_bytes(8, "little", signed=True)
                for i in candidates.reshape(-1).tolist()]

    def _indices(self, candidates: Tensor) -> list[int]:
        if candidates.ndim != 2 or candidates.shape[1] != 1:
            raise InvalidArgumentError(
                f"pool candidates must be an n x 1 tensor of indices, got "
                f"{tuple(candidates.shape)}"
            )
        idx = [int(i) for i in candidates.reshape(-1).tolist()]
        bad = [i for i in idx if not 0 <= i < self.size]
        if bad:
            raise InvalidArgumentError(
                f"pool indices {bad[:5]} are outside the pool of {self.size} candidates"
            )
        return idx

    def observe(self, candidates: Tensor, values: Tensor) -> None:
        idx = self._indices(candidates)
        ys = [float(v) for v in values.reshape(-1).tolist()]
        if len(ys) != len(idx):
            raise InvalidArgumentError(f"{len(idx)} candidates but {len(ys)} values")
        for i, y in zip(idx, ys, strict=True):
            self._observed(i, y)
            self.obs_idx.append(i)
            self.obs_y.append(y)
            self.seen[i] = True

    def _observed(self, index: int, value: float) -> None:  # noqa: B027 - optional hook
        """Called for each observation before it is recorded (e.g. to track progress)."""

    def suggest(self, n: int, pending: Tensor | None = None) -> Tensor:
        busy = [] if pending is None or pending.numel() == 0 else self._indices(pending)
        gen = np.random.default_rng(derive_seed(self.seed, self.num_suggested, _SEED_TAG))
        out: list[int] = []
        for _ in range(n):
            free = ~self.seen
            free[busy] = False
            if not free.any():  # every candidate observed: re-propose the best not pending
                free = np.ones(self.size, dtype=bool)
                free[busy] = False
                if not free.any():
                    free[:] = True
                out.append(self._best_of(free))
            else:
                out.append(self._pick(free, busy, gen))
            busy.append(out[-1])
        self.num_suggested += n
        return torch.tensor(out, dtype=torch.long).reshape(-1, 1)

    def _best_of(self, mask: np.ndarray) -> int:
        best, best_y = int(np.flatnonzero(mask)[0]), -math.inf
        for i, y in zip(self.obs_idx, self.obs_y, strict=True):
            if mask[i] and y > best_y:
                best, best_y = i, y
        return best

    @abc.abstractmethod
    def _pick(self, free: np.ndarray, pending: list[int], gen: np.random.Generator) -> int:
        """One index with ``free[index]`` True; ``pending`` lists the indices in flight
        (including those picked earlier in this call)."""

    def _random(self, free: np.ndarray, gen: np.random.Generator) -> int:
        choices = np.flatnonzero(free)
        return int(choices[gen.integers(len(choices))])


@register_pool_strategy("random")
class RandomPoolEngine(PoolEngine):
    """Uniformly random unobserved candidates."""

    name = "random"
    cheap = True

    def _pick(self, free: np.ndarray, pending: list[int], gen: np.random.Generator) -> int:
        return self._random(free, gen)


# --- exact GP regression, shared with zopo -------------------------------------------
def gp_fit(k: Tensor, y: Tensor, noise: float) -> tuple[Tensor, Tensor, float]:
    """Cholesky factor ``L`` of ``k + noise I``, ``alpha = (k + noise I)^-1 y`` and the log
    marginal likelihood of ``y`` (shape `n`, standardized) under the `n x n` kernel ``k``."""
    n = k.shape[0]
    jitter = 1e-8
    while True:
        chol, info = torch.linalg.cholesky_ex(k + (noise + jitter) * torch.eye(n, dtype=k.dtype))
        if int(info) == 0:
            break
        jitter *= 10
        if jitter > 1.0:
            raise InvalidArgumentError("the pool kernel matrix is not positive definite")
    alpha = torch.cholesky_solve(y.unsqueeze(-1), chol).squeeze(-1)
    lml = -0.5 * float(y @ alpha) - float(chol.diagonal().log().sum()) - 0.5 * n * math.log(
        2 * math.pi
    )
    return chol, alpha, lml


def gp_posterior(
    k_star: Tensor, k_star_diag: Tensor, chol: Tensor, alpha: Tensor
) -> tuple[Tensor, Tensor]:
    """Posterior mean and standard deviation at `m` points given their `m x n` cross
    kernel ``k_star`` and prior variances ``k_star_diag`` (shape `m`)."""
    mean = k_star @ alpha
    v = torch.linalg.solve_triangular(chol, k_star.T, upper=False)
    var = (k_star_diag - (v * v).sum(0)).clamp_min(1e-12)
    return mean, var.sqrt()


def standardize(y: Tensor) -> Tensor:
    std = y.std() if y.numel() > 1 else torch.tensor(1.0, dtype=y.dtype)
    return (y - y.mean()) / (std if std > 0 else 1.0)


#: The grids the pool GP's lengthscale and noise are chosen from (unit-length features,
#: standardized values).
LENGTHSCALES = (0.1, 0.15, 0.2, 0.3, 0.45, 0.7, 1.0, 1.5)
NOISES = (1e-3, 1e-2, 1e-1)


def rbf(a: Tensor, b: Tensor, lengthscale: float) -> Tensor:
    """``exp(-|a_i - b_j|^2 / (2 l^2))``: `m x n` for `a` (`m x d`) and `b` (`n x d`)."""
    return torch.exp(-torch.cdist(a, b).square() / (2 * lengthscale**2))


def grid_hyperparameters(xs: Tensor, ys: Tensor) -> tuple[float, float]:
    """The ``(lengthscale, noise)`` of :data:`LENGTHSCALES` x :data:`NOISES` with the
    largest marginal likelihood of ``ys`` (`n`, standardized) at ``xs`` (`n x d`)."""
    best, best_lml = (0.3, 1e-2), -math.inf
    d2 = torch.cdist(xs, xs).square()
    for ls in LENGTHSCALES:
        k = torch.exp(-d2 / (2 * ls**2))
        for noise in NOISES:
            _, _, lml = gp_fit(k, ys, noise)
            if lml > best_lml:
                best, best_lml = (ls, noise), lml
    return best


def argmax_ties_random(score: Tensor, gen: np.random.Generator) -> int:
    """The index of the largest of ``score`` (`m`); among equal largest ones (within a
    relative 1e-12) one drawn with ``gen``, so a flat acquisition does not walk the pool
    in index order."""
    top = float(score.max())
    ties = np.flatnonzero((score >= top - 1e-12 * max(1.0, abs(top))).numpy())
    if len(ties) <= 1:  # one maximum (or NaN scores: argmax's choice)
        return int(ties[0]) if len(ties) else int(score.argmax())
    return int(ties[gen.integers(len(ties))])


def expected_improvement(mean: Tensor, std: Tensor, best: float) -> Tensor:
    z = (mean - best) / std
    normal = torch.distributions.Normal(0.0, 1.0)
    return std * (z * normal.cdf(z) + normal.log_prob(z).exp())


@register_pool_strategy("gp")
class GpPoolEngine(PoolEngine):
    """Exact GP over the pool's embedding features with expected improvement (or UCB).

    The kernel is ``exp(-|x - x'|^2 / (2 l^2))`` on unit-length features; the lengthscale
    ``l`` and the noise are chosen by marginal likelihood over a grid at each fit. Pending
    candidates enter as fantasies at their posterior mean (kriging believer), which
    lowers the uncertainty around them so parallel workers spread out.

    Options: ``num_initial`` [5] random candidates first; ``acquisition`` [ei] or ucb;
    ``beta`` [2.0] for ucb.

    ``ensemble``, when set (transfer's RGPE, :class:`~.transfer.PoolEnsemble`), maps the
    GP's posterior mean and standard deviation at the free candidates (standardized
    scale) to the ensemble's before the acquisition: ``ensemble(cand, mean, std)``.
    """

    name = "gp"
    OPTIONS: ClassVar[dict[str, tuple[type, Any, float, float]]] = {
        "num_initial": (int, 5, 1, 10_000),
        "beta": (float, 2.0, 0.0, 100.0),
    }
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"acquisition": ("ei", "ucb")}
    def __init__(self, embeddings: np.ndarray, options: dict[str, str], seed: int) -> None:
        super().__init__(embeddings, options, seed)
        self._hyper: tuple[float, float] | None = None
        self._hyper_at = -1
        self.ensemble: Callable[[np.ndarray, Tensor, Tensor], tuple[Tensor, Tensor]] | None = (
            None
        )

    def _kernel(self, a: Tensor, b: Tensor, lengthscale: float) -> Tensor:
        return rbf(a, b, lengthscale)

    def _fit_hyper(self, xs: Tensor, ys: Tensor) -> tuple[float, float]:
        if self._hyper is not None and self._hyper_at == len(self.obs_y):
            return self._hyper
        self._hyper, self._hyper_at = grid_hyperparameters(xs, ys), len(self.obs_y)
        return self._hyper

    def _pick(self, free: np.ndarray, pending: list[int], gen: np.random.Generator) -> int:
        if len(self.obs_idx) < self.opts["num_initial"]:
            return self._random(free, gen)
        xs = self.x[self.obs_idx]
        ys = standardize(torch.tensor(self.obs_y, dtype=torch.float64))
        with telemetry.fit_timer():
            ls, noise = self._fit_hyper(xs, ys)
            chol, alpha, _ = gp_fit(self._kernel(xs, xs, ls), ys, noise)
        if pending:
            xp = self.x[pending]
            fantasy, _ = gp_posterior(
                self._kernel(xp, xs, ls), torch.ones(len(pending), dtype=xs.dtype), chol, alpha
            )
            xs = torch.cat([xs, xp])
            ys_all = torch.cat([ys, fantasy])
            chol, alpha, _ = gp_fit(self._kernel(xs, xs, ls), ys_all, noise)
        cand = np.flatnonzero(free)
        xc = self.x[cand]
        mean, std = gp_posterior(
            self._kernel(xc, xs, ls), torch.ones(len(cand), dtype=xs.dtype), chol, alpha
        )
        if self.ensemble is not None:
            mean, std = self.ensemble(cand, mean, std)
        if self.opts["acquisition"] == "ucb":
            score = mean + self.opts["beta"] * std
        else:
            score = expected_improvement(mean, std, float(ys.max()))
        return int(cand[argmax_ties_random(score, gen)])
