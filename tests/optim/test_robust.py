"""The robust output transform: bounded, order-preserving, affine on ordinary data."""

from __future__ import annotations

import torch

from promptbo.server.optim.robust import LIMIT, robust_standardize


def test_extremes_are_bounded_and_keep_their_order():
    y = torch.tensor([1e308, -1e308, 0.0, 1e-300, 5.0, -1e160], dtype=torch.float64)
    z = robust_standardize(y)
    assert torch.isfinite(z).all() and z.abs().max() <= LIMIT
    assert torch.equal(torch.argsort(z), torch.argsort(y))


def test_an_outlier_does_not_flatten_ordinary_values():
    f64 = torch.float64
    y = torch.cat([torch.linspace(0, 1, 13, dtype=f64), torch.tensor([1e160], dtype=f64)])
    z = robust_standardize(y)
    assert z[:13].std() > 0.5  # still spread out, not squeezed to one number
    assert z[13] == z.max()


def test_ordinary_values_are_an_affine_map():
    y = torch.tensor([0.1, 0.4, 0.2, 0.3, 0.25], dtype=torch.float64)
    z = robust_standardize(y)
    ratio = (z[1:] - z[0]) / (y[1:] - y[0])
    assert torch.allclose(ratio, ratio[0].expand_as(ratio))


def test_constants_and_empty():
    zeros = torch.zeros(4, dtype=torch.float64)
    assert torch.equal(robust_standardize(torch.full((4,), 7.0)), zeros)
    assert robust_standardize(torch.empty(0)).numel() == 0


def test_a_failed_fit_falls_back_to_the_sobol_design():
    from botorch.exceptions.errors import InputDataError

    from promptbo.server.domain import SoftPromptSpace
    from promptbo.server.optim import make_engine

    engine = make_engine(SoftPromptSpace(1, 2), "gp", {"num_initial": "2"}, seed=0)
    engine.observe(engine.suggest(3), torch.tensor([1.0, 2.0, 3.0]))

    def broken(X, Y):
        raise InputDataError("Input data contains NaN values.")

    engine.fitter.fit = broken  # type: ignore[attr-defined]
    out = engine.suggest(2)
    assert out.shape == (2, 2) and torch.isfinite(out).all()
