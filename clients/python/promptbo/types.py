"""Client-side value types: prompts handed to evaluators and the scores they return.

NumPy only; no gRPC and no torch, so evaluators and user code can share them.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Prompt:
    """One prompt to evaluate.

    Hard prompts carry ``token_ids`` (the model's token ids), ``tokens`` (their strings as
    uploaded with the vocabulary) and ``text`` (the tokens' strings joined). Soft prompts
    carry ``vector``, a float32 array of shape `L x D`; the other fields are empty. Pool
    prompts carry ``pool_index`` and ``text`` (the candidate's text, written into the
    template like a hard prompt's text).

    ``examples``: in a study with a labeled pool, the pool examples (indices) this prompt
    is to be scored on, chosen by the server; None scores the evaluator's own examples.
    """

    token_ids: tuple[int, ...] = ()
    tokens: tuple[str, ...] = ()
    text: str = ""
    vector: np.ndarray | None = None
    #: Pool prompts: the candidate's index in the study's pool (``text`` is its text).
    pool_index: int | None = None
    examples: tuple[int, ...] | None = None

    @property
    def is_soft(self) -> bool:
        return self.vector is not None

    def __len__(self) -> int:
        return len(self.vector) if self.vector is not None else len(self.token_ids)


@dataclass(frozen=True)
class Score:
    """The result of evaluating one prompt: the objective ``value`` and extra ``metrics``
    (e.g. ``accuracy``, token usage). ``value`` must be finite.

    ``stderr``: the standard error of ``value`` over the examples scored (None: unknown);
    ``examples``: how many examples ``value`` averages (0: not said)."""

    value: float
    metrics: dict[str, float] = field(default_factory=dict)
    stderr: float | None = None
    examples: int = 0

    def __post_init__(self) -> None:
        if not math.isfinite(self.value):
            raise ValueError(f"a score's value must be finite, got {self.value}")
        if self.stderr is not None and not (math.isfinite(self.stderr) and self.stderr >= 0):
            raise ValueError(f"a score's stderr must be a finite number >= 0, got {self.stderr}")


def mean_and_stderr(per_example: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """The mean of per-example scores and its standard error (sample standard deviation
    over sqrt(n); 0 for a single example)."""
    x = np.asarray(per_example, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no per-example scores")
    se = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else 0.0
    return float(x.mean()), se


@dataclass(frozen=True)
class VocabularyTable:
    """A model's vocabulary as uploaded to the server.

    ``tokens[i]`` is the text token ``token_ids[i]`` decodes to (so a prompt's text is the
    concatenation of its tokens), ``embeddings[i]`` its input embedding; shape `V x D`.
    """

    tokens: list[str]
    token_ids: list[int]
    embeddings: np.ndarray

    def __post_init__(self) -> None:
        if self.embeddings.ndim != 2 or not (
            len(self.tokens) == len(self.token_ids) == self.embeddings.shape[0]
        ):
            raise ValueError(
                f"vocabulary of {len(self.tokens)} tokens, {len(self.token_ids)} ids and "
                f"embeddings of shape {self.embeddings.shape} do not match"
            )


def vocabulary_id(tokens: Sequence[str], token_ids: Sequence[int], embeddings: np.ndarray) -> str:
    """The content id of a vocabulary: sha256 over its shape, float32 table, ids and tokens.

    Client and server compute it alike, so an upload can be checked end to end and a
    vocabulary shared by several studies is stored once.
    """
    h = hashlib.sha256()
    h.update(np.asarray(embeddings.shape, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(embeddings, dtype="<f4").tobytes())
    h.update(np.asarray(token_ids, dtype="<i8").tobytes())
    for t in tokens:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(4, "little"))
        h.update(b)
    return h.hexdigest()


def pool_id(texts: Sequence[str], embeddings: np.ndarray, embedding_model: str = "") -> str:
    """The content id of a candidate pool: sha256 over its shape, float32 table, the
    embedding model's name and the texts (client and server compute it alike)."""
    h = hashlib.sha256(b"promptbo-pool-v1")
    h.update(np.asarray(embeddings.shape, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(embeddings, dtype="<f4").tobytes())
    for t in (embedding_model, *texts):
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(4, "little"))
        h.update(b)
    return h.hexdigest()


@dataclass(frozen=True)
class PoolTable:
    """A pool of candidate prompts as uploaded to the server: ``texts[i]`` with its
    embedding ``embeddings[i]`` (shape `N x D`), and the name of what embedded them."""

    texts: list[str]
    embeddings: np.ndarray
    embedding_model: str = ""

    def __post_init__(self) -> None:
        if self.embeddings.ndim != 2 or len(self.texts) != self.embeddings.shape[0]:
            raise ValueError(
                f"pool of {len(self.texts)} texts and embeddings of shape "
                f"{self.embeddings.shape} do not match"
            )

    @property
    def id(self) -> str:
        return pool_id(self.texts, self.embeddings, self.embedding_model)
