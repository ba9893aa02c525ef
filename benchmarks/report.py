"""The quality benchmark's summary: its tables (markdown), its figure and the machine.

:func:`summarize` reads a results dict (``runs`` and ``selections`` keyed
``"<strategy>|<seed>"`` and ``"<strategy>|<seed>|<budget>"``, ``unprompted`` keyed by
seed, as :mod:`benchmarks.quality` writes them); :func:`markdown` and :func:`plot` render
its summary.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(xs, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def summarize(results: dict[str, Any], strategies: Sequence[str], seeds: Sequence[int],
              budgets: Sequence[int]) -> dict[str, Any]:
    """Mean/std test accuracy and mean best objective per strategy and budget."""
    table: dict[str, dict[str, Any]] = {}
    for s in strategies:
        table[s] = {}
        for b in budgets:
            sel = [results["selections"].get(f"{s}|{seed}|{b}") for seed in seeds]
            sel = [x for x in sel if x is not None and "test_accuracy" in x]
            if not sel:
                continue
            acc = _mean_std([x["test_accuracy"] for x in sel])
            best = _mean_std([max(results["runs"][f"{s}|{x['seed']}"]["values"][:b])
                              for x in sel])
            table[s][str(b)] = {"test_accuracy": acc[0], "test_accuracy_std": acc[1],
                                "best_objective": best[0], "best_objective_std": best[1],
                                "seeds": len(sel)}
    unprompted = [results["unprompted"][str(seed)] for seed in seeds
                  if str(seed) in results["unprompted"]]
    return {
        "table": table,
        "unprompted_test_accuracy": unprompted[0]["test_accuracy"] if unprompted else None,
        "unprompted_objective": _mean_std([u["objective"] for u in unprompted])[0]
        if unprompted else None,
    }


def markdown(summary: dict[str, Any], budgets: Sequence[int], test_examples: int) -> str:
    """The result tables as markdown."""
    table = summary["table"]
    head = "| strategy | " + " | ".join(f"b={b}: test acc (%) | best obj." for b in budgets)
    lines = [head + " |", "|---|" + "---:|---:|" * len(budgets)]
    for s, row in table.items():
        cells = []
        for b in budgets:
            r = row.get(str(b))
            cells += (["–", "–"] if r is None else [
                f"{100 * r['test_accuracy']:.1f} ± {100 * r['test_accuracy_std']:.1f}",
                f"{r['best_objective']:.3f}"])
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    base = summary.get("unprompted_test_accuracy")
    if base is not None:
        obj = summary["unprompted_objective"]
        lines.append("| unprompted | " + " | ".join(
            [f"{100 * base:.1f}", f"{obj:.3f}"] * len(budgets)) + " |")
    random_row = table.get("random", {})
    if random_row:
        lines += ["", "| strategy | " + " | ".join(
            f"b={b}: Δ vs random (points) | ratio" for b in budgets) + " |",
            "|---|" + "---:|---:|" * len(budgets)]
        for s, row in table.items():
            cells = []
            for b in budgets:
                r, ref = row.get(str(b)), random_row.get(str(b))
                cells += (["–", "–"] if r is None or ref is None else [
                    f"{100 * (r['test_accuracy'] - ref['test_accuracy']):+.1f}",
                    f"{r['test_accuracy'] / ref['test_accuracy']:.3f}"])
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines += ["", f"Test accuracy on {test_examples} test examples, mean ± std over seeds; "
              "best obj. = best objective value (mean normalised log-prob of the gold label "
              "word on the objective set) among the first b evaluations, mean over seeds."]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], strategies: Sequence[str], seeds: Sequence[int],
         budgets: Sequence[int], path: Path, title: str) -> None:
    """Left: best objective vs evaluations (mean over seeds, ±1 std band) per strategy.
    Right: test accuracy of the selected prompt vs budget (mean ± std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budget = max(budgets)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.6), width_ratios=(3, 2))
    x = np.arange(1, budget + 1)
    table = results.get("summary", {}).get("table", {})
    for i, s in enumerate(strategies):
        color = f"C{i}"
        curves = [np.maximum.accumulate(results["runs"][f"{s}|{seed}"]["values"][:budget])
                  for seed in seeds if f"{s}|{seed}" in results["runs"]]
        curves = [c for c in curves if len(c) == budget]
        if curves:
            c = np.stack(curves)
            mean, std = c.mean(0), c.std(0)
            ax.plot(x, mean, color=color, label=f"{s} ({len(curves)} seeds)")
            ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.15)
        rows = [(b, table[s][str(b)]) for b in budgets if str(b) in table.get(s, {})]
        if rows:
            shift = (i - (len(strategies) - 1) / 2) * 0.012 * budget
            bx.errorbar([b + shift for b, _ in rows],
                        [100 * r["test_accuracy"] for _, r in rows],
                        yerr=[100 * r["test_accuracy_std"] for _, r in rows],
                        color=color, marker="o", ms=4, capsize=3, label=s)
    base = [results["unprompted"][str(seed)] for seed in seeds
            if str(seed) in results["unprompted"]]
    if base:
        ax.axhline(float(np.mean([u["objective"] for u in base])), color="k", ls="--", lw=1,
                   label="unprompted")
        bx.axhline(100 * base[0]["test_accuracy"], color="k", ls="--", lw=1,
                   label="unprompted")
    ax.set_xlabel("evaluations")
    ax.set_ylabel("best objective (mean log p(gold label))")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    bx.set_xlabel("budget (evaluations)")
    bx.set_ylabel("test accuracy of the selected prompt (%)")
    bx.set_xticks(list(budgets))
    bx.set_title("held-out accuracy (mean ± std over seeds)")
    bx.legend(fontsize=8)
    for a in (ax, bx):
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)



def machine() -> str:
    """The machine a run was measured on (cores, torch threads, versions), for the results."""
    cpu = platform.processor() or platform.machine()
    return (f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads, Python {platform.python_version()}")

