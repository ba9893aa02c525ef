"""An in-process storage backend: dictionaries behind one lock, lost on exit.

Used by tests and by ``promptbo serve --storage memory:``. Everything handed in is copied
before it is kept and everything handed out is a copy, so a caller that mutates a
``metrics`` or ``labels`` dict it passed or received never changes the stored state.
Vocabulary embedding tables are copied once on upload and then kept read-only, which
makes them safe to share without copying ``V x D`` floats on every read.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from promptbo.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError
from promptbo.server.domain import (
    Pool,
    Prompt,
    Study,
    Trial,
    TrialState,
    Vocabulary,
    check_study_name,
)
from promptbo.server.storage.base import (
    HandoutGuard,
    StaleWriteError,
    Storage,
    StudyChanges,
    check_since,
    first_marker,
    room_for,
    same_hold,
    same_study,
)


def study_not_found(name: str) -> NotFoundError:
    return NotFoundError(f"study {name!r} not found; list studies with `promptbo study list`")


def trial_not_found(study: str, trial_id: int) -> NotFoundError:
    return NotFoundError(
        f"trial {trial_id} of study {study!r} not found; list its trials with "
        f"`promptbo study trials {study}`"
    )


def vocabulary_not_found(vocabulary_id: str) -> NotFoundError:
    return NotFoundError(
        f"vocabulary {vocabulary_id!r} not found; upload it with UploadVocabulary "
        "(client.upload_vocabulary) and use the id it returns"
    )


#: Trial ids and ``after_id`` beyond this are absent on every backend (the id column is a
#: 32-bit integer on PostgreSQL).
MAX_TRIAL_ID = 2**31 - 1


def check_text(what: str, text: str) -> None:
    """Refuses a NUL character, which PostgreSQL cannot store in text, on every backend."""
    if "\x00" in text:
        raise InvalidArgumentError(f"{what} must not contain NUL characters")


def check_trials_text(trials: Sequence[Trial]) -> None:
    for t in trials:
        check_text("client_id", t.client_id)
        check_text("failure_reason", t.failure_reason)
        check_text("principal", t.principal)
def one_study(trials: Sequence[Trial], since: int | None) -> None:
    """InvalidArgumentError if a write conditional on ``since`` spans several studies."""
    if since is not None and len({t.study for t in trials}) > 1:
        raise InvalidArgumentError("a write conditional on a change marker is of one study")


def pool_not_found(pool_id: str) -> NotFoundError:
    return NotFoundError(
        f"pool {pool_id!r} not found; upload it with UploadPool (client.upload_pool) and "
        "use the id it returns"
    )


def check_limit(limit: int | None) -> None:
    if limit is not None and limit < 0:
        raise InvalidArgumentError(f"limit must be >= 0 or None, got {limit}")


class InMemoryStorage(Storage):
    """Keeps studies, trials and vocabularies in dictionaries guarded by one lock.

    Trials of a study live in a list whose index ``i`` holds trial id ``i + 1``: ids are
    assigned contiguously and trials are never removed one by one.
    """

    local = True

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._vocabularies: dict[str, Vocabulary] = {}
        self._pools: dict[str, Pool] = {}
        self._studies: dict[str, Study] = {}
        self._trials: dict[str, list[Trial]] = {}
        #: Change markers: per study, and per trial the study's marker when it was written.
        self._versions: dict[str, int] = {}
        self._trial_versions: dict[str, list[int]] = {}

    # --- vocabularies -------------------------------------------------------------
    def put_vocabulary(self, vocabulary: Vocabulary) -> bool:
        vocab_id = vocabulary.id  # hashing happens outside the lock
        with self._lock:
            if vocab_id in self._vocabularies:
                return False
        table = np.array(vocabulary.embeddings, dtype=np.float32, order="C", copy=True)
        table.setflags(write=False)
        kept = Vocabulary(
            tokens=tuple(vocabulary.tokens),
            token_ids=tuple(int(i) for i in vocabulary.token_ids),
            embeddings=table,
        )
        kept.__dict__["id"] = vocab_id  # the content is unchanged: reuse the hash
        with self._lock:
            if vocab_id in self._vocabularies:
                return False
            self._vocabularies[vocab_id] = kept
            return True

    def get_vocabulary(self, vocabulary_id: str) -> Vocabulary:
        with self._lock:
            try:
                return self._vocabularies[vocabulary_id]  # immutable: tuples, read-only table
            except KeyError:
                raise vocabulary_not_found(vocabulary_id) from None

    def has_vocabulary(self, vocabulary_id: str) -> bool:
        with self._lock:
            return vocabulary_id in self._vocabularies

    # --- candidate pools ----------------------------------------------------------
    def put_pool(self, pool: Pool) -> bool:
        pid = pool.id
        with self._lock:
            if pid in self._pools:
                return False
        table = np.array(pool.embeddings, dtype=np.float32, order="C", copy=True)
        table.setflags(write=False)
        kept = Pool(texts=tuple(pool.texts), embeddings=table,
                    embedding_model=pool.embedding_model)
        kept.__dict__["id"] = pid
        with self._lock:
            if pid in self._pools:
                return False
            self._pools[pid] = kept
            return True

    def get_pool(self, pool_id: str) -> Pool:
        with self._lock:
            try:
                return self._pools[pool_id]  # immutable: tuples, read-only table
            except KeyError:
                raise pool_not_found(pool_id) from None

    # --- studies ------------------------------------------------------------------
    def create_study(self, study: Study) -> Study:
        check_study_name(study.name)
        check_text("request_id", study.request_id)
        kept = _copy_study(study)
        with self._lock:
            if study.name in self._studies:
                raise AlreadyExistsError(
                    f"study {study.name!r} already exists; choose another name or delete it "
                    "first (`promptbo study delete`)"
                )
            self._studies[study.name] = kept
            self._trials[study.name] = []
            self._versions[study.name] = first_marker()
            self._trial_versions[study.name] = []
        return _copy_study(kept)

    def get_study(self, name: str) -> Study:
        with self._lock:
            return _copy_study(self._study(name))

    def list_studies(self) -> list[Study]:
        with self._lock:
            return [_copy_study(self._studies[n]) for n in sorted(self._studies)]

    def update_study(self, study: Study, expected: Study | None = None) -> None:
        kept = _copy_study(study)
        with self._lock:
            stored = self._study(study.name)
            if expected is not None:
                held = sum(t.state in (TrialState.ACTIVE, TrialState.COMPLETED)
                           and t.source != "reference" for t in self._trials[study.name])
                budget = study.spec.max_trials
                if not same_study(stored, expected) or (budget and held > budget):
                    raise StaleWriteError(
                        f"study {study.name!r} was changed by another writer"
                    )
            self._studies[study.name] = kept
            self._versions[study.name] += 1

    def delete_study(self, name: str) -> None:
        with self._lock:
            self._study(name)
            del self._studies[name]
            del self._trials[name]
            del self._versions[name]
            del self._trial_versions[name]

    def _study(self, name: str) -> Study:
        try:
            return self._studies[name]
        except KeyError:
            raise study_not_found(name) from None

    # --- trials -------------------------------------------------------------------
    def add_trials(
        self, study: str, trials: Sequence[Trial], guard: HandoutGuard | None = None,
        since: int | None = None,
    ) -> list[Trial]:
        check_trials_text(trials)
        copies = [_copy_trial(t) for t in trials]
        with self._lock:
            self._study(study)
            check_since(study, self._versions[study], since)
            stored = self._trials[study]
            if guard is not None and not room_for(stored, len(copies), guard):
                raise StaleWriteError(f"study {study!r} has no room for {len(copies)} trials")
            version = self._bump(study)
            added = []
            for t in copies:
                kept = replace(t, study=study, id=len(stored) + 1)
                stored.append(kept)
                self._trial_versions[study].append(version)
                added.append(_copy_trial(kept))
            return added

    def _bump(self, study: str) -> int:
        self._versions[study] += 1
        return self._versions[study]

    def get_trial(self, study: str, trial_id: int) -> Trial:
        with self._lock:
            self._study(study)
            stored = self._trials[study]
            if not 1 <= trial_id <= len(stored):
                raise trial_not_found(study, trial_id)
            return _copy_trial(stored[trial_id - 1])

    def update_trials(
        self, trials: Sequence[Trial], expected: Sequence[Trial] | None = None,
        since: int | None = None,
    ) -> None:
        check_trials_text(trials)
        one_study(trials, since)
        copies = [_copy_trial(t) for t in trials]
        with self._lock:
            for t in copies:  # check every one before changing any
                self._study(t.study)
                if not 1 <= t.id <= len(self._trials[t.study]):
                    raise trial_not_found(t.study, t.id)
            if copies:
                check_since(copies[0].study, self._versions[copies[0].study], since)
            for t, e in zip(copies, expected or copies, strict=True):
                if expected is not None and not same_hold(self._trials[t.study][t.id - 1], e):
                    raise StaleWriteError(
                        f"trial {t.id} of study {t.study!r} was changed by another writer"
                    )
            versions = {name: self._bump(name) for name in {t.study for t in copies}}
            for t in copies:
                self._trials[t.study][t.id - 1] = t
                self._trial_versions[t.study][t.id - 1] = versions[t.study]

    def changes(self, study: str, since: int) -> StudyChanges:
        with self._lock:
            found = _copy_study(self._study(study))
            changed = [
                _copy_trial(t)
                for t, v in zip(self._trials[study], self._trial_versions[study], strict=True)
                if v > since
            ]
            return StudyChanges(found, self._versions[study], changed)

    def list_trials(
        self,
        study: str,
        state: TrialState | None = None,
        after_id: int = 0,
        limit: int | None = None,
    ) -> list[Trial]:
        check_limit(limit)
        with self._lock:
            self._study(study)
            out: list[Trial] = []
            for t in self._trials[study][max(after_id, 0) :]:
                if limit is not None and len(out) >= limit:
                    break
                if state is None or t.state is state:
                    out.append(_copy_trial(t))
            return out

    def count_trials(self, study: str) -> dict[TrialState, int]:
        with self._lock:
            self._study(study)
            counts = dict.fromkeys(TrialState, 0)
            for t in self._trials[study]:
                counts[t.state] += 1
            return counts


def _copy_study(study: Study) -> Study:
    """A copy sharing no mutable state with ``study`` (its spec's dicts are copied)."""
    spec = replace(
        study.spec,
        strategy_options=dict(study.spec.strategy_options),
        labels=dict(study.spec.labels),
    )
    return replace(study, spec=spec)


def _copy_trial(trial: Trial) -> Trial:
    """A copy sharing no mutable state with ``trial``: fresh metrics, tuple prompt fields."""
    p = trial.prompt
    if not all(type(f) is tuple for f in (p.token_ids, p.tokens, p.vector)):
        p = Prompt(token_ids=tuple(p.token_ids), tokens=tuple(p.tokens), text=p.text,
                   vector=tuple(p.vector), pool_index=p.pool_index)
    return trial.evolve(prompt=p, metrics=dict(trial.metrics))
