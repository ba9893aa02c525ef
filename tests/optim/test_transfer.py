"""The transfer engine's parts (pure, no server): initialization ranking, ranking losses,
leave-one-out predictions and RGPE weights."""

from __future__ import annotations

import warnings

import torch
from botorch.exceptions.warnings import InputDataWarning
from botorch.models import SingleTaskGP

from promptbo.server.domain import SoftPromptSpace
from promptbo.server.optim import make_engine
from promptbo.server.optim.robust import robust_standardize as robust
from promptbo.server.optim.surrogate import GPFitter
from promptbo.server.optim.transfer import (
    EnsembleModel,
    SourceData,
    TransferEngine,
    cv_predictions,
    loo_predictions,
    rank_prompts,
    ranking_loss,
    rgpe_weights,
)


def _fit(X: torch.Tensor, y: torch.Tensor) -> SingleTaskGP:
    return GPFitter().fit(X, y)


def test_rank_prompts_puts_prompts_good_on_several_sources_first():
    a = SourceData("a", torch.zeros(3, 1), torch.tensor([0.9, 1.0, 0.1]))
    b = SourceData("b", torch.zeros(2, 1), torch.tensor([0.8, 0.0]))
    keys = [[b"shared", b"a-best", b"a-worst"], [b"shared", b"b-worst"]]
    order = rank_prompts([a, b], keys)
    assert order == [(0, 0), (0, 1), (1, 1), (0, 2)]


def test_ranking_loss_counts_misordered_pairs():
    y = torch.tensor([1.0, 2.0, 3.0])
    samples = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [2.0, 1.0, 3.0]])
    # Ordered pairs (i, j) both ways: reversed misorders all 3 pairs twice.
    assert ranking_loss(samples, y).tolist() == [0, 6, 2]


def test_loo_predictions_match_refitting_without_the_point():
    g = torch.Generator().manual_seed(0)
    X = torch.rand(8, 2, generator=g, dtype=torch.float64)
    y = torch.sin(6 * X[:, 0]) + X[:, 1]
    model = _fit(X, y)
    mean, var = loo_predictions(model)
    state = {k: v for k, v in model.state_dict().items() if "train" not in k}
    for i in (0, 5):
        keep = torch.arange(8) != i
        with warnings.catch_warnings():  # the targets are standardized over all 8 points
            warnings.simplefilter("ignore", InputDataWarning)
            m = SingleTaskGP(X[keep], model.train_targets[keep].reshape(-1, 1),
                             outcome_transform=None)
        m.load_state_dict({k: v for k, v in state.items()
                           if not k.startswith("outcome_transform")}, strict=False)
        m.eval()
        post = m.posterior(X[i : i + 1], observation_noise=True)
        assert torch.allclose(mean[i], post.mean.reshape(()), atol=1e-5)
        assert torch.allclose(var[i], post.variance.reshape(()), atol=1e-5)


def test_rgpe_weights_favour_a_related_source_and_drop_an_anti_correlated_one():
    g = torch.Generator().manual_seed(1)
    Xs = torch.rand(30, 2, generator=g, dtype=torch.float64)
    Xt = torch.rand(8, 2, generator=g, dtype=torch.float64)

    def f(x):
        return -((x - 0.3) ** 2).sum(-1)

    related, anti = _fit(Xs, f(Xs) + 0.01), _fit(Xs, -f(Xs))
    target = _fit(Xt, f(Xt))
    mean, var = cv_predictions(Xt, f(Xt), [GPFitter() for _ in range(5)])
    w = rgpe_weights([related, anti], Xt, f(Xt), mean, var, 256, seed=3)
    assert torch.isclose(w.sum(), torch.tensor(1.0, dtype=w.dtype))
    assert w[0] > 0.5 and w[1] == 0.0
    ensemble = EnsembleModel([related, target], torch.tensor([0.5, 0.5]))
    post = ensemble.posterior(Xt[:3])
    assert post.mean.shape == (3, 1)
    expected = 0.5 * related.posterior(Xt[:3]).mean + 0.5 * target.posterior(Xt[:3]).mean
    assert torch.allclose(post.mean, expected)


def _high_dim_task(dim: int = 40):
    """A smooth objective in ``dim`` dimensions, 60 source points, 10 target points."""
    g = torch.Generator().manual_seed(4)
    direction = torch.randn(dim, generator=g, dtype=torch.float64)

    def f(x):
        return torch.sin(2.0 * x @ direction / dim**0.5)

    Xs = torch.rand(60, dim, generator=g, dtype=torch.float64)
    Xt = torch.rand(10, dim, generator=g, dtype=torch.float64)
    return f, Xs, Xt, g


def test_cv_predictions_refit_without_the_held_out_point():
    g = torch.Generator().manual_seed(0)
    X = torch.rand(6, 2, generator=g, dtype=torch.float64)
    y = torch.sin(6 * X[:, 0]) + X[:, 1]
    mean, var = cv_predictions(X, y, [GPFitter() for _ in range(6)])  # leave-one-out
    keep = torch.arange(6) != 2
    alone = GPFitter().fit(X[keep], y[keep]).posterior(X[2:3], observation_noise=True)
    assert torch.allclose(mean[2], alone.mean.reshape(()).detach(), atol=1e-6)
    assert torch.allclose(var[2], alone.variance.reshape(()).detach(), atol=1e-6)


def _rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = (torch.argsort(torch.argsort(v)).double() for v in (a, b))
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def test_cv_predictions_do_not_rank_pure_noise_the_closed_form_loo_does():
    # 10 points in 20 dimensions with values that are pure noise: no model can rank them.
    # The closed-form leave-one-out with hyperparameters fitted on all points claims it
    # can (the leak that kept every source's RGPE weight at 0); refitted folds do not.
    loo_rho, cv_rho = [], []
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        X = torch.rand(10, 20, generator=g, dtype=torch.float64)
        y = robust(torch.randn(10, generator=g, dtype=torch.float64))
        model = _fit(X, y)
        loo_rho.append(_rank_correlation(loo_predictions(model)[0], model.train_targets))
        cv_rho.append(_rank_correlation(cv_predictions(X, y, [GPFitter() for _ in range(5)])[0],
                                        y))
    assert sum(loo_rho) / 3 > 0.5
    assert sum(cv_rho) / 3 < 0.3


def test_rgpe_weights_give_a_related_source_weight_in_many_dimensions_a_random_one_none():
    # The case of hard prompts: many dimensions, few target points. A leave-one-out with
    # hyperparameters fitted on all points ranks the target's own points too well and
    # left even a related source with weight 0; cross-validated predictions do not.
    f, Xs, Xt, g = _high_dim_task()
    related = _fit(Xs, robust(f(Xs)))
    unrelated = _fit(Xs, robust(torch.randn(60, generator=g, dtype=torch.float64)))
    y = robust(f(Xt))
    mean, var = cv_predictions(Xt, y, [GPFitter() for _ in range(5)])
    w = rgpe_weights([related, unrelated], Xt, y, mean, var, 256, seed=5)
    assert w[0] > 0.3, w
    assert w[1] < 0.05, w


def _init_engine(init_count: int = 5) -> tuple[TransferEngine, torch.Tensor]:
    space = SoftPromptSpace(1, 2)
    cands = torch.tensor([[0.1, 0.1], [0.5, 0.5], [0.9, 0.9], [0.3, 0.7]])
    source = SourceData("s", cands, torch.tensor([0.0, 3.0, 2.0, 1.0]))
    engine = TransferEngine(make_engine(space, "random", {}, seed=0), [source], "init", "random")
    engine.init_count = init_count
    return engine, cands


def _run(engine: TransferEngine, value, steps: int) -> list[bool]:
    """Suggests and observes one candidate at a time; whether each was a source prompt."""
    kinds = []
    for _ in range(steps):
        x = engine.suggest(1)
        kind = engine.is_transferred(x)[0]
        kinds.append(kind)
        engine.observe(x, torch.tensor([value(kind)]))
    return kinds


def test_initial_design_interleaves_source_prompts_best_first_with_its_own_design():
    engine, cands = _init_engine()
    first = engine.suggest(4)
    assert engine.is_transferred(first) == [True, False, True, False]
    assert torch.allclose(first[[0, 2]], cands[[1, 2]], atol=1e-6)
    engine.observe(first, torch.tensor([1.0, 0.0, 1.0, 0.0]))
    # Slot 4 is a source prompt again; after the initial design only the strategy's.
    assert engine.is_transferred(engine.suggest(2)) == [True, False]
    assert engine.num_suggested == 3  # only the strategy's own suggestions count


def test_guard_keeps_source_prompts_that_rank_above_the_study_design():
    engine, _ = _init_engine()
    kinds = _run(engine, lambda source: 1.0 if source else 0.0, 7)
    assert kinds == [True, False, True, False, True, False, False]


def test_guard_stops_source_prompts_that_rank_below_the_study_design():
    engine, _ = _init_engine()
    kinds = _run(engine, lambda source: 0.0 if source else 1.0, 7)
    assert kinds == [True, False, False, False, False, False, False]
    assert not engine.sources_rank_well()


def test_guard_counts_source_prompts_observed_after_a_restart():
    engine, cands = _init_engine()
    again, _ = _init_engine()
    x = engine.suggest(2)
    again.observe(x, torch.tensor([0.0, 1.0]))  # replayed history: source below design
    assert again.source_values == [0.0] and again.design_values == [1.0]
    assert again.is_transferred(again.suggest(1)) == [False]


def test_guard_counts_a_design_point_that_a_source_also_evaluated_as_design():
    # A study and its source with the same seed share the Sobol sequence: the study's own
    # design point can be among the source's prompts. It still counts as design.
    engine, cands = _init_engine()
    x = engine.suggest(2)
    engine._source_keys.update(engine.inner.box.keys(x[1:]))
    engine.observe(x, torch.tensor([0.0, 1.0]))
    assert engine.source_values == [0.0] and engine.design_values == [1.0]


def test_a_tripped_guard_gives_back_the_strategys_own_initial_design():
    space = SoftPromptSpace(1, 2)
    source = SourceData("s", torch.tensor([[0.1, 0.1], [0.9, 0.9], [0.5, 0.2]]),
                        torch.tensor([0.0, 2.0, 1.0]))
    inner = make_engine(space, "gp", {"num_initial": "8"}, seed=0)
    engine = TransferEngine(inner, [source], "both", "gp")
    assert engine.init_count == 5 and inner.num_initial == 5  # shortened for transfer
    kinds = _run(engine, lambda source: 0.0 if source else 1.0, 3)
    assert kinds == [True, False, False]
    assert engine.init_count == 8 and inner.num_initial == 8  # as a cold study


def _pool_objective(n: int = 300, d: int = 8, seed: int = 0):
    import numpy as np

    from promptbo.server.optim.pool_engines import pool_features

    emb = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    x = pool_features(emb)
    f = -(x - x[7]).square().sum(1)  # smooth, best at candidate 7
    return emb, f


def _pool_run(sources, mode: str, steps: int, f, emb):
    from promptbo.server.optim.pool_engines import make_pool_engine

    inner = make_pool_engine("gp", {"num_initial": "5"}, 3, emb)
    engine = TransferEngine(inner, sources, mode, "gp")
    picked = []
    for _ in range(steps):
        c = engine.suggest(1)
        picked.append(int(c[0, 0]))
        engine.observe(c, f[c.reshape(-1)])
    return engine, picked


def test_pool_gp_surrogate_weighs_a_related_source_and_drops_an_unrelated_one():
    emb, f = _pool_objective()
    gen = torch.Generator().manual_seed(1)
    idx = torch.randperm(300, generator=gen)[:60]
    related = SourceData("rel", idx.reshape(-1, 1), f[idx] + 0.01 * torch.randn(60, generator=gen,
                                                                                  dtype=f.dtype))
    anti = SourceData("anti", idx.reshape(-1, 1), -f[idx])
    engine, picked = _pool_run([related, anti], "surrogate", 12, f, emb)
    assert engine.init_count == 0 and engine.inner.opts["num_initial"] == 5
    assert engine.weights is not None and engine.weights["anti"] == 0.0
    assert engine.weights["rel"] > 0.5 and engine.target_weight < 0.5
    rank = (f > f[picked[5]]).sum()  # the first suggestion of the ensemble
    assert rank < 15, rank  # top 5% of the pool, from the source's model
    # the unrelated source alone fades out and the study runs on its own GP
    engine, _ = _pool_run([anti], "surrogate", 10, f, emb)
    assert engine.weights == {"anti": 0.0} and engine.target_weight == 1.0


def test_pool_gp_surrogate_uses_a_source_on_another_pool_by_its_embeddings():
    import numpy as np

    from promptbo.server.optim.pool_engines import make_pool_engine, nearest_candidates

    emb, f = _pool_objective()
    inner = make_pool_engine("gp", {"num_initial": "5"}, 3, emb)
    best = inner.x[7]
    # Another pool of the same embedding space (none of its candidates is one of ours),
    # scored by the same function of the features.
    other = np.random.default_rng(9).normal(size=(80, emb.shape[1])).astype(np.float32)
    z = inner.features_of(other)
    # its candidates are indices into its own pool (80); the engine maps them to ours
    source = SourceData("other-pool", torch.arange(80).reshape(-1, 1),
                        -(z - best).square().sum(1), torch.as_tensor(other))
    near = nearest_candidates(inner.x, z)
    engine, picked = _pool_run([source], "surrogate", 12, f, emb)
    assert engine.weights is not None and engine.weights["other-pool"] > 0.5
    rank = (f > f[picked[5]]).sum()  # the first suggestion of the ensemble
    assert rank < 15, rank
    # init hands out the target candidates nearest the source's best points
    engine, picked = _pool_run([source], "init", 1, f, emb)
    top = int(torch.argmax(source.values))
    assert picked[0] == int(near[top, 0])


def test_nearest_candidates_by_cosine():
    from promptbo.server.optim.pool_engines import nearest_candidates, pool_features

    x = pool_features(torch.eye(4, dtype=torch.float64).numpy())
    q = torch.stack([x[2] * 3.0, x[0] + 0.1 * x[1]])
    assert nearest_candidates(x, q).tolist() == [[2], [0]]
    assert nearest_candidates(x, x[:0]).shape == (0, 1)


def test_pool_ensemble_defers_to_the_study_where_a_source_has_no_data():
    """A source holding all the weight (it ranked the study's few points best) decides
    only where its data is: elsewhere the ensemble is the study's own GP."""
    import numpy as np

    from promptbo.server.optim.pool_engines import make_pool_engine
    from promptbo.server.optim.transfer import PoolEnsemble

    emb, f = _pool_objective(d=64)  # as in sentence embeddings, most points far apart
    inner = make_pool_engine("gp", {"num_initial": "5"}, 3, emb)
    x = inner.x
    # the source saw 12 candidates, all close to candidate 0
    near = torch.argsort((x - x[0]).square().sum(1))[:12]
    source = SourceData("local", near.reshape(-1, 1), f[near])
    ens = PoolEnsemble(inner, [source], 1, lambda w: None)
    ens.weights = lambda: torch.tensor([1.0, 0.0], dtype=torch.float64)  # type: ignore
    cand = np.arange(300)
    mean, std = torch.linspace(-1, 1, 300, dtype=torch.float64), torch.full((300,), 0.5,
                                                                              dtype=torch.float64)
    out_mean, out_std = ens(cand, mean, std)
    cover = ens.models[0].coverage
    far, close = cover < 1e-3, cover > 0.99
    assert far.sum() > 100 and close.sum() >= 5
    assert torch.allclose(out_mean[far], mean[far], atol=2e-3)
    assert torch.allclose(out_std[far], std[far], atol=2e-3)
    assert torch.allclose(out_mean[close], ens.models[0].mu[close], atol=2e-2)


def test_flat_pool_acquisition_breaks_ties_at_random():
    import numpy as np

    from promptbo.server.optim.pool_engines import argmax_ties_random

    flat = torch.zeros(50, dtype=torch.float64)
    picks = {argmax_ties_random(flat, np.random.default_rng(s)) for s in range(20)}
    assert len(picks) > 5  # not the first index every time
    peak = flat.clone()
    peak[17] = 1e-6
    assert argmax_ties_random(peak, np.random.default_rng(0)) == 17
    assert argmax_ties_random(torch.tensor([float("nan"), 1.0]), np.random.default_rng(0)) in (0, 1)
