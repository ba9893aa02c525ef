"""Strategy-specific behaviour: CMA-ES buffering, the TuRBO state machine, GP fitting
schedule and the index baseline."""

from __future__ import annotations

import math

import pytest
import torch

from promptbo.server.domain import HardPromptSpace
from promptbo.server.optim.surrogate import FitSettings, GPFitter, subset_indices


def test_cmaes_buffers_until_a_population_is_complete(hard_space, table, fast_engine) -> None:
    eng = fast_engine(hard_space, "cmaes", table, popsize=4)
    mean0 = eng._es.mean.copy()
    rows = eng.suggest(7)  # more than a population
    assert rows.shape == (7, 3)
    values = -rows.double().mean(-1)
    eng.observe(rows[4:].flip(0), values[4:].flip(0))  # out of order, partial
    assert eng.generation == 0 and len(eng._buffer) == 3
    eng.observe(rows[:4], values[:4])
    assert eng.generation == 1 and len(eng._buffer) == 3
    assert not (eng._es.mean == mean0).all()
    more = eng.suggest(2)
    eng.observe(more, -more.double().mean(-1))
    assert eng.generation == 2 and len(eng._buffer) == 1


def test_cmaes_soft_searches_the_intrinsic_space(soft_space, fast_engine, run_loop) -> None:
    eng = fast_engine(soft_space, "cmaes", None, popsize=4)
    run_loop(eng, rounds=3, batch=4)
    assert eng._es.mean.shape == (4,)  # k = 4, not L * D = 12
    assert eng.generation == 3


def turbo(space, table, fast_engine, **opts):
    return fast_engine(space, "turbo", table, **opts)


def test_turbo_shrinks_and_restarts_on_failures(hard_space, table, fast_engine) -> None:
    eng = turbo(hard_space, table, fast_engine, failure_tolerance=1, num_initial=3)
    rows = eng.suggest(3)
    eng.observe(rows, torch.ones(3))
    assert eng.length == pytest.approx(0.8)
    lengths = []
    for _ in range(7):
        rows = eng.suggest(1)
        eng.observe(rows, torch.ones(1))  # no improvement: a failure each
        lengths.append(eng.length)
    assert lengths[:6] == pytest.approx([0.8 / 2**i for i in range(1, 7)])
    assert eng.restarts == 1 and eng.length == pytest.approx(0.8)
    assert eng.restart_at == eng.num_observed
    # After a restart the new region starts with a fresh initial design.
    assert eng.suggest(1).shape == (1, 3)


def test_turbo_expands_on_successes(hard_space, table, fast_engine) -> None:
    eng = turbo(hard_space, table, fast_engine, num_initial=3, success_tolerance=2)
    eng.observe(eng.suggest(3), torch.zeros(3))
    for i in range(1, 5):
        eng.observe(eng.suggest(1), torch.tensor([float(i)]))
    assert eng.length == pytest.approx(1.6)  # doubled twice, capped at length_max


def test_turbo_state_does_not_depend_on_batching(hard_space, table, fast_engine) -> None:
    a = turbo(hard_space, table, fast_engine, failure_tolerance=2, num_initial=3)
    rows = torch.randint(300, (20, 3), generator=torch.Generator().manual_seed(0))
    values = torch.tensor([0.0, 1, 0, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3])
    a.observe(rows, values)
    b = turbo(hard_space, table, fast_engine, failure_tolerance=2, num_initial=3)
    for start in range(0, 20, 3):
        b.observe(rows[start : start + 3], values[start : start + 3])
    state = ("length", "successes", "failures", "restarts", "restart_at", "best")
    assert [getattr(a, s) for s in state] == [getattr(b, s) for s in state]


def test_turbo_local_data_and_region(hard_space, table, fast_engine) -> None:
    eng = turbo(hard_space, table, fast_engine, max_local=8, num_initial=3)
    rows = torch.randint(300, (20, 3), generator=torch.Generator().manual_seed(1))
    eng.observe(rows, torch.arange(20.0))
    X, Y = eng.training_data()
    assert X.shape == (8, 12) and Y.max() == 19.0  # the centre is kept
    model = eng.fitter.fit(X, Y)
    lo, hi = eng.search_bounds(model)
    center = eng.center()
    assert (lo <= center).all() and (center <= hi).all()
    assert ((hi - lo) <= eng.length * eng._weights + 1e-9).all()
    assert math.isclose(torch.log(eng._weights).mean().item(), 0.0, abs_tol=1e-9)
    assert eng.suggest(2).shape == (2, 3)


def test_gp_fitter_warm_starts_and_refits_on_schedule() -> None:
    g = torch.Generator().manual_seed(0)
    X = torch.rand(40, 3, generator=g, dtype=torch.float64)
    Y = torch.sin(6 * X).sum(-1)
    fitter = GPFitter(FitSettings(full_maxiter=30, warm_maxiter=2, refit_every=10))
    fitter.fit(X[:20], Y[:20])
    assert fitter._last_full_n == 20
    fitter.fit(X[:25], Y[:25])
    assert fitter._last_full_n == 20 and fitter.num_fits == 2
    model = fitter.fit(X[:30], Y[:30])
    assert fitter._last_full_n == 30
    with torch.no_grad():
        pred = model.posterior(X[:30]).mean.squeeze(-1)
    assert torch.corrcoef(torch.stack([pred, Y[:30]]))[0, 1] > 0.9


def test_subset_keeps_the_best_points() -> None:
    y = torch.arange(1000.0).flip(0)
    idx = subset_indices(y, 100)
    assert idx.shape == (100,) and len(set(idx.tolist())) == 100
    assert set(range(25)) <= set(idx.tolist())
    assert torch.equal(subset_indices(y[:50], 100), torch.arange(50))


def test_index_reproduction_rounds_indices(table, fast_engine, run_loop) -> None:
    allowed = tuple(range(0, 300, 10))  # 30 tokens: indices 0..29
    sp = HardPromptSpace(prompt_length=4, vocabulary_id="v", pca_dims=4, allowed=allowed)
    eng = fast_engine(sp, "index", table, num_initial=10)
    first = eng.suggest(10)
    assert 290 not in first.flatten().tolist()  # randint(0, V'-1) as published
    eng.observe(first, -first.double().mean(-1))
    nxt = eng.suggest(3)
    assert set(nxt.flatten().tolist()) <= set(allowed)
    fitted = fast_engine(sp, "index", table, num_initial=10, fit="true")
    fitted.observe(first, -first.double().mean(-1))
    assert fitted.suggest(1).shape == (1, 4)
