"""Study-manager cost per ask/tell round, in-process (no gRPC), per storage backend.

Runs ``--trials`` rounds of ``suggest_trials(1)`` -> ``complete_trial`` on a soft-prompt
study with the random strategy (prefetch on, as ``promptbo serve`` runs it) and prints
milliseconds per round: the server-side share of the load benchmark's latency.

    python -m benchmarks.manager_cost --trials 2000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from promptbo.server.domain import SoftPromptSpace, StudySpec
from promptbo.server.manager import StudyManager
from promptbo.server.storage import open_storage


def ms_per_round(url: str, trials: int, warmup: int = 200) -> float:
    manager = StudyManager(open_storage(url), prefetch=2)
    try:
        spec = StudySpec(space=SoftPromptSpace(prompt_length=1, embedding_dim=2),
                         strategy="random")
        manager.create_study("cost", spec)

        def rounds(n: int) -> None:
            for i in range(n):
                (trial,), _ = manager.suggest_trials("cost", 1, f"worker-{i % 32}")
                manager.complete_trial("cost", trial.id, 1.0, {})

        rounds(warmup)
        start = time.perf_counter()
        rounds(trials)
        return (time.perf_counter() - start) / trials * 1000
    finally:
        manager.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=2000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print("| storage | ms per ask/tell round |")
        print("|---|---:|")
        for name, url in (("memory", "memory:"),
                          ("sqlite", f"sqlite:///{Path(tmp) / 'cost.db'}")):
            print(f"| {name} | {ms_per_round(url, args.trials):.2f} |", flush=True)


if __name__ == "__main__":
    main()
