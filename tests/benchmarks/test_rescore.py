"""The rescoring table: mean ± std over seeds per strategy and budget, and the unprompted
row (the scoring itself is the hf-causal evaluator's, tested elsewhere)."""

from __future__ import annotations

from benchmarks.rescore import selections, table


def test_table_groups_seeds_per_strategy_and_budget():
    picks = {"gp|0|25": 0.80, "gp|1|25": 0.84, "gp|0|50": 0.90, "random|0|25": 0.70}
    md = table(picks, 0.79, [25, 50]).splitlines()
    assert md[0] == "| strategy | b=25 | b=50 |"
    assert md[2] == "| gp | 82.0 ± 2.0 | 90.0 ± 0.0 |"
    assert md[3] == "| random | 70.0 ± 0.0 | – |"
    assert md[4] == "| unprompted | 79.0 | 79.0 |"


def test_equal_calls_runs_give_their_recommendations():
    run = {"runs": {"mf|0": {"checkpoints": [{"budget": 1000, "prompt": [5, 6]},
                                             {"budget": 2000, "prompt": [7, 8]}]}}}
    assert selections(run) == {"mf|0|1000": {"prompt": [5, 6]},
                               "mf|0|2000": {"prompt": [7, 8]}}
    quality = {"selections": {"gp|0|25": {"prompt": [1]}}, "runs": {}}
    assert selections(quality) == quality["selections"]
