"""Fidelity through the client, in-process and over a real gRPC server: labeled pools,
per-trial example subsets, the scored-example budget, noisy tells, the recommendation and
the unprompted reference."""

from __future__ import annotations

import numpy as np
import pytest

import promptbo
from promptbo import HardPromptSpace, SoftPromptSpace
from promptbo.types import Score, mean_and_stderr

POOL = 50


def per_example(prompt, rng_seed=0) -> np.ndarray:
    """A fake per-example score: a prompt-dependent accuracy drawn on its examples."""
    quality = 0.3 + 0.6 * (1 / (1 + abs(float(np.asarray(prompt.vector).sum()))))
    out = []
    for i in prompt.examples:
        r = np.random.default_rng([rng_seed, i, int(quality * 1e6)]).random()
        out.append(1.0 if r < quality else 0.0)
    return np.asarray(out)


def score(prompt) -> Score:
    m, se = mean_and_stderr(per_example(prompt))
    return Score(m, {"accuracy": m}, stderr=se, examples=len(prompt.examples))


def test_pool_study_hands_out_subsets_and_enforces_example_budget(client):
    study = client.create_study(
        "pool", SoftPromptSpace(2, 3), strategy="random", seed=4,
        pool_size=POOL, max_examples=100, examples_per_trial=15,
    )
    spec = study.info.spec
    assert (spec.pool_size, spec.max_examples, spec.examples_per_trial) == (POOL, 100, 15)
    sizes = []
    while trials := study.ask(3):
        for t in trials:
            ex = t.prompt.examples
            assert ex is not None and len(set(ex)) == len(ex)
            assert all(0 <= i < POOL for i in ex)
            sizes.append(len(ex))
        study.tell_many([(t, score(t.prompt)) for t in trials])
    # 6 trials of 15 and a last one cut to the 10 examples left: exactly 100 scored.
    assert sizes == [15] * 6 + [10]
    study.refresh()
    assert study.done and study.info.examples_scored == 100
    told = list(study.trials(state="completed"))
    assert all(t.examples_scored == len(t.prompt.examples) for t in told)
    assert all(t.value_stderr is not None and t.value_stderr >= 0 for t in told)


def test_failed_trials_free_their_examples(client):
    study = client.create_study("f", SoftPromptSpace(2, 3), strategy="random",
                                pool_size=POOL, max_examples=20, examples_per_trial=20)
    t = study.ask(1)[0]
    assert [x.id for x in study.ask(1)] == [t.id]
    assert len(study.ask(2, client_id="other")) == 0  # the budget is reserved by t
    study.fail(t, "crashed")
    again = study.ask(1)[0]
    assert again.id != t.id and len(again.prompt.examples) == 20
    study.tell(again, 0.5, stderr=0.1, examples=20)
    study.refresh()
    assert study.done and study.info.examples_scored == 20


def test_bad_fidelity_input_is_refused_precisely(client):
    with pytest.raises(promptbo.InvalidArgumentError, match="need a labeled pool"):
        client.create_study("x", SoftPromptSpace(2, 3), strategy="random", max_examples=10)
    with pytest.raises(promptbo.InvalidArgumentError, match="exceeds pool_size"):
        client.create_study("x", SoftPromptSpace(2, 3), strategy="random", pool_size=5,
                            examples_per_trial=6)
    study = client.create_study("y", SoftPromptSpace(2, 3), strategy="random",
                                pool_size=POOL, examples_per_trial=10)
    t = study.ask(1)[0]
    with pytest.raises(promptbo.InvalidArgumentError, match="score exactly those examples"):
        study.tell(t, 0.5, examples=7)
    with pytest.raises(promptbo.InvalidArgumentError, match="value_stderr must be >= 0"):
        study.tell(t, 0.5, stderr=-1.0)
    assert next(study.trials()).state == "active"  # nothing stored by the refusals
    done = study.tell(t, 0.5, stderr=0.05)
    assert done.examples_scored == 10 and done.value_stderr == pytest.approx(0.05)


def test_study_without_pool_keeps_working_unchanged(client):
    study = client.create_study("plain", SoftPromptSpace(2, 3), strategy="random",
                                max_trials=3)
    while trials := study.ask(2):
        for t in trials:
            assert t.prompt.examples is None
            study.tell(t, 0.1)
    rec = study.recommendation()
    assert rec.trial is not None and rec.method == "observed_mean"
    assert rec.best_observed is not None and rec.reference is None
    assert rec.estimate == pytest.approx(0.1) and rec.stderr == 0.0


def test_reference_is_recorded_once_and_counts_against_nothing(client):
    study = client.create_study("r", SoftPromptSpace(2, 3), strategy="random", max_trials=2)
    ref = study.add_reference(Score(0.9, {"accuracy": 0.9}, stderr=0.02, examples=64))
    assert ref.source == "reference" and ref.value_stderr == pytest.approx(0.02)
    with pytest.raises(promptbo.AlreadyExistsError, match="already has a reference"):
        study.add_reference(Score(0.8))
    while trials := study.ask(1):
        study.tell(trials[0], 0.1)
    study.refresh()
    assert study.info.completed_count == 2 and study.done
    assert study.best_trial().source == "suggested"  # never the reference
    rec = study.recommendation()
    assert rec.reference is not None and rec.reference.value == pytest.approx(0.9)


def test_recommendation_pools_rescored_prompt_and_reports_interval(client, vocab_table):
    vid = client.upload_vocabulary(vocab_table)
    study = client.create_study("rec", HardPromptSpace(2, vid), strategy="random",
                                pool_size=POOL, examples_per_trial=10)
    trials = study.ask(4)
    values = [0.9, 0.5, 0.4, 0.3]
    for t, v in zip(trials, values, strict=True):
        study.tell(t, v, stderr=0.1)
    # The lucky 0.9 on 10 examples does not beat a solid prompt backed by more examples:
    known = study.add_trials([(trials[1].prompt, 0.7, {})])
    assert known[0].source == "added"
    rec = study.recommendation()
    assert rec.best_observed.id == trials[0].id
    assert rec.trial is not None
    assert rec.lower <= rec.estimate <= rec.upper
    assert rec.examples >= 10 and rec.trials >= 1
