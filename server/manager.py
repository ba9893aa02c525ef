"""The study manager: every operation of the service, over a storage and the engines.

:class:`StudyManager` is what the gRPC servicer calls; it speaks only domain objects and
raises only :mod:`promptbo.errors`. It coordinates three parts, one concept each:

- :mod:`~promptbo.server.rules`: the rules of studies and trials (leases, ownership,
  budgets, result checks) as pure functions; its module doc states them.
- :mod:`~promptbo.server.study_cache`: the studies in memory, their study locks, their
  engines (rebuilt from storage on first use, so a restarted server resumes every study)
  and prefetched suggestions.
- :mod:`~promptbo.server.events`: the progress events WatchStudy streams.

Every change is written to storage first and mirrored in the cache only if the write
succeeded; events are published after the study lock is released.

On a shared storage (several replicas on one database, ``Storage.shared``) every write is
conditional on the study's change marker this replica last saw, so a call that ends in a
write decides on the cache without reading first; a write that finds the marker moved,
or the stored trials changed (a handout is stored only within the budget and cap counted
in the database, a completion, lease or heartbeat only while the trial is still as this
replica read it), raises StaleWriteError and writes nothing, and the call catches up
with the other replicas' writes (:mod:`~promptbo.server.replica_sync`) and decides
again, at most :data:`STALE_RETRIES` times. Those later attempts read first and write
conditionally on the trials only (not the marker), as other replicas writing the study
all the time would otherwise keep moving it between the read and the write. A write of
the study row (``update_study``, a study found complete) is a compare-and-set of the row
as this replica knows it, with the new budget checked against the stored trials in the
same statement, so it neither overwrites another replica's change nor depends on trial
writes racing it; it does not move this replica's marker (the next trial write catches
up once). A call that
answers without writing (an error, a study found complete, nothing to hand out) first
confirms with one change read that no other replica wrote meanwhile, and decides again
if one did. Reads (describe, best trial) catch up before answering.

Watchers of a study on a shared storage also hear of other replicas' handouts and results:
while a study has watchers, a background thread catches it up every
:data:`WATCH_POLL_SECONDS` (one change read), and every catch-up, whoever does it,
publishes the trials it applied.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TypeVar

from promptbo.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    PromptboError,
)
from promptbo.server import rules, telemetry, transfer_sources
from promptbo.server.domain import (
    HardPromptSpace,
    Pool,
    PoolSpace,
    Prompt,
    SoftPromptSpace,
    Study,
    StudySpec,
    StudyState,
    Trial,
    TrialState,
    Vocabulary,
    check_study_name,
)
from promptbo.server.events import Callback, Event, EventHub, follow
from promptbo.server.limits import Limits, check_spec, max_trials_per_response
from promptbo.server.recommend import Recommendation, recommend
from promptbo.server.rules import MAX_PAGE_SIZE, MAX_SUGGEST_COUNT, KnownTrial, TrialResult
from promptbo.server.runtime import StudyRuntime
from promptbo.server.specdiff import VOCABULARY_FIELDS, paths, spec_differences
from promptbo.server.storage.base import HandoutGuard, StaleWriteError, Storage
from promptbo.server.storage.memory import check_text
from promptbo.server.study_cache import EngineFactory, LiveStudy, StudyCache
from promptbo.server.suggest_pool import make_pool

__all__ = [
    "MAX_PAGE_SIZE", "MAX_SUGGEST_COUNT", "Event", "KnownTrial", "StudyManager", "TrialResult",
]

log = logging.getLogger(__name__)

#: Attempts of a call whose conditional write found the study changed by another replica.
STALE_RETRIES = 8
#: How often a watched study is caught up with other replicas' writes (shared storage).
WATCH_POLL_SECONDS = 0.5

T = TypeVar("T")


class _Moved(Exception):
    """A call that was about to answer without writing found the study written by another
    replica (and caught up with it): it decides again."""


class StudyManager:
    """Implements every operation of the service on top of ``storage``.

    Args:
        storage: where studies, trials and vocabularies live. The manager must be its
            only writer unless the storage is ``shared`` (several replicas on one
            database; see :mod:`promptbo.server.replica_sync`).
        clock: returns the time in Unix seconds (tests pass a fake one).
        engine_factory: builds an engine (defaults to
            :func:`promptbo.server.optim.make_engine`).
        prefetch: suggestions to keep ready per study, computed in a background thread
            and refreshed when results arrive (0: compute on demand, fully reproducible).
        limits: the server's resource bounds (see :mod:`promptbo.server.limits`).
        suggest_workers: engine computations that may run at once, foreground and
            prefetch (0: one per available core; see :mod:`promptbo.server.compute`).
        suggest_pool: where expensive engines compute: ``thread`` (default: threads of
            this process), ``process`` (``suggest_workers`` worker processes) or ``ray``
            (as many Ray actors, on ``ray_address`` or a local Ray); see
            :mod:`promptbo.server.suggest_pool`. Workers start on first use.
        ray_address: the Ray cluster of ``suggest_pool="ray"`` ("": the connected or a
            new local one).

    ``studies`` (the :class:`~promptbo.server.study_cache.StudyCache`) and ``events``
    (the :class:`~promptbo.server.events.EventHub`) are its parts.
    """

    def __init__(
        self,
        storage: Storage,
        clock: Callable[[], float] = time.time,
        engine_factory: EngineFactory | None = None,
        prefetch: int = 0,
        limits: Limits | None = None,
        suggest_workers: int = 0,
        suggest_pool: str = "thread",
        ray_address: str = "",
    ) -> None:
        self.storage = storage
        self.limits = limits or Limits()
        self.clock = clock
        if engine_factory is None:
            from promptbo.server.optim import make_engine

            engine_factory = make_engine
        pool = make_pool(suggest_pool, suggest_workers, ray_address=ray_address)
        self.studies = StudyCache(storage, self.limits, engine_factory, prefetch,
                                  suggest_workers, pool)
        self.events = EventHub()
        self._attempt = threading.local()  # .retry: a later attempt of _until_fresh
        self._closed = threading.Event()
        self._poller: threading.Thread | None = None
        self._poller_guard = threading.Lock()
        if self.studies.replicas is not None:
            self.studies.replicas.notify = self._from_elsewhere

    def close(self) -> None:
        """Stops prefetching, the suggestion pool's workers and the watch poller."""
        self._closed.set()
        if self._poller is not None:
            self._poller.join(timeout=10)
        self.studies.close()

    # --- vocabularies and pools --------------------------------------------------------
    def upload_vocabulary(self, vocab: Vocabulary, expected_id: str = "") -> tuple[str, bool]:
        """Stores a vocabulary; returns ``(id, already_present)``."""
        if expected_id and expected_id != vocab.id:
            raise InvalidArgumentError(
                f"vocabulary content hashes to {vocab.id} but the client expected "
                f"{expected_id}; the upload was corrupted or chunks arrived out of order"
            )
        added = self.storage.put_vocabulary(vocab)
        return vocab.id, not added

    def upload_pool(self, pool: Pool, expected_id: str = "") -> tuple[str, bool]:
        """Stores a pool of candidate prompts; returns ``(id, already_present)``."""
        if expected_id and expected_id != pool.id:
            raise InvalidArgumentError(
                f"pool content hashes to {pool.id} but the client expected {expected_id}; "
                "the upload was corrupted or chunks arrived out of order"
            )
        added = self.storage.put_pool(pool)
        return pool.id, not added

    # --- studies ---------------------------------------------------------------------
    def create_study(
        self, name: str, spec: StudySpec, request_id: str = "", validate_only: bool = False
    ) -> tuple[Study, bool]:
        """Get-or-create. Returns ``(study, created)``.

        An existing study of that name is returned when its spec equals ``spec`` or the
        ``request_id`` matches the one that created it; otherwise AlreadyExistsError naming
        the differing fields. With ``validate_only`` nothing is stored: the checks run and
        the study that would be created (or the existing one) is returned; a hard space
        whose vocabulary is not uploaded yet is then checked without it.
        """
        check_study_name(name)
        with self._lock(name):
            try:
                existing: Study | None = self.studies.get(name).study
            except NotFoundError:
                existing = None
            unknown_vocab = (
                validate_only and isinstance(spec.space, HardPromptSpace)
                and not self.storage.has_vocabulary(spec.space.vocabulary_id)
            )
            if existing is not None:
                if existing.spec == spec or (request_id and request_id == existing.request_id):
                    return existing, False
                differences = spec_differences(existing.spec, spec)
                if unknown_vocab:
                    differences = [d for d in differences
                                   if d.split(":", 1)[0] not in VOCABULARY_FIELDS]
                if not differences:
                    return existing, False
                budget_only = paths(differences) <= {"max_trials", "max_active_trials"}
                raise AlreadyExistsError(
                    f"study {name!r} already exists with a different spec: "
                    f"{'; '.join(differences)}. "
                    + ("Change its budget with UpdateStudy (promptbo study update "
                       f"{name} --max-trials N)" if budget_only else
                       "Choose another name, or delete it first (promptbo study delete)")
                )
            rules.check_lease_seconds(spec, self.limits)
            check_spec(spec, self.limits)
            transfer_sources.check_sources(self.storage, name, spec, not unknown_vocab,
                                          self.studies.pool)
            runtime: StudyRuntime | None
            if unknown_vocab:
                from promptbo.server.optim import strategy_names

                if (spec.strategy or "gp") not in strategy_names():
                    raise InvalidArgumentError(
                        f"unknown strategy {spec.strategy!r}; choose one of "
                        f"{', '.join(sorted(strategy_names()))}"
                    )
                runtime = None
            else:
                runtime = self.studies.new_runtime(spec)
            study = Study(name=name, spec=spec, create_time=self.clock(), request_id=request_id)
            if validate_only:
                return study, False
            try:
                study = self.storage.create_study(study)
            except AlreadyExistsError:
                if not self.storage.shared:
                    raise
                # Another replica created it meanwhile: answer as for an existing study.
                return self.create_study(name, spec, request_id, validate_only)
            live = self.studies.add(study, runtime)
            self.studies.schedule_refill(name, live)
            return study, True

    def update_study(
        self, name: str, max_trials: int | None = None, max_active_trials: int | None = None,
        labels: dict[str, str] | None = None,
    ) -> Study:
        """Changes the study's budget, cap and/or labels (None: unchanged; ``labels``
        replaces them all); returns the study.

        ``max_trials`` must be 0 (no limit) or at least the completed plus active trials;
        raising it past the completed count makes a COMPLETED study ACTIVE again.
        Across replicas the write is conditional on the study as this replica knows it, so
        a concurrent change elsewhere (another update, a result) is never overwritten: the
        call catches up and decides again.
        """
        return self._until_fresh(name, lambda: self._update_study_once(
            name, max_trials, max_active_trials, labels))

    def _update_study_once(
        self, name: str, max_trials: int | None, max_active_trials: int | None,
        labels: dict[str, str] | None,
    ) -> Study:
        with self._lock(name):
            live = self.studies.get(name, sync=False)
            study = live.study
            completed = live.counts[TrialState.COMPLETED]
            if max_trials is not None:
                rules.check_max_trials(
                    name, max_trials, completed + live.counts[TrialState.ACTIVE]
                )
            spec = dataclasses.replace(
                study.spec,
                max_trials=study.spec.max_trials if max_trials is None else max_trials,
                max_active_trials=(study.spec.max_active_trials if max_active_trials is None
                                   else max_active_trials),
            )
            if labels is not None:
                spec = dataclasses.replace(spec, labels=dict(labels))
            done = rules.budget_used(spec, completed, examples_exhausted=False) != ""
            study = study.evolve(
                spec=spec, state=StudyState.COMPLETED if done else StudyState.ACTIVE
            )
            self.storage.update_study(study, expected=self._expected(live))
            live.study = study
            if live.runtime is not None:
                live.runtime.spec = spec
            if not done:
                self.studies.schedule_refill(name, live)
            return study

    def get_study(self, name: str) -> Study:
        with self._lock(name):
            return self.studies.get(name).study

    def describe(self, name: str) -> tuple[Study, dict[TrialState, int], Trial | None]:
        """The study, its trial counts per state, and its best trial (or None)."""
        with self._lock(name):
            live = self.studies.get(name)
            return live.study, dict(live.counts), live.best

    def list_studies(self, page_size: int = 0, page_token: str = "") -> tuple[list[Study], str]:
        """One page of studies by name, and the token of the next page ("" at the end).

        A page holds at most ``page_size`` studies (0: 100) and never more than fits in
        one response: a page ends early once its specs reach the message limit.
        """
        size = rules.page_size(page_size)
        studies = sorted(
            (s for s in self.storage.list_studies() if s.name > page_token),
            key=lambda s: s.name,
        )
        page: list[Study] = []
        budget = self.limits.response_budget // 2
        for study in studies:
            cost = rules.study_bytes(study)
            if len(page) >= size or (page and cost > budget):
                return page, page[-1].name
            page.append(study)
            budget -= cost
        return page, ""

    def delete_study(self, name: str) -> None:
        """Deletes the study and its trials; its watchers get None."""
        with self._lock(name):
            self.storage.delete_study(name)
            self.studies.forget(name)
        self.events.close(name)

    def examples_scored(self, name: str) -> int:
        """Examples scored by the study's completed trials (pool studies; else 0)."""
        with self._lock(name):
            return self.studies.get(name).ledger.charged

    def study_counts(self, name: str) -> dict[TrialState, int]:
        """The study's trial counts per state (the reference trial excluded)."""
        return self.describe(name)[1]

    def transfer_status(self, name: str) -> list[transfer_sources.SourceStatus]:
        """The study's transfer sources with their current weights (see ``study show``)."""
        with self._lock(name):
            live = self.studies.get(name)
            spec = live.study.spec
            if not spec.transfer_from:
                return []
            rt = live.runtime
            weights, counts = rt.transfer_weights() if rt is not None else (None, {})
            notes = dict(rt.source_notes) if rt is not None else {}
            return transfer_sources.describe(self.storage, spec, counts, weights, notes)

    # --- trials ----------------------------------------------------------------------
    def suggest_trials(
        self, name: str, count: int, client_id: str = "",
        cancelled: Callable[[], bool] | None = None, principal: str = "",
    ) -> tuple[list[Trial], bool]:
        """Hands out up to ``count`` trials to ``client_id``; returns ``(trials, done)``.

        Order: the client's own active trials, then trials whose lease expired, then new
        suggestions from the engine (:func:`~promptbo.server.rules.plan_suggestions`).
        ``done`` is True when the budget is used up. At most as many trials as fit in one
        response are handed out. ``cancelled`` (polled while the engine computes)
        returning True stops the computation with CancelledError, storing nothing and
        freeing the study lock. Trials are bound to ``principal`` (see
        :meth:`complete_trials`); a client's own trials are those of its client id and
        principal.
        """
        if not 1 <= count <= MAX_SUGGEST_COUNT:
            raise InvalidArgumentError(f"count must be in [1, {MAX_SUGGEST_COUNT}], got {count}")
        check_text("client_id", client_id)
        return self._until_fresh(name, lambda: self._suggest_once(
            name, count, client_id, cancelled, principal))

    def _suggest_once(
        self, name: str, count: int, client_id: str,
        cancelled: Callable[[], bool] | None, principal: str,
    ) -> tuple[list[Trial], bool]:
        with self._lock(name):
            live = self.studies.get(name, sync=self._retrying())
            # A server killed between a study's last result and marking it COMPLETED left
            # it ACTIVE with its budget used: mark it now (an in-memory check otherwise).
            self._maybe_finish(live)
            spec = live.study.spec
            now = self.clock()
            active = sorted(live.active.values(), key=lambda t: t.id)
            plan = rules.plan_suggestions(
                name, spec, self.limits, active, live.counts[TrialState.COMPLETED],
                live.study.state is StudyState.COMPLETED,
                # Never store more trials than one response can carry.
                min(count, max_trials_per_response(spec, self.limits)),
                client_id, principal, now, live.ledger.remaining,
            )
            if plan.done:
                self._confirm(name)
                return [], True
            if not plan.retry:
                telemetry.lease_expired(name, plan.reissued)
            trials = self._lease(live, plan.lease, client_id, now, principal)
            if plan.retry:
                return trials, False  # a repeated call: nothing new to announce
            if plan.new:
                trials += self._new_trials(live, plan.new, active, client_id, now, cancelled,
                                           principal)
            if not trials:
                self._confirm(name)
        for t in trials:
            self._publish(name, "suggested", t)
        return trials, False

    def _lease(
        self, live: LiveStudy, trials: list[Trial], client_id: str, now: float, principal: str
    ) -> list[Trial]:
        lease_seconds = live.study.spec.lease_seconds
        leased = [rules.leased(t, client_id, principal, now, lease_seconds) for t in trials]
        if leased:
            since = self._since(live)
            self.storage.update_trials(leased, expected=trials if self.storage.shared else None,
                                       since=since)
            self._advanced(live, since)
            live.active.update((t.id, t) for t in leased)
        return leased

    def _new_trials(
        self, live: LiveStudy, n: int, active: list[Trial], client_id: str, now: float,
        cancelled: Callable[[], bool] | None = None, principal: str = "",
    ) -> list[Trial]:
        before = self._since(live)
        rt = self.studies.runtime(live)
        if before is not None and self._since(live) != before:
            raise _Moved()  # building the engine caught the study up: decide again
        pending = [t.prompt for t in active]
        prompts = rt.take_ready(n, pending)
        if len(prompts) < n:
            prompts += rt.suggest(n - len(prompts), pending + prompts, cancelled)
        if rt.issued is not None:
            rt.issued.update(p.key() for p in prompts)
        drafts = []
        ledger = live.ledger
        for p, moved in zip(prompts, rt.transferred(prompts), strict=True):
            examples: tuple[int, ...] = ()
            if ledger.enabled:
                examples = ledger.allot(p.key(), rt.requested.pop(p.key(), None))
                if not examples:
                    break  # the scored-example budget is spoken for
            draft = Trial(
                study=live.study.name, id=0, state=TrialState.ACTIVE, prompt=p,
                client_id=client_id, lease_deadline=now + live.study.spec.lease_seconds,
                create_time=now, examples=examples, principal=principal,
                source="transfer" if moved else "suggested",
            )
            if ledger.enabled:
                ledger.created_trial(p.key(), draft)
            drafts.append(draft)
        guard = None
        if self.storage.shared:  # counted again in the database, in the insert's transaction
            spec = live.study.spec
            guard = HandoutGuard(spec.max_trials, spec.max_active_trials, now)
        stored: list[Trial] = []
        if drafts:
            since = self._since(live)
            stored = self.storage.add_trials(live.study.name, drafts, guard,
                                             since=since)
            self._advanced(live, since)
        self._wrote(live, stored)
        live.active.update((t.id, t) for t in stored)
        live.counts[TrialState.ACTIVE] += len(stored)
        self.studies.schedule_refill(live.study.name, live)
        return stored

    def complete_trial(
        self,
        name: str,
        trial_id: int,
        value: float,
        metrics: dict[str, float] | None = None,
        failure_reason: str = "",
        client_id: str = "",
        principal: str = "",
        admin: bool = False,
    ) -> Trial:
        """Records a trial's result (or its failure); see :mod:`~promptbo.server.rules`."""
        result = TrialResult(trial_id, value, dict(metrics or {}), failure_reason)
        return self.complete_trials(name, [result], client_id, principal, admin)[0]

    def complete_trials(
        self, name: str, results: Sequence[TrialResult], client_id: str = "",
        principal: str = "", admin: bool = False,
    ) -> list[Trial]:
        """Records several results at once: all of them, or on any error none.

        Every result is checked (finite numbers, the objective present, the trial known,
        not held by another worker, not completed before with a different result) before
        anything is written; the accepted ones are then written in one storage call.
        Returns the trials in the order of ``results``. With principals configured, a
        trial taken by one principal is completed only by it (or by an ``admin``):
        PermissionDeniedError otherwise.
        """
        rules.check_results(results)
        check_text("client_id", client_id)
        return self._until_fresh(name, lambda: self._complete_once(
            name, results, client_id, principal, admin))

    def _complete_once(
        self, name: str, results: Sequence[TrialResult], client_id: str, principal: str,
        admin: bool,
    ) -> list[Trial]:
        many = len(results) > 1
        out: list[Trial] = []
        changed: list[tuple[Trial, float | None]] = []
        held: list[Trial] = []
        with self._lock(name):
            live = self.studies.get(name, sync=self._retrying())
            study = live.study
            now = self.clock()
            for i, r in enumerate(results):
                trial = live.active.get(r.trial_id) or self._get_trial(name, r.trial_id)
                rules.check_owner(trial, principal, admin)
                if trial.state is not TrialState.ACTIVE:
                    out.append(rules.repeat_completion(trial, r))
                    continue
                rules.check_may_complete(trial, client_id, admin, now)
                done, obj = rules.finished(trial, r, study.spec, now,
                                           rules.result_label(i, r, many))
                changed.append((done, obj))
                held.append(trial)
                out.append(done)
            if changed:
                since = self._since(live)
                self.storage.update_trials([done for done, _ in changed],
                                           expected=held if self.storage.shared else None,
                                           since=since)
                self._advanced(live, since)
            for done, _ in changed:
                live.finish(done)
            observed = [(done, obj) for done, obj in changed if obj is not None]
            if observed:
                if live.runtime is not None:
                    for done, _ in observed:  # hand-out to result: sets the prefetch depth
                        live.runtime.pace.evaluated(now - done.create_time)
                    live.runtime.queue_observation(
                        [t.prompt for t, _ in observed], [o for _, o in observed],
                        [rules.noise(study.spec, t) for t, _ in observed],
                        [t.examples_scored for t, _ in observed],
                    )
                study = self._maybe_finish(live)
                self.studies.schedule_refill(name, live)
        for done, _ in changed:
            self._publish(name, done.state.value, done)
        if changed and study.state is StudyState.COMPLETED:
            self._publish(name, "done", None)
        return out

    def heartbeat_trial(
        self, name: str, trial_id: int, client_id: str = "", principal: str = "",
        admin: bool = False,
    ) -> Trial:
        """Extends the lease of an active trial for the client holding it. A client that
        does not hold the trial gets FAILED_PRECONDITION even after the lease lapsed (only
        SuggestTrials hands a trial to another client); another principal's trial gets
        PermissionDeniedError."""
        check_text("client_id", client_id)
        return self._until_fresh(name, lambda: self._heartbeat_once(
            name, trial_id, client_id, principal, admin))

    def _heartbeat_once(
        self, name: str, trial_id: int, client_id: str, principal: str, admin: bool
    ) -> Trial:
        with self._lock(name):
            live = self.studies.get(name, sync=self._retrying())
            trial = live.active.get(trial_id) or self._get_trial(name, trial_id)
            rules.check_owner(trial, principal, admin)
            rules.check_heartbeat(trial, client_id)
            now = self.clock()
            owner = trial.principal if admin else principal or trial.principal
            return self._lease(live, [trial], client_id or trial.client_id, now, owner)[0]

    def list_trials(
        self, name: str, state: TrialState | None = None, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[Trial], str]:
        """One page of trials by increasing id, and the token of the next page ("" at the end)."""
        size = rules.page_size(page_size)
        after = rules.trial_page_after(page_token)
        size = min(size, max_trials_per_response(self.get_study(name).spec, self.limits))
        trials = self.storage.list_trials(name, state, after_id=after, limit=size + 1)
        more = len(trials) > size
        trials = trials[:size]
        return trials, (str(trials[-1].id) if more else "")

    def best_trial(self, name: str) -> Trial | None:
        return self.describe(name)[2]

    def add_trials(
        self, name: str, known: Sequence[KnownTrial], reference: bool = False
    ) -> list[Trial]:
        """Stores prompts with known values as completed trials and teaches the engine;
        with ``reference`` records the unprompted model's score instead (one trial, empty
        prompt, source ``reference``; see :meth:`_add_reference`)."""
        if not known:
            raise InvalidArgumentError("AddTrials needs at least one trial")
        if len(known) > self.limits.max_add_trials:
            raise InvalidArgumentError(
                f"AddTrials takes at most {self.limits.max_add_trials} trials per request, got "
                f"{len(known)}; send them in several requests"
            )
        if reference:
            return self._until_fresh(name, lambda: [self._add_reference(name, known)])
        return self._until_fresh(name, lambda: self._add_once(name, known))

    def _add_once(self, name: str, known: Sequence[KnownTrial]) -> list[Trial]:
        with self._lock(name):
            live = self.studies.get(name, sync=self._retrying())
            spec = live.study.spec
            rt = self.studies.runtime(live)
            now = self.clock()
            drafts: list[Trial] = []
            objectives: list[float] = []
            for i, k in enumerate(known):
                rules.check_known(i, k)
                prompt = _normalize_prompt(rt, spec, k.prompt, f"trial {i}")
                objectives.append(rules.objective(spec, k.value, k.metrics))
                drafts.append(
                    Trial(
                        study=name, id=0, state=TrialState.COMPLETED, prompt=prompt,
                        value=float(k.value), metrics=dict(k.metrics), create_time=now,
                        complete_time=now, source="added", value_stderr=k.value_stderr,
                        examples_scored=k.examples_scored,
                    )
                )
            since = self._since(live)
            stored = self.storage.add_trials(name, drafts, since=since)
            self._advanced(live, since)
            self._wrote(live, stored)
            live.counts[TrialState.COMPLETED] += len(stored)
            for t in stored:
                live.consider_best(t)
                live.ledger.added(t)
            rt.queue_observation(
                [t.prompt for t in stored], objectives,
                [rules.noise(spec, t) for t in stored], [t.examples_scored for t in stored],
                invalidate=True,  # no suggestion computed before is handed out after
            )
            self._maybe_finish(live)
            self.studies.schedule_refill(name, live)
        for t in stored:
            self._publish(name, "completed", t)
        return stored

    def _add_reference(self, name: str, known: Sequence[KnownTrial]) -> Trial:
        """Stores the unprompted model's score: not taught to the engine, not counted
        against the budgets, never the best trial; a study has at most one."""
        k = rules.check_reference(known)
        with self._lock(name):
            live = self.studies.get(name)
            if live.reference is not None:
                raise AlreadyExistsError(
                    f"study {name!r} already has a reference (trial {live.reference.id}); "
                    "it is recorded once"
                )
            now = self.clock()
            draft = Trial(
                study=name, id=0, state=TrialState.COMPLETED, prompt=Prompt(),
                value=float(k.value), metrics=dict(k.metrics), create_time=now,
                complete_time=now, source="reference", value_stderr=k.value_stderr,
                examples_scored=k.examples_scored,
            )
            since = self._since(live)
            live.reference = self.storage.add_trials(name, [draft],
                                                     since=since)[0]
            self._advanced(live, since)
            self._wrote(live, [live.reference])
            return live.reference

    def recommendation(self, name: str) -> tuple[Recommendation | None, Trial | None, Trial | None]:
        """``(recommendation, best observed trial, reference trial)``; the recommendation
        is None while the study has no completed trial (see :mod:`.recommend`)."""
        with self._lock(name):
            live = self.studies.get(name)
            spec, best, ref = live.study.spec, live.best, live.reference
            rt = self.studies.runtime(live)
        completed = [
            t for t in self.storage.list_trials(name, TrialState.COMPLETED)
            if t.source != "reference"
        ]
        return recommend(spec, completed, rt), best, ref

    # --- watching --------------------------------------------------------------------
    def subscribe(self, name: str, callback: Callback) -> tuple[Event, Callable[[], None]]:
        """Registers ``callback`` for the study's events; returns the study's current state
        (as a ``snapshot`` event, or ``done`` if it is complete) and the function that
        unsubscribes. ``callback`` runs on the publishing thread and must not block; it gets
        None when the study is deleted."""
        study, counts, best = self.describe(name)
        unsubscribe = self.events.subscribe(name, callback)
        if self.studies.replicas is not None:
            self._start_poller()
        kind = "done" if study.state is StudyState.COMPLETED else "snapshot"
        return Event(kind, study, None, counts, best), unsubscribe

    def watch(self, name: str, stop: threading.Event | None = None) -> Iterator[Event]:
        """Yields events of a study until it completes, is deleted, or ``stop`` is set."""
        return follow(lambda callback: self.subscribe(name, callback), stop)

    def _from_elsewhere(self, name: str, trials: list[Trial], finished: bool) -> None:
        """Publishes what a catch-up applied: other replicas' handouts and results."""
        for t in trials:
            if t.source != "reference":
                kind = "suggested" if t.state is TrialState.ACTIVE else t.state.value
                self._publish(name, kind, t)
        if finished:
            self._publish(name, "done", None)

    def _start_poller(self) -> None:
        with self._poller_guard:
            if self._poller is None and not self._closed.is_set():
                self._poller = threading.Thread(target=self._poll_watched, daemon=True,
                                                name="promptbo-watch-poller")
                self._poller.start()

    def _poll_watched(self) -> None:
        """Catches watched studies up with other replicas' writes until :meth:`close`
        (the catch-up publishes; a study deleted elsewhere ends its watches)."""
        while not self._closed.wait(WATCH_POLL_SECONDS):
            for name in self.events.names():
                try:
                    with self._lock(name):
                        self.studies.get(name)
                except NotFoundError:
                    self.events.close(name)
                except Exception:  # noqa: BLE001 - a database hiccup: try again next round
                    log.warning("catching up watched study %s failed", name, exc_info=True)

    def _publish(self, name: str, kind: str, trial: Trial | None) -> None:
        def make() -> Event | None:
            live = self.studies.peek(name)
            if live is None:
                return None
            return Event(kind, live.study, trial, dict(live.counts), live.best)

        self.events.publish(name, make)

    # --- serving without a thread hand-off --------------------------------------------
    def quick(self, name: str, suggest_count: int = 0) -> AbstractContextManager[bool]:
        """Holds the study's lock for a ``with`` block when a trial call made there cannot
        block for long, and yields whether it does (see :meth:`StudyCache.quick`). The
        call made inside takes the lock again (it is re-entrant); on False it belongs on
        a worker thread."""
        return self.studies.quick(name, suggest_count)

    # --- helpers ---------------------------------------------------------------------
    def _lock(self, name: str) -> AbstractContextManager[None]:
        return self.studies.lock(name)

    def _until_fresh(self, name: str, call: Callable[[], T]) -> T:
        """``call()``, again whenever it found the study written by another replica: its
        conditional write raised StaleWriteError (the study is caught up, and recounted
        from all of its trials from the second time on or when it allots scored examples),
        or it was about to answer without writing, with an error or not, and a change
        read showed the study had moved. StaleWriteError after :data:`STALE_RETRIES`
        attempts."""
        replicas = self.studies.replicas
        for attempt in range(STALE_RETRIES):
            last = attempt == STALE_RETRIES - 1
            self._attempt.retry = attempt > 0
            try:
                return call()
            except _Moved:
                if last:
                    raise StaleWriteError(
                        f"study {name!r} kept changing under this call; try again"
                    ) from None
            except StaleWriteError:
                if last or replicas is None:
                    raise
                log.debug("study %s changed under a write; catching up", name)
                with self._lock(name):
                    live = self.studies.get(name)
                    if attempt > 0 or live.ledger.enabled:
                        replicas.rebuild(live)
            except PromptboError:
                if replicas is None or last:
                    raise
                with self._lock(name):
                    if not self.studies.moved(name):
                        raise
            finally:
                self._attempt.retry = False
        raise AssertionError("unreachable")

    def _retrying(self) -> bool:
        """Whether this thread runs a later attempt of :meth:`_until_fresh` (which reads
        the study first and writes conditionally on its trials, not its marker)."""
        return bool(getattr(self._attempt, "retry", False))

    def _confirm(self, name: str) -> None:
        """Before answering without a write: raises _Moved if another replica wrote the
        study since this one last knew it (it is caught up then). Caller holds its lock."""
        if self.studies.moved(name):
            raise _Moved()

    def _since(self, live: LiveStudy) -> int | None:
        """The change marker a trial write of ``live`` is conditional on (None: not on
        one, as in a later attempt)."""
        replicas = self.studies.replicas
        if replicas is None or self._retrying():
            return None
        return replicas.since(live)

    def _expected(self, live: LiveStudy) -> Study | None:
        """The study row a write of ``live``'s study is conditional on (shared storage)."""
        return live.study if self.storage.shared else None

    def _advanced(self, live: LiveStudy, since: int | None) -> None:
        """After a write conditional on ``since`` (from :meth:`_since`): the marker moved
        one step."""
        if self.studies.replicas is not None and since is not None:
            self.studies.replicas.advanced(live)

    def _wrote(self, live: LiveStudy, trials: list[Trial]) -> None:
        """Notes trials this replica added, so the change check does not count them twice."""
        if self.studies.replicas is not None:
            self.studies.replicas.wrote(live, trials)

    def _get_trial(self, name: str, trial_id: int) -> Trial:
        try:
            if not 1 <= trial_id < 2**62:
                raise NotFoundError(str(trial_id))
            return self.storage.get_trial(name, trial_id)
        except NotFoundError:
            self.storage.get_study(name)  # a missing study reports itself
            raise NotFoundError(
                f"trial {trial_id} not found in study {name!r}; trial ids come from "
                "SuggestTrials or AddTrials"
            ) from None

    def _maybe_finish(self, live: LiveStudy) -> Study:
        """Moves the study to COMPLETED once a budget is used up; returns the study."""
        study = live.study
        if study.state is StudyState.COMPLETED:
            return study
        used = rules.budget_used(
            study.spec, live.counts[TrialState.COMPLETED], live.ledger.exhausted
        )
        if not used:
            return study
        study = study.evolve(state=StudyState.COMPLETED)
        self.storage.update_study(study, expected=self._expected(live))
        live.study = study
        if used == "examples":
            log.info("study %s used its budget of %d scored examples", study.name,
                     study.spec.max_examples)
        else:
            log.info("study %s reached its budget of %d trials", study.name, study.spec.max_trials)
        return study


def _normalize_prompt(rt: StudyRuntime, spec: StudySpec, p: Prompt, where: str) -> Prompt:
    """An added prompt checked against the study's space, in its stored form."""
    space = spec.space
    if isinstance(space, SoftPromptSpace):
        if len(p.vector) != space.size:
            raise InvalidArgumentError(
                f"{where}: soft prompt has {len(p.vector)} floats, the study expects "
                f"prompt_length x embedding_dim = {space.size}"
            )
        for v in p.vector:
            rules.check_finite(f"{where}: vector entry", v)
        return Prompt(vector=tuple(float(v) for v in p.vector))
    if isinstance(space, PoolSpace):
        size = rt.pool_size
        if p.pool_index is None or not 0 <= p.pool_index < size:
            raise InvalidArgumentError(
                f"{where}: a pool prompt needs pool_index in [0, {size}), the study's "
                f"pool size; got {p.pool_index}"
            )
        return rt.decode_pool([p.pool_index])[0]
    assert isinstance(space, HardPromptSpace)
    if len(p.token_ids) != space.prompt_length:
        raise InvalidArgumentError(
            f"{where}: prompt has {len(p.token_ids)} token ids, the study expects "
            f"prompt_length={space.prompt_length}"
        )
    unknown = [tid for tid in p.token_ids if tid not in rt.row_of]
    if unknown:
        raise InvalidArgumentError(
            f"{where}: token ids {unknown[:5]} are not in the study's vocabulary"
        )
    return rt.render(p.token_ids)
