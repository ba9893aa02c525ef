"""Backends for the storage contract: in-memory, an SQLite file and PostgreSQL.

PostgreSQL runs when ``PROMPTBO_TEST_POSTGRES_URL`` names a server the tests may create
schemas in (``eval "$(bash .ci/postgres.sh)"`` starts one); each test gets a schema of
its own, dropped afterwards. Without the variable those tests skip, except under
``CI=true``, where a missing database is an error rather than a silent skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import quote

import pytest

from promptbo.server.storage import InMemoryStorage, Storage

POSTGRES_ENV = "PROMPTBO_TEST_POSTGRES_URL"


@dataclass
class Backend:
    """How to open a backend's storage; ``open()`` again reaches the same data when
    ``persistent``. Every storage opened is closed after the test."""

    name: str
    factory: Callable[[], Storage]
    persistent: bool
    url: str = ""
    opened: list[Storage] = field(default_factory=list)

    def open(self) -> Storage:
        storage = self.factory()
        self.opened.append(storage)
        return storage


def postgres_url() -> str:
    url = os.environ.get(POSTGRES_ENV, "")
    if not url:
        hint = f'set {POSTGRES_ENV} (start a server with: eval "$(bash .ci/postgres.sh)")'
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {POSTGRES_ENV} is unset: {hint}", pytrace=False)
        pytest.skip(f"no PostgreSQL server: {hint}")
    return url


def _postgres_schema(base_url: str) -> tuple[str, Callable[[], None]]:
    """Creates a fresh schema; returns a URL whose connections use it, and its dropper."""
    import sqlalchemy as sa

    from promptbo.server.storage.sql import normalize_url

    schema = f"promptbo_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(normalize_url(base_url), poolclass=sa.pool.NullPool)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in base_url else "?"
    url = f"{base_url}{sep}options={quote(f'-csearch_path={schema}')}"

    def drop() -> None:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()

    return url, drop


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend(request, tmp_path) -> Iterator[Backend]:
    from promptbo.server.storage.sql import SqlStorage

    drop: Callable[[], None] | None = None
    if request.param == "memory":
        shared = InMemoryStorage()
        b = Backend("memory", lambda: shared, persistent=False)
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'studies.db'}"
        b = Backend("sqlite", lambda: SqlStorage(url), persistent=True, url=url)
    else:
        url, drop = _postgres_schema(postgres_url())
        b = Backend("postgresql", lambda: SqlStorage(url), persistent=True, url=url)
    yield b
    for storage in b.opened:
        storage.close()
    if drop is not None:
        drop()


@pytest.fixture
def store(backend: Backend) -> Storage:
    """A fresh, empty storage of each backend."""
    return backend.open()


@pytest.fixture
def sql_backend(backend: Backend) -> Backend:
    """The backends that keep data in a database (skips the in-memory one)."""
    if not backend.persistent:
        pytest.skip("the in-memory backend keeps nothing across instances")
    return backend
