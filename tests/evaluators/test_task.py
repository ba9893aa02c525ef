"""Task definition: templates, dataset files, few-shot splits, label words and scores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from promptbo.errors import InvalidArgumentError
from promptbo.evaluators.data import Example, demo_path, few_shot_splits, read_examples
from promptbo.evaluators.task import ANSWER, PROMPT, Task, Template, load_task, parse_label_words

# --- templates ---------------------------------------------------------------------------


def test_template_render_moves_space_before_answer_into_label_and_drops_it_before_prompt():
    t = Template("Review: {text} {prompt}\nSentiment: {answer}")
    pieces, space = t.render(Example("Nice film.", 1))
    assert pieces == ["Review: Nice film.", PROMPT, "\nSentiment:", ANSWER]
    assert pieces[1] is PROMPT and pieces[3] is ANSWER
    assert space == " "
    assert t.answer_last and t.prompt_after_input


def test_template_prompt_first_and_pairs():
    t = Template("{prompt} Premise: {text} Hypothesis: {text_b} Answer:{answer}")
    pieces, space = t.render(Example("A cat sat.", 0, "A cat is sitting."))
    assert pieces == [PROMPT, " Premise: A cat sat. Hypothesis: A cat is sitting. Answer:", ANSWER]
    assert space == "" and t.uses_text_b and not t.prompt_after_input


def test_template_braces_in_the_input_and_escaped_braces_are_literal():
    t = Template("{{json}} {text}\n{prompt}{answer}")
    pieces, _ = t.render(Example("uses {prompt} and {text} literally", 0))
    assert pieces[0] == "{json} uses {prompt} and {text} literally\n"
    assert pieces[1] is PROMPT and pieces[0] is not PROMPT


def test_template_mask_in_the_middle_is_not_last():
    t = Template("{text} It was {answer}. {prompt}")
    assert not t.answer_last
    pieces, space = t.render(Example("Fine.", 1))
    assert pieces == ["Fine. It was", ANSWER, ".", PROMPT] and space == " "


def test_render_text_for_apis():
    t = Template("Review: {text} {prompt}\nSentiment: {answer}")
    ex = Example("Nice film.", 1)
    assert t.render_text(ex, "Is it good?") == "Review: Nice film. Is it good?\nSentiment:"
    assert t.render_text(ex, " Is it good?") == "Review: Nice film. Is it good?\nSentiment:"


@pytest.mark.parametrize("source, message", [
    ("Review: {text} {prompt}", "needs exactly one {answer} slot"),
    ("{text} {prompt} {answer} {answer}", "needs exactly one {answer} slot"),
    ("{text} {answer}", "needs exactly one {prompt} slot"),
    ("{prompt} {prompt} {text} {answer}", "needs exactly one {prompt} slot"),
    ("{prompt} {answer}", "has no {text} slot"),
    ("{prompt} {txt} {answer}", "unknown slot {txt}"),
    ("{prompt} {text:>10} {answer}", "unknown slot {text}"),
    ("{prompt} {text} {answer", "malformed"),
])
def test_template_errors(source, message):
    with pytest.raises(InvalidArgumentError, match=message.replace("{", r"\{").replace("}", r"\}")):
        Template(source)


# --- data files ----------------------------------------------------------------------------


def test_demo_data_is_balanced_and_shipped():
    examples = read_examples(demo_path())
    assert len(examples) == 64
    assert sorted({ex.label for ex in examples}) == [0, 1]
    assert sum(ex.label for ex in examples) == 32
    assert len({ex.text for ex in examples}) == 64


def test_csv_with_pairs(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text('text,text_b,label\n"A, b",B,entailment\nC,D,1\n', encoding="utf-8")
    task = load_task(str(path), template="{text} ? {prompt} {text_b} {answer}",
                     labels="entailment,not_entailment", k=1, split="objective")
    assert sorted((ex.text, ex.text_b, ex.label) for ex in task.examples) == [
        ("A, b", "B", 0), ("C", "D", 1)]


@pytest.mark.parametrize("content, message", [
    ("", "has no examples"),
    ("\n\n", "has no examples"),
    ('{"text": "ok", "label": 0}\n{"text": "broken", "label": 1\n', "line 2 is not valid JSON"),
    ('{"text": "ok", "label": 0}\n\n{"txt": "x", "label": 1}\n', "line 3 needs the fields"),
    ('{"text": 3, "label": 0}\n', "must be strings"),
    ('{"text": "x", "label": [1]}\n', "'label' must be a class index"),
])
def test_jsonl_errors(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InvalidArgumentError, match=message):
        read_examples(path)


def test_csv_errors(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("sentence,label\nx,0\n", encoding="utf-8")
    with pytest.raises(InvalidArgumentError, match="must name the columns text and label"):
        read_examples(path)
    path.write_text("text,label\nx,0\ny,1,extra\n", encoding="utf-8")
    with pytest.raises(InvalidArgumentError, match="line 3 has 3 fields"):
        read_examples(path)


def test_missing_file_and_folder_without_train(tmp_path):
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        load_task(str(tmp_path / "nope.jsonl"))
    with pytest.raises(InvalidArgumentError, match="has no train.jsonl"):
        load_task(str(tmp_path))


def test_unknown_label_names_the_line(tmp_path, write_jsonl):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 1},
                                              {"text": "c", "label": 2}])
    with pytest.raises(InvalidArgumentError, match=r"d.jsonl:3: unknown label 2.*0\.\.1"):
        load_task(str(path), k=1)
    path = write_jsonl(tmp_path / "e.jsonl", [{"text": "a", "label": "Positive"},
                                              {"text": "b", "label": "meh"}])
    with pytest.raises(InvalidArgumentError, match="e.jsonl:2: unknown label 'meh'"):
        load_task(str(path), k=1)


def test_string_labels_resolve_to_label_words(tmp_path, write_jsonl):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": "Positive"},
                                              {"text": "b", "label": "negative"},
                                              {"text": "c", "label": "1"},
                                              {"text": "d", "label": " NEGATIVE "},
                                              {"text": "e", "label": 0},
                                              {"text": "f", "label": 1}])
    task = load_task(str(path), k=1, split="test")
    assert len(task.examples) == 2
    labels = {ex.text: ex.label for split in ("objective", "dev", "test")
              for ex in load_task(str(path), k=1, split=split).examples}
    assert labels == {"a": 1, "b": 0, "c": 1, "d": 0, "e": 0, "f": 1}
    with pytest.raises(InvalidArgumentError, match="pass a smaller k, or test_data"):
        load_task(str(path), k=3, split="test")


def test_folder_with_meta_labels_and_test_split(tmp_path, write_jsonl):
    write_jsonl(tmp_path / "train.jsonl", [{"text": f"t{i}", "label": i % 3} for i in range(30)])
    write_jsonl(tmp_path / "test.jsonl", [{"text": f"x{i}", "label": i % 3} for i in range(7)])
    (tmp_path / "meta.json").write_text(json.dumps({"labels": ["red", "green", "blue"]}))
    task = load_task(str(tmp_path), split="test", k=2)
    assert task.label_words == ("red", "green", "blue")
    assert [ex.text for ex in task.examples] == [f"x{i}" for i in range(7)]
    assert len(load_task(str(tmp_path), split="test", k=2, max_examples="3").examples) == 3
    with pytest.raises(InvalidArgumentError, match="with the label words"):
        load_task(str(tmp_path), labels="red,green", k=2)


def test_holdout_is_the_rest_of_the_training_pool_shuffled_by_seed(tmp_path, write_jsonl):
    write_jsonl(tmp_path / "train.jsonl", [{"text": f"t{i}", "label": i % 2} for i in range(40)])
    write_jsonl(tmp_path / "test.jsonl", [{"text": f"x{i}", "label": i % 2} for i in range(6)])

    def texts(split, seed=3, **kw):
        return [ex.text for ex in load_task(str(tmp_path), split=split, k=4, seed=seed,
                                            **kw).examples]

    holdout = texts("holdout")
    seen = set(texts("objective")) | set(texts("dev"))
    assert len(holdout) == 24 and not seen & set(holdout)
    assert seen | set(holdout) == {f"t{i}" for i in range(40)}  # the test file is not used
    assert holdout != sorted(holdout, key=lambda t: int(t[1:]))  # shuffled, not pool order
    assert texts("holdout") == holdout and texts("holdout", seed=4) != holdout
    capped = texts("holdout", max_examples=10)
    assert capped == holdout[:10] and {int(t[1:]) % 2 for t in capped} == {0, 1}
    with pytest.raises(InvalidArgumentError, match=r"no examples .* pass a smaller k\)"):
        load_task(str(tmp_path), split="holdout", k=20)


# --- few-shot splits -------------------------------------------------------------------------


def test_few_shot_splits_are_disjoint_balanced_and_seeded():
    pool = [Example(f"t{i}", i % 2) for i in range(40)]
    obj, dev, rest = few_shot_splits(pool, 2, k=4, seed=3)
    assert len(obj) == len(dev) == 8 and len(rest) == 24
    texts = [{ex.text for ex in s} for s in (obj, dev, rest)]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    assert sorted(ex.label for ex in obj) == [0] * 4 + [1] * 4
    assert few_shot_splits(pool, 2, k=4, seed=3) == (obj, dev, rest)
    assert few_shot_splits(pool, 2, k=4, seed=4)[0] != obj
    with pytest.raises(InvalidArgumentError, match="class 0 has 20 examples.*fewer than k=21"):
        few_shot_splits(pool, 2, k=21, seed=0)


def test_load_task_demo_splits():
    obj = load_task("demo", k="8", seed="5")
    dev = load_task("demo", k=8, seed=5, split="dev")
    test = load_task("demo", k=8, seed=5, split="test")
    assert len(obj.examples) == len(dev.examples) == 16 and len(test.examples) == 32
    assert not {e.text for e in obj.examples} & {e.text for e in dev.examples}
    assert obj.label_words == ("negative", "positive")


@pytest.mark.parametrize("options, message", [
    ({"split": "train"}, "option split must be one of objective, dev, test"),
    ({"metric": "f2"}, "option metric must be one of"),
    ({"k": "x"}, "option k must be an integer"),
    ({"k": 0}, "option k must be at least 1"),
    ({"labels": "good"}, "at least two label words"),
    ({"labels": "good,"}, "must not be empty"),
    ({"labels": "[1, 2"}, "is not a JSON list"),
])
def test_option_errors(options, message):
    with pytest.raises(InvalidArgumentError, match=message):
        load_task("demo", **options)


def test_label_word_parsing():
    assert parse_label_words("negative, positive") == ("negative", "positive")
    assert parse_label_words('["no", "yes, sure"]') == ("no", "yes, sure")
    assert parse_label_words(["a", "b"]) == ("a", "b")


# --- scores ----------------------------------------------------------------------------------


def _task(labels, metric="log_prob"):
    examples = tuple(Example(f"t{i}", y, source=f"f:{i}") for i, y in enumerate(labels))
    return Task(examples, Template("{text}{prompt}{answer}"), ("no", "yes"), metric)


def test_score_normalises_over_label_words():
    task = _task([0, 1, 1])
    lp = np.log(np.array([[0.3, 0.1], [0.2, 0.2], [0.05, 0.15]]))
    score = task.score_log_probs(lp)
    expected = np.mean(np.log([0.75, 0.5, 0.75]))
    assert score.value == pytest.approx(expected)
    assert score.metrics["log_prob"] == pytest.approx(expected)
    assert score.metrics["raw_log_prob"] == pytest.approx(np.mean(np.log([0.3, 0.2, 0.15])))
    assert score.metrics["accuracy"] == pytest.approx(2 / 3)  # the tie predicts class 0
    assert score.metrics["examples"] == 3
    assert _task([0, 1, 1], "accuracy").score_log_probs(lp).value == pytest.approx(2 / 3)


def test_macro_f1_and_predictions():
    task = _task([0, 0, 1, 1], "macro_f1")
    score = task.score_predictions(np.array([0, 1, 1, -1]))
    assert score.metrics["accuracy"] == 0.5
    assert score.value == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert _task([0, 1]).score_predictions(np.array([0, 0])).value == 0.5
