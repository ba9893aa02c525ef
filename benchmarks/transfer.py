"""Transfer benchmark (synthetic, seconds per run): does a related source study help a new
study early, and does an unrelated one stay harmless?

Each seed draws a target optimum ``x*`` in an 8-dimensional soft-prompt space (2 x 4
vectors in ``[-1, 1]``); a prompt's value is ``-||x - x*||^2`` (0 at the optimum). Source
studies of the same space run ``--source-trials`` random trials first:

- *related*: the optimum shifted by ``--shift`` per coordinate (a similar task);
- *unrelated*: an independent random optimum (another task).

The target then runs ``--budget`` sequential evaluations with the ``gp`` strategy, cold or
with ``transfer_from`` (each ``transfer`` mode), through a real :class:`StudyManager` on
in-memory storage (the sources' trials are read from storage, as in a server). Printed:
the best value after 5, 10, 15 and ``--budget`` evaluations (mean ± std over seeds), the
related or unrelated source's final weight, and seconds per run. ``--json`` writes them.

    python -m benchmarks.transfer --seeds 3 --budget 20 --json benchmarks/results/transfer.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from promptbo.server.domain import SoftPromptSpace, StudySpec
from promptbo.server.manager import StudyManager, TrialResult
from promptbo.server.storage import open_storage

SPACE = SoftPromptSpace(prompt_length=2, embedding_dim=4)
CONFIGS = [
    ("cold", None, "both"),
    ("related, both", "related", "both"),
    ("related, init", "related", "init"),
    ("related, surrogate", "related", "surrogate"),
    ("unrelated, both", "unrelated", "both"),
    ("unrelated, surrogate", "unrelated", "surrogate"),
]


def value(x: np.ndarray, optimum: np.ndarray) -> float:
    return -float(np.sum((x - optimum) ** 2))


def run_study(manager: StudyManager, name: str, spec: StudySpec, n: int,
              optimum: np.ndarray) -> list[float]:
    values = []
    for _ in range(n):
        (trial,), _ = manager.suggest_trials(name, 1)
        v = value(np.asarray(trial.prompt.vector), optimum)
        manager.complete_trials(name, [TrialResult(trial.id, v, {})])
        values.append(v)
    return values


def one_run(seed: int, source: str | None, mode: str, args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(seed)
    optimum = rng.uniform(-0.8, 0.8, SPACE.size)
    sources = {
        "related": optimum + args.shift * rng.choice([-1.0, 1.0], SPACE.size),
        "unrelated": rng.uniform(-0.8, 0.8, SPACE.size),
    }
    manager = StudyManager(open_storage("memory:"))
    transfer_from: tuple[str, ...] = ()
    if source is not None:
        manager.create_study(source, StudySpec(SPACE, strategy="random", seed=seed + 100))
        run_study(manager, source, StudySpec(SPACE), args.source_trials, sources[source])
        transfer_from = (source,)
    spec = StudySpec(SPACE, strategy="gp", seed=seed, transfer_from=transfer_from,
                     transfer=mode)
    start = time.perf_counter()
    manager.create_study("target", spec)
    values = run_study(manager, "target", spec, args.budget, optimum)
    seconds = time.perf_counter() - start
    status = manager.transfer_status("target")
    manager.close()
    best = np.maximum.accumulate(values)
    return {"best": best.tolist(), "seconds": seconds,
            "weight": status[0].weight if status else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=int, default=20)
    parser.add_argument("--source-trials", type=int, default=60)
    parser.add_argument("--shift", type=float, default=0.1)
    parser.add_argument("--json", default="")
    parser.add_argument("--configs", default="",
                        help="only these targets, by label joined with ';' "
                             "(e.g. 'related, both;unrelated, both'); default all")
    args = parser.parse_args()
    chosen = [c for c in args.configs.split(";") if c]
    labels = [label for label, _, _ in CONFIGS]
    if not set(chosen) <= set(labels):
        parser.error(f"--configs: unknown {sorted(set(chosen) - set(labels))}; known: "
                     + "; ".join(labels))
    checkpoints = [k for k in (5, 10, 15) if k < args.budget] + [args.budget]
    results = {}
    print("| target | " + " | ".join(f"best after {k}" for k in checkpoints)
          + " | source weight | s per run |")
    print("|---" * (len(checkpoints) + 3) + "|")
    for label, source, mode in CONFIGS:
        if chosen and label not in chosen:
            continue
        runs = [one_run(seed, source, mode, args) for seed in range(args.seeds)]
        results[label] = runs
        cells = []
        for k in checkpoints:
            at = [r["best"][k - 1] for r in runs]
            cells.append(f"{statistics.mean(at):.3f} ± {statistics.pstdev(at):.3f}")
        weights = [r["weight"] for r in runs if r["weight"] is not None]
        weight = f"{statistics.mean(weights):.2f}" if weights else "-"
        seconds = statistics.mean(r["seconds"] for r in runs)
        print(f"| {label} | " + " | ".join(cells) + f" | {weight} | {seconds:.1f} |",
              flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
