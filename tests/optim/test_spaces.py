"""Box encodings: filters, PCA scaling, nearest-token projection, soft projections."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from promptbo.errors import InvalidArgumentError
from promptbo.server.domain import HardPromptSpace, SoftPromptSpace
from promptbo.server.optim.spaces import HardPromptBox, SoftPromptBox, filtered_rows


def space(**kw) -> HardPromptSpace:
    return HardPromptSpace(**{"prompt_length": 3, "vocabulary_id": "v", "pca_dims": 4, **kw})


def test_filters_select_rows() -> None:
    scores = tuple(float(s) for s in [5, 1, 9, 9, 0, 3])
    assert filtered_rows(space(top_n=3, top_n_scores=scores), 6).tolist() == [2, 3, 0]
    assert filtered_rows(space(allowed=(4, 1, 4, 0)), 6).tolist() == [0, 1, 4]
    assert filtered_rows(space(), 6).tolist() == list(range(6))
    with pytest.raises(InvalidArgumentError, match="one score per"):
        filtered_rows(space(top_n=2, top_n_scores=(1.0, 2.0)), 6)
    with pytest.raises(InvalidArgumentError, match="allowed rows"):
        filtered_rows(space(allowed=(0, 9)), 6)


def test_pca_box_is_scaled_and_deterministic(table: np.ndarray) -> None:
    a = HardPromptBox(space(), table)
    b = HardPromptBox(space(), table.copy())
    assert a.dim == 12 and a.coords.shape == (300, 4)
    torch.testing.assert_close(a.coords, b.coords, rtol=0, atol=0)
    torch.testing.assert_close(a.coords.min(0).values, torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(a.coords.max(0).values, torch.ones(4, dtype=torch.float64))
    # The first component carries the most variance of the centered table.
    var = ((torch.from_numpy(table).double() - a.mean) @ a.components).var(0)
    assert torch.all(var[:-1] >= var[1:])


def test_scaling_uses_the_filtered_table(table: np.ndarray) -> None:
    box = HardPromptBox(space(allowed=tuple(range(0, 300, 3))), table)
    assert box.coords.shape[0] == 100
    coords = box.row_coords(torch.arange(300))
    assert coords.min() >= 0 and coords.max() <= 1  # rows outside the filter are clamped
    torch.testing.assert_close(coords[::3], box.coords)


def test_nearest_matches_brute_force(table: np.ndarray) -> None:
    box = HardPromptBox(space(), table)
    g = torch.Generator().manual_seed(0)
    q = torch.rand(200, 4, generator=g, dtype=torch.float64)
    pos, dist = box.nearest(q, k=3)
    brute = torch.cdist(q, box.coords).pow(2)
    best = brute.sort(-1).values[:, :3]
    torch.testing.assert_close(dist, best, atol=1e-10, rtol=0)
    torch.testing.assert_close(brute.gather(1, pos), best, atol=1e-10, rtol=0)
    rows, u = box.project(q[:30].reshape(10, 12), set(), g)
    assert rows.shape == (10, 3) and rows.dtype == torch.long
    torch.testing.assert_close(u, box.to_unit(rows))


def test_projection_skips_avoided_and_repeated_prompts(table: np.ndarray) -> None:
    box = HardPromptBox(space(), table)
    g = torch.Generator().manual_seed(0)
    u = torch.full((4, 12), 0.5, dtype=torch.float64)  # four identical points
    first, _ = box.project(u[:1], set(), g)
    avoid = {first[0].numpy().tobytes()}
    rows, _ = box.project(u, avoid, g)
    keys = {r.numpy().tobytes() for r in rows}
    assert len(keys) == 4 and first[0].numpy().tobytes() not in keys
    assert len(avoid) == 5  # the new prompts were added
    # The replacements stay close: mostly single-position swaps to near tokens.
    assert ((rows != first).sum(-1) <= 2).all()


def test_exhausted_space_allows_repeats(table: np.ndarray) -> None:
    box = HardPromptBox(space(prompt_length=2, allowed=(3, 8)), table)
    assert box.num_prompts == 4
    g = torch.Generator().manual_seed(1)
    avoid: set[bytes] = set()
    rows = box.random(6, avoid, g)
    assert len({r.numpy().tobytes() for r in rows[:4]}) == 4
    assert set(rows.flatten().tolist()) <= {3, 8}


def test_large_table_projection_is_fast() -> None:
    rng = np.random.default_rng(0)
    big = rng.standard_normal((50_000, 64)).astype(np.float32)
    box = HardPromptBox(space(prompt_length=5, pca_dims=16), big)
    u = torch.rand(64, box.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    rows, _ = box.project(u, set(), torch.Generator().manual_seed(0))
    assert time.perf_counter() - start < 2.0
    q = u[:2].reshape(-1, 16)
    brute = torch.cdist(q, box.coords).argmin(-1)
    torch.testing.assert_close(
        torch.cdist(q, box.coords).gather(1, box._position_of[rows[:2].flatten()][:, None]),
        torch.cdist(q, box.coords).gather(1, brute[:, None]),
    )


def test_soft_projection_dims_and_inverse() -> None:
    sp = SoftPromptSpace(prompt_length=3, embedding_dim=5, intrinsic_dim=4, bound=2.0)
    box = SoftPromptBox(sp, seed=3)
    assert box.dim == 4 and box.matrix is not None and box.matrix.shape == (15, 4)
    g = torch.Generator().manual_seed(0)
    u = torch.rand(6, 4, generator=g, dtype=torch.float64)
    vec, u2 = box.project(u, set(), g)
    assert vec.shape == (6, 15) and vec.dtype == torch.float32
    torch.testing.assert_close(box.to_unit(vec), u)  # remembered
    fresh = SoftPromptBox(sp, seed=3)  # e.g. after a restart: least squares
    torch.testing.assert_close(fresh.to_unit(vec), u, atol=1e-5, rtol=0)
    other = SoftPromptBox(sp, seed=4)
    assert not torch.equal(other.matrix, box.matrix)


def test_soft_projection_scale() -> None:
    sp = SoftPromptSpace(prompt_length=20, embedding_dim=50, intrinsic_dim=100, embedding_std=0.5)
    box = SoftPromptBox(sp, seed=0)
    assert box.matrix is not None
    assert box.matrix.std().item() == pytest.approx(0.5 / math.sqrt(100), rel=0.05)


def test_soft_without_projection_is_the_vector() -> None:
    sp = SoftPromptSpace(prompt_length=2, embedding_dim=3, intrinsic_dim=0, bound=1.5)
    box = SoftPromptBox(sp, seed=0)
    assert box.dim == 6 and box.matrix is None
    vec = torch.tensor([[1.5, -1.5, 0.0, 0.75, 3.0, -0.75]])
    u = box.to_unit(vec)
    torch.testing.assert_close(u, torch.tensor([[1.0, 0.0, 0.5, 0.75, 1.0, 0.25]]).double())
    out, _ = box.project(u, set(), torch.Generator())
    torch.testing.assert_close(out, vec.clamp(-1.5, 1.5))
    with pytest.raises(InvalidArgumentError, match="n x 6"):
        box.to_unit(torch.zeros(2, 5))
