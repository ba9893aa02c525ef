"""Keeps a server's in-memory studies in step with a storage other servers write too.

Several API replicas may serve one database (``Storage.shared``: PostgreSQL, or SQLite
when the server is told so). A replica's :class:`~promptbo.server.study_cache.LiveStudy`
is then only a cache: before every call that decides something (a handout against the
budget and the active-trial cap, a lease renewal or expiry, a completion, a repeated
call) :class:`ReplicaSync` reads the study's change marker with the trials written since
it last looked, in one statement (:meth:`Storage.changes`), and applies them:

- a new trial (id above the last one this replica accounted for) is counted; an active
  one joins the active trials, a completed one becomes a candidate for the best trial;
- a trial this replica held as active is replaced (another replica re-leased it) or, if
  it finished elsewhere, finished here;
- every result another replica recorded goes to this replica's engine with
  ``invalidate=True``, so no prefetched suggestion computed without it is handed out
  (:mod:`~promptbo.server.prefetch`);
- the study row (state, budget, cap, labels) replaces the cached one;
- ``notify`` (when set) hears of the trials applied and of the study found complete, so
  that the server's watchers see other replicas' progress too.

A call that ends in a write need not read first: every write of a study or its trials is
conditional on the change marker this replica last saw (``since`` of
:class:`~promptbo.server.storage.base.Storage`, :meth:`ReplicaSync.since`), so it goes
ahead only if nobody else wrote since, in which case the cache was exact and the
decision too; the write moves the marker one step (:meth:`ReplicaSync.advanced`). When
someone else did write, the write raises
:class:`~promptbo.server.storage.base.StaleWriteError` and writes nothing, and the manager
catches up (:meth:`ReplicaSync.fresh`, or :meth:`ReplicaSync.rebuild` to recount from
scratch) and decides again. A call that decides without writing (an error, a study found
complete, nothing to hand out) confirms with one change read that nothing moved
(:meth:`~promptbo.server.study_cache.StudyCache.moved`) before it answers. On
PostgreSQL an ask or a tell is thus one statement when no other replica wrote the study
in between. The writes are conditional
on the stored trials as well (``expected`` and ``guard``), under the study-row lock.

A trial is accounted for once: this replica's own writes update the cache as they happen
(and :meth:`ReplicaSync.wrote` moves the last accounted id past the trials it added), so
when they come back through the change marker they are recognized and skipped.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from promptbo.server.domain import Study, StudyState, Trial, TrialState
from promptbo.server.rules import noise, stored_objective
from promptbo.server.storage.base import Storage

if TYPE_CHECKING:
    from promptbo.server.study_cache import LiveStudy


@dataclass
class _Seen:
    """How far a replica has read a study: the change marker and the last trial id it
    accounted for."""

    version: int
    last_id: int


class ReplicaSync:
    """Loads and refreshes :class:`LiveStudy` objects from a shared ``storage``.

    Args:
        storage: the shared storage.
        make_live: builds a LiveStudy from a study and all of its trials.

    Every method is called under the study's lock.
    """

    def __init__(
        self, storage: Storage, make_live: Callable[[Study, list[Trial]], LiveStudy]
    ) -> None:
        self.storage = storage
        self._make_live = make_live
        self._seen: weakref.WeakKeyDictionary[LiveStudy, _Seen] = weakref.WeakKeyDictionary()
        #: Trials written by other replicas that this one applied (a metric for tests).
        self.applied = 0
        #: Called with the study's name, the trials of other replicas a catch-up applied
        #: (in id order) and whether it found the study newly complete; under the study
        #: lock, so it must not block.
        self.notify: Callable[[str, list[Trial], bool], None] | None = None

    def fresh(self, name: str, live: LiveStudy | None) -> LiveStudy:
        """``live`` brought up to date with storage, or the study loaded if ``live`` is
        None or unknown to this sync (NotFoundError if the study is gone)."""
        if live is None:
            return self._load(name)
        seen = self._seen.get(live)
        if seen is None:  # a study this replica just created, with no trials yet
            seen = self._seen[live] = _Seen(-1, 0)
        changes = self.storage.changes(name, seen.version)
        if changes.version < seen.version or changes.study.create_time != live.study.create_time:
            return self._load(name)  # deleted and created again elsewhere: a new study
        if changes.version != seen.version:
            applied = self._apply(live, seen, changes.trials)
            finished = _finishes(live, changes.study)
            live.study = changes.study
            if live.runtime is not None:
                live.runtime.spec = changes.study.spec
            seen.version = changes.version
            self._tell(live, applied, finished)
        return live

    def since(self, live: LiveStudy) -> int | None:
        """The change marker ``live`` is known to be up to date with, for a write
        conditional on it; None while unknown (then :meth:`fresh` first)."""
        seen = self._seen.get(live)
        return seen.version if seen is not None and seen.version >= 0 else None

    def advanced(self, live: LiveStudy) -> None:
        """Notes that a write conditional on :meth:`since` went ahead (and ``live`` was
        updated with it): the study's marker moved one step, by this replica."""
        seen = self._seen.get(live)
        if seen is not None and seen.version >= 0:
            seen.version += 1

    def rebuild(self, live: LiveStudy) -> None:
        """Recounts ``live`` from all of its stored trials, after a conditional write found
        it stale; results this replica had not seen go to its engine first."""
        seen = self._seen.get(live)
        changes = self.storage.changes(live.study.name, -1)
        if seen is None:
            seen = self._seen[live] = _Seen(changes.version, 0)
        applied = self._apply(live, seen, changes.trials, count=False)
        again = self._make_live(changes.study, changes.trials)
        finished = _finishes(live, changes.study)
        live.study = changes.study
        live.active, live.counts, live.best, live.best_obj = (
            again.active, again.counts, again.best, again.best_obj)
        live.ledger, live.reference = again.ledger, again.reference
        if live.runtime is not None:
            live.runtime.spec = changes.study.spec
        seen.version = changes.version
        seen.last_id = max([seen.last_id] + [t.id for t in changes.trials])
        self._tell(live, applied, finished)  # after the recount: events carry its counts

    def catch_up(self, live: LiveStudy) -> list[Trial]:
        """All of the study's trials, read in one snapshot that ``live`` is brought up to
        as well: what an engine built now replays, so that no later refresh hands it a
        result twice."""
        seen = self._seen.get(live)
        changes = self.storage.changes(live.study.name, -1)
        if seen is None:
            seen = self._seen[live] = _Seen(-1, 0)
        if changes.version != seen.version:
            # The rule of _apply needs no versions: trials already accounted are skipped.
            applied = self._apply(live, seen, changes.trials)
            finished = _finishes(live, changes.study)
            live.study = changes.study
            seen.version = changes.version
            self._tell(live, applied, finished)
        return changes.trials

    def wrote(self, live: LiveStudy, trials: Iterable[Trial]) -> None:
        """Notes trials this replica added (and already accounted for in ``live``)."""
        seen = self._seen.get(live)
        if seen is not None:
            seen.last_id = max([seen.last_id] + [t.id for t in trials])

    # --- helpers ----------------------------------------------------------------------
    def _tell(self, live: LiveStudy, applied: list[Trial], finished: bool) -> None:
        """Passes a catch-up of ``live`` to :attr:`notify`, once ``live`` holds all of it
        (the events built then carry the caught-up study, counts and best)."""
        if self.notify is not None and (applied or finished):
            self.notify(live.study.name, applied, finished)

    def _load(self, name: str) -> LiveStudy:
        changes = self.storage.changes(name, -1)
        live = self._make_live(changes.study, changes.trials)
        last = max((t.id for t in changes.trials), default=0)
        self._seen[live] = _Seen(changes.version, last)
        return live

    def _apply(self, live: LiveStudy, seen: _Seen, trials: list[Trial],
               count: bool = True) -> list[Trial]:
        """Applies trials written elsewhere to ``live`` (only teaches its engine unless
        ``count``); returns those applied."""
        spec = live.study.spec
        learned: list[tuple[Trial, float]] = []
        applied: list[Trial] = []
        for t in trials:
            new = t.id > seen.last_id
            if new:
                seen.last_id = t.id
            elif t.id not in live.active:
                continue  # this replica accounted for it already (its own write)
            self.applied += 1
            applied.append(t)
            if t.state is TrialState.COMPLETED and t.source != "reference":
                obj = stored_objective(spec, t.value, t.metrics)
                if obj is not None:
                    learned.append((t, obj))
            if not count:
                continue
            if t.source == "reference":
                live.reference = t
            elif not new:  # one this replica held as active
                if t.state is TrialState.ACTIVE:
                    live.active[t.id] = t
                else:
                    live.finish(t)
            else:
                live.counts[t.state] += 1
                live.ledger.added(t)
                if t.state is TrialState.ACTIVE:
                    live.active[t.id] = t
                elif t.state is TrialState.COMPLETED:
                    live.consider_best(t)
        rt = live.runtime
        if learned and rt is not None:
            rt.queue_observation(
                [t.prompt for t, _ in learned], [o for _, o in learned],
                [noise(spec, t) for t, _ in learned], [t.examples_scored for t, _ in learned],
                invalidate=True,  # no suggestion computed without these is handed out
            )
        return applied


def _finishes(live: LiveStudy, study: Study) -> bool:
    """Whether ``study``, the row just read, completes ``live`` (read before it replaces
    ``live.study``)."""
    return study.state is StudyState.COMPLETED and live.study.state is not StudyState.COMPLETED
