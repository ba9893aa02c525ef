"""Picking the final prompt: a study's best trials re-scored by a second evaluator."""

from __future__ import annotations

import json
import textwrap

import pytest

import promptbo
from promptbo import HardPromptSpace
from promptbo.cli import main
from promptbo.selection import rescore, top_trials
from promptbo.server.app import ServerOptions, create_server
from promptbo.types import Score


class DevScorer:
    """Scores hard prompts by a fixed table of token-id pairs; records what it was asked."""

    def __init__(self, table: dict[tuple[int, ...], float]):
        self.table, self.asked = table, []

    def score(self, prompts):
        self.asked.append([p.token_ids for p in prompts])
        return [Score(self.table.get(p.token_ids, -9.0), {"accuracy": 0.5}) for p in prompts]


def _study(client, vocab_table, goal="maximize"):
    vid = client.upload_vocabulary(vocab_table)
    study = client.create_study("sel", HardPromptSpace(2, vid, pca_dims=2), strategy="random",
                                goal=goal)
    known = [((1000, 1001), 0.9), ((1002, 1003), 0.8), ((1000, 1001), 0.1),  # told twice
             ((1004, 1005), 0.7), ((1006, 1007), 0.2)]
    study.add_trials([(promptbo.Prompt(token_ids=ids), v) for ids, v in known])
    return study


def test_rescore_ranks_the_top_distinct_prompts_by_the_second_score(client, vocab_table):
    study = _study(client, vocab_table)
    dev = DevScorer({(1000, 1001): 0.1, (1002, 1003): 0.6, (1004, 1005): 0.3, (): 0.4})
    ranked = rescore(study, dev, top=3, unprompted=True)
    # One batch: the three best distinct prompts by objective, then the empty prompt.
    assert dev.asked == [[(1000, 1001), (1002, 1003), (1004, 1005), ()]]
    assert [r.prompt.token_ids for r in ranked] == [(1002, 1003), (), (1004, 1005), (1000, 1001)]
    assert [r.objective for r in ranked] == [0.8, None, 0.7, 0.9]
    assert ranked[0].trial.id == 2 and ranked[0].prompt.text == " w2 w3"
    assert ranked[1].trial is None and ranked[0].score.metrics == {"accuracy": 0.5}
    # The first told value of a repeated prompt is the one that counts.
    assert [t.value for t in top_trials(study.trials(), 10)] == [0.9, 0.8, 0.7, 0.2]


def test_rescore_follows_a_minimizing_study(client, vocab_table):
    study = _study(client, vocab_table, goal="minimize")
    dev = DevScorer({(1006, 1007): 0.5, (1004, 1005): 0.2})
    ranked = rescore(study, dev, top=2)
    assert dev.asked == [[(1006, 1007), (1004, 1005)]]  # lowest objective first
    assert [r.prompt.token_ids for r in ranked] == [(1004, 1005), (1006, 1007)]


def test_rescore_rejects_bad_requests(client, vocab_table):
    vid = client.upload_vocabulary(vocab_table)
    empty = client.create_study("empty", HardPromptSpace(2, vid, pca_dims=2), strategy="random")
    with pytest.raises(promptbo.InvalidArgumentError, match="no completed trial"):
        rescore(empty, DevScorer({}))
    with pytest.raises(promptbo.InvalidArgumentError, match="top must be at least 1"):
        rescore(empty, DevScorer({}), top=0)


def test_select_command_end_to_end(tmp_path, vocab_table, capsys):
    """`promptbo select` against a real server: a user's scoring file as the evaluator."""
    scoring = tmp_path / "dev_scoring.py"
    scoring.write_text(textwrap.dedent("""
        def by_last_token(prompts, bonus="0"):
            return [{"value": (p.token_ids[-1] if p.token_ids else 0) / 1000 + float(bonus),
                     "metrics": {"accuracy": 1.0}} for p in prompts]

        def prefers_empty(prompts):
            return [-len(p.token_ids) for p in prompts]
    """))
    server, port, manager = create_server(f"sqlite:///{tmp_path / 's.db'}", ServerOptions(port=0))
    address = f"127.0.0.1:{port}"
    try:
        with promptbo.Client(address) as client:
            _study(client, vocab_table)
        base = ["select", "--server", address, "--study", "sel", "--evaluator", "python",
                "-o", f"function={scoring}:by_last_token"]
        assert main([*base, "--top", "3", "-o", "bonus=1"]) == 0
        out = capsys.readouterr().out.splitlines()
        # By last token: (1004, 1005) > (1002, 1003) > (1000, 1001).
        assert [line.split()[0] for line in out[:3]] == ["4", "2", "1"]
        assert "' w4 w5'" in out[0] and out[-1].startswith("selected: trial 4 (score 2.0050)")
        assert any(line.startswith("study: recommended: trial") for line in out)

        assert main([*base, "--top", "2", "--unprompted", "--json"]) == 0
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [r["trial"] for r in rows] == [2, 1, None]
        assert rows[0]["objective"] == 0.8 and rows[0]["token_ids"] == [1002, 1003]

        assert main([*base[:-1], f"function={scoring}:prefers_empty", "--unprompted"]) == 0
        out = capsys.readouterr().out.splitlines()
        assert "(unprompted)" in out[0]
        assert out[-1].endswith("- the unprompted model scores better")
        with promptbo.Client(address) as client:
            client.create_study("fresh", promptbo.SoftPromptSpace(1, 2), strategy="random")
        assert main(["select", "--server", address, "--study", "fresh", "--evaluator",
                     "python", "-o", "function=no_such_module:f"]) == 2
        assert "no completed trial" in capsys.readouterr().err  # before the evaluator loads
        assert main([*base, "-o", "split=objective"]) == 2
        assert "not objective" in capsys.readouterr().err
        assert main([*base, "--top", "0"]) == 2
        assert main(["select", "--server", address, "--study", "nope", "--evaluator",
                     "python", "-o", f"function={scoring}:by_last_token"]) == 2
        assert "nope" in capsys.readouterr().err
    finally:
        server.stop(0)
        manager.close()


def test_rescore_keeps_pool_candidates_apart(client):
    import numpy as np

    texts = ["Say the sentiment.", "Is it good?", "Judge it.", "Read it."]
    table = promptbo.PoolTable(texts, np.eye(4, dtype=np.float32), "test")
    study = client.create_study("pool-sel", promptbo.PoolSpace(client.upload_pool(table)),
                                strategy="random")
    study.add_trials([(promptbo.Prompt(pool_index=i), v)
                      for i, v in ((0, 0.9), (1, 0.8), (0, 0.1), (2, 0.7), (3, 0.2))])
    assert [t.prompt.pool_index for t in top_trials(study.trials(), 10)] == [0, 1, 2, 3]

    class ByText:
        def score(self, prompts):
            return [Score({"Is it good?": 0.6}.get(p.text, 0.1)) for p in prompts]

    ranked = rescore(study, ByText(), top=3)
    assert [r.prompt.text for r in ranked] == ["Is it good?", "Say the sentiment.", "Judge it."]
