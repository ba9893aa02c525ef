"""Domain objects of the server: studies, trials, prompts, vocabularies and pools.

Plain dataclasses with no gRPC, torch or SQL inside, shared by the storage backends, the
study manager and the conversions in :mod:`promptbo.server.convert`. The study spec
(:class:`StudySpec` and its search spaces, defaults and codecs) is defined once in
:mod:`promptbo.spec`, shared with the client, and re-exported here. Times are Unix
seconds (``float``); soft-prompt vectors are flat tuples of ``prompt_length x
embedding_dim`` floats in row-major order.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

from promptbo.errors import InvalidArgumentError
from promptbo.spec import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_PCA_DIMS,
    MAX_POOL_SIZE,
    MAX_PROMPT_LENGTH,
    MAX_TRANSFER_SOURCES,
    TRANSFER_MODES,
    Goal,
    HardPromptSpace,
    PoolSpace,
    SearchSpace,
    SoftPromptSpace,
    StudySpec,
)
from promptbo.types import pool_id, vocabulary_id

__all__ = [
    "DEFAULT_LEASE_SECONDS", "DEFAULT_PCA_DIMS", "MAX_POOL_SIZE", "MAX_PROMPT_LENGTH",
    "MAX_STUDY_NAME", "MAX_TRANSFER_SOURCES", "TRANSFER_MODES", "Goal", "HardPromptSpace",
    "Pool", "PoolSpace", "Prompt", "SearchSpace", "SoftPromptSpace", "Study", "StudySpec",
    "StudyState", "Trial", "TrialState", "Vocabulary", "check_study_name",
]

MAX_STUDY_NAME = 200


class StudyState(enum.Enum):
    ACTIVE = "active"
    COMPLETED = "completed"


class TrialState(enum.Enum):
    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True)
class Prompt:
    """A hard prompt (``token_ids``: vocabulary row indices, ``tokens``, ``text``) or a
    soft prompt (``vector``: flat ``L x D`` floats)."""

    token_ids: tuple[int, ...] = ()
    tokens: tuple[str, ...] = ()
    text: str = ""
    vector: tuple[float, ...] = ()
    #: Pool prompts: the candidate's index in the study's pool (``text`` is its text).
    pool_index: int | None = None

    @property
    def is_soft(self) -> bool:
        return len(self.vector) > 0

    def key(self) -> tuple:
        """A hashable identity: token ids for hard prompts, the vector for soft ones, the
        index for pool prompts."""
        if self.pool_index is not None:
            return (self.pool_index,)
        return self.vector if self.is_soft else self.token_ids


@dataclass(frozen=True)
class Trial:
    study: str
    id: int
    state: TrialState
    prompt: Prompt
    client_id: str = ""
    lease_deadline: float = 0.0
    value: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    failure_reason: str = ""
    create_time: float = 0.0
    complete_time: float = 0.0
    source: str = "suggested"
    #: The principal (named token) that took the trial; "" without configured tokens.
    principal: str = ""
    #: Fidelity: the pool examples to score (empty: no pool), the told standard error of
    #: ``value`` (None: not told) and the number of examples the value averages (0: not told).
    examples: tuple[int, ...] = ()
    value_stderr: float | None = None
    examples_scored: int = 0

    def evolve(self, **changes) -> Trial:
        """A copy with ``changes`` applied (a hot path: no ``__init__`` round trip)."""
        unknown = changes.keys() - _TRIAL_FIELDS
        if unknown:
            raise TypeError(f"Trial has no field {', '.join(sorted(unknown))}")
        new = object.__new__(Trial)
        new.__dict__.update(self.__dict__)
        new.__dict__.update(changes)
        return new


_TRIAL_FIELDS = frozenset(Trial.__dataclass_fields__)


@dataclass(frozen=True)
class Study:
    name: str
    spec: StudySpec
    state: StudyState = StudyState.ACTIVE
    create_time: float = 0.0
    request_id: str = ""

    def evolve(self, **changes) -> Study:
        return replace(self, **changes)


def _check_table(emb: np.ndarray, what: str) -> int:
    """Refuses an embedding table that is not 2-D, empty or not finite; its row count."""
    if emb.ndim != 2:
        raise InvalidArgumentError(f"embeddings must be 2-D, got shape {emb.shape}")
    if emb.shape[0] == 0:
        raise InvalidArgumentError(f"{what} is empty")
    if not np.isfinite(emb).all():
        raise InvalidArgumentError("the embedding table contains NaN or infinite values")
    return int(emb.shape[0])


def _rows(table: Vocabulary | Pool) -> int:
    """Rows of the table (vocabulary entries or pool candidates)."""
    return int(table.embeddings.shape[0])


def _columns(table: Vocabulary | Pool) -> int:
    """Columns of the table: the embedding dimension."""
    return int(table.embeddings.shape[1])


@dataclass(frozen=True)
class Vocabulary:
    """Token strings, the model's token ids and a ``size x embedding_dim`` float32 table."""

    tokens: tuple[str, ...]
    token_ids: tuple[int, ...]
    embeddings: np.ndarray

    def __post_init__(self) -> None:
        rows = _check_table(self.embeddings, "the vocabulary")
        if not (len(self.tokens) == len(self.token_ids) == rows):
            raise InvalidArgumentError(
                f"vocabulary has {len(self.tokens)} tokens, {len(self.token_ids)} token ids "
                f"and {rows} embedding rows; the three counts must be equal"
            )

    size = property(_rows)
    embedding_dim = property(_columns)

    @cached_property
    def id(self) -> str:
        return vocabulary_id(self.tokens, self.token_ids, self.embeddings)


@dataclass(frozen=True)
class Pool:
    """Candidate prompts: ``texts`` and a ``size x embedding_dim`` float32 table of their
    embeddings, made by ``embedding_model`` (a free-form name, part of the content id)."""

    texts: tuple[str, ...]
    embeddings: np.ndarray
    embedding_model: str = ""

    def __post_init__(self) -> None:
        rows = _check_table(self.embeddings, "the pool")
        if len(self.texts) != rows:
            raise InvalidArgumentError(
                f"pool has {len(self.texts)} texts and {rows} embedding rows; "
                "the two counts must be equal"
            )
        if len(set(self.texts)) != len(self.texts):
            raise InvalidArgumentError(
                "the pool's texts must be distinct; remove the duplicates before uploading"
            )

    size = property(_rows)
    embedding_dim = property(_columns)

    @cached_property
    def id(self) -> str:
        return pool_id(self.texts, self.embeddings, self.embedding_model)


def check_study_name(name: str) -> None:
    if not name or len(name) > MAX_STUDY_NAME or any(c in name for c in "\x00\n\r/"):
        raise InvalidArgumentError(
            f"study name must be 1-{MAX_STUDY_NAME} characters without '/', newlines or NUL; "
            f"got {name[:50]!r}{'...' if len(name) > 50 else ''}"
        )

