"""Rescore a quality run's picks on another test subset, for side-by-side tables.

Tables of two runs are comparable only on the same test examples. This reads a results JSON
of :mod:`benchmarks.quality` (hard-token picks: the ``selections`` keyed
``strategy|seed|budget`` with the model token ids of each pick) or of
:mod:`benchmarks.equal_calls` (each run's checkpoints: the recommendation per budget) and
scores every pick, and the unprompted model, on the first ``--limit-test`` examples of the
task's test split (0: all), with the run's own template, label words and model. Nothing is
chosen here: the picks are the run's.

    python -m benchmarks.rescore benchmarks/results/quality-sst2-prefix.json \\
        --limit-test 200 --out benchmarks/results/quality-sst2-prefix-test200

writes ``<out>.json`` (every pick's test accuracy) and ``<out>.md`` (mean ± std over seeds
per strategy and budget).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from benchmarks.report import machine
from benchmarks.scoring import ScoreCache, hf_evaluators


def selections(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A run's picks keyed ``strategy|seed|budget``: a quality run's ``selections``, or an
    equal-calls run's recommendation at each checkpoint."""
    if "selections" in run:
        return run["selections"]
    return {f"{tag}|{c['budget']}": {"prompt": c["prompt"]}
            for tag, r in run["runs"].items() for c in r["checkpoints"]}


def table(picks: dict[str, float], unprompted: float, budgets: Sequence[int]) -> str:
    """``picks``: ``strategy|seed|budget`` -> test accuracy; the markdown table."""
    strategies = [s for s in dict.fromkeys(k.split("|")[0] for k in picks)
                  if s != "unprompted"]  # its own row, below
    lines = ["| strategy | " + " | ".join(f"b={b}" for b in budgets) + " |",
             "|---|" + "---:|" * len(budgets)]
    for s in strategies:
        cells = []
        for b in budgets:
            accs = [v for k, v in picks.items()
                    if k.split("|")[0] == s and int(k.split("|")[2]) == b]
            cells.append(f"{100 * np.mean(accs):.1f} ± {100 * np.std(accs):.1f}" if accs
                         else "–")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines.append("| unprompted | " + " | ".join(f"{100 * unprompted:.1f}" for _ in budgets)
                 + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", help="a quality benchmark's results JSON")
    p.add_argument("--limit-test", type=int, default=200, help="first N test examples (0: all)")
    p.add_argument("--data-dir", default=None, help="default: the run's data_dir")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    run = json.loads(Path(args.results).read_text())
    cfg = run["config"]
    run["selections"] = selections(run)
    opts = SimpleNamespace(model=cfg["model"], data_dir=args.data_dir or cfg["data_dir"],
                           k=cfg["k"], template=cfg.get("template"), labels=cfg.get("labels"),
                           limit_test=args.limit_test, test_kv_cache_mb=0)
    make = hf_evaluators(opts)
    first = make("objective", 0)
    vocab = first.vocabulary()
    first.close()
    cache = ScoreCache(make, vocab)
    keys = sorted(run["selections"], key=lambda k: (k.split("|")[0], int(k.split("|")[1]),
                                                    int(k.split("|")[2])))
    prompts = [tuple(run["selections"][k]["prompt"]) for k in keys]
    unique = list(dict.fromkeys(prompts))
    print(f"{len(keys)} picks, {len(unique)} distinct prompts, test limit {args.limit_test}",
          flush=True)
    for i, ids in enumerate(unique):  # one at a time: progress, and a crash keeps nothing
        cache.score("test", 0, [ids])
        print(f"  {i + 1}/{len(unique)}", flush=True)
    unprompted = cache.score("test", 0, [()])[0][1]
    picks = {k: cache.score("test", 0, [ids])[0][1] for k, ids in zip(keys, prompts,
                                                                        strict=True)}
    cache.close()
    budgets = sorted({int(k.split("|")[2]) for k in keys})
    md = table(picks, unprompted, budgets)
    out = Path(args.out)
    result: dict[str, Any] = {"source": args.results, "limit_test": args.limit_test,
                              "picks": picks, "unprompted": unprompted,
                              "config": vars(args), "machine": machine()}
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
