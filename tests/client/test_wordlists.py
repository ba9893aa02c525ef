"""Whole-word rankings for a hard-prompt space's ``top_n`` filter."""

from __future__ import annotations

import numpy as np
import pytest

from promptbo.wordlists import NOT_A_WORD, read_texts, text_word_scores, word_scores

TOKENS = [" film", "ing", " boring", " the", "!", " a", " Film", " funny"]


def test_merge_order_ranks_words_by_id_and_non_words_last():
    scores = word_scores(TOKENS, [10, 11, 12, 13, 14, 15, 16, 17])
    order = np.argsort(-scores, kind="stable")
    assert [TOKENS[i] for i in order[:5]] == [" film", " boring", " the", " Film", " funny"]
    assert scores[1] == scores[4] == scores[5] == NOT_A_WORD  # "ing", "!", " a" (one letter)


def test_text_counts_rank_the_domain_words_first():
    texts = ["the film was boring, the film", "The funny bits", "a film!"]
    scores = text_word_scores(TOKENS, texts)
    assert scores.tolist() == [3, NOT_A_WORD, 1, 2, NOT_A_WORD, NOT_A_WORD, 0, 1]
    order = np.argsort(-scores, kind="stable")  # the filter's order: ties by row
    assert [TOKENS[i] for i in order[:5]] == [" film", " the", " boring", " funny", " Film"]


def test_read_texts_takes_string_fields_of_jsonl_and_lines_of_text(tmp_path):
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text('{"text": "good film", "label": 1}\n\n'
                     '{"premise": "a b", "hypothesis": "c", "label": "entailment"}\n')
    assert read_texts(jsonl) == ["good film", "a b", "c", "entailment"]
    plain = tmp_path / "texts.txt"
    plain.write_text("one\n\n two \n")
    assert read_texts(plain) == ["one", " two "]
    jsonl.write_text('{"text": "ok"}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"train.jsonl:2: expected a JSON object, got list"):
        read_texts(jsonl)
    jsonl.write_text('{"text": "ok"\n')
    with pytest.raises(ValueError, match=r"train.jsonl:1: not JSON"):
        read_texts(jsonl)
