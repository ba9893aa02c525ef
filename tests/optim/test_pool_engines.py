"""The pool strategies (random, gp, zopo) as plain engines: encoding, no repeats,
pending-awareness, exhaustion, reproducibility, options, and the planted-optimum check on
a real MiniLM-embedded pool where zopo and gp must beat random."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from promptbo.errors import InvalidArgumentError
from promptbo.server.domain import PoolSpace
from promptbo.server.optim import make_engine
from promptbo.server.optim.zopo import NtkKernel

STRATEGIES = ("random", "gp", "zopo")
FAST = {"random": {}, "gp": {"num_initial": "3"}, "zopo": {"num_initial": "3"}}


@pytest.fixture(scope="module")
def pool_table() -> np.ndarray:
    """`80 x 12` embeddings in 5 clusters."""
    rng = np.random.default_rng(3)
    centers = rng.standard_normal((5, 12))
    return (centers[rng.integers(0, 5, 80)] + 0.4 * rng.standard_normal((80, 12))).astype(
        np.float32
    )


def engine(strategy: str, table: np.ndarray, seed: int = 0, **extra):
    options = {**FAST[strategy], **{k: str(v) for k, v in extra.items()}}
    return make_engine(PoolSpace("p"), strategy, options, seed, table)


def value(table: np.ndarray, c: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(-np.linalg.norm(table[c.reshape(-1).numpy()] - table[11], axis=1),
                           dtype=torch.float64)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_suggestions_are_distinct_pool_indices_avoiding_pending(strategy, pool_table):
    eng = engine(strategy, pool_table)
    seen: set[int] = set()
    pending = torch.tensor([[5], [6]])
    for _ in range(10):
        c = eng.suggest(3, pending)
        assert c.shape == (3, 1) and c.dtype == torch.long
        got = c.reshape(-1).tolist()
        assert len(set(got)) == 3 and not set(got) & ({5, 6} | seen)
        seen |= set(got)
        eng.observe(c, value(pool_table, c))
    assert len(seen) == 30


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_an_exhausted_pool_reproposes_the_best(strategy):
    table = np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32)
    eng = engine(strategy, table)
    all_idx = torch.arange(6).reshape(-1, 1)
    eng.observe(all_idx, torch.tensor([0.1, 0.9, 0.3, 0.2, 0.5, 0.0], dtype=torch.float64))
    assert eng.suggest(1).tolist() == [[1]]
    assert eng.suggest(1, torch.tensor([[1]])).tolist() == [[4]]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_equal_inputs_give_equal_suggestions_and_replay_rebuilds_the_engine(strategy,
                                                                            pool_table):
    def play(eng, rounds):
        for _ in range(rounds):
            c = eng.suggest(1)
            eng.observe(c, value(pool_table, c))
        return eng

    a, b = play(engine(strategy, pool_table, seed=4), 8), play(engine(strategy, pool_table,
                                                                      seed=4), 8)
    assert a.obs_idx == b.obs_idx
    rebuilt = engine(strategy, pool_table, seed=4)
    rebuilt.observe(torch.tensor(a.obs_idx).reshape(-1, 1),
                    torch.tensor(a.obs_y, dtype=torch.float64))
    rebuilt.num_suggested = a.num_suggested
    assert rebuilt.suggest(2).tolist() == a.suggest(2).tolist()


def test_bad_candidates_and_options_are_refused(pool_table):
    eng = engine("zopo", pool_table)
    with pytest.raises(InvalidArgumentError, match="n x 1"):
        eng.observe(torch.tensor([1, 2]), torch.tensor([0.0, 1.0]))
    with pytest.raises(InvalidArgumentError, match=r"outside the pool of 80"):
        eng.observe(torch.tensor([[80]]), torch.tensor([0.0]))
    with pytest.raises(InvalidArgumentError, match=r"option width must be in \[1, 4096\], got 0"):
        engine("zopo", pool_table, width=0)
    with pytest.raises(InvalidArgumentError,
                       match="option num_initial must be an integer, got .many."):
        engine("gp", pool_table, num_initial="many")
    with pytest.raises(InvalidArgumentError, match="does not search candidate pools"):
        make_engine(PoolSpace("p"), "cmaes", {}, 0, pool_table)


def test_ntk_kernel_matches_the_gradient_inner_product():
    """The closed form equals grad_theta f(x) . grad_theta f(x') computed by autograd."""
    torch.manual_seed(0)
    kern = NtkKernel(dim=4, width=7, weight_scale=1.5, seed=1)
    x = torch.nn.functional.normalize(torch.randn(3, 4, dtype=torch.float64), dim=1)
    params = [kern.w1.clone().requires_grad_(), kern.b1.clone().requires_grad_(),
              kern.w2.clone().requires_grad_(), torch.zeros((), dtype=torch.float64,
                                                            requires_grad=True)]

    def grad(xi):
        w1, b1, w2, b2 = params
        f = w2 @ torch.tanh(w1 @ xi + b1) / 7**0.5 + b2
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(f, params)])

    jac = torch.stack([grad(xi) for xi in x])
    assert torch.allclose(kern(x, x), jac @ jac.T, atol=1e-10)
    assert torch.allclose(kern.diag(x), (jac * jac).sum(1), atol=1e-10)


def test_zopo_takes_gradient_and_exploration_steps_and_restarts(pool_table):
    eng = engine("zopo", pool_table, patience=2)
    for _ in range(30):
        c = eng.suggest(1)
        eng.observe(c, value(pool_table, c))
    assert eng.steps["explore"] + eng.steps["gradient"] == 27
    assert max(eng.obs_y) == 0.0  # found the optimum, candidate 11
    for threshold, kind in ((0.0, "explore"), (10.0, "gradient")):
        only = engine("zopo", pool_table, explore_threshold=threshold)
        for _ in range(10):
            c = only.suggest(1)
            only.observe(c, value(pool_table, c))
        assert only.steps[kind] == 7, only.steps
    flat = engine("zopo", pool_table, patience=2)
    for _ in range(12):
        c = flat.suggest(1)
        flat.observe(c, torch.zeros(1, dtype=torch.float64))  # nothing ever improves
    assert flat.restarts >= 1 and flat.widen > 1


@pytest.mark.slow
def test_zopo_and_gp_beat_random_on_a_planted_pool():
    """The benchmark of benchmarks/pool_synthetic.py on its real embedded pool."""
    from benchmarks import pool_synthetic as bench

    table, _ = bench.load_pool(600)
    best = {
        name: np.mean([bench.run(name, table, seed, 40)[0][-1] for seed in range(4)])
        for name in STRATEGIES
    }
    assert best["zopo"] > best["random"] + 0.05, best
    assert best["gp"] > best["random"] + 0.05, best
