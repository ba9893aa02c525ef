"""The transfer engine's parts (pure, no server): initialization ranking, ranking losses,
leave-one-out predictions and RGPE weights."""

from __future__ import annotations

import warnings

import torch
from botorch.exceptions.warnings import InputDataWarning
from botorch.models import SingleTaskGP

from promptbo.server.domain import SoftPromptSpace
from promptbo.server.optim import make_engine
from promptbo.server.optim.surrogate import GPFitter
from promptbo.server.optim.transfer import (
    EnsembleModel,
    SourceData,
    TransferEngine,
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
    w = rgpe_weights([related, anti], target, 256, seed=3)
    assert torch.isclose(w.sum(), torch.tensor(1.0, dtype=w.dtype))
    assert w[0] > 0.5 and w[1] == 0.0
    ensemble = EnsembleModel([related, target], torch.tensor([0.5, 0.5]))
    post = ensemble.posterior(Xt[:3])
    assert post.mean.shape == (3, 1)
    expected = 0.5 * related.posterior(Xt[:3]).mean + 0.5 * target.posterior(Xt[:3]).mean
    assert torch.allclose(post.mean, expected)


def test_engine_hands_out_source_prompts_first_then_its_strategy():
    space = SoftPromptSpace(1, 2)
    cands = torch.tensor([[0.1, 0.1], [0.5, 0.5], [0.9, 0.9]])
    source = SourceData("s", cands, torch.tensor([0.0, 2.0, 1.0]))
    engine = TransferEngine(make_engine(space, "random", {}, seed=0), [source], "init", "random")
    engine.init_count = 2
    first = engine.suggest(3)
    assert torch.allclose(first[:2], cands[[1, 2]], atol=1e-6)
    assert engine.is_transferred(first) == [True, True, False]
    engine.observe(first, torch.zeros(3))
    assert engine.is_transferred(engine.suggest(1)) == [False]
    assert engine.num_suggested == 2  # only the strategy's own suggestions count


