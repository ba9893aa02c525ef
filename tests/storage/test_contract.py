"""The storage contract of :mod:`promptbo.server.storage.base`, run against every backend.

Each test takes ``store`` (a fresh storage) or ``backend`` (to open more storages on the
same data) from ``conftest.py``: memory, an SQLite file, and PostgreSQL when
``PROMPTBO_TEST_POSTGRES_URL`` is set.
"""

from __future__ import annotations

import math
import struct
import subprocess
import sys
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import sqlalchemy as sa

from promptbo.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
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
)
from promptbo.server.storage import open_storage
from promptbo.server.storage.sql import SqlStorage, normalize_url
from promptbo.spec import spec_from_json, spec_to_json

A, C, F = TrialState.ACTIVE, TrialState.COMPLETED, TrialState.FAILED
ODD_TOKENS = ("", " the", "ünï", "日本語", "\x00", "🙂 x", "\n", "a b")


def soft_study(name: str = "soft", **spec_changes) -> Study:
    spec = StudySpec(
        space=SoftPromptSpace(
            prompt_length=2, embedding_dim=3, intrinsic_dim=5, bound=2.5, embedding_std=0.25
        ),
        strategy="cma",
        strategy_options={"sigma": "0.3", "popsize": "8"},
        goal=Goal.MINIMIZE,
        objective="loss",
        max_trials=40,
        max_active_trials=4,
        lease_seconds=12.5,
        seed=7,
        labels={"team": "nlp", "größe": "ü"},
        **spec_changes,
    )
    return Study(name=name, spec=spec, create_time=1700000000.25, request_id="req-1")


def hard_study(name: str, vocabulary_id: str = "v" * 64) -> Study:
    spec = StudySpec(
        space=HardPromptSpace(
            prompt_length=4,
            vocabulary_id=vocabulary_id,
            pca_dims=3,
            top_n=2,
            top_n_scores=(0.5, -1.25, 1 / 3),
        ),
        labels={"k": "v"},
    )
    return Study(name=name, spec=spec)


def draft(i: int = 0, state: TrialState = A, **changes) -> Trial:
    """A trial to add; its id and study are placeholders the storage replaces."""
    prompt = Prompt(token_ids=(i, i + 1), tokens=(f"t{i}", " é"), text=f"t{i} é")
    return Trial(study="ignored", id=-5, state=state, prompt=prompt, **changes)


def vocabulary(n: int = 6, dim: int = 3, seed: int = 0) -> Vocabulary:
    rng = np.random.default_rng(seed)
    tokens = tuple(ODD_TOKENS[i % 8] + ("" if i < 8 else str(i)) for i in range(n))
    token_ids = tuple(int(x) for x in rng.permutation(n) * 1000 + 2**40)
    return Vocabulary(tokens, token_ids, rng.standard_normal((n, dim)).astype(np.float32))


# --- studies -----------------------------------------------------------------------------
def test_create_and_get_study_roundtrip_both_space_kinds(store):
    soft, hard = soft_study("s"), hard_study("h")
    assert store.create_study(soft) == soft
    store.create_study(hard)
    assert store.get_study("s") == soft
    assert store.get_study("h") == hard
    assert isinstance(store.get_study("h").spec.space.top_n_scores, tuple)


def test_spec_json_roundtrip_is_exact():
    for spec in (
        soft_study().spec,
        hard_study("h").spec,
        StudySpec(space=HardPromptSpace(1, "x", allowed=(3, 1, 2))),
        soft_study(transfer_from=("a", "b"), transfer="init").spec,
    ):
        assert spec_from_json(spec_to_json(spec)) == spec


def test_transfer_sources_roundtrip(store):
    study = soft_study("t", transfer_from=("src-a", "src-b"), transfer="surrogate")
    store.create_study(study)
    got = store.get_study("t")
    assert got == study and isinstance(got.spec.transfer_from, tuple)


def test_list_studies_is_ordered_by_name(store):
    names = ["b", "B", "a-1", "a", "Ä", "_x", "a 2"]
    for n in names:
        store.create_study(soft_study(n))
    assert [s.name for s in store.list_studies()] == sorted(names)
    assert store.list_studies()[0] == soft_study("B")


def test_update_study_replaces_it(store):
    store.create_study(soft_study("s"))
    done = soft_study("s").evolve(state=StudyState.COMPLETED)
    store.update_study(done)
    assert store.get_study("s").state is StudyState.COMPLETED


def test_update_study_stores_a_changed_budget(store):
    import dataclasses

    store.create_study(soft_study("b"))
    old = soft_study("b")
    grown = old.evolve(spec=dataclasses.replace(old.spec, max_trials=90, max_active_trials=2))
    store.update_study(grown)
    got = store.get_study("b")
    assert (got.spec.max_trials, got.spec.max_active_trials) == (90, 2)
    assert got == grown


def test_duplicate_study_name_is_refused_and_keeps_the_original(store):
    store.create_study(soft_study("dup"))
    with pytest.raises(AlreadyExistsError, match="dup"):
        store.create_study(hard_study("dup"))
    assert store.get_study("dup") == soft_study("dup")
    assert len(store.list_studies()) == 1


def test_delete_study_removes_its_trials(store):
    store.create_study(soft_study("gone"))
    store.create_study(soft_study("kept"))
    store.add_trials("gone", [draft(1), draft(2)])
    store.add_trials("kept", [draft(3)])
    store.delete_study("gone")
    assert [s.name for s in store.list_studies()] == ["kept"]
    with pytest.raises(NotFoundError):
        store.list_trials("gone")
    store.create_study(soft_study("gone"))  # the name is free again, with no old trials
    assert store.list_trials("gone") == []
    assert [t.id for t in store.add_trials("gone", [draft()])] == [1]
    assert [t.id for t in store.list_trials("kept")] == [1]
    assert store.check_integrity() == []


def test_missing_things_raise_not_found_everywhere(store):
    store.create_study(soft_study("s"))
    store.add_trials("s", [draft()])
    calls = {
        "get_study": lambda: store.get_study("nope"),
        "update_study": lambda: store.update_study(soft_study("nope")),
        "delete_study": lambda: store.delete_study("nope"),
        "add_trials": lambda: store.add_trials("nope", [draft()]),
        "get_trial of a missing study": lambda: store.get_trial("nope", 1),
        "get_trial": lambda: store.get_trial("s", 2),
        "update_trials": lambda: store.update_trials([draft().evolve(study="s", id=9)]),
        "update_trials of a missing study": lambda: store.update_trials(
            [draft().evolve(study="nope", id=1)]
        ),
        "list_trials": lambda: store.list_trials("nope"),
        "count_trials": lambda: store.count_trials("nope"),
        "get_vocabulary": lambda: store.get_vocabulary("0" * 64),
    }
    for what, call in calls.items():
        with pytest.raises(NotFoundError) as info:
            call()
        assert "not found" in str(info.value), what
    with pytest.raises(NotFoundError, match="promptbo study list"):
        store.get_study("nope")
    assert not store.has_vocabulary("0" * 64)
    assert [s.name for s in store.list_studies()] == ["s"]


# --- trials ------------------------------------------------------------------------------
def test_add_trials_numbers_them_per_study_across_calls(store):
    store.create_study(soft_study("a"))
    store.create_study(soft_study("b"))
    first = store.add_trials("a", [draft(0), draft(1), draft(2)])
    assert [(t.study, t.id) for t in first] == [("a", 1), ("a", 2), ("a", 3)]
    assert [t.prompt for t in first] == [draft(i).prompt for i in range(3)]
    assert [t.id for t in store.add_trials("b", [draft(9)])] == [1]
    assert [t.id for t in store.add_trials("a", [draft(3), draft(4)])] == [4, 5]
    assert store.add_trials("a", []) == []
    assert [t.id for t in store.add_trials("a", [draft(5)])] == [6]
    stored = store.list_trials("a")
    assert [t.id for t in stored] == [1, 2, 3, 4, 5, 6]
    assert [t.prompt.token_ids[0] for t in stored] == [0, 1, 2, 3, 4, 5]
    assert store.get_trial("a", 4) == stored[3]
    assert store.get_trial("b", 1).prompt == draft(9).prompt


def test_trial_fields_roundtrip(store):
    store.create_study(soft_study("s"))
    full = draft(
        3,
        state=C,
        client_id="worker-ü",
        lease_deadline=1700000300.5,
        value=-0.1,
        metrics={"accuracy": 0.8125, "tokens": 1234.0, "tiny": 1e-300, "neg": -2.5},
        failure_reason="",
        create_time=1700000000.125,
        complete_time=1700000100.0625,
        source="user",
    )
    failed = draft(4, state=F, failure_reason="timeout\nafter 30 s: «quoted»")
    added = store.add_trials("s", [full, failed])
    assert added == [full.evolve(study="s", id=1), failed.evolve(study="s", id=2)]
    assert store.list_trials("s") == added
    assert store.get_trial("s", 1).metrics == full.metrics
    assert store.get_trial("s", 2).value is None


def test_soft_prompt_vectors_roundtrip_bit_for_bit(store):
    store.create_study(soft_study("s"))
    rng = np.random.default_rng(3)
    as_float32 = tuple(float(v) for v in rng.standard_normal(512 * 64).astype(np.float32))
    as_float64 = (0.1, 1 / 3, -0.0, 5e-324, 1e300, -2.0, math.pi)
    added = store.add_trials(
        "s", [draft().evolve(prompt=Prompt(vector=v)) for v in (as_float32, as_float64)]
    )
    for sent, trial in zip((as_float32, as_float64), store.list_trials("s"), strict=True):
        got = trial.prompt.vector
        assert isinstance(got, tuple) and trial.prompt.is_soft
        assert struct.pack(f"<{len(got)}d", *got) == struct.pack(f"<{len(sent)}d", *sent)
    assert [t.prompt for t in added] == [t.prompt for t in store.list_trials("s")]


def test_update_trials_replaces_them(store):
    store.create_study(soft_study("a"))
    store.create_study(soft_study("b"))
    a1, a2 = store.add_trials("a", [draft(1), draft(2)])
    (b1,) = store.add_trials("b", [draft(3)])
    store.update_trials(
        [
            a2.evolve(state=C, value=0.5, metrics={"acc": 0.5}, complete_time=9.0),
            b1.evolve(state=F, failure_reason="crashed", lease_deadline=0.0),
        ]
    )
    assert store.get_trial("a", 1) == a1
    assert store.get_trial("a", 2) == a2.evolve(
        state=C, value=0.5, metrics={"acc": 0.5}, complete_time=9.0
    )
    assert store.get_trial("b", 1).failure_reason == "crashed"
    store.update_trials([])


def test_update_trials_writes_nothing_when_one_is_missing(store):
    store.create_study(soft_study("a"))
    store.create_study(soft_study("b"))
    a1, a2 = store.add_trials("a", [draft(1), draft(2)])
    changed = [a1.evolve(state=C, value=1.0), a2.evolve(client_id="w")]
    for missing in (a1.evolve(id=3), a1.evolve(study="b"), a1.evolve(study="nope")):
        with pytest.raises(NotFoundError):
            store.update_trials([*changed, missing])
        with pytest.raises(NotFoundError):
            store.update_trials([missing, *changed])
    assert store.list_trials("a") == [a1, a2]
    assert store.list_trials("b") == []


def test_list_trials_filters_pages_and_limits(store):
    store.create_study(soft_study("s"))
    states = [A, C, F, C, A, C, C, F]
    added = store.add_trials(
        "s", [draft(i, state=s, value=float(i) if s is C else None) for i, s in enumerate(states)]
    )
    ids = lambda trials: [t.id for t in trials]  # noqa: E731
    assert ids(store.list_trials("s")) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert ids(store.list_trials("s", C)) == [2, 4, 6, 7]
    assert ids(store.list_trials("s", A)) == [1, 5]
    assert ids(store.list_trials("s", F)) == [3, 8]
    assert ids(store.list_trials("s", after_id=5)) == [6, 7, 8]
    assert ids(store.list_trials("s", C, after_id=4)) == [6, 7]
    assert ids(store.list_trials("s", limit=3)) == [1, 2, 3]
    assert ids(store.list_trials("s", C, after_id=2, limit=2)) == [4, 6]
    assert store.list_trials("s", limit=0) == []
    assert store.list_trials("s", after_id=8) == []
    assert store.list_trials("s", A, after_id=5) == []
    assert store.list_trials("s", C, limit=1) == [added[1]]
    with pytest.raises(InvalidArgumentError, match="limit"):
        store.list_trials("s", limit=-1)


@pytest.mark.parametrize("field", ["client_id", "failure_reason"])
def test_nul_in_trial_text_is_refused_on_every_backend(store, field):
    store.create_study(soft_study("s"))
    with pytest.raises(InvalidArgumentError, match=f"{field} must not contain NUL"):
        store.add_trials("s", [draft(0, **{field: "a\x00b"})])
    (t,) = store.add_trials("s", [draft(0)])
    with pytest.raises(InvalidArgumentError, match="NUL"):
        store.update_trials([t.evolve(**{field: "\x00"})])
    assert store.list_trials("s") == [t]


def test_nul_in_request_id_is_refused_on_every_backend(store):
    with pytest.raises(InvalidArgumentError, match="request_id"):
        store.create_study(soft_study("s").evolve(request_id="r\x00"))
    assert store.list_studies() == []


@pytest.mark.parametrize("huge", [2**63 - 1, 2**63, 2**64 + 7, 10**30])
def test_huge_ids_are_absent_not_errors(store, huge):
    store.create_study(soft_study("s"))
    store.add_trials("s", [draft(0)])
    with pytest.raises(NotFoundError):
        store.get_trial("s", huge)
    with pytest.raises(NotFoundError):
        store.get_trial("s", -huge)
    assert store.list_trials("s", after_id=huge) == []
    assert [t.id for t in store.list_trials("s", after_id=-huge)] == [1]


def test_count_trials_per_state(store):
    store.create_study(soft_study("s"))
    store.create_study(soft_study("empty"))
    store.add_trials("s", [draft(state=A), draft(state=C, value=1.0), draft(state=C, value=2.0)])
    assert store.count_trials("s") == {A: 1, C: 2, F: 0}
    assert store.count_trials("empty") == {A: 0, C: 0, F: 0}


def test_check_integrity_is_empty_when_sound_and_reports_problems(store):
    assert store.check_integrity() == []
    store.create_study(soft_study("s"))
    (t,) = store.add_trials("s", [draft()])
    store.update_trials([t.evolve(state=C, value=0.25)])
    assert store.check_integrity() == []
    store.update_trials([t.evolve(state=C, value=None)])
    assert store.check_integrity() == ["study 's' trial 1: completed without value"]


def test_returned_and_given_objects_share_no_mutable_state(store):
    study = soft_study("s")
    store.create_study(study)
    study.spec.labels["team"] = "changed by caller"
    got = store.get_study("s")
    assert got.spec.labels["team"] == "nlp"
    got.spec.labels["new"] = "x"
    got.spec.strategy_options.clear()
    assert store.get_study("s") == soft_study("s")

    metrics = {"acc": 0.5}
    (added,) = store.add_trials("s", [draft(state=C, value=0.5, metrics=metrics)])
    metrics["acc"] = 0.0
    added.metrics["acc"] = -1.0
    store.get_trial("s", 1).metrics["acc"] = -2.0
    for t in store.list_trials("s"):
        t.metrics["extra"] = 1.0
    assert store.get_trial("s", 1).metrics == {"acc": 0.5}


# --- vocabularies ------------------------------------------------------------------------
def test_vocabulary_roundtrip_is_exact(store):
    vocab = vocabulary(n=21, dim=5)
    original = vocab.embeddings.copy()
    assert store.put_vocabulary(vocab) is True
    assert store.has_vocabulary(vocab.id)
    assert store.put_vocabulary(vocabulary(n=21, dim=5)) is False  # same content, same id
    vocab.embeddings[0, 0] = 99.0  # the caller's table is not the stored one
    got = store.get_vocabulary(vocab.id)
    assert got.id == vocabulary(n=21, dim=5).id
    assert got.tokens == vocabulary(n=21, dim=5).tokens and "" in got.tokens
    assert "\x00" in got.tokens and "日本語" in got.tokens
    assert got.token_ids == vocab.token_ids and max(got.token_ids) > 2**40
    assert got.embeddings.shape == (21, 5) and got.embeddings.dtype == np.float32
    assert got.embeddings.tobytes() == original.tobytes()
    other = vocabulary(n=4, dim=2, seed=1)
    assert store.put_vocabulary(other) is True
    assert store.get_vocabulary(other.id).embeddings.tobytes() == other.embeddings.tobytes()


# --- candidate pools ---------------------------------------------------------------------
def pool(n: int = 5, dim: int = 3, seed: int = 0, model: str = "enc") -> Pool:
    rng = np.random.default_rng(seed)
    texts = tuple(f"{ODD_TOKENS[i % 8]} candidate {i}" for i in range(n))
    return Pool(texts, rng.standard_normal((n, dim)).astype(np.float32), model)


def test_pool_roundtrip_is_exact(store):
    p = pool(n=9, dim=4)
    original = p.embeddings.copy()
    assert store.put_pool(p) is True
    assert store.put_pool(pool(n=9, dim=4)) is False  # same content, same id
    p.embeddings[0, 0] = 99.0  # the caller's table is not the stored one
    got = store.get_pool(p.id)
    assert got.id == pool(n=9, dim=4).id
    assert got.texts == pool(n=9, dim=4).texts and got.embedding_model == "enc"
    assert got.embeddings.dtype == np.float32 and got.embeddings.tobytes() == original.tobytes()
    # The embedding model is part of the identity.
    assert pool(n=9, dim=4, model="other").id != p.id
    with pytest.raises(NotFoundError, match="UploadPool"):
        store.get_pool("0" * 64)


def test_pool_studies_and_pool_prompts_roundtrip(store):
    study = Study(name="p", spec=StudySpec(space=PoolSpace("a" * 64), strategy="zopo",
                                           strategy_options={"width": "32"}))
    store.create_study(study)
    assert store.get_study("p") == study
    prompt = Prompt(text="Classify the review.", pool_index=0)
    added = store.add_trials("p", [Trial(study="x", id=0, state=A, prompt=prompt),
                                   draft(1, state=C, value=1.0)])
    got = store.list_trials("p")
    assert got == added
    assert got[0].prompt.pool_index == 0 and got[0].prompt.key() == (0,)
    assert got[1].prompt.pool_index is None
    store.update_trials([added[0].evolve(state=C, value=0.5)])
    assert store.get_trial("p", 1).prompt == prompt


def test_spec_json_roundtrip_of_a_pool_space():
    spec = StudySpec(space=PoolSpace("b" * 64), strategy="gp", seed=3)
    assert spec_from_json(spec_to_json(spec)) == spec


def test_pool_persists_and_integrity_reports_a_missing_pool(sql_backend):
    first = sql_backend.open()
    p = pool()
    first.put_pool(p)
    first.create_study(Study(name="ok", spec=StudySpec(space=PoolSpace(p.id))))
    first.close()
    again = sql_backend.open()
    assert again.get_pool(p.id).texts == p.texts
    assert again.check_integrity() == []
    again.create_study(Study(name="lost", spec=StudySpec(space=PoolSpace("c" * 64))))
    assert again.check_integrity() == [f"study 'lost': pool {'c' * 64!r} is missing"]


# --- persistence and concurrency ---------------------------------------------------------
def test_everything_persists_across_reopening(sql_backend):
    first = sql_backend.open()
    vocab = vocabulary()
    first.put_vocabulary(vocab)
    first.create_study(hard_study("h", vocab.id))
    first.create_study(soft_study("s"))
    first.add_trials("s", [draft(1, state=C, value=2.0, metrics={"m": 1.5}), draft(2)])
    expected = (first.list_studies(), first.list_trials("s"))
    first.close()

    again = sql_backend.open()  # schema creation is idempotent
    assert (again.list_studies(), again.list_trials("s")) == expected
    assert again.get_vocabulary(vocab.id).embeddings.tobytes() == vocab.embeddings.tobytes()
    assert [t.id for t in again.add_trials("s", [draft(3)])] == [3]
    assert again.check_integrity() == []
    with again.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version FROM promptbo_schema").all() == [(3,)]


def _drop_change_markers(conn) -> None:
    """Makes a current database look like version 2: no change markers."""
    conn.exec_driver_sql("DROP INDEX ix_trials_study_version")
    conn.exec_driver_sql("ALTER TABLE trials DROP COLUMN version")
    conn.exec_driver_sql("ALTER TABLE studies DROP COLUMN version")


def test_a_version_2_database_gets_change_markers_in_place(sql_backend):
    first = sql_backend.open()
    first.create_study(soft_study("s"))
    first.add_trials("s", [draft(1, state=C, value=2.0)])
    with first.engine.begin() as conn:
        _drop_change_markers(conn)
        conn.exec_driver_sql("UPDATE promptbo_schema SET version = 2")
    first.close()
    again = sql_backend.open()
    seen = again.changes("s", -1)
    assert [t.value for t in seen.trials] == [2.0] and seen.version == 0
    (added,) = again.add_trials("s", [draft(2)])
    later = again.changes("s", seen.version)
    assert later.version > seen.version and [t.id for t in later.trials] == [added.id]
    assert again.check_integrity() == []


def test_a_version_1_database_is_upgraded_in_place(sql_backend):
    first = sql_backend.open()
    first.create_study(soft_study("s"))
    first.add_trials("s", [draft(1, state=C, value=2.0)])
    with first.engine.begin() as conn:  # what version 1 looked like: no principal column
        _drop_change_markers(conn)
        conn.exec_driver_sql("ALTER TABLE trials DROP COLUMN principal")
        conn.exec_driver_sql("UPDATE promptbo_schema SET version = 1")
    first.close()
    again = sql_backend.open()
    (t,) = again.list_trials("s")
    assert t.value == 2.0 and t.principal == ""
    (added,) = again.add_trials("s", [draft(2, principal="team-a")])
    assert again.get_trial("s", added.id).principal == "team-a"
    with again.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version FROM promptbo_schema").all() == [(3,)]


def test_a_spec_stored_before_the_shared_codec_still_loads(sql_backend):
    first = sql_backend.open()
    first.create_study(soft_study("s"))
    # The text spec_to_json wrote for a hard study before promptbo.spec held the codec.
    old = ('{"space":{"kind":"hard","prompt_length":3,"vocabulary_id":"vvvvvvvv","pca_dims":16,'
           '"top_n":0,"top_n_scores":[],"allowed":[2,5]},"strategy":"gp","strategy_options":'
           '{"num_initial":"4"},"goal":"minimize","objective":"value","max_trials":9,'
           '"max_active_trials":0,"lease_seconds":300.0,"seed":0,"labels":{"team":"nlp"}}')
    with first.engine.begin() as conn:
        conn.execute(sa.text("UPDATE studies SET spec = :spec WHERE name = 's'"), {"spec": old})
    first.close()
    again = sql_backend.open()
    assert again.get_study("s").spec == StudySpec(
        space=HardPromptSpace(3, "vvvvvvvv", allowed=(2, 5)),
        strategy_options={"num_initial": "4"}, goal=Goal.MINIMIZE, max_trials=9,
        labels={"team": "nlp"},
    )


def test_newer_schema_version_is_refused(sql_backend):
    storage = sql_backend.open()
    with storage.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE promptbo_schema SET version = 99")
    with pytest.raises(FailedPreconditionError, match="schema version 99"):
        sql_backend.open()


def test_concurrent_writers_get_unique_contiguous_ids(backend):
    store = backend.open()
    store.create_study(soft_study("s"))
    threads, per_thread = 16, 50
    errors: list[BaseException] = []
    seen: list[list[int]] = [[] for _ in range(threads)]

    def work(k: int) -> None:
        try:
            for j in range(per_thread):
                (t,) = store.add_trials("s", [draft(k, client_id=f"w{k}")])
                store.update_trials([t.evolve(state=C, value=float(k * 1000 + j))])
                seen[k].append(t.id)
        except BaseException as e:  # reported below
            errors.append(e)

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    n = threads * per_thread
    assert sorted(i for ids in seen for i in ids) == list(range(1, n + 1))
    stored = store.list_trials("s")
    assert [t.id for t in stored] == list(range(1, n + 1))
    assert all(t.state is C for t in stored)
    assert {t.value for t in stored} == {float(k * 1000 + j) for k in range(16) for j in range(50)}
    assert store.count_trials("s") == {A: 0, C: n, F: 0}
    assert store.check_integrity() == []


def test_storages_sharing_a_database_assign_unique_contiguous_ids(sql_backend):
    """Three storages on one database, as three server replicas: ids stay exact when
    their writers race for the same study."""
    stores = [sql_backend.open() for _ in range(3)]
    stores[0].create_study(soft_study("s"))
    per_thread, errors = 40, []
    seen: list[int] = []

    def work(store) -> None:
        try:
            for _ in range(per_thread):
                added = store.add_trials("s", [draft(), draft()])
                seen.extend(t.id for t in added)
                assert added[1].id == added[0].id + 1
        except BaseException as e:  # reported below
            errors.append(e)

    workers = [threading.Thread(target=work, args=(s,)) for s in stores for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    n = len(workers) * per_thread * 2
    assert sorted(seen) == list(range(1, n + 1))
    assert [t.id for t in stores[1].list_trials("s")] == list(range(1, n + 1))


def test_a_connection_the_server_ended_is_replaced_without_failing_a_call(backend):
    """A pooled PostgreSQL connection ended by the server (a restart, an idle timeout)
    is noticed when it is checked out, and the call gets a fresh one."""
    if backend.name != "postgresql":
        pytest.skip("only a database server ends connections")
    store = backend.open()
    assert isinstance(store, SqlStorage)
    store.create_study(soft_study("s"))
    with store.engine.connect() as conn:
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    admin = sa.create_engine(normalize_url(backend.url), poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        assert conn.exec_driver_sql(f"SELECT pg_terminate_backend({pid}, 10000)").scalar()
    admin.dispose()
    (t,) = store.add_trials("s", [draft()])
    store.update_trials([t.evolve(state=C, value=1.0)])
    assert [x.state for x in store.list_trials("s")] == [C]


_OTHER_PROCESS = """
import sys
from promptbo.server.domain import Prompt, Trial, TrialState
from promptbo.server.storage.sql import SqlStorage
s = SqlStorage(sys.argv[1])
print("ready", flush=True)
for i in range(int(sys.argv[2])):
    s.add_trials("s", [Trial("s", 0, TrialState.ACTIVE, Prompt(token_ids=(i,)))])
s.close()
"""


def test_another_process_writing_the_same_sqlite_file_is_waited_for(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    store = SqlStorage(url)
    store.create_study(soft_study("s"))
    proc = subprocess.Popen(
        [sys.executable, "-c", _OTHER_PROCESS, url, "300"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for _ in range(300):
            store.add_trials("s", [draft()])
        assert proc.wait(timeout=120) == 0
    finally:
        proc.kill()
        proc.wait()
    assert [t.id for t in store.list_trials("s")] == list(range(1, 601))
    store.close()


def test_large_vocabulary_roundtrips(backend):
    """A 50k x 1024 float32 table (200 MB), the size of a large model's vocabulary."""
    rng = np.random.default_rng(0)
    n, dim = 50_000, 1024
    table = rng.standard_normal((n, dim), dtype=np.float32)
    vocab = Vocabulary(tuple(f"tok{i}" for i in range(n)), tuple(range(n)), table)
    store = backend.open()
    start = time.perf_counter()
    assert store.put_vocabulary(vocab)
    if backend.persistent:
        store.close()
        store = backend.open()
    got = store.get_vocabulary(vocab.id)
    elapsed = time.perf_counter() - start
    assert got.embeddings.shape == (n, dim)
    assert np.array_equal(got.embeddings, table)
    assert got.tokens[-1] == f"tok{n - 1}" and got.token_ids == vocab.token_ids
    assert store.check_integrity() == []
    assert elapsed < 60, f"storing and loading 200 MB took {elapsed:.1f} s"


# --- URLs --------------------------------------------------------------------------------
def test_urls_pick_the_backend_and_driver(tmp_path):
    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgres://u:p@h:5/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgresql+psycopg://u@h/db").drivername == "postgresql+psycopg"
    with pytest.raises(InvalidArgumentError):
        open_storage("mysql://u@h/db")
    with pytest.raises(InvalidArgumentError):
        SqlStorage("mysql+pymysql://u@h/db")
    plain = open_storage(str(tmp_path / "sub" / "dir" / "plain.db"))  # folders are created
    plain.create_study(soft_study("s"))
    assert plain.get_study("s") == soft_study("s")
    plain.close()
    in_memory = SqlStorage("sqlite://")
    in_memory.create_study(soft_study("s"))
    assert [t.id for t in in_memory.add_trials("s", [draft(), draft()])] == [1, 2]
    in_memory.close()


def test_unreachable_postgres_is_unavailable():
    with pytest.raises(UnavailableError, match="127.0.0.1"):
        SqlStorage("postgresql://nobody@127.0.0.1:1/none?connect_timeout=2")


# --- fidelity ------------------------------------------------------------------------------
def test_fidelity_fields_roundtrip(store):
    study = soft_study("pool", pool_size=1000, max_examples=4000, examples_per_trial=32)
    store.create_study(study)
    assert store.get_study("pool") == study
    assert spec_from_json(spec_to_json(study.spec)) == study.spec
    told = draft(1, state=C, value=0.75, examples=(0, 7, 999), value_stderr=0.125,
                 examples_scored=3)
    zero = draft(2, state=C, value=1.0, examples=(5,), value_stderr=0.0, examples_scored=1)
    active = draft(3, examples=tuple(range(0, 1000, 2)))
    plain = draft(4, state=C, value=0.5)
    added = store.add_trials("pool", [told, zero, active, plain])
    assert store.list_trials("pool") == added
    got = store.get_trial("pool", 1)
    assert (got.examples, got.value_stderr, got.examples_scored) == ((0, 7, 999), 0.125, 3)
    assert store.get_trial("pool", 2).value_stderr == 0.0  # told zero is not "not told"
    assert len(store.get_trial("pool", 3).examples) == 500
    p = store.get_trial("pool", 4)
    assert (p.examples, p.value_stderr, p.examples_scored) == ((), None, 0)


def test_spec_without_pool_stores_no_fidelity_keys():
    assert "pool_size" not in spec_to_json(soft_study().spec)


# --- shared storage: change markers and conditional writes ------------------------------
def test_changes_return_the_trials_written_after_a_marker(store):
    from promptbo.server.storage.base import StudyChanges

    store.create_study(soft_study("s"))
    start = store.changes("s", -1)
    assert isinstance(start, StudyChanges) and start.trials == []
    a, b = store.add_trials("s", [draft(1), draft(2)])
    after_add = store.changes("s", start.version)
    assert after_add.version > start.version and [t.id for t in after_add.trials] == [1, 2]
    store.update_trials([b.evolve(state=C, value=1.0)])
    after_tell = store.changes("s", after_add.version)
    assert [(t.id, t.state) for t in after_tell.trials] == [(2, C)]
    assert store.changes("s", after_tell.version).trials == []
    store.update_study(store.get_study("s").evolve(state=StudyState.COMPLETED))
    done = store.changes("s", after_tell.version)
    assert done.version > after_tell.version and done.study.state is StudyState.COMPLETED
    assert done.trials == [] and done.study.spec == soft_study("s").spec
    with pytest.raises(NotFoundError):
        store.changes("nope", 0)


def test_a_conditional_update_writes_only_what_is_still_held(store):
    from promptbo.server.storage.base import StaleWriteError

    store.create_study(soft_study("s"))
    (t,) = store.add_trials("s", [draft(1, client_id="w1", lease_deadline=10.0)])
    mine = t.evolve(state=C, value=1.0)
    other = t.evolve(client_id="w2", lease_deadline=20.0)
    store.update_trials([other], expected=[t])  # re-leased by another writer
    with pytest.raises(StaleWriteError):
        store.update_trials([mine], expected=[t])
    assert store.get_trial("s", 1) == other
    store.update_trials([other.evolve(state=C, value=2.0)], expected=[other])
    with pytest.raises(StaleWriteError):  # completed once: a second completion is refused
        store.update_trials([other.evolve(state=C, value=3.0)], expected=[other])
    assert store.get_trial("s", 1).value == 2.0


def test_writes_conditional_on_the_marker_go_ahead_only_while_it_is_unmoved(store):
    from promptbo.server.storage.base import StaleWriteError

    store.create_study(soft_study("s"))
    v = store.changes("s", -1).version
    (t,) = store.add_trials("s", [draft(1)], since=v)  # nobody wrote since v
    assert store.changes("s", -1).version == v + 1
    for stale in (lambda: store.add_trials("s", [draft(2)], since=v),  # a step behind
                  lambda: store.update_trials([t.evolve(state=C, value=1.0)], since=v)):
        with pytest.raises(StaleWriteError):
            stale()
    assert [x.id for x in store.list_trials("s")] == [1] and store.get_trial("s", 1) == t
    assert store.changes("s", -1).version == v + 1  # a refused write moves nothing
    many = store.add_trials("s", [draft(2), draft(3)], since=v + 1)
    store.update_trials([x.evolve(state=C, value=2.0) for x in [t, *many]], since=v + 2)
    assert store.changes("s", -1).version == v + 3
    assert [x.state for x in store.list_trials("s")] == [C, C, C]
    store.create_study(soft_study("u"))
    (u,) = store.add_trials("u", [draft(1)])
    with pytest.raises(InvalidArgumentError):  # a marker is one study's
        store.update_trials([t, u], since=v + 3)


def test_a_study_update_with_expected_is_a_compare_and_set(store):
    from promptbo.server.storage.base import StaleWriteError

    store.create_study(soft_study("s"))
    seen = store.get_study("s")  # max_trials 40
    labelled = seen.evolve(spec=replace(seen.spec, labels={"team": "x"}))
    store.update_study(labelled, expected=seen)
    store.add_trials("s", [draft(1), draft(2)])  # trial writes do not make it fail
    grown = seen.evolve(spec=replace(seen.spec, max_trials=9))
    with pytest.raises(StaleWriteError):  # from a stale view: the labels would be lost
        store.update_study(grown, expected=seen)
    assert store.get_study("s").spec.labels == {"team": "x"}
    cut = labelled.evolve(spec=replace(labelled.spec, max_trials=1))
    with pytest.raises(StaleWriteError):  # the study holds 2 trials
        store.update_study(cut, expected=labelled)
    store.update_study(labelled.evolve(spec=replace(labelled.spec, max_trials=2)),
                       expected=labelled)
    assert store.get_study("s").spec.max_trials == 2
    with pytest.raises(NotFoundError):
        store.update_study(soft_study("nope"), expected=soft_study("nope"))


def test_a_guarded_handout_counts_what_is_stored(store):
    from promptbo.server.storage.base import HandoutGuard, StaleWriteError

    store.create_study(soft_study("s"))
    store.add_trials("s", [draft(1, state=C, value=1.0), draft(2, lease_deadline=5.0),
                           draft(3, lease_deadline=50.0)])
    store.add_trials("s", [draft(4, state=C, value=0.5, source="reference")])
    budget = HandoutGuard(max_trials=4, now=10.0)
    store.add_trials("s", [draft(5)], guard=budget)  # 3 counted + 1 = 4
    with pytest.raises(StaleWriteError):
        store.add_trials("s", [draft(6)], guard=budget)
    cap = HandoutGuard(max_active=2, now=10.0)  # only trial 3 is held (leases ran out)
    store.add_trials("s", [draft(6, lease_deadline=60.0)], guard=cap)
    with pytest.raises(StaleWriteError):
        store.add_trials("s", [draft(7)], guard=cap)
    assert [t.id for t in store.list_trials("s")] == [1, 2, 3, 4, 5, 6]


def test_a_guarded_batch_leaves_failed_trials_out_of_the_budget(store):
    from promptbo.server.storage.base import HandoutGuard, StaleWriteError

    store.create_study(soft_study("s"))
    store.add_trials("s", [draft(1, state=F), draft(2, state=F), draft(3, state=C, value=1.0)])
    budget = HandoutGuard(max_trials=3, now=10.0)
    # Ids reach 5, yet only 3 trials count: 1 completed + 2 new.
    store.add_trials("s", [draft(4, lease_deadline=20.0), draft(5, lease_deadline=5.0)],
                     guard=budget)
    with pytest.raises(StaleWriteError):
        store.add_trials("s", [draft(6)], guard=budget)
    with pytest.raises(StaleWriteError):  # trial 4 is held: 1 + 2 > 2
        store.add_trials("s", [draft(6), draft(7)], guard=HandoutGuard(max_active=2, now=10.0))
    store.add_trials("s", [draft(6, lease_deadline=20.0)], guard=HandoutGuard(max_active=2,
                                                                               now=10.0))
    assert [t.id for t in store.list_trials("s")] == [1, 2, 3, 4, 5, 6]


_GUARDED_PROCESS = """
import sys
from promptbo.server.domain import Prompt, Trial, TrialState
from promptbo.server.storage.base import HandoutGuard, StaleWriteError
from promptbo.server.storage.sql import SqlStorage
s = SqlStorage(sys.argv[1])
me, taken, completed_here = sys.argv[2], 0, 0
while True:
    try:
        (t,) = s.add_trials("s", [Trial("s", 0, TrialState.ACTIVE, Prompt(token_ids=(1,)),
                                        client_id=me, lease_deadline=1e12)],
                            guard=HandoutGuard(max_trials=int(sys.argv[3])))
    except StaleWriteError:
        break
    taken += 1
    for other in s.list_trials("s", TrialState.ACTIVE):  # race the others to complete
        try:
            s.update_trials([other.evolve(state=TrialState.COMPLETED, value=1.0)],
                            expected=[other])
            completed_here += 1
        except StaleWriteError:
            pass
print(taken, completed_here, flush=True)
s.close()
"""


def test_processes_racing_guarded_handouts_and_completions_stay_exact(sql_backend):
    """Three processes (replicas) hand out trials against one budget and race to complete
    every active trial: the budget holds exactly and each trial is completed once."""
    store = sql_backend.open()
    store.create_study(soft_study("s"))
    budget = 90
    procs = [
        subprocess.Popen([sys.executable, "-c", _GUARDED_PROCESS, sql_backend.url, f"p{i}",
                          str(budget)], stdout=subprocess.PIPE, text=True)
        for i in range(3)
    ]
    try:
        outputs = [p.communicate(timeout=240)[0].split() for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert all(p.returncode == 0 for p in procs)
    taken = sum(int(o[0]) for o in outputs)
    completed = sum(int(o[1]) for o in outputs)
    trials = store.list_trials("s")
    assert taken == budget and [t.id for t in trials] == list(range(1, budget + 1))
    stored_completed = sum(t.state is C for t in trials)
    assert completed == stored_completed  # no completion acknowledged twice
    assert store.check_integrity() == []


def test_a_study_created_again_refuses_writes_conditional_on_the_old_ones_marker(store):
    """A replica that cached a deleted study must not write into its namesake: the new
    study's marker starts above every marker the old one reached."""
    from promptbo.server.storage.base import StaleWriteError

    store.create_study(soft_study("s"))
    store.add_trials("s", [draft(1)])
    old = store.changes("s", -1).version
    store.delete_study("s")
    store.create_study(soft_study("s"))
    new = store.changes("s", -1).version
    assert new > old
    with pytest.raises(StaleWriteError):
        store.add_trials("s", [draft(1)], since=old)
    assert store.list_trials("s") == []
    (t,) = store.add_trials("s", [draft(1)], since=new)
    assert t.id == 1 and store.changes("s", new).version == new + 1


def test_reopening_a_postgresql_database_drops_the_replaced_one_trial_function(sql_backend):
    if sql_backend.name != "postgresql":
        pytest.skip("the write functions are PostgreSQL's")
    first = sql_backend.open()
    with first.engine.begin() as conn:  # as an earlier release created it
        conn.exec_driver_sql(
            "CREATE FUNCTION promptbo_add_trial(text, text, text, bytea, text, "
            "double precision, double precision, text, text, double precision, "
            "double precision, text, text, bigint, bigint, double precision) "
            "RETURNS bigint LANGUAGE sql AS 'SELECT 0::bigint'"
        )
    first.close()
    again = sql_backend.open()
    with again.engine.connect() as conn:
        names = set(conn.exec_driver_sql(
            "SELECT proname FROM pg_proc WHERE proname LIKE 'promptbo_%%' "
            "AND pronamespace = to_regnamespace(current_schema())::oid").scalars())
    assert names == {"promptbo_add_trials", "promptbo_update_trials"}
