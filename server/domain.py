"""Domain objects of the server: studies, trials, prompts and vocabularies.

Plain dataclasses with no gRPC, torch or SQL inside, shared by the storage backends, the
study manager and the conversions in :mod:`promptbo.server.convert`. Times are Unix
seconds (``float``); soft-prompt vectors are flat tuples of ``prompt_length x
embedding_dim`` floats in row-major order.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

from promptbo.errors import InvalidArgumentError
from promptbo.types import pool_id, vocabulary_id

MAX_PROMPT_LENGTH = 512
MAX_STUDY_NAME = 200
DEFAULT_LEASE_SECONDS = 300.0
DEFAULT_PCA_DIMS = 16
#: Largest labeled pool a study may declare (a trial's example indices travel in it).
MAX_POOL_SIZE = 1_000_000
#: Most source studies one study may transfer from.
MAX_TRANSFER_SOURCES = 10
#: How a study uses its transfer sources (see :mod:`promptbo.server.optim.transfer`).
TRANSFER_MODES = ("both", "init", "surrogate")


class Goal(enum.Enum):
    MAXIMIZE = "maximize"
    MINIMIZE = "minimize"


class StudyState(enum.Enum):
    ACTIVE = "active"
    COMPLETED = "completed"


class TrialState(enum.Enum):
    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True)
class HardPromptSpace:
    """``prompt_length`` tokens from an uploaded vocabulary, searched in PCA space.

    ``top_n``/``top_n_scores`` keep the ``top_n`` rows with the highest scores;
    ``allowed`` keeps exactly those rows. At most one of the two is set.
    """

    prompt_length: int
    vocabulary_id: str
    pca_dims: int = DEFAULT_PCA_DIMS
    top_n: int = 0
    top_n_scores: tuple[float, ...] = ()
    allowed: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _check_length(self.prompt_length)
        if not self.vocabulary_id:
            raise InvalidArgumentError(
                "hard prompt space needs a vocabulary_id: upload the vocabulary first "
                "(UploadVocabulary) and pass the id it returns"
            )
        if not 1 <= self.pca_dims <= 1024:
            raise InvalidArgumentError(f"pca_dims must be in [1, 1024], got {self.pca_dims}")
        if self.top_n and self.allowed:
            raise InvalidArgumentError("give either a top_n filter or an allowed list, not both")
        if self.top_n and len(self.top_n_scores) == 0:
            raise InvalidArgumentError("a top_n filter needs one score per vocabulary entry")
        if any(not math.isfinite(s) for s in self.top_n_scores):
            raise InvalidArgumentError("top_n scores must be finite numbers")


@dataclass(frozen=True)
class SoftPromptSpace:
    """``prompt_length x embedding_dim`` free vectors, optionally through a random
    projection from ``intrinsic_dim`` dimensions (0: no projection)."""

    prompt_length: int
    embedding_dim: int
    intrinsic_dim: int = 0
    bound: float = 1.0
    embedding_std: float = 1.0

    def __post_init__(self) -> None:
        _check_length(self.prompt_length)
        if not 1 <= self.embedding_dim <= 65536:
            raise InvalidArgumentError(
                f"embedding_dim must be in [1, 65536], got {self.embedding_dim}"
            )
        if self.intrinsic_dim < 0 or self.intrinsic_dim > 4096:
            raise InvalidArgumentError(
                f"intrinsic_dim must be in [0, 4096], got {self.intrinsic_dim}"
            )
        if not (math.isfinite(self.bound) and self.bound > 0):
            raise InvalidArgumentError(f"bound must be a positive number, got {self.bound}")
        if not (math.isfinite(self.embedding_std) and self.embedding_std > 0):
            raise InvalidArgumentError(
                f"embedding_std must be a positive number, got {self.embedding_std}"
            )

    @property
    def size(self) -> int:
        return self.prompt_length * self.embedding_dim


@dataclass(frozen=True)
class PoolSpace:
    """One candidate of an uploaded pool (see :class:`Pool`), searched through the
    candidates' embeddings; prompts are the candidates' indices and texts."""

    pool_id: str

    def __post_init__(self) -> None:
        if not self.pool_id:
            raise InvalidArgumentError(
                "pool space needs a pool_id: upload the pool first (UploadPool, "
                "client.upload_pool) and pass the id it returns"
            )


SearchSpace = HardPromptSpace | SoftPromptSpace | PoolSpace


@dataclass(frozen=True)
class StudySpec:
    space: SearchSpace
    strategy: str = "gp"
    strategy_options: dict[str, str] = field(default_factory=dict)
    goal: Goal = Goal.MAXIMIZE
    objective: str = "value"
    max_trials: int = 0
    max_active_trials: int = 0
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    seed: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    #: Fidelity (see :mod:`promptbo.server.fidelity`): the labeled pool's size (0: none),
    #: the budget in scored examples (0: none) and the examples per trial of strategies
    #: that do not choose a fidelity (0: the whole pool).
    pool_size: int = 0
    max_examples: int = 0
    examples_per_trial: int = 0
    #: Names of earlier studies of the same space whose results warm-start this one.
    transfer_from: tuple[str, ...] = ()
    #: How the sources are used: "both" (default), "init" or "surrogate".
    transfer: str = "both"

    def __post_init__(self) -> None:
        if len(self.transfer_from) > MAX_TRANSFER_SOURCES:
            raise InvalidArgumentError(
                f"transfer_from names {len(self.transfer_from)} studies; at most "
                f"{MAX_TRANSFER_SOURCES} are allowed"
            )
        if len(set(self.transfer_from)) != len(self.transfer_from):
            raise InvalidArgumentError("transfer_from names a study more than once")
        if self.transfer not in TRANSFER_MODES:
            raise InvalidArgumentError(
                f"transfer must be one of {', '.join(TRANSFER_MODES)}, got {self.transfer!r}"
            )
        if not (math.isfinite(self.lease_seconds) and 0 < self.lease_seconds <= 7 * 86400):
            raise InvalidArgumentError(
                f"lease_seconds must be in (0, 604800], got {self.lease_seconds}"
            )
        if self.max_trials < 0 or self.max_active_trials < 0:
            raise InvalidArgumentError("max_trials and max_active_trials must be >= 0")
        if not 0 <= self.pool_size <= MAX_POOL_SIZE:
            raise InvalidArgumentError(
                f"pool_size must be in [0, {MAX_POOL_SIZE}], got {self.pool_size}"
            )
        if self.max_examples < 0 or self.examples_per_trial < 0:
            raise InvalidArgumentError("max_examples and examples_per_trial must be >= 0")
        if (self.max_examples or self.examples_per_trial) and not self.pool_size:
            raise InvalidArgumentError(
                "max_examples and examples_per_trial need a labeled pool: set pool_size to "
                "the number of examples the evaluators can score"
            )
        if self.examples_per_trial > self.pool_size:
            raise InvalidArgumentError(
                f"examples_per_trial={self.examples_per_trial} exceeds pool_size="
                f"{self.pool_size}"
            )


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


def _check_length(length: int) -> None:
    if not 1 <= length <= MAX_PROMPT_LENGTH:
        raise InvalidArgumentError(
            f"prompt_length must be in [1, {MAX_PROMPT_LENGTH}], got {length}"
        )
