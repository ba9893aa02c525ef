"""The studies a server holds in memory, their locks, engines and prefetched suggestions.

:class:`StudyCache` keeps one :class:`LiveStudy` per study it has touched: the study, its
active trials, counts per state, best trial and, once needed, its
:class:`~promptbo.server.runtime.StudyRuntime` (the engine). Everything is loaded from
storage on first use, so a restarted server resumes every study: the engine is rebuilt
by replaying the completed trials in the order the live engine saw them.

It owns the study lock. One re-entrant lock per study serializes the calls of that
study's workers while different studies run in parallel; :meth:`StudyCache.lock` holds it
for a ``with`` block, and :meth:`StudyCache.quick` holds it for a block only when the call
made there cannot block for long (the event loop's fast path). Both acquire and release
here; nothing else touches the lock. Lock order: the study lock, then the runtime's own
locks (see :mod:`~promptbo.server.runtime`).

With ``prefetch`` > 0 background threads keep that many suggestions ready per study of
an expensive engine, topped up whenever some were handed out or went stale
(:meth:`StudyCache.schedule_refill`).
Ready suggestions that new data made stale are never handed out (the rule is in
:mod:`~promptbo.server.prefetch`); a refill that went stale is dropped and started again.

All engine computations of the server, foreground and prefetch, share ``suggest_workers``
compute slots (:mod:`~promptbo.server.compute`); the prefetch threads are as many. With a
suggestion pool (:mod:`~promptbo.server.suggest_pool`) expensive engines compute in the
pool's workers instead, which bound and schedule those computations themselves.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from promptbo.errors import InvalidArgumentError, NotFoundError
from promptbo.server import compute, transfer_sources
from promptbo.server.domain import (
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
)
from promptbo.server.fidelity import ExampleLedger
from promptbo.server.limits import Limits, trial_bytes
from promptbo.server.locks import LockTable
from promptbo.server.prefetch import DataVersion, still_valid
from promptbo.server.remote_engine import RemoteEngine
from promptbo.server.replica_sync import ReplicaSync
from promptbo.server.rules import noise, stored_objective
from promptbo.server.runtime import StudyRuntime
from promptbo.server.storage.base import Storage
from promptbo.server.suggest_pool import SuggestPool

log = logging.getLogger(__name__)

#: Builds a study's engine (see :func:`promptbo.server.optim.make_engine`).
EngineFactory = Callable[..., Any]


class LiveStudy:
    """What the server keeps in memory about a study: the study, its active trials, counts
    per state, the best trial, the reference trial, the example ledger and (once needed)
    its runtime. On a shared storage it is refreshed before every decision
    (:mod:`~promptbo.server.replica_sync`); otherwise the manager is its storage's only
    writer, so this stays exact provided every change is written to storage first and
    mirrored here only if the write succeeded. Read and changed only under the study lock."""

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
        """Makes the completed trial ``t`` the best one if its objective is higher."""
        obj = stored_objective(self.study.spec, t.value, t.metrics)
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


class StudyCache:
    """The in-memory studies of one server over ``storage`` (see the module doc).

    Args:
        storage: where studies, trials and uploaded tables live.
        limits: the server's resource bounds (the fast path's inline-size limit).
        engine_factory: builds an engine (see :class:`~promptbo.server.runtime.StudyRuntime`).
        prefetch: suggestions to keep ready per study (0: none, fully reproducible).
        suggest_workers: engine computations that may run at once (0: one per available
            core; see :mod:`~promptbo.server.compute`).
        suggest_pool: computes expensive engines' suggestions in its workers (None: in
            this process's threads); the cache owns it and closes it.
    """

    def __init__(
        self, storage: Storage, limits: Limits, engine_factory: EngineFactory, prefetch: int = 0,
        suggest_workers: int = 0, suggest_pool: SuggestPool | None = None,
    ) -> None:
        self.storage = storage
        self.limits = limits
        self.prefetch = prefetch
        self._make_engine = engine_factory
        self.slots = compute.ComputeSlots(compute.suggest_workers(suggest_workers))
        self.suggest_pool = suggest_pool
        self._executor = (
            ThreadPoolExecutor(max_workers=self.slots.size, thread_name_prefix="prefetch")
            if prefetch else None
        )
        self._locks = LockTable()
        self._live: dict[str, LiveStudy] = {}
        self._vocab_cache: dict[str, Vocabulary] = {}
        self._pool_cache: dict[str, Pool] = {}
        #: Keeps studies in step with other replicas' writes (a shared storage only).
        self.replicas = ReplicaSync(storage, LiveStudy) if storage.shared else None

    def close(self) -> None:
        """Stops prefetching and the suggestion pool's workers (a running refill is
        cancelled with the pool, or finishes first without one)."""
        if self._executor is not None:
            self._executor.shutdown(wait=self.suggest_pool is None, cancel_futures=True)
        if self.suggest_pool is not None:
            self.suggest_pool.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    # --- the study lock ---------------------------------------------------------------
    def lock(self, name: str) -> AbstractContextManager[None]:
        """Holds study ``name``'s lock for a ``with`` block (re-entrant per thread)."""
        return self._locks.hold(name)

    @property
    def locks_in_use(self) -> int:
        """Studies whose lock some thread holds or waits for (none are kept otherwise)."""
        return len(self._locks)

    @contextmanager
    def quick(self, name: str, suggest_count: int = 0) -> Iterator[bool]:
        """Holds the study's lock for the ``with`` block if a trial call made there cannot
        block for long, and yields whether it does.

        Quick means: the storage is local, the study's lock is free, its state and engine
        are in memory, and ``suggest_count`` new trials (0: none wanted) can come from
        prefetched suggestions or from a cheap engine (``Engine.cheap``). On False the
        lock is not held and the call belongs on a worker thread.
        """
        held = self._locks.try_acquire(name) if self.storage.local else None
        if held is None:
            yield False
            return
        try:
            live = self._live.get(name)
            rt = live.runtime if live is not None else None
            quick = rt is not None and (
                suggest_count == 0
                or rt.ready_count() >= suggest_count
                or (rt.cheap and suggest_count * trial_bytes(rt.spec)
                    <= self.limits.max_inline_prompt_bytes)
            )
            if not quick:
                held.release()
                held = None
            yield quick
        finally:
            if held is not None:
                held.release()

    # --- studies ----------------------------------------------------------------------
    def get(self, name: str, sync: bool = True) -> LiveStudy:
        """The study's state, loaded on first use (NotFoundError if it does not exist).
        Caller holds its lock. On a shared storage it is caught up with other replicas'
        writes first, unless ``sync`` is False and the caller's writes are conditional on
        the marker it is known at (:meth:`ReplicaSync.since`)."""
        live = self._live.get(name)
        if self.replicas is not None and (
            sync or live is None or self.replicas.since(live) is None
        ):  # another replica may have written: catch up
            try:
                live = self._live[name] = self.replicas.fresh(name, live)
            except NotFoundError:
                self._live.pop(name, None)
                raise
        if live is None:
            study = self.storage.get_study(name)
            live = self._live[name] = LiveStudy(study, self.storage.list_trials(name))
        return live

    def moved(self, name: str) -> bool:
        """Catches the study up (as :meth:`get`) and says whether another replica had
        written it since this one last knew it; False on a storage that is not shared.
        NotFoundError if it is gone. Caller holds its lock."""
        live = self._live.get(name)
        if self.replicas is None or live is None:
            return False
        before = self.replicas.since(live)
        again = self.get(name)
        return again is not live or before is None or self.replicas.since(again) != before

    def peek(self, name: str) -> LiveStudy | None:
        """The study's state if it is in memory, without loading it or taking its lock
        (for reads that tolerate a state a concurrent call is changing)."""
        return self._live.get(name)

    def runtimes(self) -> list[tuple[str, StudyRuntime]]:
        """The studies in memory whose engine is built, without taking their locks (for
        metrics that tolerate a state a concurrent call is changing)."""
        return [(name, live.runtime) for name, live in list(self._live.items())
                if live.runtime is not None]

    def add(self, study: Study, runtime: StudyRuntime | None) -> LiveStudy:
        """Holds a just-created study (no trials yet) and its runtime, if built.
        Caller holds its lock."""
        live = self._live[study.name] = LiveStudy(study, [])
        live.runtime = runtime
        return live

    def forget(self, name: str) -> None:
        """Drops a deleted study (and its engines in the suggestion pool's workers).
        Caller holds its lock."""
        live = self._live.pop(name, None)
        rt = live.runtime if live is not None else None
        engine = rt.engine if rt is not None else None
        if self.suggest_pool is not None and isinstance(engine, RemoteEngine):
            self.suggest_pool.forget(engine.key)

    # --- uploaded tables --------------------------------------------------------------
    def vocabulary(self, vocab_id: str) -> Vocabulary:
        """A stored vocabulary, one shared writable copy for all its studies."""
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

    def pool(self, pool_id: str) -> Pool:
        """A stored pool of candidate prompts."""
        pool = self._pool_cache.get(pool_id)
        if pool is None:
            pool = self._pool_cache[pool_id] = self.storage.get_pool(pool_id)
        return pool

    def check_space(self, spec: StudySpec) -> Vocabulary | Pool | None:
        """The uploaded table the study's space searches (None for soft prompts), checked
        against the space's filters."""
        space = spec.space
        if isinstance(space, SoftPromptSpace):
            return None
        if isinstance(space, PoolSpace):
            return self.pool(space.pool_id)
        vocab = self.vocabulary(space.vocabulary_id)
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

    # --- engines ----------------------------------------------------------------------
    def new_runtime(self, spec: StudySpec) -> StudyRuntime:
        """A runtime with a fresh engine for ``spec`` (building it validates the space,
        the strategy and its options)."""
        return StudyRuntime(spec, self.check_space(spec), self._make_engine,
                            *self.sources(spec), slots=self.slots, suggest_pool=self.suggest_pool)

    def runtime(self, live: LiveStudy) -> StudyRuntime:
        """The study's runtime, its engine rebuilt from stored trials on first use.
        Caller holds the study lock."""
        if live.runtime is not None:
            return live.runtime
        study = live.study
        rt = self.new_runtime(study.spec)
        trials = (self.replicas.catch_up(live) if self.replicas is not None
                  else self.storage.list_trials(study.name))
        # Replayed in the order the live engine saw them (completion order), not id order:
        # trust regions and CMA-ES generations depend on it.
        completed = sorted(
            (t for t in trials if t.state is TrialState.COMPLETED and t.source != "reference"),
            key=lambda t: (t.complete_time, t.id),
        )
        replayed: list[Trial] = []
        objectives: list[float] = []
        for t in completed:
            obj = stored_objective(study.spec, t.value, t.metrics)
            if obj is not None:
                replayed.append(t)
                objectives.append(obj)
        if replayed:
            rt.queue_observation(
                [t.prompt for t in replayed], objectives,
                [noise(study.spec, t) for t in replayed], [t.examples_scored for t in replayed],
            )
        rt.engine.num_suggested = sum(1 for t in trials if t.source == "suggested")
        live.runtime = rt
        log.info("engine of study %s rebuilt from %d completed trials", study.name, len(replayed))
        return rt

    def sources(
        self, spec: StudySpec
    ) -> tuple[list[transfer_sources.LoadedSource], dict[str, str]]:
        """The study's transfer sources read from storage, and notes on unusable ones."""
        if not spec.transfer_from:
            return [], {}
        return transfer_sources.load_sources(self.storage, spec, stored_objective, self.pool)

    # --- prefetch ---------------------------------------------------------------------
    def schedule_refill(self, name: str, live: LiveStudy) -> None:
        """Starts a background refresh of the study's ready suggestions (prefetch > 0,
        expensive engines only); a completed study's ready ones are dropped instead.
        Caller holds the study lock.

        The study keeps as many ready as its measured times call for (at most
        ``prefetch``; :func:`~promptbo.server.prefetch.adaptive_depth`; none when
        suggestions are cheap relative to evaluations); a refill computes only the ones
        missing, since ready ones that are still valid
        (:func:`~promptbo.server.prefetch.still_valid`) are never recomputed. One refill
        per study runs at a time. Its result joins the ready ones if it is still valid
        when it finishes; otherwise it is dropped and, new data having arrived, another
        refill starts. A foreground suggestion that waits for the engine while a refill
        computes takes the refill's prompts (``StudyRuntime.suggest``) instead of
        cancelling it."""
        rt = live.runtime
        if self._executor is None or rt is None or rt.refilling or rt.cheap:
            return
        if live.study.state is StudyState.COMPLETED:
            rt.ready = []
            return
        rt.depth = rt.pace.depth(self.prefetch, len(live.active))
        missing = rt.depth - rt.ready_count()
        if missing <= 0:  # the ready ones are still valid: nothing is recomputed
            return
        rt.refilling = True

        def snapshot() -> list[Prompt]:
            with self.lock(name):
                rt.issued = set()
                return [t.prompt for t in live.active.values()] + list(rt.ready)

        def store(prompts: list[Prompt] | None, version: DataVersion) -> None:
            with self.lock(name):
                issued: set[tuple] = rt.issued or set()
                rt.issued = None
                rt.refilling = False
                stale = not still_valid(version, rt.version)
                if stale or prompts is None:  # stale, or cancelled: start again
                    rt.discarded += stale
                    if self._live.get(name) is live:  # not deleted meanwhile
                        self.schedule_refill(name, live)
                    return
                # Prompts handed out while the refill ran may be completed already: they
                # are neither active nor known to the refill's snapshot.
                busy = {t.prompt.key() for t in live.active.values()} | issued
                kept = rt.ready if rt.ready_count() else []  # computed earlier, still valid
                fresh = []
                for p in [*kept, *prompts]:
                    if p.key() not in busy:
                        fresh.append(p)
                        busy.add(p.key())
                if not kept:
                    rt.ready_version = version  # else the older version ages the list
                rt.ready = fresh
                if prompts and len(fresh) < rt.depth and self._live.get(name) is live:
                    self.schedule_refill(name, live)  # some were taken meanwhile

        try:
            self._executor.submit(rt.refill, missing, snapshot, store)
        except RuntimeError:  # closing: no more prefetch
            rt.refilling = False
