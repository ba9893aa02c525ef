"""The recommendation's estimate leaves out the scores that selected the prompt, and its
interval is simultaneous over the prompts it was chosen among."""

from __future__ import annotations

import math

import numpy as np
import pytest

from promptbo.server.domain import Prompt, SoftPromptSpace, StudySpec, Trial, TrialState
from promptbo.server.recommend import Z95, interval_z, recommend


def trial(i: int, prompt: tuple[float, ...], value: float, n: int, se: float) -> Trial:
    return Trial("s", i, TrialState.COMPLETED, Prompt(vector=prompt), value=value,
                 examples=tuple(range(n)), value_stderr=se, examples_scored=n,
                 complete_time=float(i))


def test_interval_z_is_bonferroni():
    assert interval_z(1) == pytest.approx(Z95)
    assert interval_z(0) == pytest.approx(Z95)
    assert interval_z(3) == pytest.approx(2.394, abs=1e-3)
    assert interval_z(10) == pytest.approx(2.807, abs=1e-3)


def test_promoted_prompt_is_estimated_on_its_latest_trial_only():
    spec = StudySpec(space=SoftPromptSpace(1, 2))
    a, b, c = (0.0, 0.0), (1.0, 0.0), (0.0, 1.0)
    trials = [
        trial(1, a, 0.95, 16, 0.05),  # a lucky screen that promoted a
        trial(2, b, 0.60, 16, 0.12),
        trial(3, c, 0.55, 16, 0.12),
        trial(4, a, 0.80, 32, 0.07),  # a's promotion, fresh examples
        trial(5, a, 0.70, 96, 0.047),  # promoted again: the unbiased score
        trial(6, b, 0.72, 32, 0.08),
        trial(7, b, 0.66, 96, 0.048),
    ]
    rec = recommend(spec, trials)
    assert rec is not None and rec.method == "observed_mean"
    assert rec.trial.id == 5 and rec.trials == 3
    assert rec.estimate == pytest.approx(0.70) and rec.stderr == pytest.approx(0.047)
    assert rec.examples == 96
    pooled = (0.95 * 16 + 0.80 * 32 + 0.70 * 96) / 144
    assert rec.pooled_estimate == pytest.approx(pooled) and rec.pooled_examples == 144
    assert rec.pooled_estimate > rec.estimate  # the screening's luck is left out
    # a and b are backed by >= half of a's 144 examples: chosen among two
    assert rec.candidates == 2
    z = interval_z(2)
    assert (rec.lower, rec.upper) == (pytest.approx(0.70 - z * 0.047),
                                      pytest.approx(0.70 + z * 0.047))


def test_prompt_scored_once_keeps_its_trial_and_widens_over_candidates():
    spec = StudySpec(space=SoftPromptSpace(1, 2))
    rng = np.random.default_rng(0)
    trials = [trial(i + 1, tuple(rng.normal(size=2)), float(v), 32, 0.08)
              for i, v in enumerate(rng.uniform(0.4, 0.8, size=10))]
    rec = recommend(spec, trials)
    best = max(trials, key=lambda t: t.value)
    assert rec.trial.id == best.id and rec.trials == 1
    assert rec.estimate == rec.pooled_estimate == best.value
    assert rec.candidates == 10
    assert rec.upper - rec.lower == pytest.approx(2 * interval_z(10) * 0.08)
    assert not math.isnan(rec.posterior_mean)
