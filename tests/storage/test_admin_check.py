"""``promptbo admin check`` on a real SQLite file: a sound store exits 0, one corrupted by
direct SQL exits 1 naming each problem, a store that cannot be checked exits 2; the check
writes nothing and runs beside a writer holding the database."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
import sqlalchemy as sa

from promptbo.cli import main
from promptbo.errors import UnavailableError
from promptbo.server.domain import (
    Pool,
    PoolSpace,
    Prompt,
    SoftPromptSpace,
    Study,
    StudySpec,
    Trial,
    TrialState,
)
from promptbo.server.storage.sql import SqlStorage

A, C = TrialState.ACTIVE, TrialState.COMPLETED


@pytest.fixture
def db(tmp_path):
    """A sound store: a soft study with two completed trials and one active, and a pool
    study on a stored pool."""
    path = tmp_path / "store.db"
    store = SqlStorage(f"sqlite:///{path}")
    store.create_study(Study(name="soft", spec=StudySpec(space=SoftPromptSpace(1, 2))))
    vector = np.zeros(2)
    store.add_trials("soft", [
        Trial(study="soft", id=0, state=C, prompt=Prompt(vector=vector), value=0.5),
        Trial(study="soft", id=0, state=C, prompt=Prompt(vector=vector), value=0.25),
        Trial(study="soft", id=0, state=A, prompt=Prompt(vector=vector)),
    ])
    pool = Pool(("a", "b", "c"), np.eye(3, dtype=np.float32), "enc")
    store.put_pool(pool)
    store.create_study(Study(name="pooled", spec=StudySpec(space=PoolSpace(pool.id))))
    store.close()
    return path


def test_a_read_only_storage_reads_and_refuses_writes(sql_backend):
    """On every SQL backend: what ``admin check`` opens sees the data and writes nothing."""
    first = sql_backend.open()
    first.create_study(Study(name="s", spec=StudySpec(space=SoftPromptSpace(1, 2))))
    reader = SqlStorage(sql_backend.url, read_only=True)
    try:
        assert [s.name for s in reader.list_studies()] == ["s"]
        assert reader.check_integrity() == []
        assert reader.count_trials("s") == {A: 0, C: 0, TrialState.FAILED: 0}
        with pytest.raises((UnavailableError, sa.exc.DBAPIError), match="read-?only"):
            reader.create_study(Study(name="t", spec=StudySpec(space=SoftPromptSpace(1, 2))))
    finally:
        reader.close()
    assert [s.name for s in first.list_studies()] == ["s"]


def check(capsys, path, *extra: str) -> tuple[int, str, str]:
    try:
        rc = main(["admin", "check", "--storage", f"sqlite:///{path}", *extra])
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 2
    out, err = capsys.readouterr()
    return rc, out, err


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_sound_store_exits_0_with_its_inventory_and_is_left_untouched(capsys, db):
    before = digest(db)
    rc, out, err = check(capsys, db)
    assert (rc, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "2 studies, 3 trials"
    assert lines[1].split() == ["pooled", "active", "0", "active", "0", "completed", "0",
                                "failed"]
    assert lines[2].split() == ["soft", "active", "1", "active", "2", "completed", "0",
                                "failed"]
    assert lines[3:] == ["no problems found"]
    assert digest(db) == before


def test_a_corrupted_store_exits_1_and_names_each_problem(capsys, db):
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE trials SET value = NULL WHERE study = 'soft' AND id = 2")
        conn.execute("DELETE FROM pools")
    pool_id = SqlStorage(f"sqlite:///{db}", read_only=True).get_study("pooled").spec.space
    rc, out, _ = check(capsys, db)
    assert rc == 1
    problems = [line for line in out.splitlines() if line.startswith("problem: ")]
    assert problems == [
        "problem: study 'soft' trial 2: completed without value",
        f"problem: study 'pooled': pool {pool_id.pool_id!r} is missing",
    ]
    assert out.splitlines()[-1] == "2 problems found"

    rc, out, _ = check(capsys, db, "--json")
    doc = json.loads(out)
    assert rc == 1 and doc["sound"] is False
    assert doc["problems"] == [p[len("problem: "):] for p in problems]
    assert {s["name"]: s["trials"] for s in doc["studies"]} == {
        "pooled": {"active": 0, "completed": 0, "failed": 0},
        "soft": {"active": 1, "completed": 2, "failed": 0},
    }


def test_a_spec_that_does_not_decode_is_a_problem_not_a_crash(capsys, db):
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE studies SET spec = '{\"space\": {\"kind\": \"cube\"}}' "
                     "WHERE name = 'soft'")
    rc, out, _ = check(capsys, db)
    assert rc == 1
    assert "problem: study 'soft': unreadable spec" in out
    assert out.splitlines()[-1] == "1 problem found"


@pytest.mark.parametrize("make, message", [
    (lambda path: None, "no SQLite database at"),
    (lambda path: path.write_bytes(b"not a database at all" * 100), "is not a promptbo database"),
    (lambda path: sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.commit(),
     "is not a promptbo database (no promptbo_schema table)"),
])
def test_a_store_that_cannot_be_checked_exits_2_with_the_reason(capsys, tmp_path, make,
                                                                  message):
    path = tmp_path / "other.db"
    make(path)
    existed = path.exists()
    rc, out, err = check(capsys, path)
    assert rc == 2 and out == ""
    assert err.startswith("error: ") and message in err
    assert path.exists() == existed  # nothing created


def test_an_older_schema_is_refused_not_upgraded(capsys, db):
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE promptbo_schema SET version = 1")
    rc, _, err = check(capsys, db)
    assert rc == 2 and "schema version 1" in err
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT version FROM promptbo_schema").fetchall() == [(1,)]


def test_the_check_reads_while_a_writer_holds_the_database(capsys, db):
    writer = sqlite3.connect(db, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE trials SET value = 9.0 WHERE study = 'soft' AND id = 1")
        rc, out, _ = check(capsys, db)  # a read-only snapshot: no wait for the writer
        assert rc == 0 and out.splitlines()[-1] == "no problems found"
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_memory_and_a_missing_server_extra_are_usage_errors(capsys, monkeypatch):
    rc = main(["admin", "check", "--storage", "memory:"])
    assert rc == 2 and "in-memory store starts empty" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "promptbo.server.storage", None)
    rc = main(["admin", "check", "--storage", "sqlite:///x.db"])
    assert rc == 2 and "needs the server extra" in capsys.readouterr().err


def test_the_installed_command_and_a_lean_client_import(db):
    done = subprocess.run([sys.executable, "-m", "promptbo.cli", "admin", "check", "--storage",
                           str(db)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "no problems found"
    probe = ("import sys, promptbo.cli; "
             "print(sorted(m for m in sys.modules if m.startswith(('promptbo.server', 'torch', "
             "'sqlalchemy'))))")
    lean = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60)
    assert lean.stdout.strip() == "[]", lean.stderr
