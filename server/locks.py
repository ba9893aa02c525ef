"""Per-name re-entrant locks that take no memory while nobody uses them.

:class:`LockTable` hands out one re-entrant lock per study name. An entry lives only
while some thread holds or waits for it, so looking up any number of names (missing ones
included) leaves nothing behind: a lock nobody holds or awaits carries no state, and a
fresh one later is equivalent.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class _Entry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.users = 0


class HeldLock:
    """A lock acquired by :meth:`LockTable.try_acquire`; call :meth:`release` once."""

    def __init__(self, table: LockTable, name: str, entry: _Entry) -> None:
        self._table, self._name, self._entry = table, name, entry

    def release(self) -> None:
        self._entry.lock.release()
        self._table._leave(self._name, self._entry)


class LockTable:
    """One re-entrant lock per name; entries are freed when unused (see module doc)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def _enter(self, name: str) -> _Entry:
        with self._guard:
            entry = self._entries.get(name)
            if entry is None:
                entry = self._entries[name] = _Entry()
            entry.users += 1
            return entry

    def _leave(self, name: str, entry: _Entry) -> None:
        with self._guard:
            entry.users -= 1
            if entry.users == 0 and self._entries.get(name) is entry:
                del self._entries[name]

    @contextmanager
    def hold(self, name: str) -> Iterator[None]:
        """Holds ``name``'s lock for the ``with`` block (re-entrant per thread)."""
        entry = self._enter(name)
        try:
            entry.lock.acquire()
            try:
                yield
            finally:
                entry.lock.release()
        finally:
            self._leave(name, entry)

    def try_acquire(self, name: str) -> HeldLock | None:
        """``name``'s lock if it can be taken without waiting, else None."""
        entry = self._enter(name)
        if entry.lock.acquire(blocking=False):
            return HeldLock(self, name, entry)
        self._leave(name, entry)
        return None
