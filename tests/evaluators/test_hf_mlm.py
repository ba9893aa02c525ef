"""hf-mlm on a tiny random RoBERTa: the mask slot, batching, soft prompts, label checks."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")
import torch  # noqa: E402

from promptbo.errors import InvalidArgumentError  # noqa: E402
from promptbo.evaluators import create_evaluator  # noqa: E402
from promptbo.types import Prompt  # noqa: E402

PROMPT_TEXTS = [" Is it good or bad?", " great", "", " The story was bad and the music was fun."]


@pytest.fixture(scope="module")
def evaluator(tiny_roberta_dir):
    ev = create_evaluator("hf-mlm", model=str(tiny_roberta_dir), k=3, labels="terrible,great",
                          batch_size=4, template="{text} {prompt} It was {answer}.")
    yield ev
    ev.close()


def hard(ev, text: str) -> Prompt:
    return Prompt(token_ids=tuple(ev.tokenizer(text, add_special_tokens=False)["input_ids"]),
                  text=text)


def soft(ev, text: str) -> Prompt:
    ids = torch.tensor(hard(ev, text).token_ids, dtype=torch.long)
    return Prompt(vector=ev.embedding(ids).detach().numpy().astype(np.float32))


def direct(ev, prompt_ids, example: int) -> np.ndarray:
    enc = ev.encoded[example]
    ids = enc.before + list(prompt_ids) + enc.after
    at = ids.index(ev.tokenizer.mask_token_id)
    with torch.inference_mode():
        logits = ev.model(input_ids=torch.tensor([ids])).logits[0, at]
    logp = torch.log_softmax(logits.float(), -1)
    return np.array([float(logp[ids[0]]) for ids in enc.label_ids])


def test_sequence_has_the_mask_where_the_answer_goes(evaluator):
    ex, enc = evaluator.task.examples[0], evaluator.encoded[0]
    tok = evaluator.tokenizer
    ids = enc.before + list(hard(evaluator, " great").token_ids) + enc.after
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert ids.count(tok.mask_token_id) == 1
    assert tok.decode(ids) == f"<s>{ex.text} great It was<mask>.</s>"
    assert enc.label_ids == ((tok.convert_tokens_to_ids("Ġterrible"),),
                             (tok.convert_tokens_to_ids("Ġgreat"),))


def test_scores_match_direct_forward_passes(evaluator):
    prompts = [hard(evaluator, t) for t in PROMPT_TEXTS]
    got = evaluator.label_log_probs(prompts)
    for p, prompt in enumerate(prompts):
        for e in range(len(evaluator.encoded)):
            np.testing.assert_allclose(got[p, e], direct(evaluator, prompt.token_ids, e),
                                       atol=1e-5)
    scores = evaluator.score(prompts)
    assert scores[0].value == pytest.approx(evaluator.task.score_log_probs(got[0]).value)


def test_batching_gives_the_same_scores_as_one_at_a_time(tiny_roberta_dir, evaluator):
    one = create_evaluator("hf-mlm", model=str(tiny_roberta_dir), k=3, labels="terrible,great",
                           batch_size=1, template="{text} {prompt} It was {answer}.")
    prompts = [hard(evaluator, t) for t in PROMPT_TEXTS]
    batched = [s.value for s in evaluator.score(prompts)]
    single = [s.value for s in one.score(prompts)]
    assert batched == pytest.approx(single, abs=1e-5)


def test_soft_prompts(evaluator):
    texts = PROMPT_TEXTS[:2] + PROMPT_TEXTS[3:]
    by_ids = evaluator.label_log_probs([hard(evaluator, t) for t in texts])
    by_vectors = evaluator.label_log_probs([soft(evaluator, t) for t in texts])
    np.testing.assert_allclose(by_ids, by_vectors, atol=1e-5)
    rng = np.random.default_rng(0)
    dim, std = evaluator.soft_prompt_shape()
    random_soft = Prompt(vector=(rng.standard_normal((5, dim)) * std).astype(np.float32))
    score = evaluator.score([random_soft])[0]
    assert np.isfinite(score.value) and 0 <= score.metrics["accuracy"] <= 1


def test_mask_before_the_prompt(tiny_roberta_dir):
    ev = create_evaluator("hf-mlm", model=str(tiny_roberta_dir), k=2, labels="terrible,great",
                          template="It was {answer}. {text}{prompt}")
    prompt = hard(ev, " Review:")
    assert ev.encoded[0].answer_at[0] == "before"
    got = ev.label_log_probs([prompt])[0]
    np.testing.assert_allclose(got, [direct(ev, prompt.token_ids, e)
                                     for e in range(len(ev.encoded))], atol=1e-5)


def test_label_word_must_be_one_token(tiny_roberta_dir):
    with pytest.raises(InvalidArgumentError,
                       match=r"label word ' wonderful' is split by the tokenizer into 8 tokens"):
        create_evaluator("hf-mlm", model=str(tiny_roberta_dir), k=2, labels="wonderful,great")


def test_tokenizer_without_mask_is_refused(tiny_roberta_dir, monkeypatch):
    from transformers import AutoTokenizer

    from promptbo.evaluators.hf_mlm import HFMaskedLMEvaluator

    def no_mask(self, path):
        tok = AutoTokenizer.from_pretrained(path)
        tok.mask_token = None
        return tok

    monkeypatch.setattr(HFMaskedLMEvaluator, "_load_tokenizer", no_mask)
    with pytest.raises(InvalidArgumentError, match="no mask token"):
        create_evaluator("hf-mlm", model=str(tiny_roberta_dir), k=2, labels="terrible,great")
