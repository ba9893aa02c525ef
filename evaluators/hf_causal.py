"""``hf-causal``: scores prompts with a transformers causal LM (label words as next tokens).

Each (prompt, example) pair becomes the token sequence ``before + prompt + after`` (see
:class:`~promptbo.evaluators.hf_common.EncodedExample`) and the model's next-token
log-probabilities give ``log p(label word | sequence)`` for every class. A label word of
several tokens is scored with one sequence per class, its tokens' log-probs summed.

Rows are left-padded into batches of ``batch_size`` with an attention mask and position
ids that skip the padding, so a batch scores exactly like one sequence at a time.

Prompt after the input
    When the template puts the input before the prompt (``"Review: {text}\\n{prompt}..."``)
    the tokens before the prompt do not depend on the prompt. Their key/value cache is
    computed once per example, kept across calls (up to ``kv_cache_mb``) and expanded over
    the batch, so each prompt costs only its own tokens and the template's tail.

Prompt before the input
    With the default template (``"{prompt}\\nReview: {text}..."``) every row of one prompt
    starts with the same tokens: the template's head, the prompt, and whatever the rows'
    tails share (``"\\nReview:"``). Per call, the longest token prefix common to a
    prompt's rows (at most all but one token of its shortest row) runs once per prompt,
    prompts left-padded together in batches of ``batch_size``; each row then runs only its
    own tokens on that prefix's keys and values. The prefix is taken from the token ids the
    rows are made of (the template pieces and the prompt are tokenized separately, never
    across the boundary), so the rows are exactly those of the uncached path. A soft
    prompt's vectors are shared the same way.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from promptbo.errors import InvalidArgumentError
from promptbo.evaluators.base import register_evaluator
from promptbo.evaluators.hf_common import HFEvaluator, HFOptions
from promptbo.evaluators.task import DEFAULT_TEMPLATE, Task
from promptbo.options import option
from promptbo.types import Prompt


@dataclass
class _Row:
    """One sequence to score: prompt ``p``, example ``e``, class ``c`` (-1: all classes at
    once, single-token label words), ``parts`` the id lists and `L x D` tensors in order."""

    p: int
    e: int
    c: int
    parts: list[Any]


@dataclass(frozen=True, kw_only=True)
class CausalLMOptions(HFOptions):
    """The options of ``hf-causal``: those of every transformers evaluator (``model``
    defaults to the bundled SmolLM2), and the prefix cache."""

    model: str = option("str", "smollm2", "checkpoint folder, hub name, or `smollm2` (the "
                        "bundled SmolLM2-135M-Instruct)")
    kv_cache: str = option("switch", "auto", "reuse the keys and values of tokens that rows "
                           "share: `auto`: if the input precedes the prompt, the tokens before "
                           "the prompt, per example, kept across calls; else the prefix a "
                           "prompt's rows share (template head, prompt), run once per call; "
                           "on: the same, and the shared prefix also for a subset of examples "
                           "or a prompt of one row; off: neither")
    kv_cache_mb: float = option("float", 1024, "memory for the prefix caches kept across "
                                "calls", minimum=0)


@register_evaluator("hf-causal")
class HFCausalEvaluator(HFEvaluator):
    """Causal LM evaluator, built from :class:`CausalLMOptions`. The default template
    ``"{prompt}\\nReview: {text}\\nSentiment: {answer}"`` puts the prompt before the input
    (90% of random prompts beat the unprompted model there against 23% after it,
    docs/benchmarks.md); ``{answer}`` must be last.
    """

    Options: ClassVar[type | None] = CausalLMOptions
    default_template = DEFAULT_TEMPLATE

    def __init__(self, options: CausalLMOptions):
        self.kv_cache_bytes = options.kv_cache_mb * 2**20
        super().__init__(options)
        has_prefix = min(len(ex.before) for ex in self.encoded) > 0
        after_input = self.task.template.prompt_after_input
        if options.kv_cache == "auto":
            self.use_kv_cache = has_prefix and after_input
        else:
            self.use_kv_cache = has_prefix and after_input and options.kv_cache == "on"
        #: Share each prompt's common row prefix within a call (where the per-example
        #: caches are not used): ``"auto"`` when a prompt has several rows, ``"on"``
        #: always, ``"off"`` never.
        self.shared_prefix = "off" if options.kv_cache == "off" else (
            "on" if options.kv_cache == "on" else ("auto" if not after_input else "off"))
        forward = inspect.signature(self.model.forward).parameters
        self._keeps_logits = "logits_to_keep" in forward
        # transformers renamed the key/value cache argument and output field to ``cache``;
        # older releases only know ``past_key_values``.
        self._cache_arg = "cache" if "cache" in forward else "past_key_values"
        self._prefixes: dict[int, tuple[list, Any]] = {}
        self._prefix_bytes = 0
        self.single_token_labels = all(
            len(ids) == 1 for ex in self.encoded for ids in ex.label_ids
        )

    def _check_template(self, task: Task) -> None:
        if not task.template.answer_last:
            raise InvalidArgumentError(
                f"template {task.template.source!r}: for a causal LM {{answer}} must be the last "
                "slot (the label word is scored as the next tokens)"
            )

    def _load_model(self, path: str):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype)

    def _label_ids(self, word: str) -> tuple[int, ...]:
        ids = tuple(self.tokenizer(word, add_special_tokens=False)["input_ids"])
        if not ids:
            raise InvalidArgumentError(f"label word {word!r} tokenizes to nothing")
        return ids

    def _answer_ids(self) -> list[int]:
        return []

    # --- scoring ---------------------------------------------------------------------
    def _rows(self, parts: list[Any], examples: Sequence[int], with_prefix: bool) -> list[_Row]:
        rows = []
        for p, prompt in enumerate(parts):
            for e in examples:
                ex = self.encoded[e]
                head = [ex.before] if with_prefix else []
                if self.single_token_labels:
                    rows.append(_Row(p, e, -1, [*head, prompt, ex.after]))
                else:
                    for c, ids in enumerate(ex.label_ids):
                        rows.append(_Row(p, e, c, [*head, prompt, ex.after, list(ids[:-1])]))
        return rows

    def _label_log_probs(
        self, prompts: Sequence[Prompt], examples: Sequence[int] | None = None
    ) -> np.ndarray:
        import torch

        parts = [self._prompt_part(p) for p in prompts]
        soft = any(isinstance(x, torch.Tensor) for x in parts)
        out = np.zeros((len(prompts), len(self.encoded), len(self.task.label_words)))
        empty_tail = any(
            (len(x) if isinstance(x, list) else x.shape[0]) == 0 for x in parts
        ) and min(len(ex.after) for ex in self.encoded) == 0
        # The prefix caches are kept per chunk of the whole split: a subset skips them.
        if self.use_kv_cache and not empty_tail and examples is None:
            self._score_with_prefix_cache(parts, soft, out)
        else:
            wanted = range(len(self.encoded)) if examples is None else examples
            rows = self._rows(parts, wanted, with_prefix=True)
            if self.shared_prefix != "off" and self._score_with_shared_prefix(rows, soft, out):
                return out
            for start in range(0, len(rows), self.batch_size):
                batch = rows[start:start + self.batch_size]
                logits = self._forward(batch, soft, past=None)
                self._collect(batch, logits, out)
        return out

    def _score_with_prefix_cache(self, parts: list[Any], soft: bool, out: np.ndarray) -> None:
        import torch

        n = len(self.encoded)
        for chunk, start in enumerate(range(0, n, self.batch_size)):
            members = list(range(start, min(start + self.batch_size, n)))
            kv, mask = self._prefix(chunk, members)
            rows = self._rows(parts, members, with_prefix=False)
            for r0 in range(0, len(rows), self.batch_size):
                batch = rows[r0:r0 + self.batch_size]
                index = torch.tensor([r.e - start for r in batch], device=self.device)
                past = ([(k.index_select(0, index), v.index_select(0, index)) for k, v in kv],
                        mask.index_select(0, index))
                logits = self._forward(batch, soft, past=past)
                self._collect(batch, logits, out)

    def _score_with_shared_prefix(self, rows: list[_Row], soft: bool, out: np.ndarray) -> bool:
        """Scores ``rows`` (grouped by prompt, as :meth:`_rows` orders them) with each
        prompt's shared prefix run once; False (nothing scored) where a prompt's rows share
        no token, or, with ``shared_prefix="auto"``, where a prompt has a single row."""
        import torch

        groups: dict[int, list[_Row]] = {}
        for r in rows:
            groups.setdefault(r.p, []).append(r)
        shared = {p: _shared_length([r.parts for r in g], [self._kept(r) for r in g])
                  for p, g in groups.items()}
        if min(shared.values()) < 1 or (
                self.shared_prefix == "auto" and min(len(g) for g in groups.values()) < 2):
            return False
        prompts = list(groups)
        for c0 in range(0, len(prompts), self.batch_size):
            chunk = prompts[c0:c0 + self.batch_size]
            heads = [_split(groups[p][0].parts, shared[p])[0] for p in chunk]
            ids, mask, pos = self._pad(heads, soft=any(_has_vectors(h) for h in heads))
            state = self._call(1, **{"inputs_embeds" if ids.dim() == 3 else "input_ids": ids},
                               attention_mask=mask, position_ids=pos, use_cache=True)
            kv = [(layer.keys, layer.values) for layer in state[self._cache_arg].layers]
            tails = [_Row(r.p, r.e, r.c, _split(r.parts, shared[r.p])[1])
                     for p in chunk for r in groups[p]]
            where = {p: i for i, p in enumerate(chunk)}
            tail_soft = soft and any(_has_vectors(r.parts) for r in tails)
            for r0 in range(0, len(tails), self.batch_size):
                batch = tails[r0:r0 + self.batch_size]
                index = torch.tensor([where[r.p] for r in batch], device=self.device)
                past = ([(k.index_select(0, index), v.index_select(0, index)) for k, v in kv],
                        mask.index_select(0, index))
                logits = self._forward(batch, tail_soft, past=past)
                self._collect(batch, logits, out)
        return True

    def _kept(self, row: _Row) -> int:
        """The positions at the end of ``row`` whose logits are read: 1, or the tokens of
        its (multi-token) label word."""
        return 1 if row.c < 0 else len(self.encoded[row.e].label_ids[row.c])

    def _prefix(self, chunk: int, members: list[int]):
        """Key/value tensors per layer (`b x heads x T x d`) and the `b x T` mask of the
        tokens before the prompt for examples ``members``, kept while memory allows."""
        if chunk in self._prefixes:
            return self._prefixes[chunk]
        ids, mask, pos = self._pad([[self.encoded[e].before] for e in members], soft=False)
        out = self._call(1, input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        cache = out[self._cache_arg]
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        size = sum(k.numel() * k.element_size() * 2 for k, _ in kv)
        if self._prefix_bytes + size <= self.kv_cache_bytes:
            self._prefixes[chunk] = (kv, mask)
            self._prefix_bytes += size
        return kv, mask

    def _pad(self, rows: list[list[Any]], soft: bool, past_len: int = 0):
        """Left-pads rows of parts into ``(input_ids or inputs_embeds, mask, position_ids)``;
        the mask covers ``past_len`` cached positions first (filled in by the caller)."""
        x, mask = self._pad_rows(rows, soft, left=True)
        pos = (mask.cumsum(-1) - 1).clamp(min=0) + past_len
        return x, mask, pos

    def _forward(self, batch: list[_Row], soft: bool, past):
        """`rows x M x V` logits of the last ``M`` positions (``M`` = longest label)."""
        import torch
        from transformers import DynamicCache

        keep = 1 if self.single_token_labels else max(
            len(self.encoded[r.e].label_ids[r.c]) for r in batch)
        x, mask, pos = self._pad([r.parts for r in batch], soft)
        kwargs: dict[str, Any] = {"inputs_embeds" if soft else "input_ids": x}
        if past is not None:
            kv, past_mask = past
            full = torch.cat([past_mask, mask], dim=1)
            kwargs[self._cache_arg] = DynamicCache(ddp_cache_data=kv, config=self.model.config)
            pos = (full.cumsum(-1) - 1).clamp(min=0)[:, past_mask.shape[1]:]
            mask = full
        logits = self._call(keep, **kwargs, attention_mask=mask, position_ids=pos,
                            use_cache=past is not None).logits
        return logits[:, -keep:]

    def _call(self, keep: int, **kwargs):
        """The model's forward pass, computing logits for the last ``keep`` positions only
        where the model supports it."""
        if self._keeps_logits:
            kwargs["logits_to_keep"] = keep
        return self.model(**kwargs)

    def _collect(self, batch: list[_Row], logits, out: np.ndarray) -> None:
        import torch

        logp = torch.log_softmax(logits.float(), dim=-1)
        if self.single_token_labels:
            first = torch.tensor([[ids[0] for ids in self.encoded[r.e].label_ids] for r in batch],
                                 device=logp.device)
            values = logp[:, -1, :].gather(1, first).cpu().numpy()
            for i, r in enumerate(batch):
                out[r.p, r.e] = values[i]
            return
        keep = logp.shape[1]
        for i, r in enumerate(batch):
            ids = self.encoded[r.e].label_ids[r.c]
            steps = torch.arange(keep - len(ids), keep, device=logp.device)
            tok = torch.tensor(ids, device=logp.device)
            out[r.p, r.e, r.c] = float(logp[i, steps, tok].sum())


def _size(part: Any) -> int:
    """Positions in one part of a row: an id list's length, a `L x D` tensor's ``L``."""
    return len(part) if isinstance(part, list) else int(part.shape[0])


def _has_vectors(parts: list[Any]) -> bool:
    return any(not isinstance(part, list) and _size(part) for part in parts)


def _shared_length(rows: list[list[Any]], kept: list[int]) -> int:
    """The number of leading positions all ``rows`` (lists of parts) have in common, short
    enough that row ``i`` keeps its last ``kept[i]`` positions (those whose logits are
    read). An id is equal to the same id; a soft prompt's row only to the same row of the
    same tensor."""
    def units(parts: list[Any]) -> list[Any]:
        out: list[Any] = []
        for part in parts:
            if isinstance(part, list):
                out.extend(part)
            else:
                out.extend((id(part), i) for i in range(_size(part)))
        return out

    seqs = [units(parts) for parts in rows]
    first = seqs[0]
    limit = min(len(s) - k for s, k in zip(seqs, kept, strict=True))
    n = 0
    while n < limit and all(s[n] == first[n] for s in seqs):
        n += 1
    return n


def _split(parts: list[Any], n: int) -> tuple[list[Any], list[Any]]:
    """``parts`` cut after its first ``n`` positions: ``(head, tail)``, a part straddling
    the cut sliced in two."""
    head: list[Any] = []
    tail: list[Any] = []
    for part in parts:
        size = _size(part)
        if n >= size:
            head.append(part)
        elif n > 0:
            head.append(part[:n])
            tail.append(part[n:])
        else:
            tail.append(part)
        n = max(n - size, 0)
    return head, tail
