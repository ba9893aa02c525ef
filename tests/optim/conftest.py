"""Fixtures of the engine tests: small embedding tables, spaces and fast options.

Model-based strategies run with capped optimizer iterations and small pools
(:data:`FAST`) so the folder stays fast; the planted-prompt benchmark test uses the
defaults.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from promptbo.server.domain import HardPromptSpace, SoftPromptSpace
from promptbo.server.optim import make_engine
from promptbo.server.optim.base import Engine

#: Options that keep gp/turbo suggestions in the tens of milliseconds.
FAST_GP = {
    "num_initial": "4",
    "raw_samples": "32",
    "num_restarts": "2",
    "maxiter": "10",
    "mc_samples": "32",
    "full_maxiter": "15",
    "warm_maxiter": "3",
}
FAST = {"gp": FAST_GP, "turbo": FAST_GP, "mf": FAST_GP, "cmaes": {"popsize": "4"},
        "index": {"num_initial": "4"}}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Engines are small here; one torch thread avoids oversubscribing shared CPUs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def table() -> np.ndarray:
    """A `300 x 24` float32 embedding table with some cluster structure."""
    rng = np.random.default_rng(7)
    centers = rng.standard_normal((6, 24))
    rows = centers[rng.integers(0, 6, 300)] + 0.5 * rng.standard_normal((300, 24))
    return rows.astype(np.float32)


@pytest.fixture
def hard_space() -> HardPromptSpace:
    return HardPromptSpace(prompt_length=3, vocabulary_id="v", pca_dims=4)


@pytest.fixture
def soft_space() -> SoftPromptSpace:
    return SoftPromptSpace(prompt_length=2, embedding_dim=6, intrinsic_dim=4, bound=2.0)


def _engine(space, strategy: str, table: np.ndarray | None, seed: int = 0, **extra) -> Engine:
    options = {**FAST.get(strategy, {}), **{k: str(v) for k, v in extra.items()}}
    emb = table if isinstance(space, HardPromptSpace) else None
    return make_engine(space, strategy, options, seed, emb)


def _objective(candidates: torch.Tensor) -> torch.Tensor:
    """A cheap deterministic objective for either encoding (`n`, float64)."""
    if candidates.dtype.is_floating_point:
        return -(candidates.double() - 0.3).pow(2).mean(-1)
    return -((candidates.double() - 120.0) / 100.0).pow(2).mean(-1)


def _run_loop(eng: Engine, rounds: int, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``rounds`` suggest/observe steps of ``batch``; returns the observed history."""
    history = []
    for _ in range(rounds):
        c = eng.suggest(batch)
        y = _objective(c)
        eng.observe(c, y)
        history.append((c, y))
    return history


@pytest.fixture
def fast_engine():
    """``fast_engine(space, strategy, table, seed=0, **options)``: an engine with
    :data:`FAST` options (plus ``options``)."""
    return _engine


@pytest.fixture
def objective():
    return _objective


@pytest.fixture
def run_loop():
    return _run_loop
