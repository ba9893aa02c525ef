"""Storage alone: milliseconds per trial for the calls behind one ask and one tell.

For each ``--storage`` URL, one thread creates a soft-prompt study and repeats, for
``--seconds``: ``add_trials`` of ``--batch`` active trials (what an ask stores), then
``update_trials`` completing them (what a tell stores). No server, no RPC: this is the
storage's own cost per trial, the figure behind "storage alone" in docs/benchmarks.md.
On a shared storage (PostgreSQL) the calls are made as the server makes them there: the
add with a handout guard, both conditional on the study's change marker. ``--stored``
fills the study with that many completed trials first (one row per count), to show how
the cost of a call grows with the study.

    python -m benchmarks.storage_calls --storage sqlite,postgresql://postgres@127.0.0.1:54393/load
    python -m benchmarks.storage_calls --storage postgresql://... --batch 8
    python -m benchmarks.storage_calls --storage postgresql://... --stored 0,1000,10000
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time

from promptbo.server.domain import (
    Prompt,
    SoftPromptSpace,
    Study,
    StudySpec,
    Trial,
    TrialState,
)
from promptbo.server.storage import open_storage
from promptbo.server.storage.base import HandoutGuard


def ms_per_trial(url: str, batch: int, seconds: float, stored: int = 0) -> tuple[float, int]:
    """Mean milliseconds per trial (add + complete) and the trials done, on ``url``, in a
    study holding ``stored`` completed trials at the start."""
    store = open_storage(url)
    name = f"calls-{os.getpid()}-{time.time_ns()}"
    store.create_study(Study(name=name, spec=StudySpec(SoftPromptSpace(2, 4))))
    draft = Trial(study=name, id=0, state=TrialState.ACTIVE, prompt=Prompt(vector=(0.0,) * 8))
    completed = dataclasses.replace(draft, state=TrialState.COMPLETED, value=1.0)
    for filled in range(0, stored, 1000):
        store.add_trials(name, [completed] * min(1000, stored - filled))
    since = store.changes(name, -1).version if store.shared else None
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        guard = HandoutGuard(now=time.time()) if store.shared else None
        added = store.add_trials(name, [draft] * batch, guard, since=since)
        since = None if since is None else since + 1
        store.update_trials([dataclasses.replace(t, state=TrialState.COMPLETED, value=1.0)
                             for t in added], expected=added if store.shared else None,
                            since=since)
        since = None if since is None else since + 1
        done += batch
    elapsed = time.perf_counter() - start
    store.close()
    return 1000 * elapsed / done, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", default="sqlite",
                        help="comma-separated storage URLs; 'sqlite' is a temporary file")
    parser.add_argument("--batch", type=int, default=1, help="trials per call")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--stored", default="0",
                        help="comma-separated counts of completed trials the study holds first")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print("| storage | trials stored | trials per call | ms per trial | trials |\n"
              "|---|---:|---:|---:|---:|")
        for url in args.storage.split(","):
            for stored in (int(n) for n in args.stored.split(",")):
                target = f"sqlite:///{tmp}/calls.db" if url == "sqlite" else url
                ms, n = ms_per_trial(target, args.batch, args.seconds, stored)
                shown = url.rsplit("@", 1)[-1]  # no credentials in the table
                print(f"| {shown} | {stored} | {args.batch} | {ms:.2f} | {n} |", flush=True)


if __name__ == "__main__":
    main()
