"""Baseline strategies: ``random`` and ``index``.

``random`` draws uniformly: hard prompts as uniform rows of the filtered vocabulary
(never a prompt already observed or pending while unseen ones remain), soft prompts as
uniform ``z`` in the intrinsic box mapped through the projection.

``index`` is a reproduction, for comparison, of the public code of Sabbatella et al.
(2023), "Prompt optimization in large language models" (hard prompts only): each prompt
position is a real-valued index into the filtered token list (ordered by score for a
``top_n`` filter, by row otherwise), bounded by ``[0, V' - 1]``. Their loop starts with 10
random prompts (``torch.randint(0, V' - 1)``), models the raw indices with a
``SingleTaskGP`` using the BoTorch defaults of the time (Matern-5/2 ARD with Gamma(3, 6)
lengthscale prior in a scaled kernel, Gamma(1.1, 0.05) noise prior, no outcome or input
transform) whose hyperparameters are *not* fitted (the published loop builds the
marginal likelihood but never optimizes it; set ``fit=true`` to fit them), maximizes
analytic UCB with ``beta = 0.4`` by ``optimize_acqf(q=1, num_restarts=20,
raw_samples=50)`` and rounds the result. Differences forced by the service: a request for
``n > 1`` prompts returns the ``n`` best distinct rounded restart results; prompts that
were already observed or are pending are replaced by a copy with one position redrawn
uniformly (the published code would re-evaluate them); float64 instead of float32.

Options of ``index``: ``num_initial`` [10], ``beta`` [0.4], ``num_restarts`` [20],
``raw_samples`` [50], ``fit`` [false].
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

import numpy as np
import torch
from botorch.acquisition import UpperConfidenceBound
from botorch.models import SingleTaskGP
from botorch.optim import optimize_acqf
from gpytorch.constraints import GreaterThan
from gpytorch.kernels import MaternKernel, ScaleKernel
from gpytorch.likelihoods import GaussianLikelihood
from gpytorch.mlls import ExactMarginalLogLikelihood
from gpytorch.priors import GammaPrior
from torch import Tensor

from promptbo.errors import InvalidArgumentError
from promptbo.server import telemetry
from promptbo.server.domain import HardPromptSpace, SearchSpace
from promptbo.server.optim.base import register_strategy
from promptbo.server.optim.box_engine import BoxEngine
from promptbo.server.optim.spaces import PromptBox, derive_seed, filtered_rows

#: optimize_acqf draws its raw samples from torch's global RNG; this lock and a forked,
#: seeded RNG keep ``index`` suggestions reproducible when studies run in parallel.
_GLOBAL_RNG_LOCK = threading.Lock()


@register_strategy("random")
class RandomEngine(BoxEngine):
    """Uniformly random prompts (hard or soft)."""

    name: ClassVar[str] = "random"
    cheap = True

    @property
    def uses_pending(self) -> bool:
        return self.box.discrete  # pending hard prompts are avoided, soft ones never repeat

    def _suggest(
        self, n: int, pending: Tensor | None, avoid: set[bytes], gen: torch.Generator
    ) -> Tensor:
        return self.box.random(n, avoid, gen)


class IndexBox(PromptBox):
    """Hard prompts as token-list indices scaled to ``[0, 1]`` (``dim = L``).

    Rows outside the filter (e.g. added trials) map to the allowed token nearest in
    embedding space.
    """

    discrete = True

    def __init__(self, space: HardPromptSpace, embeddings: np.ndarray) -> None:
        self.length = space.prompt_length
        self.dim = space.prompt_length
        self.table = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
        self.vocab_size = int(self.table.shape[0])
        self.rows = filtered_rows(space, self.vocab_size)
        self.max_index = max(1, len(self.rows) - 1)
        self._index_of = torch.full((self.vocab_size,), -1, dtype=torch.long)
        self._index_of[self.rows] = torch.arange(len(self.rows))
        self.num_prompts = len(self.rows) ** self.length

    def to_unit(self, candidates: Tensor) -> Tensor:
        if candidates.ndim != 2 or candidates.shape[1] != self.length:
            raise InvalidArgumentError(
                f"hard-prompt candidates must be n x {self.length} rows, got "
                f"{tuple(candidates.shape)}"
            )
        if candidates.numel() and (candidates.min() < 0 or candidates.max() >= self.vocab_size):
            raise InvalidArgumentError(f"hard-prompt rows must be in [0, {self.vocab_size})")
        idx = self._index_of[candidates.long()]
        outside = idx < 0
        if outside.any():
            emb = self.table[candidates[outside].long()]
            idx[outside] = torch.cdist(emb, self.table[self.rows]).argmin(-1)
        return idx.double() / self.max_index

    def project(
        self, u: Tensor, avoid: set[bytes], generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        idx = (u.double().clamp(0.0, 1.0) * self.max_index).round().long()
        idx = idx.clamp(max=len(self.rows) - 1)
        out = torch.empty(u.shape[0], self.length, dtype=torch.long)
        for i in range(u.shape[0]):
            cand = idx[i].clone()
            for _ in range(1000):
                if self.rows[cand].numpy().tobytes() not in avoid or len(avoid) >= self.num_prompts:
                    break
                j = int(torch.randint(self.length, (1,), generator=generator))
                cand[j] = int(torch.randint(len(self.rows), (1,), generator=generator))
            out[i] = self.rows[cand]
            avoid.add(out[i].numpy().tobytes())
        return out, self.to_unit(out)

    def perturb(self, u: Tensor, generator: torch.Generator) -> Tensor:
        out = u.double().clone()
        where = torch.randint(self.length, (u.shape[0],), generator=generator)
        out[torch.arange(u.shape[0]), where] = torch.rand(u.shape[0], generator=generator).double()
        return out

    def random(self, n: int, avoid: set[bytes], generator: torch.Generator) -> Tensor:
        # As published: randint(0, V' - 1) excludes the last token of the list.
        idx = torch.randint(0, self.max_index, (n, self.length), generator=generator)
        return self.project(idx.double() / self.max_index, avoid, generator)[0]


@register_strategy("index")
class IndexEngine(BoxEngine):
    """Token-index GP-UCB; a reproduction of Sabbatella et al. (2023) for comparison."""

    name: ClassVar[str] = "index"
    SUPPORTS_SOFT: ClassVar[bool] = False
    OPTIONS: ClassVar[dict[str, tuple[type, Any, float, float]]] = {
        "num_initial": (int, 10, 1, 100_000),
        "beta": (float, 0.4, 0.0, 1e6),
        "num_restarts": (int, 20, 1, 1024),
        "raw_samples": (int, 50, 1, 100_000),
        "fit": (bool, False, 0, 1),
    }

    def _make_box(self, space: SearchSpace, embeddings: np.ndarray | None) -> PromptBox:
        if embeddings is None:
            raise InvalidArgumentError("a hard-prompt engine needs the vocabulary's embeddings")
        assert isinstance(space, HardPromptSpace)
        return IndexBox(space, embeddings)

    def _suggest(
        self, n: int, pending: Tensor | None, avoid: set[bytes], gen: torch.Generator
    ) -> Tensor:
        box = self.box
        assert isinstance(box, IndexBox)
        if self.num_observed < max(self.opts["num_initial"], 1):
            return box.random(n, avoid, gen)
        scale = float(box.max_index)
        train_x = self.X * scale
        model = _published_model(train_x, self.Y.unsqueeze(-1))
        if self.opts["fit"]:
            from botorch.fit import fit_gpytorch_mll

            with telemetry.fit_timer():
                fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
        model.eval()
        ucb = UpperConfidenceBound(model, beta=self.opts["beta"], maximize=True)
        bounds = torch.tensor([[0.0] * box.dim, [scale] * box.dim], dtype=torch.float64)
        restarts = max(self.opts["num_restarts"], n)
        with _GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, self.num_suggested, 7))
            cands, values = optimize_acqf(
                ucb,
                bounds=bounds,
                q=1,
                num_restarts=restarts,
                raw_samples=max(self.opts["raw_samples"], restarts),
                return_best_only=False,
            )
        assert values is not None
        order = torch.argsort(values.reshape(-1), descending=True, stable=True)
        rounded = torch.round(cands.reshape(-1, box.dim)[order]) / scale
        picked, seen = [], set()
        for row in rounded:
            key = row.numpy().tobytes()
            if key not in seen:
                seen.add(key)
                picked.append(row)
            if len(picked) == n:
                break
        u = torch.stack(picked)
        if u.shape[0] < n:
            u = torch.cat([u, u[-1:].expand(n - u.shape[0], -1)])
        return box.project(u, avoid, gen)[0]


def _published_model(train_x: Tensor, train_y: Tensor) -> SingleTaskGP:
    """SingleTaskGP as BoTorch built it by default in 2023 (no transforms)."""
    noise_mode = (1.1 - 1.0) / 0.05
    likelihood = GaussianLikelihood(
        noise_prior=GammaPrior(1.1, 0.05),
        noise_constraint=GreaterThan(1e-4, transform=None, initial_value=noise_mode),
    )
    matern = MaternKernel(
        nu=2.5, ard_num_dims=train_x.shape[-1], lengthscale_prior=GammaPrior(3.0, 6.0)
    )
    kernel = ScaleKernel(
        matern,
        outputscale_prior=GammaPrior(2.0, 0.15),
    )
    return SingleTaskGP(
        train_x, train_y, likelihood=likelihood, covar_module=kernel, outcome_transform=None
    )
