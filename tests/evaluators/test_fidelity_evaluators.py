"""Example subsets (fidelity) in every built-in evaluator: a prompt with ``examples`` is
scored on exactly those examples of the split, with a standard error and a count."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest

from promptbo.errors import InvalidArgumentError
from promptbo.evaluators import create_evaluator
from promptbo.evaluators.task import load_task
from promptbo.types import Prompt, Score, mean_and_stderr

pytest.importorskip("transformers")


def _with_examples(p: Prompt, examples) -> Prompt:
    return Prompt(p.token_ids, p.tokens, p.text, p.vector, examples=tuple(examples))


@pytest.mark.parametrize("kind", ["causal", "mlm"])
def test_hf_subset_scores_equal_the_full_pass_restricted(kind, tiny_llama_dir, tiny_roberta_dir):
    if kind == "causal":
        ev = create_evaluator("hf-causal", model=str(tiny_llama_dir), data="demo", k="4",
                              labels="negative,positive", batch_size="3", metric="accuracy")
    else:
        ev = create_evaluator("hf-mlm", model=str(tiny_roberta_dir), data="demo", k="4",
                              labels="terrible,great", batch_size="3")
    ids = tuple(ev.tokenizer(" great film", add_special_tokens=False)["input_ids"])
    base = Prompt(token_ids=ids, text=" great film")
    full = ev.label_log_probs([base])[0]
    subsets = [(0, 3, 5), (7, 1), (2, 3, 4, 5, 6)]
    prompts = [_with_examples(base, s) for s in subsets] + [base]
    scores = ev.score(prompts)
    for s, score in zip(subsets, scores, strict=False):
        expected = ev.task.subset(s).score_log_probs(full[list(s)])
        assert score.value == pytest.approx(expected.value)
        assert score.examples == len(s)
        per = (
            (full[list(s)].argmax(1) == ev.task.subset(s).gold) * 1.0
            if ev.task.metric == "accuracy"
            else full[list(s), ev.task.subset(s).gold] - np.logaddexp.reduce(full[list(s)], 1)
        )
        assert score.stderr == pytest.approx(mean_and_stderr(per)[1])
    assert scores[-1].examples == len(ev.task.examples)  # no subset: the whole split
    with pytest.raises(InvalidArgumentError, match="pool_size must equal"):
        ev.score([_with_examples(base, (0, 99))])
    ev.close()


def test_pool_split_is_everything_outside_dev(tmp_path, write_jsonl):
    write_jsonl(tmp_path / "train.jsonl", [{"text": f"t{i}", "label": i % 2} for i in range(40)])
    write_jsonl(tmp_path / "test.jsonl", [{"text": f"x{i}", "label": i % 2} for i in range(6)])
    pool = [e.text for e in load_task(str(tmp_path), split="pool", k=4, seed=1).examples]
    objective = [e.text for e in load_task(str(tmp_path), split="objective", k=4, seed=1).examples]
    dev = {e.text for e in load_task(str(tmp_path), split="dev", k=4, seed=1).examples}
    assert len(pool) == 32 and pool[:8] == objective and not dev & set(pool)
    capped = load_task(str(tmp_path), split="pool", k=4, seed=1, max_examples=10)
    assert [e.text for e in capped.examples] == pool[:10]
    with pytest.raises(InvalidArgumentError, match="needs a dataset with a test split"):
        load_task("demo", split="pool")


def test_python_and_command_evaluators_receive_the_indices(tmp_path):
    module = tmp_path / "subset_scoring.py"
    module.write_text(textwrap.dedent("""
        def score(prompts):
            return [{"value": float(sum(p.examples)), "stderr": 0.5,
                     "examples": len(p.examples)} for p in prompts]
    """))
    ev = create_evaluator("python", function=f"{module}:score")
    p = Prompt(token_ids=(1,), text="a", examples=(2, 5))
    assert ev.score([p]) == [Score(7.0, stderr=0.5, examples=2)]

    script = tmp_path / "cmd.py"
    script.write_text(textwrap.dedent("""
        import json, sys
        doc = json.load(sys.stdin)
        print(json.dumps({"scores": [{"value": len(p.get("examples", [])), "examples":
                                      len(p.get("examples", []))} for p in doc["prompts"]]}))
    """))
    cmd = create_evaluator("command", command=[sys.executable, str(script)])
    assert cmd.score([p, Prompt(text="b")]) == [Score(2.0, examples=2), Score(0.0)]
    assert json.loads(
        __import__("promptbo.evaluators.command", fromlist=["x"]).prompts_to_json([p])
    )["prompts"][0]["examples"] == [2, 5]
