"""The study manager: the rules of studies and trials, over a storage and the engines.

:class:`StudyManager` is what the gRPC servicer calls; it speaks only domain objects and
raises only :mod:`promptbo.errors`. It owns one engine per study (rebuilt from storage
on first use, so a restarted server resumes every study) and one lock per study, so
concurrent workers of a study are serialized while different studies run in parallel.

Trial lifecycle and leases
--------------------------
``SuggestTrials`` hands a trial to a client with a lease of the study's
``lease_seconds``. A client that asks again first gets back its own trials that are
still active. ``HeartbeatTrial`` extends the lease. When a lease expires the trial stays
ACTIVE but is free: the next client that asks is handed the same prompt (its lease and
``client_id`` replace the old ones). ``CompleteTrial`` on an ACTIVE trial is accepted
from the client holding the lease, from any client once the lease has expired (nobody
holds it), and from a caller that gives no ``client_id``; a client whose lease expired
while another client picked the trial up gets FAILED_PRECONDITION. A repeat of an
identical completion is a no-op; a conflicting one is FAILED_PRECONDITION. Only the
client holding a trial extends its lease: a heartbeat from any other client is
FAILED_PRECONDITION, even once the lease lapsed.

With principals (named tokens, :mod:`promptbo.server.auth`), every trial is bound to the
principal that took it: another principal's completion or heartbeat is
PERMISSION_DENIED whatever its ``client_id`` (admins excepted).

Budget: with ``max_trials`` set, the manager never has more than ``max_trials``
completed plus active trials, so the study ends with exactly ``max_trials`` completed
ones (failed trials do not count) and then moves to COMPLETED. A study with a labeled
pool also has a budget in scored examples (``max_examples``); which examples each trial
is scored on, and that budget, are kept by :class:`~promptbo.server.fidelity.ExampleLedger`.
The unprompted model's reference trial (source ``reference``) counts against neither.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from promptbo.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
)
from promptbo.server import telemetry, transfer_sources
from promptbo.server.domain import (
    Goal,
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
from promptbo.server.fidelity import ExampleLedger
from promptbo.server.limits import (
    Limits,
    active_trial_cap,
    check_spec,
    max_trials_per_response,
    trial_bytes,
)
from promptbo.server.locks import HeldLock, LockTable
from promptbo.server.recommend import Recommendation, recommend
from promptbo.server.runtime import StudyRuntime
from promptbo.server.specdiff import VOCABULARY_FIELDS, paths, spec_differences
from promptbo.server.storage.base import Storage
from promptbo.server.storage.memory import check_text

log = logging.getLogger(__name__)

MAX_SUGGEST_COUNT = 1000
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True)
class Event:
    """A study progress event for WatchStudy: ``kind`` is suggested, completed, failed or
    done; ``trial`` is the trial concerned (None for done); ``counts`` and ``best`` are
    the study's trial counts per state and best trial right after the event."""

    kind: str
    study: Study
    trial: Trial | None = None
    counts: dict[TrialState, int] | None = None
    best: Trial | None = None


@dataclass(frozen=True)
class TrialResult:
    """The outcome of one trial for :meth:`StudyManager.complete_trials`: ``value`` and
    ``metrics``, or with a non-empty ``failure_reason`` a failure (``value`` ignored)."""

    trial_id: int
    value: float
    metrics: dict[str, float]
    failure_reason: str = ""
    value_stderr: float | None = None
    examples_scored: int = 0


@dataclass(frozen=True)
class KnownTrial:
    """A prompt with a known value, for AddTrials (warm starts)."""

    prompt: Prompt
    value: float
    metrics: dict[str, float]
    value_stderr: float | None = None
    examples_scored: int = 0


class _Live:
    """What the manager keeps in memory about a study it has touched: the study, its
    active trials, counts per state, the best trial, and (once needed) its runtime.
    The manager is its storage's only writer, so this cache stays exact; every change is
    written to storage first and mirrored here only if the write succeeded."""

    def __init__(self, study: Study, trials: list[Trial]) -> None:
        self.study = study
        self.active = {t.id: t for t in trials if t.state is TrialState.ACTIVE}
        self.counts = dict.fromkeys(TrialState, 0)
        self.best: Trial | None = None
        self.best_obj = -math.inf
        self.runtime: StudyRuntime | None = None
        self.ledger = ExampleLedger(study.spec, trials)
        self.reference: Trial | None = None
        for t in trials:
            if t.source == "reference":
                self.reference = t
                continue
            self.counts[t.state] += 1
            if t.state is TrialState.COMPLETED:
                self.consider_best(t)

    def consider_best(self, t: Trial) -> None:
        obj = _objective(self.study.spec, t.value, t.metrics, strict=False)
        if obj is not None and obj > self.best_obj and t.source != "reference":
            self.best, self.best_obj = t, obj

    def finish(self, t: Trial) -> None:
        """Mirrors an ACTIVE trial's completion or failure."""
        before = self.active.pop(t.id, None)
        if before is not None:
            self.ledger.finished(before, t)
        self.counts[TrialState.ACTIVE] -= 1
        self.counts[t.state] += 1
        if t.state is TrialState.COMPLETED:
            self.consider_best(t)


class StudyManager:
    """Implements every operation of the service on top of ``storage``.

    Args:
        storage: where studies, trials and vocabularies live. The manager must be its
            only writer (one server process per database).
        clock: returns the time in Unix seconds (tests pass a fake one).
        engine_factory: builds an engine (defaults to
            :func:`promptbo.server.optim.make_engine`).
        prefetch: suggestions to keep ready per study, computed in a background thread
            and refreshed when results arrive (0: compute on demand, fully reproducible).
        limits: the server's resource bounds (see :mod:`promptbo.server.limits`).
    """

    def __init__(
        self,
        storage: Storage,
        clock: Callable[[], float] = time.time,
        engine_factory: Callable | None = None,
        prefetch: int = 0,
        limits: Limits | None = None,
    ) -> None:
        self.storage = storage
        self.limits = limits or Limits()
        self.clock = clock
        if engine_factory is None:
            from promptbo.server.optim import make_engine

            engine_factory = make_engine
        self._make_engine = engine_factory
        self.prefetch = prefetch
        self._executor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") if prefetch else None
        )
        self._locks = LockTable()
        self._live: dict[str, _Live] = {}
        self._vocab_cache: dict[str, Vocabulary] = {}
        self._pool_cache: dict[str, Pool] = {}
        # Per study: callbacks taking each Event (None: the study was deleted).
        self._watchers: dict[str, list[Callable[[Event | None], None]]] = {}
        self._watchers_guard = threading.Lock()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    # --- vocabularies ------------------------------------------------------------------
    def upload_vocabulary(self, vocab: Vocabulary, expected_id: str = "") -> tuple[str, bool]:
        """Stores a vocabulary; returns ``(id, already_present)``."""
        if expected_id and expected_id != vocab.id:
            raise InvalidArgumentError(
                f"vocabulary content hashes to {vocab.id} but the client expected "
                f"{expected_id}; the upload was corrupted or chunks arrived out of order"
            )
        added = self.storage.put_vocabulary(vocab)
        return vocab.id, not added

    def _vocabulary(self, vocab_id: str) -> Vocabulary:
        vocab = self._vocab_cache.get(vocab_id)
        if vocab is None:
            try:
                vocab = self.storage.get_vocabulary(vocab_id)
            except NotFoundError:
                raise NotFoundError(
                    f"vocabulary {vocab_id!r} not found; upload it with UploadVocabulary "
                    "(client.upload_vocabulary) and use the id it returns"
                ) from None
            if not vocab.embeddings.flags.writeable:
                # One owned copy for every study of this vocabulary (an engine would
                # otherwise copy a read-only buffer for itself).
                vocab = Vocabulary(vocab.tokens, vocab.token_ids, vocab.embeddings.copy())
            self._vocab_cache[vocab_id] = vocab
        return vocab

    # --- candidate pools ---------------------------------------------------------------
    def upload_pool(self, pool: Pool, expected_id: str = "") -> tuple[str, bool]:
        """Stores a pool of candidate prompts; returns ``(id, already_present)``."""
        if expected_id and expected_id != pool.id:
            raise InvalidArgumentError(
                f"pool content hashes to {pool.id} but the client expected {expected_id}; "
                "the upload was corrupted or chunks arrived out of order"
            )
        added = self.storage.put_pool(pool)
        return pool.id, not added

    def _pool(self, pool_id: str) -> Pool:
        pool = self._pool_cache.get(pool_id)
        if pool is None:
            pool = self._pool_cache[pool_id] = self.storage.get_pool(pool_id)
        return pool

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
                existing = self._get_live(name).study
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
            if spec.lease_seconds < self.limits.min_lease_seconds:
                raise InvalidArgumentError(
                    f"lease_seconds must be at least {self.limits.min_lease_seconds}, got "
                    f"{spec.lease_seconds}"
                )
            check_spec(spec, self.limits)
            transfer_sources.check_sources(self.storage, name, spec, not unknown_vocab)
            if unknown_vocab:
                from promptbo.server.optim import strategy_names

                if (spec.strategy or "gp") not in strategy_names():
                    raise InvalidArgumentError(
                        f"unknown strategy {spec.strategy!r}; choose one of "
                        f"{', '.join(sorted(strategy_names()))}"
                    )
                runtime = None
            else:
                vocab = self._check_space(spec)
                # Building the runtime validates the strategy and its options.
                runtime = StudyRuntime(spec, vocab, self._make_engine, *self._sources(spec))
            study = Study(name=name, spec=spec, create_time=self.clock(), request_id=request_id)
            if validate_only:
                return study, False
            study = self.storage.create_study(study)
            live = self._live[name] = _Live(study, [])
            live.runtime = runtime
            self._schedule_refill(name, live)
            return study, True

    def update_study(
        self, name: str, max_trials: int | None = None, max_active_trials: int | None = None,
        labels: dict[str, str] | None = None,
    ) -> Study:
        """Changes the study's budget, cap and/or labels (None: unchanged; ``labels``
        replaces them all); returns the study.

        ``max_trials`` must be 0 (no limit) or at least the completed plus active trials;
        raising it past the completed count makes a COMPLETED study ACTIVE again.
        """
        with self._lock(name):
            live = self._get_live(name)
            study = live.study
            spec = study.spec
            if max_trials is not None:
                held = live.counts[TrialState.COMPLETED] + live.counts[TrialState.ACTIVE]
                if max_trials and max_trials < held:
                    raise InvalidArgumentError(
                        f"max_trials={max_trials} is below the {held} trials study {name!r} "
                        "already has completed or active; give at least that, or 0 for no limit"
                    )
                spec = dataclasses.replace(spec, max_trials=max_trials)
            if max_active_trials is not None:
                spec = dataclasses.replace(spec, max_active_trials=max_active_trials)
            if labels is not None:
                spec = dataclasses.replace(spec, labels=dict(labels))
            done = bool(spec.max_trials) and live.counts[TrialState.COMPLETED] >= spec.max_trials
            study = study.evolve(
                spec=spec, state=StudyState.COMPLETED if done else StudyState.ACTIVE
            )
            self.storage.update_study(study)
            live.study = study
            if live.runtime is not None:
                live.runtime.spec = spec
            if not done:
                self._schedule_refill(name, live)
            return study

    def get_study(self, name: str) -> Study:
        with self._lock(name):
            return self._get_live(name).study

    def describe(self, name: str) -> tuple[Study, dict[TrialState, int], Trial | None]:
        """The study, its trial counts per state, and its best trial (or None)."""
        with self._lock(name):
            live = self._get_live(name)
            return live.study, dict(live.counts), live.best

    def list_studies(self, page_size: int = 0, page_token: str = "") -> tuple[list[Study], str]:
        """One page of studies by name, and the token of the next page ("" at the end).

        A page holds at most ``page_size`` studies (0: 100) and never more than fits in
        one response: a page ends early once its specs reach the message limit.
        """
        if page_size < 0 or page_size > MAX_PAGE_SIZE:
            raise InvalidArgumentError(f"page_size must be in [0, {MAX_PAGE_SIZE}]")
        size = page_size or 100
        studies = sorted(
            (s for s in self.storage.list_studies() if s.name > page_token),
            key=lambda s: s.name,
        )
        page: list[Study] = []
        budget = self.limits.response_budget // 2
        for study in studies:
            cost = _study_bytes(study)
            if len(page) >= size or (page and cost > budget):
                return page, page[-1].name
            page.append(study)
            budget -= cost
        return page, ""

    def delete_study(self, name: str) -> None:
        with self._lock(name):
            self.storage.delete_study(name)
            self._live.pop(name, None)
        with self._watchers_guard:
            callbacks = self._watchers.pop(name, [])
        for callback in callbacks:
            callback(None)

    def examples_scored(self, name: str) -> int:
        """Examples scored by the study's completed trials (pool studies; else 0)."""
        with self._lock(name):
            return self._get_live(name).ledger.charged

    def study_counts(self, name: str) -> dict[TrialState, int]:
        return self.describe(name)[1]

    # --- trials ----------------------------------------------------------------------
    def suggest_trials(
        self, name: str, count: int, client_id: str = "",
        cancelled: Callable[[], bool] | None = None, principal: str = "",
    ) -> tuple[list[Trial], bool]:
        """Hands out up to ``count`` trials to ``client_id``; returns ``(trials, done)``.

        Order: the client's own active trials, then trials whose lease expired, then new
        suggestions from the engine. ``done`` is True when the budget is used up. At most
        as many trials as fit in one response are handed out. ``cancelled`` (polled while
        the engine computes) returning True stops the computation with CancelledError,
        storing nothing and freeing the study lock. Trials are bound to ``principal``
        (see :meth:`complete_trials`); a client's own trials are those of its client id
        and principal.
        """
        if not 1 <= count <= MAX_SUGGEST_COUNT:
            raise InvalidArgumentError(f"count must be in [1, {MAX_SUGGEST_COUNT}], got {count}")
        check_text("client_id", client_id)
        with self._lock(name):
            live = self._get_live(name)
            spec = live.study.spec
            # Never store more trials than one response can carry.
            count = min(count, max_trials_per_response(spec, self.limits))
            now = self.clock()
            active = sorted(live.active.values(), key=lambda t: t.id)
            own: list[Trial] = []
            if client_id:
                own = [
                    t for t in active
                    if t.client_id == client_id and t.principal == principal
                    and t.lease_deadline >= now
                ]
                own = own[:count]
            if len(own) == count:
                return self._lease(live, own, client_id, now, principal), False
            if live.study.state is StudyState.COMPLETED:
                return [], True
            expired = [t for t in active if t.lease_deadline < now]
            held = len(active) - len(expired)
            cap, why = spec.max_active_trials, "max_active_trials"
            memory_cap = active_trial_cap(spec, self.limits)
            if memory_cap and (not cap or memory_cap < cap):
                cap, why = memory_cap, "the server's memory limit for active trials"
            if cap and held >= cap and not own:
                raise ResourceExhaustedError(
                    f"study {name!r} has {held} active trials, its cap ({why}) is {cap}; "
                    "complete some first or raise the cap"
                )
            want = count - len(own)
            if cap:
                want = min(want, cap - held + len(own))
            reissued = expired[: max(want, 0)]
            telemetry.lease_expired(name, len(reissued))
            trials = self._lease(live, own + reissued, client_id, now, principal)
            want -= len(reissued)
            if want > 0 and spec.max_trials:
                want = min(want, spec.max_trials - live.counts[TrialState.COMPLETED] - len(active))
            if want > 0 and live.ledger.remaining == 0:
                want = 0
            if want > 0:
                trials += self._new_trials(
                    live, want, active, client_id, now, cancelled, principal
                )
        for t in trials:
            self._publish(name, "suggested", t)
        return trials, False

    def _lease(
        self, live: _Live, trials: list[Trial], client_id: str, now: float, principal: str
    ) -> list[Trial]:
        leased = [
            t.evolve(client_id=client_id, lease_deadline=now + live.study.spec.lease_seconds,
                     principal=principal)
            for t in trials
        ]
        if leased:
            self.storage.update_trials(leased)
            live.active.update((t.id, t) for t in leased)
        return leased

    def _new_trials(
        self, live: _Live, n: int, active: list[Trial], client_id: str, now: float,
        cancelled: Callable[[], bool] | None = None, principal: str = "",
    ) -> list[Trial]:
        rt = self._runtime(live)
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
        stored = self.storage.add_trials(live.study.name, drafts) if drafts else []
        live.active.update((t.id, t) for t in stored)
        live.counts[TrialState.ACTIVE] += len(stored)
        self._schedule_refill(live.study.name, live)
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
        """Records a trial's result (or its failure); see the module docstring for rules."""
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
        if not 1 <= len(results) <= MAX_SUGGEST_COUNT:
            raise InvalidArgumentError(
                f"send between 1 and {MAX_SUGGEST_COUNT} results at once, got {len(results)}"
            )
        check_text("client_id", client_id)
        many = len(results) > 1
        for i, r in enumerate(results):
            where = f"result {i} (trial {r.trial_id}): " if many else ""
            if not r.failure_reason:
                _check_finite(f"{where}value", r.value)
            for k, v in r.metrics.items():
                _check_finite(f"{where}metric {k!r}", v)
        repeated = sorted(i for i, n in Counter(r.trial_id for r in results).items() if n > 1)
        if repeated:
            raise InvalidArgumentError(
                f"trials {repeated} appear more than once in one request"
            )
        out: list[Trial | None] = [None] * len(results)
        changed: list[tuple[int, Trial, float | None]] = []
        with self._lock(name):
            live = self._get_live(name)
            study = live.study
            now = self.clock()
            for i, r in enumerate(results):
                trial = live.active.get(r.trial_id) or self._get_trial(name, r.trial_id)
                _check_owner(trial, principal, admin)
                if trial.state is not TrialState.ACTIVE:
                    out[i] = self._repeat_completion(trial, r.value, r.metrics, r.failure_reason)
                    continue
                held_by_other = (
                    client_id and not admin and trial.client_id not in ("", client_id)
                )
                if held_by_other and trial.lease_deadline >= now:
                    raise FailedPreconditionError(
                        f"trial {r.trial_id} of study {name!r} is held by another worker "
                        f"({trial.client_id!r}); your lease expired and it was handed out "
                        "again"
                    )
                if r.failure_reason:
                    done = trial.evolve(
                        state=TrialState.FAILED, failure_reason=r.failure_reason,
                        complete_time=now, value=None, metrics=dict(r.metrics),
                    )
                    objective = None
                else:
                    objective = _objective(study.spec, r.value, r.metrics)
                    scored = _check_fidelity(
                        trial, r, f"result {i} (trial {r.trial_id}): " if many else ""
                    )
                    done = trial.evolve(
                        state=TrialState.COMPLETED, value=float(r.value),
                        metrics=dict(r.metrics), complete_time=now,
                        value_stderr=None if r.value_stderr is None else float(r.value_stderr),
                        examples_scored=scored,
                    )
                changed.append((i, done, objective))
            if changed:
                self.storage.update_trials([done for _, done, _ in changed])
            observed = [(done, obj) for _, done, obj in changed if obj is not None]
            for i, done, _ in changed:
                live.finish(done)
                out[i] = done
            if observed:
                if live.runtime is not None:
                    live.runtime.queue_observation(
                        [t.prompt for t, _ in observed], [o for _, o in observed],
                        [_noise(study.spec, t) for t, _ in observed],
                        [t.examples_scored for t, _ in observed],
                    )
                study = self._maybe_finish(live)
                self._schedule_refill(name, live)
        for _, done, _ in changed:
            self._publish(name, done.state.value, done)
        if changed and study.state is StudyState.COMPLETED:
            self._publish(name, "done", None)
        return out  # type: ignore[return-value]

    def _repeat_completion(
        self, trial: Trial, value: float, metrics: dict[str, float], failure_reason: str
    ) -> Trial:
        same = (
            trial.failure_reason == failure_reason
            if failure_reason
            else (
                trial.state is TrialState.COMPLETED
                and trial.value == float(value)
                and trial.metrics == metrics
            )
        )
        if same:
            return trial
        raise FailedPreconditionError(
            f"trial {trial.id} of study {trial.study!r} is already {trial.state.value} "
            f"with a different result; a trial is completed once"
        )

    def heartbeat_trial(
        self, name: str, trial_id: int, client_id: str = "", principal: str = "",
        admin: bool = False,
    ) -> Trial:
        """Extends the lease of an active trial for the client holding it. A client that
        does not hold the trial gets FAILED_PRECONDITION even after the lease lapsed (only
        SuggestTrials hands a trial to another client); another principal's trial gets
        PermissionDeniedError."""
        check_text("client_id", client_id)
        with self._lock(name):
            live = self._get_live(name)
            trial = live.active.get(trial_id) or self._get_trial(name, trial_id)
            _check_owner(trial, principal, admin)
            if trial.state is not TrialState.ACTIVE:
                raise FailedPreconditionError(
                    f"trial {trial_id} of study {name!r} is {trial.state.value}; "
                    "only active trials have a lease"
                )
            now = self.clock()
            if client_id and trial.client_id not in ("", client_id):
                raise FailedPreconditionError(
                    f"trial {trial_id} of study {name!r} is held by another worker "
                    f"({trial.client_id!r}); only its holder extends its lease"
                )
            owner = trial.principal if admin else principal or trial.principal
            return self._lease(live, [trial], client_id or trial.client_id, now, owner)[0]

    def get_trial(self, name: str, trial_id: int) -> Trial:
        return self._get_trial(name, trial_id)

    def list_trials(
        self, name: str, state: TrialState | None = None, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[Trial], str]:
        """One page of trials by increasing id, and the token of the next page ("" at the end)."""
        if page_size < 0 or page_size > MAX_PAGE_SIZE:
            raise InvalidArgumentError(f"page_size must be in [0, {MAX_PAGE_SIZE}]")
        size = page_size or 100
        try:
            after = int(page_token) if page_token else 0
            if not 0 <= after < 2**62:
                raise ValueError
        except ValueError:
            raise InvalidArgumentError(
                f"page_token {page_token!r} is not one this server issued; pass the "
                "next_page_token of the previous response"
            ) from None
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
            return [self._add_reference(name, known)]
        with self._lock(name):
            live = self._get_live(name)
            rt = self._runtime(live)
            now = self.clock()
            drafts, objectives = [], []
            for i, k in enumerate(known):
                _check_finite(f"trial {i}: value", k.value)
                for mk, mv in k.metrics.items():
                    _check_finite(f"trial {i}: metric {mk!r}", mv)
                prompt = self._normalize_prompt(rt, live.study.spec, k.prompt, f"trial {i}")
                objective = _objective(live.study.spec, k.value, k.metrics)
                if objective is None:  # strict: only a missing value or metric gives None
                    raise InvalidArgumentError(f"trial {i} has no value to optimize")
                objectives.append(objective)
                drafts.append(
                    Trial(
                        study=name, id=0, state=TrialState.COMPLETED, prompt=prompt,
                        value=float(k.value), metrics=dict(k.metrics), create_time=now,
                        complete_time=now, source="added", value_stderr=k.value_stderr,
                        examples_scored=k.examples_scored,
                    )
                )
            stored = self.storage.add_trials(name, drafts)
            live.counts[TrialState.COMPLETED] += len(stored)
            for t in stored:
                live.consider_best(t)
                live.ledger.added(t)
            rt.queue_observation(
                [t.prompt for t in stored], objectives,
                [_noise(live.study.spec, t) for t in stored], [t.examples_scored for t in stored],
            )
            self._maybe_finish(live)
            self._schedule_refill(name, live)
        for t in stored:
            self._publish(name, "completed", t)
        return stored

    def _add_reference(self, name: str, known: Sequence[KnownTrial]) -> Trial:
        """Stores the unprompted model's score: not taught to the engine, not counted
        against the budgets, never the best trial; a study has at most one."""
        if len(known) != 1 or known[0].prompt != Prompt():
            raise InvalidArgumentError(
                "a reference is one trial with an empty prompt: the unprompted model's score"
            )
        k = known[0]
        _check_finite("reference value", k.value)
        for mk, mv in k.metrics.items():
            _check_finite(f"reference metric {mk!r}", mv)
        if k.value_stderr is not None:
            _check_finite("reference value_stderr", k.value_stderr)
        with self._lock(name):
            live = self._get_live(name)
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
            live.reference = self.storage.add_trials(name, [draft])[0]
            return live.reference

    def recommendation(self, name: str) -> tuple[Recommendation | None, Trial | None, Trial | None]:
        """``(recommendation, best observed trial, reference trial)``; the recommendation
        is None while the study has no completed trial (see :mod:`.recommend`)."""
        with self._lock(name):
            live = self._get_live(name)
            spec, best, ref = live.study.spec, live.best, live.reference
            rt = self._runtime(live)
        completed = [
            t for t in self.storage.list_trials(name, TrialState.COMPLETED)
            if t.source != "reference"
        ]
        return recommend(spec, completed, rt), best, ref

    # --- watching --------------------------------------------------------------------
    def subscribe(
        self, name: str, callback: Callable[[Event | None], None]
    ) -> tuple[Event, Callable[[], None]]:
        """Registers ``callback`` for the study's events; returns the study's current state
        (as a ``snapshot`` event, or ``done`` if it is complete) and the function that
        unsubscribes. ``callback`` runs on the publishing thread and must not block; it gets
        None when the study is deleted."""
        study, counts, best = self.describe(name)
        with self._watchers_guard:
            self._watchers.setdefault(name, []).append(callback)

        def unsubscribe() -> None:
            with self._watchers_guard:
                callbacks = self._watchers.get(name, [])
                if callback in callbacks:
                    callbacks.remove(callback)
                if not callbacks:
                    self._watchers.pop(name, None)

        kind = "done" if study.state is StudyState.COMPLETED else "snapshot"
        return Event(kind, study, None, counts, best), unsubscribe

    def watch(self, name: str, stop: threading.Event | None = None) -> Iterator[Event]:
        """Yields events of a study until it completes, is deleted, or ``stop`` is set."""
        q: queue.Queue = queue.Queue()
        first, unsubscribe = self.subscribe(name, q.put)
        try:
            if first.kind == "done":
                yield first
                return
            while stop is None or not stop.is_set():
                try:
                    item = q.get(timeout=0.5)
                except queue.Empty:
                    continue
                if item is None:
                    return
                yield item
                if item.kind == "done":
                    return
        finally:
            unsubscribe()

    def _publish(self, name: str, kind: str, trial: Trial | None) -> None:
        with self._watchers_guard:
            callbacks = list(self._watchers.get(name, ()))
        if not callbacks:
            return
        live = self._live.get(name)
        if live is None:
            return
        event = Event(kind, live.study, trial, dict(live.counts), live.best)
        for callback in callbacks:
            callback(event)

    # --- serving without a thread hand-off --------------------------------------------
    def quick_lock(self, name: str, suggest_count: int = 0) -> HeldLock | None:
        """The study's lock, acquired, when its next trial call cannot block for long.

        Quick means: the storage is local, the study's lock is free, its state and engine
        are in memory, and ``suggest_count`` new trials (0: none wanted) can come from
        prefetched suggestions or from a cheap engine (``Engine.cheap``). The
        caller makes its call (the lock is re-entrant) and then releases the lock; on None
        it should make the call on a worker thread instead.
        """
        if not self.storage.local:
            return None
        lock = self._locks.try_acquire(name)
        if lock is None:
            return None
        live = self._live.get(name)
        rt = live.runtime if live is not None else None
        quick = rt is not None and (
            suggest_count == 0
            or len(rt.ready) >= suggest_count
            or (rt.cheap and suggest_count * trial_bytes(rt.spec)
                <= self.limits.max_inline_prompt_bytes)
        )
        if not quick:
            lock.release()
            return None
        return lock

    # --- helpers ---------------------------------------------------------------------
    def _lock(self, name: str):
        """The study's lock, as a context manager (freed when nobody holds or awaits it)."""
        return self._locks.hold(name)

    def _get_live(self, name: str) -> _Live:
        """The cached state of a study, loaded on first use. Caller holds its lock."""
        live = self._live.get(name)
        if live is None:
            study = self.storage.get_study(name)
            live = self._live[name] = _Live(study, self.storage.list_trials(name))
        return live

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

    def _maybe_finish(self, live: _Live) -> Study:
        study = live.study
        if study.state is StudyState.COMPLETED:
            return study
        if live.ledger.exhausted:
            study = study.evolve(state=StudyState.COMPLETED)
            self.storage.update_study(study)
            live.study = study
            log.info("study %s used its budget of %d scored examples", study.name,
                     study.spec.max_examples)
            return study
        if not study.spec.max_trials:
            return study
        if live.counts[TrialState.COMPLETED] >= study.spec.max_trials:
            study = study.evolve(state=StudyState.COMPLETED)
            self.storage.update_study(study)
            live.study = study
            log.info("study %s reached its budget of %d trials", study.name, study.spec.max_trials)
        return study

    def _check_space(self, spec: StudySpec) -> Vocabulary | Pool | None:
        """The uploaded table the study's space searches (None for soft prompts)."""
        space = spec.space
        if isinstance(space, SoftPromptSpace):
            return None
        if isinstance(space, PoolSpace):
            return self._pool(space.pool_id)
        vocab = self._vocabulary(space.vocabulary_id)
        if space.top_n:
            if len(space.top_n_scores) != vocab.size:
                raise InvalidArgumentError(
                    f"the top_n filter has {len(space.top_n_scores)} scores but the vocabulary "
                    f"has {vocab.size} entries; give one score per entry"
                )
            if space.top_n > vocab.size:
                raise InvalidArgumentError(
                    f"top_n={space.top_n} exceeds the vocabulary size {vocab.size}"
                )
        if space.allowed and max(space.allowed) >= vocab.size:
            raise InvalidArgumentError(
                f"allowed index {max(space.allowed)} is outside the vocabulary of {vocab.size}"
            )
        return vocab

    def _runtime(self, live: _Live) -> StudyRuntime:
        """The study's runtime, its engine rebuilt from stored trials on first use."""
        if live.runtime is not None:
            return live.runtime
        study = live.study
        rt = StudyRuntime(study.spec, self._check_space(study.spec), self._make_engine,
                          *self._sources(study.spec))
        trials = self.storage.list_trials(study.name)
        # Replayed in the order the live engine saw them (completion order), not id order:
        # trust regions and CMA-ES generations depend on it.
        completed = sorted(
            (t for t in trials if t.state is TrialState.COMPLETED and t.source != "reference"),
            key=lambda t: (t.complete_time, t.id),
        )
        scored = [
            (t, _objective(study.spec, t.value, t.metrics, strict=False)) for t in completed
        ]
        pairs = [(t, o) for t, o in scored if o is not None]
        if pairs:
            rt.queue_observation(
                [t.prompt for t, _ in pairs], [o for _, o in pairs],
                [_noise(study.spec, t) for t, _ in pairs], [t.examples_scored for t, _ in pairs],
            )
        rt.engine.num_suggested = sum(1 for t in trials if t.source == "suggested")
        live.runtime = rt
        log.info("engine of study %s rebuilt from %d completed trials", study.name, len(pairs))
        return rt

    def _sources(
        self, spec: StudySpec
    ) -> tuple[list[transfer_sources.LoadedSource], dict[str, str]]:
        """The study's transfer sources read from storage, and notes on unusable ones."""
        if not spec.transfer_from:
            return [], {}
        return transfer_sources.load_sources(
            self.storage, spec, lambda s, v, m: _objective(s, v, m, strict=False)
        )

    def transfer_status(self, name: str) -> list[transfer_sources.SourceStatus]:
        """The study's transfer sources with their current weights (see ``study show``)."""
        with self._lock(name):
            live = self._get_live(name)
            spec = live.study.spec
            if not spec.transfer_from:
                return []
            rt = live.runtime
            weights, counts = rt.transfer_weights() if rt is not None else (None, {})
            notes = dict(rt.source_notes) if rt is not None else {}
            return transfer_sources.describe(self.storage, spec, counts, weights, notes)

    def _schedule_refill(self, name: str, live: _Live) -> None:
        """Starts a background refresh of the study's ready suggestions (prefetch > 0)."""
        rt = live.runtime
        if self._executor is None or rt is None or rt.refilling or rt.cheap:
            return
        if live.study.state is StudyState.COMPLETED:
            rt.ready = []
            return
        rt.refilling = True

        def snapshot() -> list[Prompt]:
            with self._lock(name):
                rt.issued = set()
                return [t.prompt for t in live.active.values()]

        def store(prompts: list[Prompt]) -> None:
            with self._lock(name):
                # Prompts handed out while the refill ran may be completed already: they
                # are neither active nor known to the refill's snapshot.
                busy = {t.prompt.key() for t in live.active.values()} | (rt.issued or set())
                rt.ready = [p for p in prompts if p.key() not in busy]
                rt.issued = None
                rt.refilling = False

        self._executor.submit(rt.refill, self.prefetch, snapshot, store)

    def _normalize_prompt(self, rt: StudyRuntime, spec: StudySpec, p: Prompt, where: str) -> Prompt:
        space = spec.space
        if isinstance(space, SoftPromptSpace):
            if len(p.vector) != space.size:
                raise InvalidArgumentError(
                    f"{where}: soft prompt has {len(p.vector)} floats, the study expects "
                    f"prompt_length x embedding_dim = {space.size}"
                )
            for v in p.vector:
                _check_finite(f"{where}: vector entry", v)
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


def _check_owner(trial: Trial, principal: str, admin: bool) -> None:
    """Refuses ``principal`` a trial another principal took (admins may)."""
    if admin or not principal or not trial.principal or trial.principal == principal:
        return
    raise PermissionDeniedError(
        f"trial {trial.id} of study {trial.study!r} was taken by another principal; only "
        "it (or an admin) may complete or heartbeat it"
    )


def _study_bytes(study: Study) -> int:
    """Estimate of a study's size in a ListStudies response."""
    space = study.spec.space
    extra = 0
    if isinstance(space, HardPromptSpace):
        extra = 9 * len(space.top_n_scores) + 5 * len(space.allowed)
    extra += sum(len(n) + 2 for n in study.spec.transfer_from)
    return 1024 + extra + sum(len(k) + len(v) for k, v in study.spec.labels.items())


def _check_fidelity(trial: Trial, r: TrialResult, where: str) -> int:
    """The examples a result averages (checked against the trial's example subset)."""
    if r.value_stderr is not None:
        _check_finite(f"{where}value_stderr", r.value_stderr)
        if r.value_stderr < 0:
            raise InvalidArgumentError(f"{where}value_stderr must be >= 0, got {r.value_stderr}")
    n = len(trial.examples)
    if n and r.examples_scored not in (0, n):
        raise InvalidArgumentError(
            f"{where}trial {trial.id} was to be scored on its {n} example_indices but the "
            f"result says examples_scored={r.examples_scored}; score exactly those examples"
        )
    return r.examples_scored or n


def _noise(spec: StudySpec, t: Trial) -> float | None:
    """The observation noise variance of a completed trial's objective, when known
    (the told standard error applies to ``value``, not to metrics)."""
    if t.value_stderr is None or spec.objective not in ("", "value"):
        return None
    return float(t.value_stderr) ** 2


def _check_finite(what: str, v: float) -> None:
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        raise InvalidArgumentError(f"{what} must be a finite number, got {v!r}")


def _objective(
    spec: StudySpec, value: float | None, metrics: dict[str, float], strict: bool = True
) -> float | None:
    """The number the engine maximizes: value or a metric, negated for minimization."""
    if spec.objective in ("", "value"):
        obj = value
    else:
        obj = metrics.get(spec.objective)
        if obj is None and strict:
            raise InvalidArgumentError(
                f"the study optimizes metric {spec.objective!r} but the result has only "
                f"{sorted(metrics) or 'no metrics'}; report it in metrics"
            )
    if obj is None:
        return None
    return -float(obj) if spec.goal is Goal.MINIMIZE else float(obj)
