"""The study spec: what a study searches and how, its defaults, and its two encodings.

The one definition shared by the client, the server and storage:

- the types: a search space (:class:`HardPromptSpace`, :class:`SoftPromptSpace` or
  :class:`PoolSpace`) inside a :class:`StudySpec`;
- the defaults: the dataclass field defaults below, and nowhere else;
- the checks that need nothing but the spec (ranges, options that exclude each other), in
  ``__post_init__``, raising :class:`~promptbo.errors.InvalidArgumentError`. Checks against
  uploaded vocabularies and pools, strategies and server limits are the server's;
- the protobuf codec (:func:`spec_to_pb`, :func:`spec_from_pb`) for ``promptbo.v1.StudySpec``
  and the JSON codec (:func:`spec_to_json`, :func:`spec_from_json`) storage keeps studies in.

On the wire a field left at its zero value (``0``, ``""``, empty) means "the default":
:func:`spec_from_pb` leaves it to the field default here, so the server fills defaults in
this one place, and a client sends only what its user changed
(``spec_to_pb(spec, changed_only=True)``). Storage writes every value, so a study keeps
its meaning if a default changes later.

NumPy-free and torch-free: only the standard library and the generated messages.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from promptbo.errors import FailedPreconditionError, InvalidArgumentError
from promptbo.v1 import resources_pb2 as pb

MAX_PROMPT_LENGTH = 512
MAX_PCA_DIMS = 1024
MAX_EMBEDDING_DIM = 65536
MAX_INTRINSIC_DIM = 4096
MAX_LEASE_SECONDS = 7 * 86400
#: Largest labeled pool a study may declare (a trial's example indices travel in it).
MAX_POOL_SIZE = 1_000_000
#: Most source studies one study may transfer from.
MAX_TRANSFER_SOURCES = 10
#: How a study uses its transfer sources (see :mod:`promptbo.server.optim.transfer`).
TRANSFER_MODES = ("both", "init", "surrogate")


class Goal(enum.Enum):
    MAXIMIZE = "maximize"
    MINIMIZE = "minimize"


@dataclass(frozen=True)
class HardPromptSpace:
    """``prompt_length`` tokens of an uploaded vocabulary (its content id, see
    ``Client.upload_vocabulary``), searched in a PCA space of ``pca_dims`` per position.

    ``top_n`` with ``top_n_scores`` (one per vocabulary entry) keeps the ``top_n`` rows
    with the highest scores; ``allowed`` keeps exactly those rows. At most one is set.
    """

    kind: ClassVar[str] = "hard"

    prompt_length: int
    vocabulary_id: str
    pca_dims: int = 16
    top_n: int = 0
    top_n_scores: Sequence[float] = ()
    allowed: Sequence[int] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "top_n_scores", tuple(float(s) for s in self.top_n_scores))
        object.__setattr__(self, "allowed", tuple(int(i) for i in self.allowed))
        _check_length(self.prompt_length)
        if not self.vocabulary_id:
            raise InvalidArgumentError(
                "hard prompt space needs a vocabulary_id: upload the vocabulary first "
                "(UploadVocabulary) and pass the id it returns"
            )
        _check_range("pca_dims", self.pca_dims, 1, MAX_PCA_DIMS)
        if self.top_n and self.allowed:
            raise InvalidArgumentError("give either a top_n filter or an allowed list, not both")
        if self.top_n and len(self.top_n_scores) == 0:
            raise InvalidArgumentError("a top_n filter needs one score per vocabulary entry")
        if any(not math.isfinite(s) for s in self.top_n_scores):
            raise InvalidArgumentError("top_n scores must be finite numbers")


@dataclass(frozen=True)
class SoftPromptSpace:
    """``prompt_length x embedding_dim`` free vectors in a box of half-width ``bound``,
    optionally searched through a random projection from ``intrinsic_dim`` dimensions
    (0: no projection) scaled by the model's ``embedding_std``."""

    kind: ClassVar[str] = "soft"

    prompt_length: int
    embedding_dim: int
    intrinsic_dim: int = 0
    bound: float = 1.0
    embedding_std: float = 1.0

    def __post_init__(self) -> None:
        _check_length(self.prompt_length)
        _check_range("embedding_dim", self.embedding_dim, 1, MAX_EMBEDDING_DIM)
        _check_range("intrinsic_dim", self.intrinsic_dim, 0, MAX_INTRINSIC_DIM)
        for name in ("bound", "embedding_std"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise InvalidArgumentError(f"{name} must be a positive number, got {value}")

    @property
    def size(self) -> int:
        return self.prompt_length * self.embedding_dim


@dataclass(frozen=True)
class PoolSpace:
    """One candidate of an uploaded pool of prompts (its content id, see
    ``Client.upload_pool``); a trial's prompt is the candidate's index and text."""

    kind: ClassVar[str] = "pool"

    pool_id: str

    def __post_init__(self) -> None:
        if not self.pool_id:
            raise InvalidArgumentError(
                "pool space needs a pool_id: upload the pool first (UploadPool, "
                "client.upload_pool) and pass the id it returns"
            )


SearchSpace = HardPromptSpace | SoftPromptSpace | PoolSpace
_SPACES: dict[str, type[HardPromptSpace] | type[SoftPromptSpace] | type[PoolSpace]] = {
    cls.kind: cls for cls in (HardPromptSpace, SoftPromptSpace, PoolSpace)
}


@dataclass(frozen=True)
class StudySpec:
    """A study: its search ``space`` and how it is searched.

    ``strategy`` with ``strategy_options`` (strings, checked by the server) picks the
    optimizer; ``objective`` is ``"value"`` or the name of a metric to optimize toward
    ``goal``. ``max_trials`` (0: no limit) is the budget of completed trials,
    ``max_active_trials`` (0: no cap) the trials in flight at once, ``lease_seconds`` how
    long a handed-out trial stays leased without a heartbeat.

    Fidelity (see :mod:`promptbo.server.fidelity`): ``pool_size`` is the labeled pool's
    size (0: none), ``max_examples`` the budget in scored examples (0: none),
    ``examples_per_trial`` the examples of a trial for strategies that do not choose
    (0: the whole pool). ``transfer_from`` names earlier studies of the same space whose
    results warm-start this one, used as ``transfer`` says (one of :data:`TRANSFER_MODES`).
    """

    space: SearchSpace
    strategy: str = "gp"
    strategy_options: Mapping[str, str] = field(default_factory=dict)
    goal: Goal = Goal.MAXIMIZE
    objective: str = "value"
    max_trials: int = 0
    max_active_trials: int = 0
    lease_seconds: float = 300.0
    seed: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)
    pool_size: int = 0
    max_examples: int = 0
    examples_per_trial: int = 0
    transfer_from: Sequence[str] = ()
    transfer: str = "both"

    def __post_init__(self) -> None:
        object.__setattr__(self, "strategy_options", dict(self.strategy_options))
        object.__setattr__(self, "labels", dict(self.labels))
        object.__setattr__(self, "transfer_from", tuple(self.transfer_from))
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
        if not (math.isfinite(self.lease_seconds) and 0 < self.lease_seconds <= MAX_LEASE_SECONDS):
            raise InvalidArgumentError(
                f"lease_seconds must be in (0, {MAX_LEASE_SECONDS}], got {self.lease_seconds}"
            )
        if self.max_trials < 0 or self.max_active_trials < 0:
            raise InvalidArgumentError("max_trials and max_active_trials must be >= 0")
        _check_range("pool_size", self.pool_size, 0, MAX_POOL_SIZE)
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


def default(cls: type, name: str) -> Any:
    """The default of field ``name`` of the spec dataclass ``cls``."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


DEFAULT_PCA_DIMS: int = default(HardPromptSpace, "pca_dims")
DEFAULT_LEASE_SECONDS: float = default(StudySpec, "lease_seconds")


def _check_length(length: int) -> None:
    _check_range("prompt_length", length, 1, MAX_PROMPT_LENGTH)


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise InvalidArgumentError(f"{name} must be in [{low}, {high}], got {value}")


def _values(obj: Any, changed_only: bool = False) -> dict[str, Any]:
    """``obj``'s fields by name; with ``changed_only`` only those not at their default."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if not (changed_only and value == default(type(obj), f.name)):
            out[f.name] = value
    return out


# --- protobuf: promptbo.v1.StudySpec -----------------------------------------------------
_GOALS_PB = {Goal.MAXIMIZE: pb.GOAL_MAXIMIZE, Goal.MINIMIZE: pb.GOAL_MINIMIZE}
_GOALS = {v: k for k, v in _GOALS_PB.items()}


def spec_to_pb(spec: StudySpec, *, changed_only: bool = False) -> pb.StudySpec:
    """``spec`` as a message. With ``changed_only`` fields at their default are left
    unset, so the receiver's defaults apply (what a client sends); without, every value
    is written (what the server reports). ``transfer`` is written only with sources."""
    values = _values(spec, changed_only)
    space = values.pop("space", spec.space)
    goal = values.pop("goal", None)
    if not spec.transfer_from:
        values.pop("transfer", None)
    msg = pb.StudySpec(**values)
    if goal is not None:
        msg.goal = _GOALS_PB[goal]
    space_values = _values(space, changed_only)
    if isinstance(space, HardPromptSpace):
        space_values.update(prompt_length=space.prompt_length, vocabulary_id=space.vocabulary_id)
        top_n, scores = space_values.pop("top_n", 0), space_values.pop("top_n_scores", ())
        allowed = space_values.pop("allowed", ())
        msg.hard.CopyFrom(pb.HardPromptSpace(**space_values))
        if top_n:
            msg.hard.filter.top_n.n = top_n
            msg.hard.filter.top_n.scores.extend(scores)
        elif allowed:
            msg.hard.filter.allowed.indices.extend(allowed)
    elif isinstance(space, SoftPromptSpace):
        space_values.update(prompt_length=space.prompt_length, embedding_dim=space.embedding_dim)
        msg.soft.CopyFrom(pb.SoftPromptSpace(**space_values))
    else:
        msg.pool.pool_id = space.pool_id
    return msg


def _given(msg: Any, names: Sequence[str]) -> dict[str, Any]:
    """The fields of ``msg`` among ``names`` that are set (not zero or empty)."""
    return {n: v for n in names if (v := getattr(msg, n))}


def spec_from_pb(msg: pb.StudySpec) -> StudySpec:
    """The spec a message describes, fields left unset taking their defaults. Raises
    InvalidArgumentError for a message without a space, an empty filter, an unknown goal
    or values out of range."""
    kind = msg.WhichOneof("space")
    space: SearchSpace
    if kind == "pool":
        space = PoolSpace(pool_id=msg.pool.pool_id)
    elif kind == "hard":
        h = msg.hard
        f = h.filter.WhichOneof("filter")
        if f == "top_n" and not h.filter.top_n.n:
            raise InvalidArgumentError("the top_n filter needs n >= 1")
        if f == "allowed" and not h.filter.allowed.indices:
            raise InvalidArgumentError("the allowed filter needs at least one index")
        filters: dict[str, Any] = {}
        if f == "top_n":
            filters.update(top_n=h.filter.top_n.n, top_n_scores=h.filter.top_n.scores)
        elif f == "allowed":
            filters.update(allowed=h.filter.allowed.indices)
        space = HardPromptSpace(
            prompt_length=h.prompt_length, vocabulary_id=h.vocabulary_id,
            **_given(h, ("pca_dims",)), **filters,
        )
    elif kind == "soft":
        s = msg.soft
        space = SoftPromptSpace(
            prompt_length=s.prompt_length, embedding_dim=s.embedding_dim,
            **_given(s, ("intrinsic_dim", "bound", "embedding_std")),
        )
    else:
        raise InvalidArgumentError(
            "the study spec needs a search space: set spec.hard, spec.soft or spec.pool"
        )
    if msg.goal != pb.GOAL_UNSPECIFIED and msg.goal not in _GOALS:
        raise InvalidArgumentError(f"unknown goal {msg.goal}")
    names = [f.name for f in dataclasses.fields(StudySpec) if f.name not in ("space", "goal")]
    settings = _given(msg, names)
    if msg.goal in _GOALS:
        settings["goal"] = _GOALS[msg.goal]
    return StudySpec(space=space, **settings)


# --- JSON: how storage keeps a spec --------------------------------------------------------
#: Fields added after the first stored format: written only when not at their default, so
#: that a server from before them can still read the studies that do not use them.
_LATER_FIELDS = frozenset({
    "pool_size", "max_examples", "examples_per_trial", "transfer_from", "transfer",
})


def spec_to_json(spec: StudySpec) -> str:
    """``spec`` as a JSON text: every value written (but :data:`_LATER_FIELDS` at their
    default), the space under ``"space"`` with its ``"kind"``, tuples as lists."""
    doc = _values(spec)
    for name in _LATER_FIELDS:
        if doc[name] == default(StudySpec, name):
            del doc[name]
    doc["space"] = {"kind": spec.space.kind, **_values(spec.space)}
    doc["goal"] = spec.goal.value
    return json.dumps(doc, ensure_ascii=True, separators=(",", ":"))


def spec_from_json(text: str) -> StudySpec:
    """The inverse of :func:`spec_to_json`; reads every format stored so far (missing
    keys take their defaults). Raises FailedPreconditionError for a space kind or key
    this version does not know (a database written by a newer server)."""
    doc = json.loads(text)
    space_doc = dict(doc.pop("space"))
    kind = space_doc.pop("kind")
    if kind not in _SPACES:
        raise FailedPreconditionError(f"stored study spec has unknown space kind {kind!r}")
    cls = _SPACES[kind]
    _check_keys(cls, space_doc)
    _check_keys(StudySpec, doc)
    if "goal" in doc:
        doc["goal"] = Goal(doc["goal"])
    return StudySpec(space=cls(**space_doc), **doc)


def _check_keys(cls: type, doc: dict[str, Any]) -> None:
    unknown = doc.keys() - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise FailedPreconditionError(
            f"stored study spec has unknown field(s) {', '.join(sorted(unknown))} for "
            f"{cls.__name__}; was the database written by a newer promptbo?"
        )
