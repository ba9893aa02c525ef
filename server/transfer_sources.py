"""A study's transfer sources: checked when it is created, read from storage when its
engine is built.

A study names earlier studies in ``spec.transfer_from``. At creation each must exist
(NOT_FOUND naming it) and have a compatible space (INVALID_ARGUMENT naming the mismatch):
the same kind; hard prompts the same vocabulary and ``prompt_length`` (the filters and
PCA may differ: source prompts are projected into the target's filter); soft prompts the
same ``prompt_length`` and ``embedding_dim``; pool prompts the same pool, or another
pool embedded by the same ``embedding_model`` into as many dimensions (a source's
candidates then come with their embeddings, :attr:`LoadedSource.embeddings`, and the
engine places them among this study's candidates by those). A source deleted (or replaced by an
incompatible study) later is skipped with a warning when the engine is rebuilt, and
:func:`describe` says so; the target keeps working.

The sources' completed trials are read from storage every time the target's engine is
built, so transfer survives a server restart. Their values are turned into numbers to
maximize with each source's own goal and objective.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from promptbo.errors import InvalidArgumentError, NotFoundError
from promptbo.server.domain import (
    HardPromptSpace,
    Pool,
    PoolSpace,
    Prompt,
    SoftPromptSpace,
    StudySpec,
    TrialState,
)
from promptbo.server.storage.base import Storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedSource:
    """One source's completed trials: prompts and values to maximize; for a source on
    another pool (embedded by the same model), ``embeddings`` holds each prompt's row of
    that pool (`n x D` float32; None when the source searched this study's own pool or
    another kind of space)."""

    name: str
    prompts: list[Prompt]
    values: list[float]
    embeddings: np.ndarray | None = None


@dataclass(frozen=True)
class SourceStatus:
    """What ``study show`` lists per source: its weight in the surrogate (None when not
    computed yet), completed trials read, and a note ("" when all is well)."""

    study: str
    weight: float | None
    trials: int
    note: str = ""


PoolGetter = Callable[[str], Pool]


def mismatch(target: StudySpec, source: StudySpec, vocabulary: bool = True,
             pools: PoolGetter | None = None) -> str:
    """Why ``source``'s prompts cannot be used in ``target``'s space ("" if they can);
    ``vocabulary=False`` skips comparing hard spaces' vocabularies; ``pools`` reads a
    stored pool by id, to compare two different pools' embedding models (without it,
    pool studies must share their pool)."""
    a, b = target.space, source.space
    if type(a) is not type(b):
        return f"its space is {_kind(b)}, this study's is {_kind(a)}"
    if isinstance(a, HardPromptSpace):
        assert isinstance(b, HardPromptSpace)
        if vocabulary and a.vocabulary_id != b.vocabulary_id:
            return (f"its vocabulary is {b.vocabulary_id[:12]}..., this study's is "
                    f"{a.vocabulary_id[:12]}... (transfer needs the same model vocabulary)")
        if a.prompt_length != b.prompt_length:
            return f"its prompt_length is {b.prompt_length}, this study's is {a.prompt_length}"
        return ""
    if isinstance(a, PoolSpace):
        assert isinstance(b, PoolSpace)
        if a.pool_id == b.pool_id:
            return ""
        head = f"its pool is {b.pool_id[:12]}..., this study's is {a.pool_id[:12]}..."
        if pools is None:
            return f"{head} (transfer needs the same pool)"
        return _pool_mismatch(head, pools(a.pool_id), pools(b.pool_id))
    assert isinstance(a, SoftPromptSpace) and isinstance(b, SoftPromptSpace)
    if (a.prompt_length, a.embedding_dim) != (b.prompt_length, b.embedding_dim):
        return (f"its soft prompts are {b.prompt_length} x {b.embedding_dim}, this study's "
                f"are {a.prompt_length} x {a.embedding_dim}")
    return ""


def _pool_mismatch(head: str, mine: Pool, theirs: Pool) -> str:
    """Why another pool's candidates cannot be placed among ``mine`` ("" if they can)."""
    if not mine.embedding_model or mine.embedding_model != theirs.embedding_model:
        return (f"{head}, embedded by {theirs.embedding_model or 'an unnamed model'!r} and "
                f"{mine.embedding_model or 'an unnamed model'!r}; transfer between two pools "
                "needs both embedded by the same named model (build both with the same "
                "--embed), or the same pool")
    if mine.embedding_dim != theirs.embedding_dim:
        return (f"{head}, with {theirs.embedding_dim}- and {mine.embedding_dim}-dimensional "
                "embeddings; transfer between two pools needs the same embedding space")
    return ""


def check_sources(storage: Storage, name: str, spec: StudySpec, vocabulary: bool = True,
                  pools: PoolGetter | None = None) -> None:
    """Refuses sources that do not exist or do not fit ``spec``'s space (``vocabulary``:
    whether to compare vocabularies; False while validating flags before one is uploaded).

    ``pools`` reads a stored pool by id (default: ``storage.get_pool``).

    Raises:
        InvalidArgumentError: the study names itself, or a source's space differs.
        NotFoundError: a source does not exist.
    """
    pools = pools or storage.get_pool
    if spec.transfer_from and spec.transfer == "surrogate" and (spec.strategy or "gp") != "gp":
        raise InvalidArgumentError(
            f"transfer=surrogate needs the gp strategy, not {spec.strategy!r}; use "
            f"transfer=init (or both, which means init here)"
        )
    if spec.transfer_from and spec.strategy == "mf":
        raise InvalidArgumentError(
            "transfer_from does not combine with the mf strategy yet (its minibatch ledger "
            "and noisy observations bypass the transfer ensemble); use gp or turbo"
        )
    for source in spec.transfer_from:
        if source == name:
            raise InvalidArgumentError(f"study {name!r} cannot transfer from itself")
        try:
            study = storage.get_study(source)
        except NotFoundError:
            raise NotFoundError(
                f"transfer source study {source!r} not found; create and run it first, or "
                "remove it from transfer_from"
            ) from None
        why = mismatch(spec, study.spec, vocabulary, pools)
        if why:
            raise InvalidArgumentError(
                f"transfer source study {source!r} does not fit this study: {why}"
            )


def load_sources(
    storage: Storage, spec: StudySpec,
    objective: Callable[[StudySpec, float | None, dict[str, float]], float | None],
    pools: PoolGetter | None = None,
) -> tuple[list[LoadedSource], dict[str, str]]:
    """The sources' completed trials, and a note per source that could not be read.

    ``objective(source_spec, value, metrics)`` gives the number to maximize (None skips
    the trial); ``pools`` reads a stored pool by id (default: ``storage.get_pool``).
    """
    pools = pools or storage.get_pool
    loaded: list[LoadedSource] = []
    notes: dict[str, str] = {}
    for source in spec.transfer_from:
        try:
            study = storage.get_study(source)
        except NotFoundError:
            notes[source] = "deleted; no longer used"
            log.warning("transfer source study %s no longer exists; it is not used", source)
            continue
        why = mismatch(spec, study.spec, pools=pools)
        if why:
            notes[source] = f"not used: {why}"
            log.warning("transfer source study %s is not used: %s", source, why)
            continue
        prompts, values = [], []
        for t in storage.list_trials(source):
            # The reference trial (the unprompted model) is no prompt of the space.
            if t.state is not TrialState.COMPLETED or t.source == "reference":
                continue
            v = objective(study.spec, t.value, t.metrics)
            if v is not None:
                prompts.append(t.prompt)
                values.append(v)
        loaded.append(LoadedSource(source, prompts, values,
                                   _other_pool_rows(spec, study.spec, prompts, pools)))
    return loaded, notes


def _other_pool_rows(target: StudySpec, source: StudySpec, prompts: list[Prompt],
                     pools: PoolGetter) -> np.ndarray | None:
    """The source pool's embedding row of each prompt (`n x D`), when the source searched
    another pool than the target; None otherwise."""
    a, b = target.space, source.space
    if not (isinstance(a, PoolSpace) and isinstance(b, PoolSpace)) or a.pool_id == b.pool_id:
        return None
    table = pools(b.pool_id).embeddings
    rows = [int(p.pool_index or 0) for p in prompts]  # pool prompts all have an index
    return np.asarray(table[rows], dtype=np.float32).reshape(
        len(prompts), table.shape[1])


def describe(
    storage: Storage, spec: StudySpec, counts: dict[str, int], weights: dict[str, float] | None,
    notes: dict[str, str],
) -> list[SourceStatus]:
    """The status of each of ``spec``'s sources for ``study show``."""
    out = []
    for source in spec.transfer_from:
        note = notes.get(source, "")
        if not note and not _exists(storage, source):
            note = "deleted; its trials are used until the server restarts"
        if not note and weights is None:
            note = ("weight computed once the study's model is built" if _has_surrogate(spec)
                    else "its best prompts start the study (no surrogate weight: transfer "
                         "by initialization)")
        weight = None if weights is None else weights.get(source, 0.0)
        out.append(SourceStatus(source, weight, counts.get(source, 0), note))
    return out


def _has_surrogate(spec: StudySpec) -> bool:
    """Whether the study's transfer includes the RGPE surrogate (see TransferEngine)."""
    return spec.transfer in ("both", "surrogate") and (spec.strategy or "gp") == "gp"


def _kind(space: object) -> str:
    if isinstance(space, HardPromptSpace):
        return "hard prompts"
    if isinstance(space, SoftPromptSpace):
        return "soft prompts"
    if isinstance(space, PoolSpace):
        return "a candidate pool"
    return type(space).__name__


def _exists(storage: Storage, name: str) -> bool:
    try:
        storage.get_study(name)
    except NotFoundError:
        return False
    return True
