"""The recommendation as the CLI, the worker and the demo print it."""

from __future__ import annotations

from promptbo.client import Recommendation, Trial
from promptbo.report import recommendation_lines, verdict
from promptbo.types import Prompt


def trial(i: int, text: str, value: float, n: int = 0, source: str = "suggested") -> Trial:
    return Trial("s", i, "COMPLETED", Prompt(text=text), value=value, source=source,
                 value_stderr=0.02 if n else None, examples_scored=n)


def rec(**kw) -> Recommendation:
    base = dict(trial=trial(9, " great film", 0.84, 192), estimate=0.84, stderr=0.025,
                lower=0.78, upper=0.90, examples=192, trials=3, posterior_mean=0.85,
                method="posterior_mean", best_observed=trial(4, " wow", 0.97, 16),
                reference=trial(1, "", 0.70, 1000, "reference"), candidates=3,
                pooled_estimate=0.86, pooled_examples=256)
    base.update(kw)
    return Recommendation(**base)


def test_rescored_recommendation_names_its_basis_and_the_choice():
    first, best, ref, word = recommendation_lines(rec())
    assert first == (
        "recommended: trial 9 ' great film': 0.8400 [0.7800, 0.9000] (95%, among 3 prompts) "
        "on the 192 examples of its latest trial (all 3 trials: 0.8600 on 256), "
        "by posterior mean 0.8500")
    assert best.startswith("best observed: trial 4 ' wow': 0.9700 on 16 examples")
    assert ref.startswith("unprompted (reference): 0.7000 on 1000 examples")
    assert word == verdict(rec()) == (
        "the recommended prompt beats the unprompted model (interval above it)")


def test_prompt_scored_once_and_a_single_candidate():
    once = rec(trials=1, candidates=1, examples=256, method="observed_mean")
    first = recommendation_lines(once)[0]
    assert first.endswith("0.8400 [0.7800, 0.9000] (95%) on 256 examples, by observed mean")
    assert verdict(rec(lower=0.6)) == (
        "no clear difference from the unprompted model (its score is inside the interval)")
