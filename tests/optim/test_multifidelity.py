"""The ``mf`` strategy: rungs, model-based promotions on fresh examples, noise awareness,
and the budget in scored examples through the study manager."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from promptbo.server.domain import HardPromptSpace, SoftPromptSpace, StudySpec, TrialState
from promptbo.server.manager import StudyManager, TrialResult
from promptbo.server.optim.multifidelity import MultiFidelityEngine
from promptbo.server.storage.memory import InMemoryStorage
from promptbo.types import mean_and_stderr

#: Fast GP options (as tests/optim/conftest.py's FAST_GP).
FAST_GP = {"num_initial": "4", "raw_samples": "32", "num_restarts": "2", "maxiter": "10",
           "mc_samples": "32", "full_maxiter": "15", "warm_maxiter": "3"}


def test_rungs_follow_eta_and_cap_at_the_top(fast_engine, soft_space) -> None:
    eng = fast_engine(soft_space, "mf", None, min_examples=16, eta=3)
    assert isinstance(eng, MultiFidelityEngine)
    eng.configure_fidelity(1000)
    assert eng.rungs == [16, 48, 144, 432]
    eng.configure_fidelity(100)
    assert eng.rungs == [16, 48, 100]
    eng.configure_fidelity(1000, examples_per_trial=200)
    assert eng.rungs == [16, 48, 144, 200]
    eng.configure_fidelity(0)
    assert eng.rungs == [] and eng.suggest(2).shape[0] == 2 and eng.last_examples is None


def test_promotion_follows_the_posterior_not_the_luckiest_value(fast_engine) -> None:
    space = SoftPromptSpace(prompt_length=1, embedding_dim=2, bound=1.0)
    eng = fast_engine(space, "mf", None, min_examples=10, eta=10, num_initial=4)
    eng.configure_fidelity(500)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(10, 2, generator=g) * 2 - 1
    y = torch.full((10,), 0.5, dtype=torch.float64)
    var = torch.full((10,), 0.05**2, dtype=torch.float64)
    y[3], var[3] = 0.95, 0.5**2  # a lucky, very noisy screen
    y[7], var[7] = 0.75, 0.01**2  # solidly better
    eng.observe_noisy(x, y, var, torch.full((10,), 10))
    out = eng.suggest(2)
    assert eng.last_examples is not None
    assert eng.rungs == [10, 100, 500]
    # 10 prompts reached the first rung: a quota of 10 // eta = 1 promotion, to 100.
    assert eng.last_examples[0] == 90
    assert torch.allclose(out[0].float(), x[7].float())
    assert eng.last_examples[1] == 10  # the other slot explores at the first rung


def run_study(strategy: str, budget: int, pool: int = 400, seed: int = 0):
    """A hard-prompt study with a pool, driven through the manager with a planted
    per-example accuracy; returns the manager, study name and the truth function."""
    rng = np.random.default_rng(3)
    table = rng.standard_normal((60, 6)).astype(np.float32)
    from promptbo.server.domain import Vocabulary

    vocab = Vocabulary(tuple(f" t{i}" for i in range(60)), tuple(range(60)), table)
    manager = StudyManager(InMemoryStorage())
    vid, _ = manager.upload_vocabulary(vocab)
    spec = StudySpec(
        space=HardPromptSpace(2, vid, pca_dims=3), strategy=strategy,
        strategy_options={**FAST_GP, "min_examples": "8"} if strategy == "mf" else {},
        pool_size=pool, max_examples=budget, examples_per_trial=8 if strategy != "mf" else 0,
        seed=seed,
    )
    manager.create_study("s", spec)

    def truth(ids) -> float:
        return float(1 / (1 + math.exp(-table[list(ids)].sum(0)[0])))

    while True:
        trials, done = manager.suggest_trials("s", 2, "w")
        if not trials:
            assert done
            break
        results = []
        for t in trials:
            q = truth(t.prompt.token_ids)
            r = np.random.default_rng([seed, *t.examples, *t.prompt.token_ids]).random(
                len(t.examples))
            m, se = mean_and_stderr((r < q) * 1.0)
            results.append(TrialResult(t.id, m, {}, value_stderr=se))
        manager.complete_trials("s", results, "w")
    return manager, truth


def test_mf_study_spends_exactly_its_budget_and_rescores_on_fresh_examples() -> None:
    manager, truth = run_study("mf", budget=600)
    trials = manager.storage.list_trials("s")
    assert all(t.state is TrialState.COMPLETED for t in trials)
    assert sum(len(t.examples) for t in trials) == 600
    by_prompt: dict[tuple, list] = {}
    for t in trials:
        assert t.examples_scored == len(t.examples)
        by_prompt.setdefault(t.prompt.token_ids, []).append(t)
    rescored = [ts for ts in by_prompt.values() if len(ts) > 1]
    assert rescored, "no prompt was promoted"
    for ts in rescored:  # each re-scoring used examples the prompt had not seen
        seen: set[int] = set()
        for t in sorted(ts, key=lambda t: t.id):
            assert not seen & set(t.examples)
            seen |= set(t.examples)
    assert {len(t.examples) for t in trials} >= {8, 16}  # screens, then a promotion 8 -> 24
    rec, best, _ = manager.recommendation("s")
    assert rec is not None and rec.method == "posterior_mean"
    mine = by_prompt[rec.prompt.token_ids]
    assert rec.pooled_examples == sum(len(t.examples) for t in mine)
    assert rec.pooled_examples >= 0.5 * max(sum(len(t.examples) for t in ts)
                                            for ts in by_prompt.values())
    assert rec.trials == len(mine) and rec.trial.id == max(t.id for t in mine)
    assert rec.examples == len(rec.trial.examples)  # the latest trial's, after promotion
    assert rec.lower < rec.estimate < rec.upper
    assert truth(rec.prompt.token_ids) >= np.median(
        [truth(ts[0].prompt.token_ids) for ts in by_prompt.values()])


@pytest.mark.parametrize("strategy", ["random", "gp"])
def test_fixed_fidelity_strategies_get_examples_per_trial(strategy) -> None:
    manager, _ = run_study(strategy, budget=60)
    trials = manager.storage.list_trials("s")
    assert [len(t.examples) for t in trials] == [8] * 7 + [4]


def test_pool_study_resumes_after_a_restart_with_its_ledger(tmp_path) -> None:
    """A new manager on the same SQLite file rebuilds the ledger (charged, reserved, the
    examples each prompt saw) and the engine, and the budget still ends exact."""
    from promptbo.server.storage.sql import SqlStorage

    url = f"sqlite:///{tmp_path / 'pool.db'}"
    rng = np.random.default_rng(5)
    from promptbo.server.domain import Vocabulary

    table = rng.standard_normal((40, 4)).astype(np.float32)
    vocab = Vocabulary(tuple(f" t{i}" for i in range(40)), tuple(range(40)), table)
    spec = StudySpec(space=HardPromptSpace(2, vocab.id, pca_dims=2), strategy="mf",
                     strategy_options={**FAST_GP, "min_examples": "5", "eta": "2"},
                     pool_size=20, max_examples=90, seed=2)
    first = StudyManager(SqlStorage(url))
    first.upload_vocabulary(vocab)
    first.create_study("s", spec)

    def tell(manager, trials):
        manager.complete_trials("s", [
            TrialResult(t.id, float(np.mean(t.examples)) / 20, {}, value_stderr=0.1)
            for t in trials], "w")

    for _ in range(4):
        tell(first, first.suggest_trials("s", 2, "w")[0])
    held, _ = first.suggest_trials("s", 1, "w")  # in flight across the restart
    charged = first.examples_scored("s")
    second = StudyManager(SqlStorage(url))
    assert second.examples_scored("s") == charged
    tell(second, held)
    while True:
        trials, done = second.suggest_trials("s", 2, "w")
        if not trials:
            assert done
            break
        tell(second, trials)
    stored = second.storage.list_trials("s")
    assert sum(len(t.examples) for t in stored) == 90 == second.examples_scored("s")
    by_prompt: dict[tuple, set[int]] = {}
    for t in sorted(stored, key=lambda t: t.id):
        seen = by_prompt.setdefault(t.prompt.token_ids, set())
        assert not seen & set(t.examples) or len(seen) + len(t.examples) > 20
        seen |= set(t.examples)
