"""hf-causal on a tiny random Llama: token assembly, batching, KV cache, soft prompts."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")
import torch  # noqa: E402

from promptbo.errors import InvalidArgumentError  # noqa: E402
from promptbo.evaluators import create_evaluator  # noqa: E402
from promptbo.types import Prompt  # noqa: E402

PROMPT_TEXTS = [" Is it good or bad?", " great", "", " The story was bad and the music was fun."]


#: The prompt after the input: the template whose prefix caches these tests exercise.
AFTER_INPUT = "Review: {text}\n{prompt}\nSentiment: {answer}"


@pytest.fixture(scope="module")
def evaluator(tiny_llama_dir):
    ev = create_evaluator("hf-causal", model=str(tiny_llama_dir), data="demo", k="3",
                          labels="negative,positive", batch_size="5", template=AFTER_INPUT)
    yield ev
    ev.close()


def hard(ev, text: str) -> Prompt:
    ids = tuple(ev.tokenizer(text, add_special_tokens=False)["input_ids"])
    return Prompt(token_ids=ids, text=text)


def soft(ev, text: str) -> Prompt:
    ids = torch.tensor(hard(ev, text).token_ids, dtype=torch.long)
    return Prompt(vector=ev.embedding(ids).detach().numpy().astype(np.float32))


def direct_label_log_probs(ev, prompt_ids, example: int) -> np.ndarray:
    """log p(label word | sequence) from one unpadded forward pass per label word."""
    enc = ev.encoded[example]
    out = []
    for label in enc.label_ids:
        ids = enc.before + list(prompt_ids) + enc.after + list(label)
        with torch.inference_mode():
            logits = ev.model(input_ids=torch.tensor([ids])).logits[0]
        logp = torch.log_softmax(logits.float(), -1)
        start = len(ids) - len(label)
        out.append(sum(float(logp[start - 1 + j, t]) for j, t in enumerate(label)))
    return np.array(out)


def test_token_ids_follow_the_template(evaluator):
    ex = evaluator.task.examples[0]
    enc = evaluator.encoded[0]
    prompt = hard(evaluator, " Is it good or bad?")
    ids = enc.before + list(prompt.token_ids) + enc.after
    assert enc.before[0] == evaluator.tokenizer.bos_token_id
    text = evaluator.tokenizer.decode(ids, skip_special_tokens=True)
    assert text == f"Review: {ex.text}\n Is it good or bad?\nSentiment:"
    # the template's space before {answer} is part of the label word
    assert enc.label_ids == tuple(
        tuple(evaluator.tokenizer(w, add_special_tokens=False)["input_ids"])
        for w in (" negative", " positive"))
    assert evaluator.use_kv_cache and evaluator.single_token_labels


def test_default_template_puts_the_prompt_before_the_input(tiny_llama_dir):
    with create_evaluator("hf-causal", model=str(tiny_llama_dir), data="demo", k="3",
                          labels="negative,positive") as ev:
        assert ev.task.template.source == "{prompt}\nReview: {text}\nSentiment: {answer}"
        assert not ev.task.template.prompt_after_input and not ev.use_kv_cache
        assert ev.shared_prefix == "auto"
        prompt = hard(ev, " Is it good or bad?")
        enc = ev.encoded[0]
        text = ev.tokenizer.decode(enc.before + list(prompt.token_ids) + enc.after,
                                   skip_special_tokens=True)
        assert text == f" Is it good or bad?\nReview: {ev.task.examples[0].text}\nSentiment:"


def test_scores_match_direct_forward_passes(evaluator):
    prompts = [hard(evaluator, t) for t in PROMPT_TEXTS]
    scores = evaluator.score(prompts)
    for prompt, score in zip(prompts, scores, strict=True):
        lp = np.array([direct_label_log_probs(evaluator, prompt.token_ids, e)
                       for e in range(len(evaluator.encoded))])
        expected = evaluator.task.score_log_probs(lp)
        assert score.value == pytest.approx(expected.value, abs=1e-5)
        assert score.metrics["accuracy"] == expected.metrics["accuracy"]
        assert score.metrics["raw_log_prob"] == pytest.approx(
            expected.metrics["raw_log_prob"], abs=1e-5)
        assert set(score.metrics) >= {"accuracy", "log_prob", "raw_log_prob", "macro_f1"}


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_kv_cache_path_equals_plain_path(evaluator, kind):
    make = hard if kind == "hard" else soft
    prompts = [make(evaluator, t) for t in PROMPT_TEXTS]
    evaluator.use_kv_cache = True
    cached = evaluator.label_log_probs(prompts)
    again = evaluator.label_log_probs(prompts)  # prefixes now come from the store
    evaluator.use_kv_cache = False
    try:
        plain = evaluator.label_log_probs(prompts)
    finally:
        evaluator.use_kv_cache = True
    assert evaluator._prefixes, "the prefix caches should be kept across calls"
    np.testing.assert_allclose(cached, plain, atol=1e-5)
    np.testing.assert_array_equal(cached, again)


POOL_TEXTS = ["Classify the review. Answer great or terrible. Input: The plot was fun. "
              "Answer: great", "Is it good or bad?"]


@pytest.mark.parametrize("kind", ["hard", "pool", "soft", "mixed"])
def test_shared_prompt_prefix_equals_plain_path(tiny_llama_dir, kind):
    """Prompt first: each prompt's common row prefix runs once per call; the scores are
    those of the uncached rows, over reviews of different lengths and for a subset."""
    common = {"model": str(tiny_llama_dir), "data": "demo", "k": 3,
              "labels": "negative,positive", "batch_size": 4}
    with create_evaluator("hf-causal", kv_cache="off", **common) as plain, \
            create_evaluator("hf-causal", **common) as auto:
        assert auto.shared_prefix == "auto" and not auto.use_kv_cache
        assert plain.shared_prefix == "off"
        assert len({len(e.after) for e in auto.encoded}) > 1
        if kind == "pool":
            prompts = [Prompt(text=t) for t in POOL_TEXTS + [""]]
        else:
            texts = PROMPT_TEXTS if kind != "mixed" else PROMPT_TEXTS[:2]
            prompts = [(soft if kind == "soft" else hard)(auto, t) for t in texts]
            if kind == "mixed":
                prompts += [soft(auto, PROMPT_TEXTS[3]), Prompt(text=POOL_TEXTS[0])]
        calls = []
        forward = auto._forward
        auto._forward = lambda batch, *a, **kw: calls.append(kw["past"]) or forward(
            batch, *a, **kw)
        try:
            got = auto.label_log_probs(prompts)
        finally:
            del auto._forward
        assert calls and all(past is not None for past in calls)
        # every row ran only its own tokens: the prefix holds the prompt and what follows
        width = calls[0][1].shape[1]
        assert width > max(len(p.token_ids or ()) for p in prompts)
        np.testing.assert_allclose(got, plain.label_log_probs(prompts), atol=1e-5)
        subset = [5, 0, 2]
        np.testing.assert_allclose(auto.label_log_probs(prompts, subset),
                                   plain.label_log_probs(prompts, subset), atol=1e-5)
        one = auto.label_log_probs(prompts, [1])  # one row per prompt: plain rows (auto)
        np.testing.assert_allclose(one, plain.label_log_probs(prompts, [1]), atol=1e-5)


def test_shared_prefix_keeps_a_token_per_row(tiny_llama_dir):
    """Rows that end right after the prompt (empty prompt, input first, ``on``, a subset of
    examples so the per-example caches are not used) with label words of several tokens
    (no space before ``{answer}``): the prefix leaves each row the positions it reads."""
    common = {"model": str(tiny_llama_dir), "data": "demo", "k": 3, "batch_size": 3,
              "labels": "negative,positive", "template": "Review: {text}\n{prompt}{answer}"}
    with create_evaluator("hf-causal", kv_cache="off", **common) as plain, \
            create_evaluator("hf-causal", kv_cache="on", **common) as on:
        assert on.shared_prefix == "on" and on.use_kv_cache and not on.single_token_labels
        prompts = [hard(on, ""), hard(on, " great"), soft(on, " Is it good or bad?")]
        np.testing.assert_allclose(on.label_log_probs(prompts, [3]),
                                   plain.label_log_probs(prompts, [3]), atol=1e-5)
        np.testing.assert_allclose(on.label_log_probs(prompts, [0, 4, 1]),
                                   plain.label_log_probs(prompts, [0, 4, 1]), atol=1e-5)


def test_soft_prompt_of_token_embeddings_equals_hard_prompt(evaluator):
    texts = PROMPT_TEXTS[:2]
    by_ids = evaluator.label_log_probs([hard(evaluator, t) for t in texts])
    by_vectors = evaluator.label_log_probs([soft(evaluator, t) for t in texts])
    mixed = evaluator.label_log_probs([hard(evaluator, texts[0]), soft(evaluator, texts[1])])
    np.testing.assert_allclose(by_ids, by_vectors, atol=1e-5)
    np.testing.assert_allclose(by_ids, mixed, atol=1e-5)


@pytest.mark.parametrize("kv_cache", ["on", "off"])
def test_batch_size_does_not_change_scores(tiny_llama_dir, evaluator, kv_cache):
    one = create_evaluator("hf-causal", model=str(tiny_llama_dir), k=3, template=AFTER_INPUT,
                           labels="negative,positive", batch_size=1, kv_cache=kv_cache)
    prompts = [hard(evaluator, t) for t in PROMPT_TEXTS]
    np.testing.assert_allclose(one.label_log_probs(prompts),
                               evaluator.label_log_probs(prompts), atol=1e-5)


@pytest.mark.parametrize("kv_cache", ["on", "off"])
def test_multi_token_label_words_sum_their_tokens(tiny_llama_dir, kv_cache):
    ev = create_evaluator("hf-causal", model=str(tiny_llama_dir), k=2, labels="wonderful,boring",
                          batch_size=3, kv_cache=kv_cache)
    assert not ev.single_token_labels
    assert [len(ids) for ids in ev.encoded[0].label_ids] == [8, 1]
    prompts = [hard(ev, t) for t in PROMPT_TEXTS[:3]]
    got = ev.label_log_probs(prompts)
    for p, prompt in enumerate(prompts):
        for e in range(len(ev.encoded)):
            np.testing.assert_allclose(got[p, e], direct_label_log_probs(ev, prompt.token_ids, e),
                                       atol=1e-4)


def test_prompt_before_the_input(tiny_llama_dir):
    ev = create_evaluator("hf-causal", model=str(tiny_llama_dir), k=2,
                          template="{prompt}\nReview: {text}\nSentiment:{answer}",
                          labels=" negative, positive")
    assert not ev.use_kv_cache
    prompt = hard(ev, "Question? Answer:")
    got = ev.label_log_probs([prompt])[0]
    expected = [direct_label_log_probs(ev, prompt.token_ids, e) for e in range(len(ev.encoded))]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    text = ev.tokenizer.decode(ev.encoded[0].before + list(prompt.token_ids) + ev.encoded[0].after,
                               skip_special_tokens=True)
    assert text == f"Question? Answer:\nReview: {ev.task.examples[0].text}\nSentiment:"


def test_vocabulary_and_soft_prompt_shape(evaluator):
    vocab = evaluator.vocabulary()
    tok = evaluator.tokenizer
    assert len(vocab.tokens) == len(vocab.token_ids) == vocab.embeddings.shape[0]
    assert vocab.embeddings.dtype == np.float32 and vocab.embeddings.shape[1] == 32
    assert not set(vocab.token_ids) & set(tok.all_special_ids)
    surface = dict(zip(vocab.token_ids, vocab.tokens, strict=True))
    ids = tok(" The movie was great", add_special_tokens=False)["input_ids"]
    assert "".join(surface[i] for i in ids) == " The movie was great"
    np.testing.assert_allclose(vocab.embeddings[vocab.token_ids.index(ids[1])],
                               evaluator.embedding.weight[ids[1]].detach().numpy())
    dim, std = evaluator.soft_prompt_shape()
    assert dim == 32 and std == pytest.approx(float(evaluator.embedding.weight.std()))
    limited = evaluator.vocabulary_size
    try:
        evaluator.vocabulary_size = 10
        assert len(evaluator.vocabulary().tokens) == 10
    finally:
        evaluator.vocabulary_size = limited


def test_bad_prompts_and_templates(tiny_llama_dir, evaluator):
    with pytest.raises(InvalidArgumentError, match="outside this model's vocabulary"):
        evaluator.score([Prompt(token_ids=(1, 10**6))])
    with pytest.raises(InvalidArgumentError, match="shape L x 32"):
        evaluator.score([Prompt(vector=np.zeros((2, 16), dtype=np.float32))])
    with pytest.raises(InvalidArgumentError, match="{answer} must be the last slot"):
        create_evaluator("hf-causal", model=str(tiny_llama_dir), k=2,
                         template="{text} {prompt} It was {answer}.")
    with pytest.raises(InvalidArgumentError, match="option kv_cache must be auto, on or off"):
        create_evaluator("hf-causal", model=str(tiny_llama_dir), kv_cache="maybe")
    assert evaluator.score([]) == []


@pytest.mark.slow
def test_smollm2_scores_demo_sentences():
    """The bundled SmolLM2-135M-Instruct on a handful of demo reviews (real model)."""
    pytest.importorskip("gguf")
    ev = create_evaluator("hf-causal", model="smollm2", data="demo", split="dev", k=4)
    prompts = [hard(ev, " Is this review positive or negative?"), hard(ev, " xyz qq")]
    scores = ev.score(prompts)
    assert len(scores) == 2 and scores[0].metrics["examples"] == 8
    assert scores[0].metrics["accuracy"] >= 0.75
    assert scores[0].value > np.log(0.5)  # better than chance on clear-cut reviews
    assert ev.shared_prefix == "auto"
    ev.use_kv_cache, ev.shared_prefix = False, "off"
    plain = ev.score(prompts)
    assert [s.value for s in plain] == pytest.approx([s.value for s in scores], abs=1e-3)
    ev.close()
