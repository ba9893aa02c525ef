"""SQL storage on SQLAlchemy Core: SQLite (the embedded default) and PostgreSQL.

Schema (version :data:`SCHEMA_VERSION`, recorded in ``promptbo_schema``)::

    vocabularies  id PK, size, dim, tokens (JSON text), token_ids (little-endian int64
                  blob), embeddings (little-endian float32 blob, size x dim, row-major)
    pools         id PK, size, dim, texts (JSON text), embedding_model, embeddings
                  (little-endian float32 blob, size x dim, row-major)
    studies       name PK, spec (JSON text, see promptbo.spec), state, create_time, request_id,
                  version (the change marker)
    trials        (study, id) PK, state, prompt (JSON text: the prompt, a pool prompt's
                  index as its "pool_index" key, and the trial's fidelity: examples,
                  value_stderr, examples_scored), vector (blob), client_id,
                  lease_deadline, value, metrics (JSON text), failure_reason,
                  create_time, complete_time, source, principal, version (the study's
                  marker when the trial was last written); indexes (study, state),
                  (study, version)

Version 2 added ``trials.principal``, version 3 the change markers ``studies.version``
and ``trials.version``; an older database is upgraded in place on open.

JSON is kept in text columns written with ``ensure_ascii``, so tokens holding NUL or
control characters and metrics holding NaN survive on both engines. A soft prompt's
vector is a float32 blob when every entry is exactly a float32 (what the service hands
out), else a float64 blob; either way it reads back bit for bit.

A storage opened with ``read_only=True`` (``promptbo admin check``) writes nothing: it
neither creates nor upgrades the schema, refuses a database that is missing or not a current
promptbo database, opens a SQLite file in SQLite's read-only mode and makes every
PostgreSQL transaction READ ONLY.

Every method runs in one transaction. SQLite runs in WAL mode; writers of one database
file are serialized by an in-process lock and start with ``BEGIN IMMEDIATE`` under a
generous busy timeout, so concurrent threads (and a second process) wait instead of
failing with "database is locked"; adding trials reads ``max(id)`` and inserts
``max(id) + 1, ...`` inside that transaction.

Every write of trials runs in one transaction that first bumps the study's change marker
with ``UPDATE studies SET version = version + 1 ... RETURNING version``: that locks the
study row, so writers of one study take turns (in every server process alike: this is
what makes several replicas on one PostgreSQL exact), ids ``max(id) + 1, ...`` cannot
race, and every written trial carries the marker it was written under, which
:meth:`SqlStorage.changes` reads back in one statement. PostgreSQL is therefore always
``shared``; SQLite is when the server is told so. On PostgreSQL the two writes of the
ask/tell path are one statement each in autocommit: functions created with the schema,
``promptbo_add_trials`` (locks the study row, checks the caller's marker, counts against
the guard, inserts) and ``promptbo_update_trials`` (locks, checks the marker and each
trial's expected hold, updates). A pooled connection is checked
without a round trip when it is handed out: one the server has closed (a restart, an
idle timeout) has data or EOF waiting on its socket and is replaced.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import select
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.pool import NullPool, StaticPool
from sqlalchemy.schema import CreateIndex, CreateTable

from promptbo.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PromptboError,
    UnavailableError,
)
from promptbo.server.domain import (
    HardPromptSpace,
    Pool,
    PoolSpace,
    Prompt,
    Study,
    StudySpec,
    StudyState,
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
    same_study,
)
from promptbo.server.storage.memory import (
    MAX_TRIAL_ID,
    check_limit,
    check_text,
    check_trials_text,
    one_study,
    pool_not_found,
    study_not_found,
    trial_not_found,
    vocabulary_not_found,
)
from promptbo.spec import spec_from_json, spec_to_json

SCHEMA_VERSION = 3
SQLITE_BUSY_TIMEOUT_MS = 120_000
#: PostgreSQL connections kept open, and opened beyond those under load: together as many
#: as the server's RPC threads (32 by default), so no call waits for a connection.
PG_POOL_SIZE, PG_MAX_OVERFLOW = 8, 24

metadata = sa.MetaData()

schema_table = sa.Table(
    "promptbo_schema",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
)

vocabularies = sa.Table(
    "vocabularies",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("dim", sa.Integer, nullable=False),
    sa.Column("tokens", sa.Text, nullable=False),
    sa.Column("token_ids", sa.LargeBinary, nullable=False),
    sa.Column("embeddings", sa.LargeBinary, nullable=False),
)

pools = sa.Table(
    "pools",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("dim", sa.Integer, nullable=False),
    sa.Column("texts", sa.Text, nullable=False),
    sa.Column("embedding_model", sa.Text, nullable=False),
    sa.Column("embeddings", sa.LargeBinary, nullable=False),
)

studies = sa.Table(
    "studies",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("create_time", sa.Double, nullable=False),
    sa.Column("request_id", sa.Text, nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False, server_default="0"),
)

trials = sa.Table(
    "trials",
    metadata,
    sa.Column(
        "study",
        sa.String(200),
        sa.ForeignKey("studies.name", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("prompt", sa.Text, nullable=False),
    sa.Column("vector", sa.LargeBinary, nullable=True),
    sa.Column("client_id", sa.Text, nullable=False),
    sa.Column("lease_deadline", sa.Double, nullable=False),
    sa.Column("value", sa.Double, nullable=True),
    sa.Column("metrics", sa.Text, nullable=False),
    sa.Column("failure_reason", sa.Text, nullable=False),
    sa.Column("create_time", sa.Double, nullable=False),
    sa.Column("complete_time", sa.Double, nullable=False),
    sa.Column("source", sa.String(32), nullable=False),
    sa.Column("principal", sa.Text, nullable=False, server_default=""),
    sa.Column("version", sa.BigInteger, nullable=False, server_default="0"),
)
trials_by_state = sa.Index("ix_trials_study_state", trials.c.study, trials.c.state)
trials_by_version = sa.Index("ix_trials_study_version", trials.c.study, trials.c.version)

# The statements of the ask/tell path, built once: building a statement per call costs
# more than running it on SQLite (SQLAlchemy caches the compiled form by statement).
_STUDY_ROW = sa.select(studies).where(studies.c.name == sa.bindparam("name"))
# Locks the study row and bumps its change marker: the first statement of every write of
# its trials (the study row lock orders the writers of one study).
_BUMP_VERSION = (
    studies.update()
    .where(studies.c.name == sa.bindparam("study_name"))
    .values(version=studies.c.version + 1)
    .returning(studies.c.version)
)
_counted = sa.and_(trials.c.source != "reference")
_active = sa.and_(_counted, trials.c.state == TrialState.ACTIVE.value)
_LAST_TRIAL_ID = sa.select(sa.func.max(trials.c.id)).where(
    trials.c.study == sa.bindparam("study")
)
# The active trials whose lease runs at "now" (a handout guard's max_active; an index
# range over the study's active trials, never a scan of its completed ones).
_LEASED_TRIALS = sa.select(sa.func.count()).where(
    trials.c.study == sa.bindparam("study"), _active,
    trials.c.lease_deadline >= sa.bindparam("now", type_=sa.Double),
)
# The completed plus active trials a study's budget counts (see HandoutGuard).
_BUDGET_TRIALS = sa.select(sa.func.count()).where(
    trials.c.study == sa.bindparam("study"), _counted,
    trials.c.state.in_([TrialState.ACTIVE.value, TrialState.COMPLETED.value]),
)
_INSERT_TRIALS = trials.insert()
_UPDATE_TRIAL = (
    trials.update()
    .where(trials.c.study == sa.bindparam("key_study"), trials.c.id == sa.bindparam("key_id"))
    .values({c.name: sa.bindparam(c.name) for c in trials.c if c.name not in ("study", "id")})
)
# The same, only while the stored trial still has the expected state, holder and lease.
_UPDATE_HELD_TRIAL = _UPDATE_TRIAL.where(
    trials.c.state == sa.bindparam("held_state"),
    trials.c.client_id == sa.bindparam("held_client_id"),
    trials.c.lease_deadline == sa.bindparam("held_lease_deadline", type_=sa.Double),
)
_TRIAL_LABELS = [c.label(f"t_{c.name}") for c in trials.c]
# The study row and its trials written after the marker was ``since``, in one statement.
_CHANGES = (
    sa.select(
        studies.c.name, studies.c.spec, studies.c.state, studies.c.create_time,
        studies.c.request_id, studies.c.version, *_TRIAL_LABELS,
    )
    .select_from(studies.outerjoin(trials, sa.and_(
        trials.c.study == studies.c.name, trials.c.version > sa.bindparam("since")
    )))
    .where(studies.c.name == sa.bindparam("name"))
    .order_by(trials.c.id)
)


_DROP_OLD_FUNCTIONS = """
DROP FUNCTION IF EXISTS promptbo_add_trial(
    text, text, text, bytea, text, double precision, double precision, text, text,
    double precision, double precision, text, text, bigint, bigint, double precision)
"""

# PostgreSQL only: the writes of the ask/tell path, each one statement (one round trip)
# in autocommit, the study row locked for the few statements inside the function, not for
# network round trips. Each statement of a volatile function reads a fresh snapshot, so
# what it reads after the lock includes every trial committed before. Rows come as one
# array per column. A write conditional on the caller's marker (``p_since`` not NULL)
# checks it first, so a replica learns from the write whether anyone else wrote.
#
# promptbo_add_trials inserts trials with ids max(id) + 1, ...; returns the first id,
# 0 when the guard leaves no room, -1 when there is no such study, -2 when the marker is
# not ``p_since``; nothing is written unless the result is positive.
_ADD_TRIALS_FUNCTION = """
CREATE OR REPLACE FUNCTION promptbo_add_trials(
    p_study text, p_since bigint, p_state text[], p_prompt text[], p_vector bytea[],
    p_client_id text[], p_lease_deadline double precision[], p_value double precision[],
    p_metrics text[], p_failure_reason text[], p_create_time double precision[],
    p_complete_time double precision[], p_source text[], p_principal text[],
    p_max_trials bigint, p_max_active bigint, p_now double precision)
    RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    marker bigint; last bigint; budget bigint; held bigint; n bigint;
BEGIN
    SELECT version INTO marker FROM studies WHERE name = p_study FOR UPDATE;
    IF NOT FOUND THEN
        RETURN -1;
    END IF;
    IF p_since IS NOT NULL AND marker <> p_since THEN
        RETURN -2;
    END IF;
    n := cardinality(p_state);
    SELECT coalesce(max(id), 0) INTO last FROM trials WHERE study = p_study;
    -- Ids are distinct and positive: at most "last" trials are stored, so the budget is
    -- counted only near its end; the leased ones through the index over active trials.
    IF p_max_trials > 0 AND last + n > p_max_trials THEN
        SELECT count(*) INTO budget FROM trials
         WHERE study = p_study AND source <> 'reference' AND state IN ('active', 'completed');
        IF budget + n > p_max_trials THEN
            RETURN 0;
        END IF;
    END IF;
    IF p_max_active > 0 THEN
        SELECT count(*) INTO held FROM trials
         WHERE study = p_study AND state = 'active' AND source <> 'reference'
           AND lease_deadline >= p_now;
        IF held + n > p_max_active THEN
            RETURN 0;
        END IF;
    END IF;
    UPDATE studies SET version = marker + 1 WHERE name = p_study;
    INSERT INTO trials (study, id, state, prompt, vector, client_id, lease_deadline, value,
                        metrics, failure_reason, create_time, complete_time, source,
                        principal, version)
    SELECT p_study, last + r.i, r.state, r.prompt, r.vector, r.client_id, r.lease_deadline,
           r.value, r.metrics, r.failure_reason, r.create_time, r.complete_time, r.source,
           r.principal, marker + 1
      FROM unnest(p_state, p_prompt, p_vector, p_client_id, p_lease_deadline, p_value,
                  p_metrics, p_failure_reason, p_create_time, p_complete_time, p_source,
                  p_principal) WITH ORDINALITY
           AS r(state, prompt, vector, client_id, lease_deadline, value, metrics,
                failure_reason, create_time, complete_time, source, principal, i);
    RETURN last + 1;
END $$
"""
# promptbo_update_trials replaces trials of one study by id; with p_held, only while each
# still has its expected state, holder and lease. Returns the study's new marker, -1 when
# there is no such study, -2 when the marker is not ``p_since``, -3 when a trial is
# missing, 0 when one is no longer as expected; nothing is written unless positive. It
# goes trial by trial, each statement on the whole primary key, so the plan is an index
# lookup whatever the table's statistics say (a join against the unnested ids was planned,
# for a study grown since the last ANALYZE, as a scan of its trials; `python -m
# benchmarks.storage_calls --stored 0,1000,10000` shows the difference).
_UPDATE_TRIALS_FUNCTION = """
CREATE OR REPLACE FUNCTION promptbo_update_trials(
    p_study text, p_since bigint, p_id integer[], p_state text[], p_prompt text[],
    p_vector bytea[], p_client_id text[], p_lease_deadline double precision[],
    p_value double precision[], p_metrics text[], p_failure_reason text[],
    p_create_time double precision[], p_complete_time double precision[], p_source text[],
    p_principal text[], p_held boolean, p_held_state text[], p_held_client_id text[],
    p_held_lease_deadline double precision[])
    RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    marker bigint; i integer; cur record; stale boolean := false;
BEGIN
    SELECT version INTO marker FROM studies WHERE name = p_study FOR UPDATE;
    IF NOT FOUND THEN
        RETURN -1;
    END IF;
    IF p_since IS NOT NULL AND marker <> p_since THEN
        RETURN -2;
    END IF;
    FOR i IN 1 .. coalesce(cardinality(p_id), 0) LOOP
        SELECT state, client_id, lease_deadline INTO cur
          FROM trials WHERE study = p_study AND id = p_id[i];
        IF NOT FOUND THEN
            RETURN -3;
        END IF;
        stale := stale OR (p_held AND (cur.state IS DISTINCT FROM p_held_state[i]
                                       OR cur.client_id IS DISTINCT FROM p_held_client_id[i]
                                       OR cur.lease_deadline IS DISTINCT FROM
                                          p_held_lease_deadline[i]));
    END LOOP;
    IF stale THEN
        RETURN 0;
    END IF;
    UPDATE studies SET version = marker + 1 WHERE name = p_study;
    FOR i IN 1 .. coalesce(cardinality(p_id), 0) LOOP
        UPDATE trials
           SET state = p_state[i], prompt = p_prompt[i], vector = p_vector[i],
               client_id = p_client_id[i], lease_deadline = p_lease_deadline[i],
               value = p_value[i], metrics = p_metrics[i],
               failure_reason = p_failure_reason[i], create_time = p_create_time[i],
               complete_time = p_complete_time[i], source = p_source[i],
               principal = p_principal[i], version = marker + 1
         WHERE study = p_study AND id = p_id[i];
    END LOOP;
    RETURN marker + 1;
END $$
"""
_TRIAL_ARRAYS = (
    ("state", "text"), ("prompt", "text"), ("vector", "bytea"), ("client_id", "text"),
    ("lease_deadline", "float8"), ("value", "float8"), ("metrics", "text"),
    ("failure_reason", "text"), ("create_time", "float8"), ("complete_time", "float8"),
    ("source", "text"), ("principal", "text"),
)


def _arrays(names: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f"CAST(:{c} AS {t}[])" for c, t in names)


_CALL_ADD_TRIALS = sa.text(
    f"SELECT promptbo_add_trials(:study, CAST(:since AS bigint), {_arrays(_TRIAL_ARRAYS)}, "
    ":max_trials, :max_active, CAST(:now AS float8))"
)
_CALL_UPDATE_TRIALS = sa.text(
    "SELECT promptbo_update_trials(:study, CAST(:since AS bigint), CAST(:id AS integer[]), "
    f"{_arrays(_TRIAL_ARRAYS)}, :held, "
    + _arrays([("held_state", "text"), ("held_client_id", "text"),
               ("held_lease_deadline", "float8")])
    + ")"
)


def _columns(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, list[Any]]:
    """The rows as one list per column (the arrays of the PostgreSQL functions)."""
    return {c: [r[c] for r in rows] for c in names}


# One lock per SQLite file, shared by every SqlStorage of this process that opens it.
_FILE_LOCKS: dict[str, threading.Lock] = {}
_FILE_LOCKS_GUARD = threading.Lock()


def _table(row) -> np.ndarray:
    """The ``size x dim`` float32 embedding table of a vocabulary or pool row."""
    return np.frombuffer(row.embeddings, dtype="<f4").reshape(row.size, row.dim)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=True, separators=(",", ":"))


# --- rows <-> domain objects ---------------------------------------------------------
def _study_row(study: Study) -> dict[str, Any]:
    return {
        "name": study.name,
        "spec": spec_to_json(study.spec),
        "state": study.state.value,
        "create_time": float(study.create_time),
        "request_id": study.request_id,
    }


@functools.lru_cache(maxsize=256)
def _spec(text: str) -> StudySpec:
    """A stored spec decoded, once per distinct text (read on every change check)."""
    return spec_from_json(text)


def _study_from_row(row: Any) -> Study:
    return Study(
        name=row.name,
        spec=spec_from_json(row.spec),
        state=StudyState(row.state),
        create_time=row.create_time,
        request_id=row.request_id,
    )


def _trial_row(trial: Trial) -> dict[str, Any]:
    p = trial.prompt
    prompt_doc: dict[str, Any] = {
        "token_ids": [int(i) for i in p.token_ids],
        "tokens": list(p.tokens),
        "text": p.text,
    }
    if p.pool_index is not None:
        prompt_doc["pool_index"] = int(p.pool_index)
    vector = None
    if len(p.vector):
        v64 = np.asarray(p.vector, dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            v32 = v64.astype(np.float32)
        # float32 halves the size and loses nothing when every entry is a float32 already
        # (NaN compares unequal, so such vectors keep float64).
        exact32 = bool(np.array_equal(v32.astype(np.float64), v64))
        vec = v32 if exact32 else v64
        prompt_doc["vector_dtype"] = "<f4" if exact32 else "<f8"
        vector = vec.astype(prompt_doc["vector_dtype"], copy=False).tobytes()
    # Fidelity rides in the prompt document (absent keys: none), so the schema is unchanged.
    if trial.examples:
        prompt_doc["examples"] = [int(i) for i in trial.examples]
    if trial.value_stderr is not None:
        prompt_doc["value_stderr"] = float(trial.value_stderr)
    if trial.examples_scored:
        prompt_doc["examples_scored"] = int(trial.examples_scored)
    return {
        "study": trial.study,
        "id": int(trial.id),
        "state": trial.state.value,
        "prompt": _dumps(prompt_doc),
        "vector": vector,
        "client_id": trial.client_id,
        "lease_deadline": float(trial.lease_deadline),
        "value": None if trial.value is None else float(trial.value),
        "metrics": _dumps({str(k): float(v) for k, v in trial.metrics.items()}),
        "failure_reason": trial.failure_reason,
        "create_time": float(trial.create_time),
        "complete_time": float(trial.complete_time),
        "source": trial.source,
        "principal": trial.principal,
    }


def _trial_from_row(row: Any) -> Trial:
    doc = json.loads(row.prompt)
    vector: tuple[float, ...] = ()
    if row.vector is not None:
        vector = tuple(np.frombuffer(row.vector, dtype=doc["vector_dtype"]).tolist())
    prompt = Prompt(
        token_ids=tuple(doc["token_ids"]),
        tokens=tuple(doc["tokens"]),
        text=doc["text"],
        vector=vector,
        pool_index=doc.get("pool_index"),
    )
    return Trial(
        study=row.study,
        id=row.id,
        state=TrialState(row.state),
        prompt=prompt,
        client_id=row.client_id,
        lease_deadline=row.lease_deadline,
        value=row.value,
        metrics={k: float(v) for k, v in json.loads(row.metrics).items()},
        failure_reason=row.failure_reason,
        create_time=row.create_time,
        complete_time=row.complete_time,
        source=row.source,
        principal=row.principal,
        examples=tuple(doc.get("examples", ())),
        value_stderr=doc.get("value_stderr"),
        examples_scored=doc.get("examples_scored", 0),
    )


def _trial_values(row: dict[str, Any]) -> dict[str, Any]:
    """The columns an update may change (all but the key)."""
    return {k: v for k, v in row.items() if k not in ("study", "id")}


# --- the backend ---------------------------------------------------------------------
def _read_only_transaction(conn: Connection) -> None:
    """Makes a PostgreSQL transaction refuse writes (the first statement of each)."""
    conn.exec_driver_sql("SET TRANSACTION READ ONLY")


def _replace_closed_connections(engine: sa.Engine) -> None:
    """Replaces a pooled PostgreSQL connection the server has closed when it is checked out.

    A healthy idle connection has nothing to read; one the server ended has its
    termination message or EOF waiting on the socket. Polling it costs no round trip, where
    ``pool_pre_ping`` sends a query per checkout. A connection that dies while in use
    fails that call (UnavailableError) and SQLAlchemy then renews the whole pool.
    """

    @sa.event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn, _record, _proxy) -> None:
        if dbapi_conn.closed or dbapi_conn.broken:
            raise sa.exc.DisconnectionError("connection closed")
        readable, _, _ = select.select([dbapi_conn.fileno()], [], [], 0)
        if readable:
            raise sa.exc.DisconnectionError("the server closed the connection")


def _guard_allows(conn: Connection, study: str, guard: HandoutGuard, last: int, n: int) -> bool:
    """Whether ``guard`` lets a study whose highest trial id is ``last`` take ``n`` more
    active trials. Ids are distinct and positive, so the study holds at most ``last``
    trials: its budget is counted only when ``last + n`` could pass ``max_trials`` (near
    the end of a budget), and the leased trials through the index over active ones. An
    ask thus costs the same with 10 trials stored or 10,000. ``promptbo_add_trials`` does
    the same in the database."""
    if guard.max_trials and last + n > guard.max_trials:
        budget = conn.execute(_BUDGET_TRIALS, {"study": study}).scalar() or 0
        if budget + n > guard.max_trials:
            return False
    if guard.max_active:
        held = conn.execute(_LEASED_TRIALS, {"study": study, "now": guard.now}).scalar() or 0
        if held + n > guard.max_active:
            return False
    return True


def normalize_url(url: str) -> sa.URL:
    """Parses ``url``; plain ``postgresql://``/``postgres://`` select the psycopg 3 driver."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError as e:
        raise InvalidArgumentError(f"cannot parse storage URL: {e}") from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise InvalidArgumentError(
            f"unsupported database {parsed.get_backend_name()!r}: use sqlite:///FILE or "
            "postgresql://USER@HOST/DB"
        )
    return parsed


class SqlStorage(Storage):
    """Studies, trials and vocabularies in a SQL database named by a SQLAlchemy URL.

    Args:
        url: ``sqlite:///path.db`` (parent folders are created), ``sqlite://`` for a
            private in-memory database, or ``postgresql://user:pass@host:port/db``
            (``postgresql+psycopg://`` is the same; needs the ``postgres`` extra).
        read_only: only read: the schema is checked, not created or upgraded (an older
            or missing one raises FailedPreconditionError), a SQLite file must exist
            (NotFoundError) and is opened read-only; PostgreSQL transactions are READ ONLY.
    """

    def __init__(self, url: str, read_only: bool = False) -> None:
        self.url = normalize_url(url)
        self.read_only = read_only
        self._sqlite = self.url.get_backend_name() == "sqlite"
        self.local = self._sqlite
        self.shared = not self._sqlite
        self._serialize_reads = False
        self._write_lock: threading.Lock | contextlib.nullcontext = contextlib.nullcontext()
        if self._sqlite:
            self.engine = self._sqlite_engine()
            self._autocommit = self.engine  # unused: SQLite writes take the file lock
        else:
            self.engine = sa.create_engine(
                self.url, pool_size=PG_POOL_SIZE, max_overflow=PG_MAX_OVERFLOW
            )
            _replace_closed_connections(self.engine)
            if read_only:
                sa.event.listen(self.engine, "begin", _read_only_transaction)
            # The same pool; its connections run each statement as its own transaction.
            self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        try:
            self._check_schema() if read_only else self._create_schema()
        except BaseException:
            self.engine.dispose()
            raise

    def _sqlite_engine(self) -> sa.Engine:
        database = self.url.database or ""
        connect_args = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
        if database in ("", ":memory:") or self.url.query.get("mode") == "memory":
            if self.read_only:
                raise InvalidArgumentError("an in-memory SQLite database cannot be read-only")
            # One shared connection: every call, read or write, takes the lock.
            engine = sa.create_engine(self.url, poolclass=StaticPool, connect_args=connect_args)
            self._write_lock = threading.Lock()
            self._serialize_reads = True
        elif self.read_only:
            engine = self._read_only_sqlite_engine(os.path.realpath(database), connect_args)
        else:
            path = os.path.realpath(database)
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            with _FILE_LOCKS_GUARD:
                self._write_lock = _FILE_LOCKS.setdefault(path, threading.Lock())
            engine = sa.create_engine(
                self.url, connect_args=connect_args, pool_size=8, max_overflow=24, pool_timeout=120
            )

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record) -> None:
            dbapi_conn.isolation_level = None  # transactions are begun below, not by sqlite3
            cur = dbapi_conn.cursor()
            if not self._serialize_reads and not self.read_only:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            writing = conn.get_execution_options().get("promptbo_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if writing else "BEGIN")

        return engine

    @staticmethod
    def _read_only_sqlite_engine(path: str, connect_args: dict[str, Any]) -> sa.Engine:
        """An engine on the existing file ``path`` opened with SQLite's ``mode=ro``."""
        if not os.path.isfile(path):
            raise NotFoundError(f"no SQLite database at {path}")
        uri = f"{Path(path).as_uri()}?mode=ro"
        return sa.create_engine(
            "sqlite://",
            creator=lambda: sqlite3.connect(uri, uri=True, **connect_args),
            poolclass=NullPool,
        )

    # --- transactions ----------------------------------------------------------------
    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction: committed on success, rolled back on any error."""
        with self._write_lock, self._errors(), self.engine.connect() as conn:
            conn.execution_options(promptbo_write=True)
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[Connection]:
        """A connection for a read of one statement, a consistent snapshot by itself: on
        PostgreSQL in autocommit (no BEGIN and COMMIT round trips), on SQLite a read
        transaction as any other read."""
        if self._sqlite:
            with self._read() as conn:
                yield conn
            return
        with self._errors(), self._autocommit.connect() as conn:
            yield conn

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        """A read transaction: one consistent snapshot for its queries."""
        lock = self._write_lock if self._serialize_reads else contextlib.nullcontext()
        with lock, self._errors(), self.engine.connect() as conn, conn.begin():
            yield conn

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sa.exc.OperationalError as e:
            raise UnavailableError(
                f"database {self.url.render_as_string(hide_password=True)} failed: {e.orig}"
            ) from e

    def _create_schema(self) -> None:
        with self._write() as conn:
            if not self._sqlite:  # replicas starting together take turns
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7243501)")
            for table in metadata.sorted_tables:
                conn.execute(CreateTable(table, if_not_exists=True))
            stored = conn.execute(sa.select(sa.func.max(schema_table.c.version))).scalar()
            if stored is None:
                conn.execute(schema_table.insert().values(version=SCHEMA_VERSION))
            elif stored < SCHEMA_VERSION:
                if stored == 1:  # version 2 added trials.principal
                    conn.exec_driver_sql(
                        "ALTER TABLE trials ADD COLUMN principal TEXT NOT NULL DEFAULT ''"
                    )
                if stored <= 2:  # version 3 added the change markers
                    for name in ("studies", "trials"):
                        conn.exec_driver_sql(
                            f"ALTER TABLE {name} ADD COLUMN version BIGINT NOT NULL DEFAULT 0"
                        )
                conn.execute(schema_table.update().values(version=SCHEMA_VERSION))
            conn.execute(CreateIndex(trials_by_state, if_not_exists=True))
            conn.execute(CreateIndex(trials_by_version, if_not_exists=True))
            if not self._sqlite:
                conn.exec_driver_sql(_ADD_TRIALS_FUNCTION)
                conn.exec_driver_sql(_UPDATE_TRIALS_FUNCTION)
                # The one-trial function of earlier releases, replaced by the one above.
                conn.exec_driver_sql(_DROP_OLD_FUNCTIONS)
            if stored is not None and stored > SCHEMA_VERSION:
                raise FailedPreconditionError(
                    f"the database has schema version {stored} but this promptbo supports "
                    f"up to {SCHEMA_VERSION}; upgrade promptbo or use another database"
                )

    def _check_schema(self) -> None:
        """Raises FailedPreconditionError unless the database has the current schema."""
        stored, reason = None, "no promptbo_schema table"
        try:
            with self._read() as conn:
                if sa.inspect(conn).has_table(schema_table.name):
                    query = sa.select(sa.func.max(schema_table.c.version))
                    stored, reason = conn.execute(query).scalar(), "no schema version"
        except sa.exc.DatabaseError as e:  # a file that is not a SQLite database
            reason = str(e.orig).strip()
        if stored is None:
            raise FailedPreconditionError(
                f"{self.url.render_as_string(hide_password=True)} is not a promptbo "
                f"database ({reason})"
            )
        if stored != SCHEMA_VERSION:
            raise FailedPreconditionError(
                f"the database has schema version {stored}; this promptbo reads version "
                f"{SCHEMA_VERSION} (opening it with promptbo serve upgrades an older one)"
            )

    def close(self) -> None:
        self.engine.dispose()

    # --- vocabularies and pools: content-addressed tables ------------------------------
    def _put_table(self, sa_table: sa.Table, row_id: str, row: Callable[[], dict]) -> bool:
        """Stores the row ``row()`` of a content-addressed table unless ``row_id`` is there;
        whether it was added. ``row`` is called only when needed (it prepares a large
        embedding table)."""
        if self._has_row(sa_table, row_id):
            return False
        values = row()
        try:
            with self._write() as conn:
                if self._has_row(sa_table, row_id, conn):
                    return False
                conn.execute(sa_table.insert(), values)
        except sa.exc.IntegrityError:  # another process stored it meanwhile
            return False
        return True

    def _has_row(self, sa_table: sa.Table, row_id: str, conn: Connection | None = None) -> bool:
        query = sa.select(sa_table.c.id).where(sa_table.c.id == row_id)
        if conn is not None:
            return conn.execute(query).first() is not None
        with self._read() as read:
            return read.execute(query).first() is not None

    def _get_row(self, sa_table: sa.Table, row_id: str):
        with self._read() as conn:
            return conn.execute(sa.select(sa_table).where(sa_table.c.id == row_id)).first()

    def put_vocabulary(self, vocabulary: Vocabulary) -> bool:
        def row() -> dict:
            table = np.ascontiguousarray(vocabulary.embeddings, dtype="<f4")
            return {
                "id": vocabulary.id,
                "size": vocabulary.size,
                "dim": vocabulary.embedding_dim,
                "tokens": _dumps(list(vocabulary.tokens)),
                "token_ids": np.asarray(vocabulary.token_ids, dtype="<i8").tobytes(),
                "embeddings": memoryview(table.data).cast("B"),  # no copy of the table
            }

        return self._put_table(vocabularies, vocabulary.id, row)

    def get_vocabulary(self, vocabulary_id: str) -> Vocabulary:
        row = self._get_row(vocabularies, vocabulary_id)
        if row is None:
            raise vocabulary_not_found(vocabulary_id)
        vocab = Vocabulary(
            tokens=tuple(json.loads(row.tokens)),
            token_ids=tuple(np.frombuffer(row.token_ids, dtype="<i8").tolist()),
            embeddings=_table(row),
        )
        vocab.__dict__["id"] = row.id  # stored under its content hash: skip rehashing
        return vocab

    def has_vocabulary(self, vocabulary_id: str) -> bool:
        return self._has_row(vocabularies, vocabulary_id)

    def put_pool(self, pool: Pool) -> bool:
        def row() -> dict:
            table = np.ascontiguousarray(pool.embeddings, dtype="<f4")
            return {
                "id": pool.id,
                "size": pool.size,
                "dim": pool.embedding_dim,
                "texts": _dumps(list(pool.texts)),
                "embedding_model": pool.embedding_model,
                "embeddings": memoryview(table.data).cast("B"),
            }

        return self._put_table(pools, pool.id, row)

    def get_pool(self, pool_id: str) -> Pool:
        row = self._get_row(pools, pool_id)
        if row is None:
            raise pool_not_found(pool_id)
        pool = Pool(
            texts=tuple(json.loads(row.texts)),
            embeddings=_table(row),
            embedding_model=row.embedding_model,
        )
        pool.__dict__["id"] = row.id  # stored under its content hash: skip rehashing
        return pool

    # --- studies ---------------------------------------------------------------------
    def create_study(self, study: Study) -> Study:
        check_study_name(study.name)
        check_text("request_id", study.request_id)
        row = _study_row(study) | {"version": first_marker()}
        try:
            with self._write() as conn:
                conn.execute(studies.insert(), row)
        except sa.exc.IntegrityError:
            raise AlreadyExistsError(
                f"study {study.name!r} already exists; choose another name or delete it "
                "first (`promptbo study delete`)"
            ) from None
        return study

    def get_study(self, name: str) -> Study:
        with self._read() as conn:
            return _study_from_row(self._study_row(conn, name))

    def list_studies(self) -> list[Study]:
        with self._read() as conn:
            rows = conn.execute(sa.select(studies)).all()
        # Sorted here: database collations disagree on the order of names.
        return sorted((_study_from_row(r) for r in rows), key=lambda s: s.name)

    def update_study(self, study: Study, expected: Study | None = None) -> None:
        """With ``expected``, the study row is locked and compared (decoded: the stored
        text of an older spec may differ from today's encoding) and its trials counted in
        the same transaction."""
        row = _study_row(study) | {"version": studies.c.version + 1}
        with self._write() as conn:
            if expected is not None:
                stored = conn.execute(_STUDY_ROW.with_for_update(), {"name": study.name}).first()
                if stored is None:
                    raise study_not_found(study.name)
                held = 0
                if study.spec.max_trials:
                    held = conn.execute(_BUDGET_TRIALS, {"study": study.name}).scalar() or 0
                if (not same_study(_study_from_row(stored), expected)
                        or (study.spec.max_trials and held > study.spec.max_trials)):
                    raise StaleWriteError(f"study {study.name!r} was changed by another writer")
            done = conn.execute(studies.update().where(studies.c.name == study.name).values(row))
            if done.rowcount != 1:
                raise study_not_found(study.name)

    def delete_study(self, name: str) -> None:
        with self._write() as conn:
            self._bump(conn, name)  # the study row first, as every writer of its trials
            conn.execute(trials.delete().where(trials.c.study == name))
            conn.execute(studies.delete().where(studies.c.name == name))

    @staticmethod
    def _study_row(conn: Connection, name: str) -> Any:
        row = conn.execute(_STUDY_ROW, {"name": name}).first()
        if row is None:
            raise study_not_found(name)
        return row

    # --- trials ----------------------------------------------------------------------
    def add_trials(
        self, study: str, trials_: Sequence[Trial], guard: HandoutGuard | None = None,
        since: int | None = None,
    ) -> list[Trial]:
        """Numbers the trials ``max(id) + 1, ...`` in one write transaction that locks the
        study row first (bumping its change marker), so writers of one study in any
        number of server processes take turns; with ``guard`` the stored trials are
        counted in that same transaction, before anything is inserted. On PostgreSQL
        this is one statement: the function ``promptbo_add_trials`` does all that inside
        the database."""
        check_trials_text(trials_)
        rows = [_trial_row(t) for t in trials_]
        if not self._sqlite and len(rows) == 1:  # an ask: see _add_pg
            first = self._add_pg(study, rows, guard, since)
            return [t.evolve(study=study, id=first + i) for i, t in enumerate(trials_)]
        with self._write() as conn:
            version = self._bump(conn, study, since)
            last = conn.execute(_LAST_TRIAL_ID, {"study": study}).scalar() or 0
            first = last + 1
            if guard is not None and not _guard_allows(conn, study, guard, last, len(rows)):
                raise StaleWriteError(f"study {study!r} has no room for {len(rows)} trials")
            for i, row in enumerate(rows):
                row.update(study=study, id=first + i, version=version)
            if rows:
                conn.execute(_INSERT_TRIALS, rows)
        return [t.evolve(study=study, id=first + i) for i, t in enumerate(trials_)]

    def _add_pg(self, study: str, rows: list[dict[str, Any]], guard: HandoutGuard | None,
                since: int | None) -> int:
        """Trials added on PostgreSQL in one statement (``promptbo_add_trials``); returns
        the first id. Used for one trial: for a batch of 8 the function measured slower
        than the transaction (``docs/benchmarks.md``)."""
        params = _columns(rows, [c for c, _ in _TRIAL_ARRAYS]) | {
            "study": study,
            "since": since,
            "max_trials": guard.max_trials if guard else 0,
            "max_active": guard.max_active if guard else 0,
            "now": float(guard.now) if guard else 0.0,
        }
        with self._errors(), self._autocommit.connect() as conn:
            first = conn.execute(_CALL_ADD_TRIALS, params).scalar_one()
        if first == -1:
            raise study_not_found(study)
        if first == -2:
            raise StaleWriteError(f"study {study!r} was written by another process")
        if first == 0:
            raise StaleWriteError(f"study {study!r} has no room for {len(rows)} trials")
        return int(first)

    def _bump(self, conn: Connection, study: str, since: int | None = None) -> int:
        """Locks the study row and bumps its change marker; returns the new marker.
        StaleWriteError (the transaction then rolls back) unless it was ``since``."""
        version = conn.execute(_BUMP_VERSION, {"study_name": study}).scalar()
        if version is None:
            raise study_not_found(study)
        check_since(study, int(version) - 1, since)
        return int(version)

    def get_trial(self, study: str, trial_id: int) -> Trial:
        if not 0 <= trial_id <= MAX_TRIAL_ID:
            with self._read() as conn:
                self._study_row(conn, study)
            raise trial_not_found(study, trial_id)
        with self._read() as conn:
            row = conn.execute(
                sa.select(trials).where(trials.c.study == study, trials.c.id == trial_id)
            ).first()
            if row is None:
                self._study_row(conn, study)
                raise trial_not_found(study, trial_id)
        return _trial_from_row(row)

    def update_trials(
        self, trials_: Sequence[Trial], expected: Sequence[Trial] | None = None,
        since: int | None = None,
    ) -> None:
        """One write transaction: the change markers of the trials' studies are bumped
        first (in name order, so writers never wait on each other in a cycle), then the
        trials are written with one executemany. One trial (a tell) on PostgreSQL is one
        statement in autocommit that does both (``promptbo_update_trials``)."""
        check_trials_text(trials_)
        one_study(trials_, since)
        if not trials_:
            return
        if expected is not None and len(expected) != len(trials_):
            raise InvalidArgumentError("expected needs one trial per trial written")
        rows = [_trial_row(t) for t in trials_]
        if not self._sqlite and len(rows) == 1:  # a tell: see _update_pg
            self._update_pg(rows, expected, since)
            return
        with self._write() as conn:
            versions = {name: self._bump(conn, name, since)
                        for name in sorted({r["study"] for r in rows})}
            params = [
                _trial_values(r) | {"key_study": r["study"], "key_id": r["id"],
                                    "version": versions[r["study"]]}
                for r in rows
            ]
            statement = _UPDATE_TRIAL
            if expected is not None:
                statement = _UPDATE_HELD_TRIAL
                for p, e in zip(params, expected, strict=True):
                    p.update(held_state=e.state.value, held_client_id=e.client_id,
                             held_lease_deadline=float(e.lease_deadline))
            done = conn.execute(statement, params[0] if len(rows) == 1 else params)
            if done.rowcount == len(rows):
                return
            # Raising rolls back the ones already written; name one that is missing.
            self._name_missing(conn, rows)
            if expected is not None:
                raise StaleWriteError(
                    f"trials of study {rows[0]['study']!r} were changed by another writer"
                )
            raise UnavailableError(f"updated {done.rowcount} of {len(rows)} trials")

    def _update_pg(self, rows: list[dict[str, Any]], expected: Sequence[Trial] | None,
                   since: int | None) -> None:
        """Trials of one study updated on PostgreSQL in one statement
        (``promptbo_update_trials``). Used for one trial, as :meth:`_add_pg`."""
        study = rows[0]["study"]
        held = expected or []
        params = _columns(rows, ["id"] + [c for c, _ in _TRIAL_ARRAYS]) | {
            "study": study,
            "since": since,
            "held": expected is not None,
            "held_state": [e.state.value for e in held],
            "held_client_id": [e.client_id for e in held],
            "held_lease_deadline": [float(e.lease_deadline) for e in held],
        }
        if expected is None:  # unnest pads the shorter arrays with NULLs
            params.update(held_state=[], held_client_id=[], held_lease_deadline=[])
        with self._errors(), self._autocommit.connect() as conn:
            done = conn.execute(_CALL_UPDATE_TRIALS, params).scalar_one()
            if done > 0:
                return
            if done == -3:
                self._name_missing(conn, rows)
        if done == -1:
            raise study_not_found(study)
        if done == -2:
            raise StaleWriteError(f"study {study!r} was written by another process")
        raise StaleWriteError(f"trials of study {study!r} were changed by another writer")

    def _name_missing(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        """NotFoundError naming the first of ``rows`` (or its study) that is not stored."""
        for row in rows:
            query = sa.select(trials.c.id).where(
                trials.c.study == row["study"], trials.c.id == row["id"]
            )
            if conn.execute(query).first() is None:
                self._study_row(conn, row["study"])
                raise trial_not_found(row["study"], row["id"])

    def changes(self, study: str, since: int) -> StudyChanges:
        with self._snapshot() as conn:
            rows = conn.execute(_CHANGES, {"name": study, "since": since}).all()
        if not rows:
            raise study_not_found(study)
        first = rows[0]
        found = Study(
            name=first.name, spec=_spec(first.spec), state=StudyState(first.state),
            create_time=first.create_time, request_id=first.request_id,
        )
        changed = [
            _trial_from_row(SimpleNamespace(**{
                c.name: getattr(r, f"t_{c.name}") for c in trials.c
            }))
            for r in rows if r.t_id is not None
        ]
        return StudyChanges(found, int(first.version), changed)

    def list_trials(
        self,
        study: str,
        state: TrialState | None = None,
        after_id: int = 0,
        limit: int | None = None,
    ) -> list[Trial]:
        check_limit(limit)
        after_id = max(min(after_id, MAX_TRIAL_ID), -1)
        query = sa.select(trials).where(trials.c.study == study, trials.c.id > after_id)
        if state is not None:
            query = query.where(trials.c.state == state.value)
        query = query.order_by(trials.c.id)
        if limit is not None:
            query = query.limit(limit)
        with self._read() as conn:
            self._study_row(conn, study)
            rows = conn.execute(query).all()
        return [_trial_from_row(r) for r in rows]

    def count_trials(self, study: str) -> dict[TrialState, int]:
        query = (
            sa.select(trials.c.state, sa.func.count())
            .where(trials.c.study == study)
            .group_by(trials.c.state)
        )
        with self._read() as conn:
            self._study_row(conn, study)
            rows = conn.execute(query).all()
        counts = dict.fromkeys(TrialState, 0)
        for state, n in rows:
            counts[TrialState(state)] = n
        return counts

    def check_integrity(self) -> list[str]:
        """Trial ids not ``1..n``, completed trials without a value, trials of missing
        studies, specs that do not decode, hard-prompt studies whose vocabulary is missing,
        pool studies whose pool is missing, and vocabulary tables whose byte size disagrees
        with their shape. Reads everything in one read transaction."""
        problems: list[str] = []
        with self._read() as conn:
            names = set(conn.execute(sa.select(studies.c.name)).scalars())
            ranges = conn.execute(
                sa.select(
                    trials.c.study,
                    sa.func.count(),
                    sa.func.min(trials.c.id),
                    sa.func.max(trials.c.id),
                ).group_by(trials.c.study)
            ).all()
            unvalued = conn.execute(
                sa.select(trials.c.study, trials.c.id)
                .where(trials.c.state == TrialState.COMPLETED.value, trials.c.value.is_(None))
                .order_by(trials.c.study, trials.c.id)
            ).all()
            specs = conn.execute(sa.select(studies.c.name, studies.c.spec)).all()
            vocab_ids = set(conn.execute(sa.select(vocabularies.c.id)).scalars())
            pool_ids = set(conn.execute(sa.select(pools.c.id)).scalars())
            sizes = conn.execute(
                sa.select(
                    vocabularies.c.id,
                    vocabularies.c.size,
                    vocabularies.c.dim,
                    sa.func.length(vocabularies.c.embeddings),
                    sa.func.length(vocabularies.c.token_ids),
                )
            ).all()
        for study, count, low, high in sorted(ranges):
            if study not in names:
                problems.append(f"{count} trials belong to a missing study {study!r}")
            elif (low, high) != (1, count):
                problems.append(f"study {study!r}: trial ids are not 1..n")
        for study, trial_id in unvalued:
            problems.append(f"study {study!r} trial {trial_id}: completed without value")
        for name, spec_text in sorted(specs):
            try:
                space = spec_from_json(spec_text).space
            except (PromptboError, ValueError, KeyError, TypeError) as e:
                problems.append(f"study {name!r}: unreadable spec ({type(e).__name__}: {e})")
                continue
            if isinstance(space, HardPromptSpace) and space.vocabulary_id not in vocab_ids:
                problems.append(f"study {name!r}: vocabulary {space.vocabulary_id!r} is missing")
            if isinstance(space, PoolSpace) and space.pool_id not in pool_ids:
                problems.append(f"study {name!r}: pool {space.pool_id!r} is missing")
        for vocab_id, size, dim, emb_bytes, ids_bytes in sizes:
            if emb_bytes != size * dim * 4 or ids_bytes != size * 8:
                problems.append(f"vocabulary {vocab_id!r}: stored tables do not match its shape")
        return problems
