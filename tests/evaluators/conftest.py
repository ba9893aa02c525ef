"""Fixtures for the evaluator tests: tiny models built offline and small data files.

The tiny models share one byte-level BPE tokenizer trained here on generated sentences,
so ``" great"``, ``" terrible"``, ``" positive"`` and ``" negative"`` are single tokens
and longer words split into several. Weights are random (seeded): the tests check the
evaluators' arithmetic against direct model calls, not the models' judgement.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

WORDS = ["movie", "film", "story", "actor", "plot", "scene", "music", "ending", "cast", "show"]
OPINIONS = ["great", "terrible", "positive", "negative", "good", "bad", "boring", "fun"]


def corpus(n: int = 3000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        out.append(
            f"The {rng.choice(WORDS)} was {rng.choice(OPINIONS)} and the "
            f"{rng.choice(WORDS)} felt {rng.choice(OPINIONS)}. It was {rng.choice(OPINIONS)}. "
            f"Review: Sentiment: Question? Answer: {{x}} 123 \u00e9t\u00e9"
        )
    return out


def _tokenizer(kind: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus(), trainer)
    if kind == "mlm":
        tok.post_processor = processors.RobertaProcessing(
            ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")),
            trim_offsets=False,
        )
    else:  # a BOS token in front, as Llama-style tokenizers add
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>", mask_token="<mask>",
    )


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama (hidden 32) with random weights, saved with its tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    tok = _tokenizer("causal")
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        initializer_range=0.2, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_roberta_dir(tmp_path_factory) -> Path:
    """A 2-layer RoBERTa masked LM (hidden 32) with random weights and its tokenizer."""
    import torch
    from transformers import RobertaConfig, RobertaForMaskedLM

    out = tmp_path_factory.mktemp("tiny-roberta")
    tok = _tokenizer("mlm")
    config = RobertaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=514, initializer_range=0.2,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, type_vocab_size=1,
    )
    torch.manual_seed(0)
    RobertaForMaskedLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(name="write_jsonl")
def write_jsonl_fixture():
    """``write_jsonl(path, rows) -> path``: writes rows as JSON lines."""
    return write_jsonl


@pytest.fixture
def small_data(tmp_path) -> Path:
    """12 sentiment examples (6 per class) in a JSONL file."""
    rows = [{"text": f"The {w} was great and fun.", "label": 1} for w in WORDS[:6]]
    rows += [{"text": f"The {w} was terrible and boring.", "label": 0} for w in WORDS[4:10]]
    random.Random(1).shuffle(rows)
    return write_jsonl(tmp_path / "small.jsonl", rows)
