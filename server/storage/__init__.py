"""Storage backends behind one interface: in-memory, SQLite and PostgreSQL.

:func:`open_storage` picks a backend from a URL:

- ``memory:`` (or ``:memory:``) — in-process, lost on exit; for tests.
- ``sqlite:///path/to/file.db`` or a plain path — the embedded default.
- ``postgresql://user:pass@host/db`` — for multi-user deployments (``postgres`` extra).
"""

from __future__ import annotations

from promptbo.errors import InvalidArgumentError
from promptbo.server.storage.base import Storage
from promptbo.server.storage.memory import InMemoryStorage

__all__ = ["Storage", "InMemoryStorage", "open_storage"]


def open_storage(url: str, read_only: bool = False) -> Storage:
    """Opens the backend named by ``url``. Raises InvalidArgumentError for an unknown scheme.

    ``read_only`` opens an existing database for reading only (see ``SqlStorage``);
    an in-memory store, which starts empty, cannot be opened so."""
    if url in ("memory:", ":memory:", "memory://"):
        if read_only:
            raise InvalidArgumentError("an in-memory store starts empty: nothing to read")
        return InMemoryStorage()
    if url.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:", "postgres:")) or (
        "://" not in url
    ):
        from promptbo.server.storage.sql import SqlStorage

        if "://" not in url and not url.startswith("sqlite:"):
            url = f"sqlite:///{url}"
        return SqlStorage(url, read_only=read_only)
    raise InvalidArgumentError(
        f"unknown storage URL {url!r}: use memory:, sqlite:///FILE or postgresql://..."
    )
