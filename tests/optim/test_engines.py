"""Engine behaviour common to all strategies: encodings, determinism, de-duplication,
filters, rebuilds and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from promptbo.errors import InvalidArgumentError
from promptbo.server.domain import HardPromptSpace, SoftPromptSpace
from promptbo.server.optim import make_engine, strategy_names

STRATEGIES = ["gp", "turbo", "cmaes", "random", "index", "mf"]
SOFT_STRATEGIES = ["gp", "turbo", "cmaes", "random", "mf"]


def keys(rows: torch.Tensor) -> list[tuple[int, ...]]:
    return [tuple(r) for r in rows.tolist()]


def test_registry_lists_the_builtin_strategies() -> None:
    assert strategy_names() == sorted(STRATEGIES)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_hard_shapes_dtypes_and_rows(strategy, hard_space, table, fast_engine, run_loop) -> None:
    eng = fast_engine(hard_space, strategy, table)
    history = run_loop(eng, rounds=4, batch=3)
    for rows, _ in history:
        assert rows.shape == (3, 3) and rows.dtype == torch.long
        assert rows.min() >= 0 and rows.max() < table.shape[0]
    assert eng.num_suggested == 12
    empty = eng.suggest(0)
    assert empty.shape == (0, 3) and eng.num_suggested == 12


@pytest.mark.parametrize("strategy", SOFT_STRATEGIES)
@pytest.mark.parametrize("intrinsic_dim", [0, 4])
def test_soft_shapes_and_bounds(strategy, intrinsic_dim, table, fast_engine, run_loop) -> None:
    sp = SoftPromptSpace(prompt_length=2, embedding_dim=6, intrinsic_dim=intrinsic_dim, bound=2.0)
    eng = fast_engine(sp, strategy, None)
    history = run_loop(eng, rounds=4, batch=3)
    for vec, _ in history:
        assert vec.shape == (3, 12) and vec.dtype == torch.float32
        assert torch.isfinite(vec).all()
        if intrinsic_dim == 0:
            assert vec.abs().max() <= 2.0
    # A vector the engine never suggested (an added trial) can still be observed.
    eng.observe(torch.full((1, 12), 0.1), torch.tensor([0.5]))
    assert eng.suggest(2).shape == (2, 12)


def test_index_refuses_soft_prompts(soft_space) -> None:
    with pytest.raises(InvalidArgumentError, match="hard prompts only"):
        make_engine(soft_space, "index", {}, 0, None)


def test_unknown_strategy_and_bad_options(hard_space, table) -> None:
    with pytest.raises(InvalidArgumentError, match="unknown strategy 'nope'.*gp"):
        make_engine(hard_space, "nope", {}, 0, table)
    with pytest.raises(InvalidArgumentError, match="no option colour.*raw_samples"):
        make_engine(hard_space, "gp", {"colour": "red"}, 0, table)
    with pytest.raises(InvalidArgumentError,
                       match="option num_restarts must be an integer, got 'many'"):
        make_engine(hard_space, "gp", {"num_restarts": "many"}, 0, table)
    with pytest.raises(InvalidArgumentError, match=r"length_init must be in \[.*\], got 5"):
        make_engine(hard_space, "turbo", {"length_init": "5"}, 0, table)
    with pytest.raises(InvalidArgumentError, match="length_min < length_init"):
        make_engine(hard_space, "turbo", {"length_min": "0.9"}, 0, table)
    with pytest.raises(InvalidArgumentError, match="true or false"):
        make_engine(hard_space, "index", {"fit": "maybe"}, 0, table)
    assert make_engine(hard_space, "index", {"fit": "YES"}, 0, table).opts["fit"] is True
    assert make_engine(hard_space, "index", {"fit": "default"}, 0, table).opts["fit"] is False
    with pytest.raises(InvalidArgumentError, match="needs the vocabulary"):
        make_engine(hard_space, "gp", {}, 0, None)
    assert type(make_engine(hard_space, "", {}, 0, table)).__name__ == "GPEngine"


def test_observe_validates_inputs(hard_space, table, fast_engine) -> None:
    eng = fast_engine(hard_space, "gp", table)
    rows = torch.tensor([[1, 2, 3], [4, 5, 6]])
    with pytest.raises(InvalidArgumentError, match="2 candidates and 1 values"):
        eng.observe(rows, torch.tensor([1.0]))
    with pytest.raises(InvalidArgumentError, match="finite"):
        eng.observe(rows, torch.tensor([1.0, float("nan")]))
    with pytest.raises(InvalidArgumentError, match="n x 3"):
        eng.observe(torch.tensor([[1, 2]]), torch.tensor([1.0]))
    with pytest.raises(InvalidArgumentError, match=r"\[0, 300\)"):
        eng.observe(torch.tensor([[1, 2, 300]]), torch.tensor([1.0]))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_same_seed_same_suggestions(strategy, hard_space, table, fast_engine, run_loop) -> None:
    a = run_loop(fast_engine(hard_space, strategy, table, seed=5), rounds=4, batch=2)
    b = run_loop(fast_engine(hard_space, strategy, table, seed=5), rounds=4, batch=2)
    c = run_loop(fast_engine(hard_space, strategy, table, seed=6), rounds=4, batch=2)
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for (x, _), (y, _) in zip(a, c, strict=True))


@pytest.mark.parametrize("strategy", SOFT_STRATEGIES)
def test_soft_same_seed_same_suggestions(strategy, soft_space, fast_engine, run_loop) -> None:
    a = run_loop(fast_engine(soft_space, strategy, None, seed=5), rounds=3, batch=2)
    b = run_loop(fast_engine(soft_space, strategy, None, seed=5), rounds=3, batch=2)
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b, strict=True))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_rebuilt_engines_agree(strategy, hard_space, table, fast_engine, run_loop) -> None:
    """The manager's restart path: replay completed trials, set num_suggested."""
    original = fast_engine(hard_space, strategy, table, seed=2)
    history = run_loop(original, rounds=4, batch=3)
    pending = original.suggest(2)
    rows = torch.cat([c for c, _ in history])
    values = torch.cat([y for _, y in history])
    outs = []
    for _ in range(2):
        rebuilt = fast_engine(hard_space, strategy, table, seed=2)
        rebuilt.observe(rows, values)
        rebuilt.num_suggested = original.num_suggested
        outs.append(rebuilt.suggest(3, pending))
    assert torch.equal(outs[0], outs[1])
    assert not set(keys(outs[0])) & (set(keys(rows)) | set(keys(pending)))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_no_duplicates_of_observed_or_pending(strategy, table, fast_engine, objective) -> None:
    # A tiny space (12^2 = 144 prompts) makes collisions likely without de-duplication.
    sp = HardPromptSpace(prompt_length=2, vocabulary_id="v", pca_dims=2, allowed=tuple(range(12)))
    eng = fast_engine(sp, strategy, table, seed=1)
    observed: list[tuple[int, ...]] = []
    pending = torch.empty(0, 2, dtype=torch.long)
    for _ in range(8):
        new = eng.suggest(4, pending)
        got = keys(new)
        assert len(set(got)) == 4
        assert not set(got) & (set(observed) | set(keys(pending)))
        done, pending = pending, new  # results arrive one round late
        if done.shape[0]:
            eng.observe(done, objective(done))
            observed += keys(done)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_filters_are_respected(strategy, table, fast_engine, run_loop) -> None:
    allowed = tuple(range(5, 300, 7))
    sp = HardPromptSpace(prompt_length=3, vocabulary_id="v", pca_dims=4, allowed=allowed)
    rows = torch.cat([c for c, _ in run_loop(fast_engine(sp, strategy, table), 4, 3)])
    assert set(rows.flatten().tolist()) <= set(allowed)
    scores = tuple(float(s) for s in np.random.default_rng(0).random(300))
    top = set(np.argsort(scores)[-20:].tolist())
    sp = HardPromptSpace(
        prompt_length=3, vocabulary_id="v", pca_dims=4, top_n=20, top_n_scores=scores
    )
    rows = torch.cat([c for c, _ in run_loop(fast_engine(sp, strategy, table), 4, 3)])
    assert set(rows.flatten().tolist()) <= top


def test_rows_outside_the_filter_can_be_observed(table, fast_engine, objective) -> None:
    sp = HardPromptSpace(prompt_length=3, vocabulary_id="v", pca_dims=4, allowed=(1, 2, 3, 4))
    for strategy in STRATEGIES:
        eng = fast_engine(sp, strategy, table)
        outside = torch.tensor([[100, 200, 1], [5, 6, 7]])
        eng.observe(outside, objective(outside))
        assert set(eng.suggest(2).flatten().tolist()) <= {1, 2, 3, 4}
