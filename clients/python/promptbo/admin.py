"""``promptbo admin``: operator commands on a store itself, without going through a server.

::

    promptbo admin check --storage URL [--json]

``check`` opens the store read-only (a SQLite file in SQLite's read-only mode, PostgreSQL
in READ ONLY transactions), runs :meth:`Storage.check_integrity
<promptbo.server.storage.base.Storage.check_integrity>`, lists each study's trials per state
and prints every problem found. It changes nothing in the database and holds no lock
beyond its read transactions, so it may run beside a serving server. (Reading a SQLite file
in WAL mode needs its ``-wal`` and ``-shm`` side files: when no server has the file open,
SQLite creates them, empty, with the database file's owner and mode.)

Exit status: 0 when the store is sound, 1 when problems were found, 2 when the store cannot
be checked (no such file, not a promptbo database, an unreachable database, the server
extra not installed).

The storage modules (and SQLAlchemy) are imported only when a command runs: the client
package imports without the server extra.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from promptbo.errors import NotFoundError, PromptboError

if TYPE_CHECKING:
    from promptbo.server.storage import Storage

#: Exit status of ``admin check``: the store is sound, has problems, or cannot be checked.
SOUND, PROBLEMS, UNCHECKED = 0, 1, 2


def add_admin_parser(
    sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]
) -> None:
    """Adds ``admin`` and its actions to the ``promptbo`` subcommands ``sub``."""
    p = sub.add_parser("admin", help="check a store directly (no server needed)",
                       parents=parents)
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = actions.add_parser(
        "check", help="run the integrity check on a store", parents=parents,
        description="Opens the store read-only, lists its studies' trials per state and "
        "prints each problem the integrity check finds. Exits 0 when sound, 1 when problems "
        "are found, 2 when the store cannot be checked.")
    a.add_argument("--storage", required=True,
                   help="the store, as given to promptbo serve: sqlite:///FILE, a file path, "
                        "or postgresql://USER@HOST/DB")
    a.add_argument("--json", action="store_true", help="machine-readable output")


def admin_command(args: argparse.Namespace) -> int:
    """Runs the ``admin`` action named by ``args.action``; returns the exit status."""
    return _ACTIONS[args.action](args)


def check(args: argparse.Namespace) -> int:
    """``admin check``: see the module docstring for what it prints and returns."""
    try:
        from promptbo.server.storage import open_storage

        store = open_storage(args.storage, read_only=True)
    except ImportError as err:
        print(f"error: promptbo admin needs the server extra (pip install 'promptbo[server]'; "
              f"'promptbo[postgres]' for PostgreSQL): {err}", file=sys.stderr)
        return UNCHECKED
    try:
        problems = store.check_integrity()
        studies = _inventory(store)
    finally:
        store.close()
    if args.json:
        print(json.dumps({"sound": not problems, "problems": problems,
                          "studies": studies}, indent=2))
        return PROBLEMS if problems else SOUND
    from promptbo.cli import safe

    if studies is not None:
        total = sum(sum(s["trials"].values()) for s in studies)
        print(f"{_count(len(studies), 'study', 'studies')}, {_count(total, 'trial')}")
        for s in studies:
            counts = "  ".join(f"{n:5d} {state}" for state, n in s["trials"].items())
            print(f"  {safe(s['name']):30s} {s['state']:9s} {counts}")
    for problem in problems:
        print(f"problem: {problem}")
    print(f"{_count(len(problems), 'problem')} found" if problems else "no problems found")
    return PROBLEMS if problems else SOUND


def _inventory(store: Storage) -> list[dict[str, Any]] | None:
    """Each study's name, state and trial count per state; None when the studies cannot
    be listed (a spec that does not decode, which the integrity check reports)."""
    try:
        listed = store.list_studies()
    except (PromptboError, ValueError, KeyError, TypeError):
        return None
    out: list[dict[str, Any]] = []
    for study in listed:
        try:
            counts = store.count_trials(study.name)
        except NotFoundError:  # deleted by a running server meanwhile
            continue
        out.append({"name": study.name, "state": study.state.value,
                    "trials": {state.value: n for state, n in counts.items()}})
    return out


def _count(n: int, noun: str, plural: str = "") -> str:
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


_ACTIONS = {"check": check}
