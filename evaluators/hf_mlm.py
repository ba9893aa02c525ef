"""``hf-mlm``: scores prompts with a transformers masked LM (label words at the mask).

The answer slot of the template becomes the tokenizer's mask token; the model's logits
there, log-softmaxed over the whole vocabulary and read at the label words' ids, give
``log p(label word | sequence)``. Each label word must therefore be one token (with the
template's space before ``{answer}``, e.g. RoBERTa's ``" great"``). Rows are right-padded
with an attention mask, so absolute position embeddings are unaffected by padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from promptbo.errors import InvalidArgumentError
from promptbo.evaluators.base import register_evaluator
from promptbo.evaluators.hf_common import HFEvaluator
from promptbo.types import Prompt

DEFAULT_MLM_TEMPLATE = "{prompt} {text} It was {answer}."


@register_evaluator("hf-mlm")
class HFMaskedLMEvaluator(HFEvaluator):
    """Masked LM evaluator (e.g. ``model=roberta-large``), built from
    :class:`~promptbo.evaluators.hf_common.HFOptions` (``model`` is required; the default
    template is ``"{prompt} {text} It was {answer}."``, where ``{answer}`` marks the mask
    and may sit anywhere; label words must be one token each)."""

    default_template = DEFAULT_MLM_TEMPLATE

    def _load_model(self, path: str):
        from transformers import AutoModelForMaskedLM

        return AutoModelForMaskedLM.from_pretrained(path, dtype=self.dtype)

    def _answer_ids(self) -> list[int]:
        mask = self.tokenizer.mask_token_id
        if mask is None:
            raise InvalidArgumentError(
                "this tokenizer has no mask token; hf-mlm needs a masked LM (e.g. roberta-large)"
            )
        return [int(mask)]

    def _label_ids(self, word: str) -> tuple[int, ...]:
        ids = tuple(self.tokenizer(word, add_special_tokens=False)["input_ids"])
        if len(ids) != 1:
            pieces = self.tokenizer.convert_ids_to_tokens(list(ids))
            raise InvalidArgumentError(
                f"label word {word!r} is split by the tokenizer into {len(ids)} tokens {pieces}; "
                "a masked LM needs one token per label word: choose another word"
            )
        return ids

    def _label_log_probs(
        self, prompts: Sequence[Prompt], examples: Sequence[int] | None = None
    ) -> np.ndarray:
        import torch

        parts = [self._prompt_part(p) for p in prompts]
        soft = any(isinstance(x, torch.Tensor) for x in parts)
        wanted = range(len(self.encoded)) if examples is None else examples
        rows = [(p, e) for p in range(len(parts)) for e in wanted]
        out = np.zeros((len(prompts), len(self.encoded), len(self.task.label_words)))
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start:start + self.batch_size]
            seqs, where = [], []
            for p, e in batch:
                ex = self.encoded[e]
                seqs.append([ex.before, parts[p], ex.after])
                length = len(parts[p]) if isinstance(parts[p], list) else parts[p].shape[0]
                side, i = ex.answer_at
                where.append(i if side == "before" else len(ex.before) + length + i)
            x, mask = self._pad_rows(seqs, soft, left=False)
            key = "inputs_embeds" if soft else "input_ids"
            logits = self.model(**{key: x}, attention_mask=mask).logits
            at = torch.tensor(where, device=logits.device)
            rows_idx = torch.arange(len(batch), device=logits.device)
            logp = torch.log_softmax(logits[rows_idx, at].float(), dim=-1)
            labels = torch.tensor([[ids[0] for ids in self.encoded[e].label_ids]
                                   for _, e in batch], device=logp.device)
            values = logp.gather(1, labels).cpu().numpy()
            for i, (p, e) in enumerate(batch):
                out[p, e] = values[i]
        return out
