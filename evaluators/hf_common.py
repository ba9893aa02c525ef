"""What the transformers evaluators share: loading, the task's token ids, prompts as rows.

:class:`HFEvaluator` loads a model and tokenizer, builds the task and tokenizes each
example once into :class:`EncodedExample` pieces. The prompt never goes through the
tokenizer: a hard prompt's ``token_ids`` are spliced between the tokenized template
pieces, and a soft prompt's `L x D` vector is spliced between their input embeddings.
Subclasses implement :meth:`HFEvaluator._label_log_probs`.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from promptbo.errors import InvalidArgumentError
from promptbo.evaluators.base import Evaluator
from promptbo.evaluators.models import check_model, resolve_model
from promptbo.evaluators.task import (
    ANSWER,
    PROMPT,
    Task,
    TaskOptions,
    build_task,
    group_by_examples,
)
from promptbo.options import option
from promptbo.types import Prompt, Score, VocabularyTable

log = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class EncodedExample:
    """One example as token ids around the prompt: ``before + prompt + after``.

    ``answer_at`` is where the answer slot sits: ``("before", i)`` or ``("after", i)`` with
    ``i`` the index of the answer token (the mask) in that list, or ``("end", 0)`` when the
    answer follows ``after`` (causal LMs). ``label_ids[c]`` are the token ids of label word
    ``c`` with the template's space before ``{answer}`` prepended.
    """

    before: list[int]
    after: list[int]
    answer_at: tuple[str, int]
    label_ids: tuple[tuple[int, ...], ...]


def special_tokens_around(tokenizer) -> tuple[list[int], list[int]]:
    """The special token ids the tokenizer puts before and after a text (e.g. BOS, or
    RoBERTa's ``<s>`` and ``</s>``)."""
    plain = tokenizer("a b", add_special_tokens=False)["input_ids"]
    full = tokenizer("a b", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return list(full[:start]), list(full[start + len(plain):])
    return [], []


def pick_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise InvalidArgumentError(
            f"option device must be auto, cpu, cuda or cuda:N, got {device!r}"
        ) from None


def pick_dtype(dtype: str, device):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


@dataclass(frozen=True, kw_only=True)
class HFOptions(TaskOptions):
    """The options of the transformers evaluators: the model and how it runs, and the
    task."""

    model: str = option("str", help="checkpoint folder or hub name")
    batch_size: int = option("int", 16, "sequences per forward pass", minimum=1)
    device: str = option("str", "auto", "`auto` (CUDA when available), `cpu`, `cuda`, "
                         "`cuda:N`")
    dtype: str = option("str", "auto", "`auto`: bfloat16 on CUDA, float32 on CPU",
                        choices=DTYPES)
    vocabulary_size: int | None = option("int", None, "offer only the first N usable tokens "
                                         "to hard-prompt studies", minimum=1,
                                         shown_default="all")


class HFEvaluator(Evaluator):
    """Base of the transformers evaluators; built from :class:`HFOptions` (or a subclass),
    whose task options are read by :func:`~promptbo.evaluators.task.build_task`."""

    Options: ClassVar[type | None] = HFOptions
    default_template: str = ""

    def __init__(self, options: HFOptions):
        self.batch_size = options.batch_size
        self.vocabulary_size = options.vocabulary_size
        self.task: Task = build_task(options, self.default_template)
        self._check_template(self.task)
        self.device = pick_device(options.device)
        self.dtype = pick_dtype(options.dtype, self.device)
        model = options.model
        check_model(model)
        path = resolve_model(model)
        try:
            self.tokenizer = self._load_tokenizer(path)
            self.model = self._load_model(path).to(self.device).eval()
        except OSError as exc:
            raise InvalidArgumentError(
                f"could not load the model {model!r} (a checkpoint folder, a hub name, or "
                f"smollm2): {exc}"
            ) from exc
        self.pad_id = self._pad_id()
        self.embedding = self.model.get_input_embeddings()
        self.n_tokens = int(self.embedding.weight.shape[0])
        self._special_before, self._special_after = special_tokens_around(self.tokenizer)
        self._label_cache: dict[str, tuple[tuple[int, ...], ...]] = {}
        self.encoded = [self._encode(ex) for ex in self.task.examples]

    # --- subclass hooks -------------------------------------------------------------
    def _check_template(self, task: Task) -> None:  # noqa: B027 - optional hook
        """Raises InvalidArgumentError for templates the model type cannot use."""

    def _load_tokenizer(self, path: str):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)

    @abc.abstractmethod
    def _load_model(self, path: str): ...

    @abc.abstractmethod
    def _label_ids(self, word: str) -> tuple[int, ...]:
        """Token ids of a label word (with its leading space)."""

    @abc.abstractmethod
    def _answer_ids(self) -> list[int]:
        """Ids that stand in the answer slot of the input (the mask, or nothing)."""

    @abc.abstractmethod
    def _label_log_probs(
        self, prompts: Sequence[Prompt], examples: Sequence[int] | None = None
    ) -> np.ndarray:
        """`P x E x C` log-probabilities of each label word for each prompt and example
        of the task; with ``examples`` only those rows (example indices) are computed, the
        others are left 0."""

    # --- encoding --------------------------------------------------------------------
    def _encode(self, example) -> EncodedExample:
        pieces, space = self.task.template.render(example)
        before: list[int] = list(self._special_before)
        after: list[int] = []
        side, answer_at = before, ("end", 0)
        for piece in pieces:
            if piece is PROMPT:
                side = after
            elif piece is ANSWER:
                answer_ids = self._answer_ids()
                if answer_ids:
                    answer_at = ("before" if side is before else "after", len(side))
                side.extend(answer_ids)
            else:
                side.extend(self.tokenizer(piece, add_special_tokens=False)["input_ids"])
        after.extend(self._special_after)
        if space not in self._label_cache:
            self._label_cache[space] = tuple(
                self._label_ids(space + w) for w in self.task.label_words
            )
        return EncodedExample(before, after, answer_at, self._label_cache[space])

    def _prompt_part(self, prompt: Prompt):
        """A hard prompt's ids as a list, or a soft prompt's `L x D` tensor on the device."""
        import torch

        if prompt.is_soft:
            vec = np.asarray(prompt.vector, dtype=np.float32)
            dim = self.embedding.weight.shape[1]
            if vec.ndim != 2 or vec.shape[1] != dim:
                raise InvalidArgumentError(
                    f"a soft prompt must have shape L x {dim} for this model, got {vec.shape}"
                )
            return torch.from_numpy(vec).to(self.device, self.dtype)
        if not prompt.token_ids and prompt.text:
            return self._text_ids(prompt.text)
        ids = list(prompt.token_ids)
        bad = [i for i in ids if not 0 <= i < self.n_tokens]
        if bad:
            raise InvalidArgumentError(
                f"prompt token ids {bad[:5]} are outside this model's vocabulary of "
                f"{self.n_tokens} tokens; was the study's vocabulary uploaded from another model?"
            )
        return ids

    def _text_ids(self, text: str) -> list[int]:
        """The token ids of a prompt given as text (a pool candidate), with the space the
        template has before ``{prompt}``."""
        if self.task.template.space_before_prompt and not text[:1].isspace():
            text = " " + text
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _embed_row(self, parts: Sequence[Any]):
        """`T x D` input embeddings of a row given as id lists and `L x D` tensors."""
        import torch

        out = []
        for part in parts:
            if isinstance(part, torch.Tensor):
                out.append(part)
            elif part:
                ids = torch.tensor(part, dtype=torch.long, device=self.device)
                out.append(self.embedding(ids).to(self.dtype))
        if not out:
            return torch.zeros(0, self.embedding.weight.shape[1], device=self.device,
                               dtype=self.dtype)
        return torch.cat(out, dim=0)

    def _pad_rows(self, rows: list[list[Any]], soft: bool, left: bool):
        """Rows of parts padded into one batch: ``(x, mask)`` with ``x`` the `b x T` input
        ids (``pad_id`` in the padding) or, for soft rows, the `b x T x D` input embeddings
        (zeros there), and ``mask`` `b x T` (1 on real tokens). ``left`` pads on the left
        (causal LMs, whose next token follows the last position), else on the right."""
        import torch

        if soft:
            seqs = [self._embed_row(parts) for parts in rows]
        else:
            seqs = [[i for part in parts for i in part] for parts in rows]
        width = max(len(s) for s in seqs)
        mask = torch.zeros(len(seqs), width, dtype=torch.long, device=self.device)
        if soft:
            x = torch.zeros(len(seqs), width, seqs[0].shape[1], dtype=self.dtype,
                            device=self.device)
        else:
            x = torch.full((len(seqs), width), self.pad_id, dtype=torch.long, device=self.device)
        for i, s in enumerate(seqs):
            if len(s):
                cols = slice(width - len(s), width) if left else slice(0, len(s))
                x[i, cols] = s if soft else torch.tensor(s, device=self.device)
                mask[i, cols] = 1
        return x, mask

    def _pad_id(self) -> int:
        for candidate in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if candidate is not None:
                return int(candidate)
        return 0

    # --- Evaluator -------------------------------------------------------------------
    def label_log_probs(
        self, prompts: Sequence[Prompt], examples: Sequence[int] | None = None
    ) -> np.ndarray:
        """`P x E x C`: ``log p(label word c | prompt p, example e)`` over the task's
        examples (with ``examples``: `P x len(examples) x C`, those examples only)."""
        import torch

        with torch.inference_mode():
            out = self._label_log_probs(list(prompts), examples)
        return out if examples is None else out[:, list(examples)]

    def score(self, prompts: Sequence[Prompt]) -> list[Score]:
        """Scores each prompt on its ``examples`` (fidelity), or on the whole split."""
        if not prompts:
            return []
        out: list[Score | None] = [None] * len(prompts)
        for examples, members in group_by_examples(prompts):
            task = self.task if examples is None else self.task.subset(examples)
            lp = self.label_log_probs([prompts[i] for i in members], examples)
            for j, i in enumerate(members):
                out[i] = task.score_log_probs(lp[j])
        return [s for s in out if s is not None]

    def vocabulary(self) -> VocabularyTable:
        """The tokenizer's regular tokens (see :func:`vocabulary_table`)."""
        return vocabulary_table(self.tokenizer, self.embedding.weight, self.n_tokens,
                                self.vocabulary_size)

    def soft_prompt_shape(self) -> tuple[int, float]:
        weight = self.embedding.weight.detach().float()
        return int(weight.shape[1]), float(weight.std())

    def close(self) -> None:
        self.model = None
        self.embedding = None


def vocabulary_table(tokenizer, weight, n_tokens: int, vocabulary_size: int | None = None
                     ) -> VocabularyTable:
    """The tokenizer's regular tokens (no special or added tokens, none that decode to an
    incomplete character), each with its surface string and its row of ``weight`` (the
    `n_tokens x D` input embedding matrix); the first ``vocabulary_size`` of them if given."""
    tok = tokenizer
    skip = set(tok.all_special_ids) | set(getattr(tok, "added_tokens_decoder", {}) or {})
    anchor = tok("a", add_special_tokens=False)["input_ids"]
    anchor_text = tok.decode(anchor, clean_up_tokenization_spaces=False)
    ids = [i for i in range(min(len(tok), n_tokens)) if i not in skip]
    texts = tok.batch_decode([anchor + [i] for i in ids], clean_up_tokenization_spaces=False)
    tokens, keep = [], []
    for i, text in zip(ids, texts, strict=True):
        if not text.startswith(anchor_text):
            continue
        surface = text[len(anchor_text):]
        if not surface or "\ufffd" in surface:
            continue
        tokens.append(surface)
        keep.append(i)
        if vocabulary_size is not None and len(keep) >= vocabulary_size:
            break
    table = weight.detach()[keep].float().cpu().numpy()
    return VocabularyTable(tokens, keep, table.astype(np.float32))


def model_vocabulary(model: str, vocabulary_size: int | None = None) -> VocabularyTable:
    """The vocabulary table of a transformers model (a folder, a hub name or ``smollm2``),
    as its evaluators upload it, without a task: for hard-prompt studies scored by an
    evaluator that has no vocabulary of its own (``python``, ``command``, ``openai``)."""
    from transformers import AutoModel, AutoTokenizer

    check_model(model)
    path = resolve_model(str(model))
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        embedding = AutoModel.from_pretrained(path).get_input_embeddings()
    except OSError as exc:
        raise InvalidArgumentError(f"could not load the model {model!r}: {exc}") from exc
    return vocabulary_table(tokenizer, embedding.weight, int(embedding.weight.shape[0]),
                            vocabulary_size)
