"""The "equal model calls" harness: the MIPROv2-style baseline keeps its protocol
(minibatches, a full evaluation every few trials, never over budget) and the table counts
interval coverage. A fake scorer stands in for the model (the harness's own arithmetic is
what is tested; the model path is the hf-causal evaluator's, tested elsewhere)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from benchmarks.equal_calls import (
    column_order,
    merge_results,
    parse_column,
    run_manager,
    run_tpe,
    summarize,
)
from promptbo.server.domain import HardPromptSpace, Vocabulary


class FakeScorer:
    """Per-example scores from the prompt's first token: a higher id is more accurate."""

    def __init__(self):
        self.calls: list[tuple[tuple, int]] = []
        self.charged = 0
        self.correct: dict[tuple, dict[int, float]] = {}

    def score(self, key, idx):
        self.calls.append((key, len(idx)))
        self.charged += len(idx)
        q = (key[0] % 100) / 100 if key else 0.5
        c = self.correct.setdefault(key, {})
        for i in idx:
            c[int(i)] = float(np.random.default_rng([int(i), *key]).random() < q)
        v = np.array([c[int(i)] for i in idx])
        return v - 1.0, v

    def accuracy_interval(self, key, idx):
        c = np.array([self.correct[key][int(i)] for i in sorted(set(idx))])
        return float(c.mean()), float(c.std(ddof=1) / np.sqrt(len(c))), len(c)

    def test_accuracy(self, key):
        return (key[0] % 100) / 100 if key else 0.5


def test_mipro_baseline_minibatches_and_full_evaluations():
    args = argparse.Namespace(budgets=[400, 800], pool=100, minibatch=35, full_every=5,
                              fixed=32)
    scorer = FakeScorer()
    space = HardPromptSpace(2, "v", pca_dims=2)
    ids = np.arange(1000, 1050)
    run = run_tpe("mipro-tpe", 0, args, scorer, space, ids, list(range(50)))
    sizes = [n for _, n in scorer.calls]
    assert scorer.charged <= 800 and sum(sizes) == scorer.charged
    # Five minibatches of 35, then the best of them on the whole pool, and again.
    assert sizes[:6] == [35] * 5 + [100] and sizes[6:12] == [35] * 5 + [100]
    fully = [k for k, n in scorer.calls if n == 100]
    assert len(fully) == len(set(fully))  # never the same candidate twice
    assert [c["budget"] for c in run.checkpoints] == [400, 800]
    last = run.checkpoints[-1]
    assert tuple(last["prompt"]) in fully and last["examples"] == 100


def test_table_reports_accuracy_and_interval_coverage():
    results = {"runs": {
        "mf|0": {"checkpoints": [{"budget": 10, "test_accuracy": 0.8, "pool_accuracy": 0.78,
                                  "stderr": 0.02}]},
        "mf|1": {"checkpoints": [{"budget": 10, "test_accuracy": 0.9, "pool_accuracy": 0.7,
                                  "stderr": 0.01}]},
    }}
    table = summarize(results, ["mf"], [10], [0, 1])
    assert "| mf | 85.0 ± 5.0 | 1/2 |" in table


def test_selection_aware_coverage_and_mipro_candidates():
    args = argparse.Namespace(budgets=[400, 800], pool=100, minibatch=35, full_every=5,
                              fixed=32)
    run = run_tpe("mipro-tpe", 0, args, FakeScorer(), HardPromptSpace(2, "v", pca_dims=2),
                  np.arange(1000, 1050), list(range(50)))
    last = run.checkpoints[-1]
    # chosen among the fully scored candidates, on its full score
    assert last["candidates"] >= 2 and last["basis_examples"] == 100
    c = {"budget": 10, "test_accuracy": 0.8, "pool_accuracy": 0.9, "stderr": 0.02,
         "basis_accuracy": 0.85, "basis_stderr": 0.02, "candidates": 10}
    # 0.05 off: outside 1.96 x 0.02, inside 2.81 x 0.02 (simultaneous over 10)
    table = summarize({"runs": {"mf|0": {"checkpoints": [c]}}}, ["mf"], [10], [0])
    assert "| mf | 80.0 ± 0.0 | 0/1 | 1/1 |" in table


def test_merge_unites_parts_and_refuses_mismatches():
    cfg = {"data_dir": "../shared/datasets/trec", "pool": 1000, "budgets": [1000]}
    a = {"config": cfg, "runs": {"mf|0": {"checkpoints": []}}}
    b = {"config": {**cfg, "data_dir": "../../shared/datasets/trec", "budgets": [2000]},
         "runs": {"random-full|0": {"checkpoints": []}}}
    merged = merge_results([a, b])
    assert set(merged["runs"]) == {"mf|0", "random-full|0"}
    assert merged["config"]["budgets"] == [1000, 2000]
    with pytest.raises(ValueError, match="pool"):
        merge_results([a, {"config": {**cfg, "pool": 500}, "runs": {}}])
    with pytest.raises(ValueError, match="mf\\|0"):
        merge_results([a, a])


def test_columns_with_strategy_options():
    assert parse_column("mf") == ("mf", {})
    assert parse_column("mf[top_examples=1000;eta=2]") == ("mf", {"top_examples": "1000",
                                                                  "eta": "2"})
    for bad in ("mf[top_examples=1000", "mf[top_examples]", "mipro-tpe[minibatch=10]"):
        with pytest.raises(ValueError):
            parse_column(bad)
    assert column_order(["random-full", "mf[top_examples=9]", "mf", "unprompted"]) == [
        "mf", "mf[top_examples=9]", "random-full", "unprompted"]


def test_manager_column_passes_its_options_to_the_strategy():
    """``mf[top_examples=48]``: rungs 16 and 48, so no prompt is scored on more than 48
    pool examples, where plain ``mf`` on a pool of 100 would promote up to 100."""
    rng = np.random.default_rng(0)
    vocab = Vocabulary(tuple(f"w{i}" for i in range(50)), tuple(range(1000, 1050)),
                       rng.normal(size=(50, 8)).astype(np.float32))
    space = HardPromptSpace(2, vocab.id, pca_dims=2)
    args = argparse.Namespace(budgets=[250], pool=100, fixed=32)
    scorer = FakeScorer()
    run = run_manager("mf[top_examples=48;num_initial=4]", 0, args, scorer, space, vocab)
    per_prompt: dict[tuple, int] = {}
    for key, n in scorer.calls:
        per_prompt[key] = per_prompt.get(key, 0) + n
    assert max(per_prompt.values()) == 48
    assert [c["budget"] for c in run.checkpoints] == [250]
