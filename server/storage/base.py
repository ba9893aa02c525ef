"""The storage contract every backend fulfils.

A :class:`Storage` keeps studies, their trials, uploaded vocabularies and pools. Every method
is atomic: it either applies all of its change or none. Backends do no optimization and
enforce no lease rules; :class:`promptbo.server.manager.StudyManager` does, holding one
lock per study (:mod:`promptbo.server.study_cache`), so a backend only needs to be safe
for concurrent calls from threads.

Shared storage: a backend whose data other server processes may write at the same time
(PostgreSQL; SQLite when the server is started so) has ``shared`` set. Every write of a
study's trials or state then bumps the study's change marker (:meth:`Storage.changes`)
in the same transaction, and the conditional forms of the trial writes (``expected`` of
:meth:`Storage.update_trials`, ``guard`` of :meth:`Storage.add_trials`) decide against
what is stored, under the study-row lock, raising :class:`StaleWriteError` when another
process got there first. Every write of a study's trials also takes ``since``: the
study's change marker as the caller last read it. The write then happens only while the
marker is still ``since`` (StaleWriteError, nothing written, otherwise) and moves it to
``since + 1``, so a caller that knows the study up to ``since`` learns, from the write
alone, whether anyone else wrote in between (:func:`check_since`). A write of the study
row is a compare-and-set of the row itself (``expected`` of :meth:`Storage.update_study`).
:mod:`promptbo.server.replica_sync` builds on these.

Errors: methods raise :class:`~promptbo.errors.NotFoundError` for a missing study,
trial or vocabulary and :class:`~promptbo.errors.AlreadyExistsError` for a duplicate
study name, never a backend's own exception type. ``tests/storage/test_contract.py`` is
the executable form of this contract and runs against every backend.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from promptbo.errors import UnavailableError
from promptbo.server.domain import Pool, Study, Trial, TrialState, Vocabulary


class StaleWriteError(UnavailableError):
    """A conditional write found the stored trials changed by another process since the
    caller read them; nothing was written. The caller reloads and decides again (a client
    that sees it retries, as for any UNAVAILABLE)."""


@dataclass(frozen=True)
class HandoutGuard:
    """Limits :meth:`Storage.add_trials` checks against the stored trials before adding
    new ACTIVE ones, in the same transaction: after the insert the study has at most
    ``max_trials`` completed plus active trials (the reference excluded) and at most
    ``max_active`` active trials whose lease runs at ``now`` (0: no such limit)."""

    max_trials: int = 0
    max_active: int = 0
    now: float = 0.0


@dataclass(frozen=True)
class StudyChanges:
    """What :meth:`Storage.changes` returns: the study, its change marker ``version`` and
    the trials written after the marker passed (by increasing id)."""

    study: Study
    version: int
    trials: list[Trial] = field(default_factory=list)


def first_marker() -> int:
    """The change marker a new study starts at: the clock in microseconds. A study
    created again under a deleted one's name thus starts above every marker the deleted
    one reached (each of its writes took longer than a microsecond), so a write
    conditional on a marker of the old study can never go ahead on the new one."""
    return time.time_ns() // 1000


def check_since(study: str, stored: int, since: int | None) -> None:
    """Raises StaleWriteError unless a write conditional on ``since`` may go ahead on a
    study whose change marker is ``stored`` (None: unconditional)."""
    if since is not None and stored != since:
        raise StaleWriteError(
            f"study {study!r} was written by another process (its change marker is "
            f"{stored}, not {since})"
        )


def same_study(stored: Study, expected: Study) -> bool:
    """Whether ``stored`` still has ``expected``'s spec and state (see ``expected`` of
    :meth:`Storage.update_study`)."""
    return stored.spec == expected.spec and stored.state is expected.state


def same_hold(stored: Trial, expected: Trial) -> bool:
    """Whether ``stored`` still has ``expected``'s state, holder and lease (see ``expected``
    of :meth:`Storage.update_trials`)."""
    return (stored.state is expected.state and stored.client_id == expected.client_id
            and stored.lease_deadline == expected.lease_deadline)


def room_for(trials: Sequence[Trial], new: int, guard: HandoutGuard) -> bool:
    """Whether a study holding ``trials`` has room for ``new`` active trials (see
    :class:`HandoutGuard`)."""
    counted = [t for t in trials if t.source != "reference"]
    active = [t for t in counted if t.state is TrialState.ACTIVE]
    budget = sum(t.state is TrialState.COMPLETED for t in counted) + len(active)
    held = sum(t.lease_deadline >= guard.now for t in active)
    return not (
        (guard.max_trials and budget + new > guard.max_trials)
        or (guard.max_active and held + new > guard.max_active)
    )


class Storage(abc.ABC):
    #: True when calls do no network I/O and take at most milliseconds (in-memory, SQLite),
    #: so the server may run them on its event loop instead of handing them to a thread.
    local: bool = False
    #: True when other processes may write the same data (several server replicas on one
    #: database): the server then checks :meth:`changes` before every decision.
    shared: bool = False

    # --- vocabularies -------------------------------------------------------------
    @abc.abstractmethod
    def put_vocabulary(self, vocabulary: Vocabulary) -> bool:
        """Stores ``vocabulary`` under its content id; returns False if it was present."""

    @abc.abstractmethod
    def get_vocabulary(self, vocabulary_id: str) -> Vocabulary:
        """Raises NotFoundError if no vocabulary has that id."""

    @abc.abstractmethod
    def has_vocabulary(self, vocabulary_id: str) -> bool: ...

    # --- candidate pools ----------------------------------------------------------
    @abc.abstractmethod
    def put_pool(self, pool: Pool) -> bool:
        """Stores ``pool`` under its content id; returns False if it was present."""

    @abc.abstractmethod
    def get_pool(self, pool_id: str) -> Pool:
        """Raises NotFoundError if no pool has that id."""

    # --- studies ------------------------------------------------------------------
    @abc.abstractmethod
    def create_study(self, study: Study) -> Study:
        """Stores a new study. Raises AlreadyExistsError if the name is taken."""

    @abc.abstractmethod
    def get_study(self, name: str) -> Study:
        """Raises NotFoundError if there is no such study."""

    @abc.abstractmethod
    def list_studies(self) -> list[Study]:
        """All studies, ordered by name."""

    @abc.abstractmethod
    def update_study(self, study: Study, expected: Study | None = None) -> None:
        """Replaces the stored study of that name (state changes). NotFoundError if absent.
        With ``expected``, a compare-and-set: StaleWriteError, and nothing written, unless
        the stored study still has ``expected``'s spec and state and holds no more
        completed plus active trials (the reference excluded) than the new spec's
        ``max_trials`` (when it has one); trial writes alone do not make it fail."""

    @abc.abstractmethod
    def delete_study(self, name: str) -> None:
        """Deletes a study and all of its trials. NotFoundError if absent."""

    # --- trials -------------------------------------------------------------------
    @abc.abstractmethod
    def add_trials(
        self, study: str, trials: Sequence[Trial], guard: HandoutGuard | None = None,
        since: int | None = None,
    ) -> list[Trial]:
        """Stores new trials, assigning ids 1, 2, ... in order of arrival within the study
        (the ``id`` field of the given trials is ignored). Returns them with their ids.
        NotFoundError if the study is absent. With ``guard``, StaleWriteError (nothing
        stored) when the stored trials leave no room for them (see :class:`HandoutGuard`);
        with ``since``, StaleWriteError unless the study's change marker is ``since``."""

    @abc.abstractmethod
    def get_trial(self, study: str, trial_id: int) -> Trial:
        """NotFoundError if the study or the trial is absent."""

    @abc.abstractmethod
    def update_trials(
        self, trials: Sequence[Trial], expected: Sequence[Trial] | None = None,
        since: int | None = None,
    ) -> None:
        """Replaces stored trials (matched by study and id), all in one transaction.
        NotFoundError, and nothing written, if any of them is absent. With ``expected``
        (one per trial, same order): StaleWriteError, and nothing written, unless each
        stored trial still has its expected state, ``client_id`` and ``lease_deadline``
        (a compare-and-set: a trial completed or re-leased elsewhere is not overwritten).
        ``since`` needs every trial of one study: StaleWriteError unless its change marker
        is still ``since`` (InvalidArgumentError for trials of several studies)."""

    @abc.abstractmethod
    def changes(self, study: str, since: int) -> StudyChanges:
        """The study, its change marker and its trials written after the marker was
        ``since`` (all of them for ``since`` < 0), read in one snapshot. The marker grows
        with every write of the study or its trials. NotFoundError if the study is absent."""

    @abc.abstractmethod
    def list_trials(
        self,
        study: str,
        state: TrialState | None = None,
        after_id: int = 0,
        limit: int | None = None,
    ) -> list[Trial]:
        """Trials of a study with ``id > after_id``, by increasing id, optionally only
        those in ``state``, at most ``limit`` of them. NotFoundError if the study is absent."""

    def count_trials(self, study: str) -> dict[TrialState, int]:
        """Number of trials per state, every state present (0 when none); what ``promptbo
        admin check`` lists. NotFoundError if the study is absent."""
        counts = dict.fromkeys(TrialState, 0)
        for t in self.list_trials(study):
            counts[t.state] += 1
        return counts

    def check_integrity(self) -> list[str]:
        """Problems found in the stored data (empty when sound)."""
        problems: list[str] = []
        for s in self.list_studies():
            ids = [t.id for t in self.list_trials(s.name)]
            if ids != list(range(1, len(ids) + 1)):
                problems.append(f"study {s.name!r}: trial ids are not 1..n")
            for t in self.list_trials(s.name):
                if t.state is TrialState.COMPLETED and t.value is None:
                    problems.append(f"study {s.name!r} trial {t.id}: completed without value")
        return problems

    def close(self) -> None:  # noqa: B027 - an optional hook, not abstract
        """Releases connections. The default does nothing."""
