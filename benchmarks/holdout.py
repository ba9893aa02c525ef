"""Do the prompts a search finds hold up on training examples it never saw?

Reads a quality-benchmark results file (:mod:`benchmarks.quality`) and, for each
(strategy, seed) run, scores on the seed's ``holdout`` split (the training examples in
neither its objective nor its dev set; ``--examples`` of them) the ``--top`` best prompts
by objective among the first ``--budget`` evaluations, the prompt the benchmark selected at
that budget, and the unprompted model. The test split is never read.

It separates two reasons why a strategy that wins on the objective may not win on test:
its best prompts are not better on unseen examples (the search fits the objective's few
examples), or they are better but the final pick misses them (selection). Per strategy,
averaged over seeds:

- ``selected``: held-out accuracy of the prompt the benchmark picked (top 3 by objective,
  best on dev);
- ``top-1``: of the best prompt by objective;
- ``top-m mean``: mean over the ``--top`` best by objective;
- ``top-m best``: the best of them on held-out (an oracle pick: a bound on what any
  selection among them could reach);
- ``top-m mean obj.``: the objective value of those prompts, to set against their
  held-out value (the gap is how much of the objective's gain was fitted to its examples);
- ``value`` columns: the same for the mean normalised log-probability of the gold label.

    python -m benchmarks.holdout --results benchmarks/results/quality-sst2.json \\
        --budget 100 --top 5 --examples 400

writes ``<results stem>-holdout.json`` (every held-out score, resumable), ``.md`` (the
table) and ``.png`` (held-out against objective value of every top prompt).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import machine
from benchmarks.scoring import ScoreCache, hf_evaluators
from benchmarks.selection import ranked_prompts

SPLIT = "holdout"


def analyse(results: dict[str, Any], score, key_of, strategies: Sequence[str],
            seeds: Sequence[int], budget: int, top: int) -> dict[str, Any]:
    """Per (strategy, seed): held-out ``(value, accuracy)`` of the selected prompt, of the
    top ``top`` prompts by objective (best first) and of the unprompted model.

    ``score(seed, prompts) -> [(value, accuracy)]`` scores on the seed's held-out split;
    ``key_of(rows)`` turns a trace's vocabulary rows into token ids.
    """
    out: dict[str, Any] = {"runs": {}, "unprompted": {}}
    for seed in seeds:
        (out["unprompted"][str(seed)],) = score(seed, [()])
        for s in strategies:
            run = results["runs"].get(f"{s}|{seed}")
            sel = results["selections"].get(f"{s}|{seed}|{budget}")
            if run is None or sel is None or len(run["values"]) < budget:
                continue
            tops = ranked_prompts([key_of(r) for r in run["rows"]], run["values"], budget)[:top]
            scored = score(seed, [tuple(sel["prompt"]), *(k for k, _ in tops)])
            out["runs"][f"{s}|{seed}"] = {
                "selected": list(scored[0]), "top": [list(x) for x in scored[1:]],
                "top_objective": [v for _, v in tops]}
    return out


def table(analysis: dict[str, Any], strategies: Sequence[str], seeds: Sequence[int],
          top: int) -> dict[str, dict[str, float]]:
    """Mean over seeds of each column, per strategy (and the unprompted model)."""
    rows: dict[str, dict[str, float]] = {}
    for s in strategies:
        runs = [analysis["runs"][f"{s}|{seed}"] for seed in seeds
                if f"{s}|{seed}" in analysis["runs"]]
        if not runs:
            continue
        cols: dict[str, list[float]] = {}
        for r in runs:
            top_v = np.array(r["top"], dtype=np.float64)  # `m x 2`: value, accuracy
            for i, what in enumerate(("value", "accuracy")):
                cols.setdefault(f"selected {what}", []).append(r["selected"][i])
                cols.setdefault(f"top-1 {what}", []).append(top_v[0, i])
                cols.setdefault(f"top-{top} mean {what}", []).append(top_v[:, i].mean())
                cols.setdefault(f"top-{top} best {what}", []).append(top_v[:, i].max())
            cols.setdefault(f"top-{top} mean objective", []).append(np.mean(r["top_objective"]))
        rows[s] = {k: float(np.mean(v)) for k, v in cols.items()}
        rows[s]["selected accuracy std"] = float(np.std(cols["selected accuracy"], ddof=1)
                                                 if len(runs) > 1 else 0.0)
        rows[s]["seeds"] = len(runs)
    base = [analysis["unprompted"][str(seed)] for seed in seeds
            if str(seed) in analysis["unprompted"]]
    if base:
        rows["unprompted"] = {"selected value": float(np.mean([b[0] for b in base])),
                              "selected accuracy": float(np.mean([b[1] for b in base]))}
    return rows


def markdown(rows: dict[str, dict[str, float]], top: int, examples: int, budget: int) -> str:
    cols = [("selected accuracy", "selected acc (%)"), ("top-1 accuracy", "top-1 acc"),
            (f"top-{top} mean accuracy", f"top-{top} mean acc"),
            (f"top-{top} best accuracy", f"top-{top} best acc"),
            (f"top-{top} mean objective", f"top-{top} mean obj."),
            ("selected value", "selected value"), ("top-1 value", "top-1 value"),
            (f"top-{top} mean value", f"top-{top} mean value"),
            (f"top-{top} best value", f"top-{top} best value")]
    lines = ["| strategy | " + " | ".join(h for _, h in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for s, r in rows.items():
        cells = []
        for k, _ in cols:
            if k not in r:
                cells.append("–")
            elif k == "selected accuracy" and "selected accuracy std" in r:
                cells.append(f"{100 * r[k]:.1f} ± {100 * r['selected accuracy std']:.1f}")
            else:
                cells.append(f"{100 * r[k]:.1f}" if "accuracy" in k else f"{r[k]:.3f}")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines += ["", f"Held-out split: {examples} training examples per seed in neither the "
              f"objective nor the dev set; budget {budget}; mean over seeds (± std over seeds "
              "for the selected prompt). value and obj. = mean normalised log-prob of the gold "
              "label, on the held-out and on the objective examples."]
    return "\n".join(lines) + "\n"


def plot(analysis: dict[str, Any], strategies: Sequence[str], path: Path, title: str) -> None:
    """Held-out value against objective value of every run's top prompts, one colour per
    strategy; points below the diagonal lost value on the unseen examples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    xs: list[float] = []
    for i, s in enumerate(strategies):
        runs = [r for name, r in analysis["runs"].items() if name.split("|")[0] == s]
        x = [v for r in runs for v in r["top_objective"]]
        y = [t[0] for r in runs for t in r["top"]]
        if x:
            ax.scatter(x, y, s=14, alpha=0.7, color=f"C{i}", label=s)
            xs += x + y
    if xs:
        lo, hi = min(xs), max(xs)
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="held-out = objective")
    base = [u[0] for u in analysis["unprompted"].values()]
    if base:
        ax.axhline(float(np.mean(base)), color="grey", lw=1, ls=":", label="unprompted (held-out)")
    ax.set_xlabel("objective value (the examples the search saw)")
    ax.set_ylabel("held-out value (unseen training examples)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", required=True, help="a benchmarks.quality results .json")
    ap.add_argument("--strategies", default=None, help="default: those in the results")
    ap.add_argument("--seeds", default=None, help="default: those in the results")
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--top", type=int, default=5, help="best prompts by objective per run")
    ap.add_argument("--examples", type=int, default=400, help="held-out examples per seed")
    ap.add_argument("--out", default=None, help="default: <results stem>-holdout")
    args = ap.parse_args(argv)
    path = Path(args.results)
    results = json.loads(path.read_text())
    config = results["config"]
    strategies = (args.strategies.split(",") if args.strategies else config["strategies"])
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else config["seeds"]
    out = Path(args.out) if args.out else path.with_name(path.stem + "-holdout")
    saved = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(
        ".json").exists() else {}
    if saved and saved.get("examples") != args.examples:
        sys.exit(f"{out.with_suffix('.json')} holds scores on {saved.get('examples')} "
                 f"held-out examples, not {args.examples}; use that or another --out")

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    evaluator_args = argparse.Namespace(**{**config, "test_kv_cache_mb": 4096})
    make = hf_evaluators(evaluator_args, holdout_examples=args.examples)
    log(f"loading {config['model']} for {config['data_dir']}")
    first = make(SPLIT, seeds[0])
    vocabulary = first.vocabulary()
    built = {(SPLIT, seeds[0]): first}
    cache = ScoreCache(lambda sp, sd: built.pop((sp, sd), None) or make(sp, sd),
                       vocabulary, saved.get("scores", {}))
    ids = np.asarray(vocabulary.token_ids, dtype=np.int64)
    record: dict[str, Any] = {"results": str(path), "examples": args.examples,
                              "scores": cache.store}

    def score(seed: int, prompts: list[tuple[int, ...]]) -> list[tuple[float, float]]:
        start, before = time.perf_counter(), cache.evaluated[SPLIT]
        scored = cache.score(SPLIT, seed, prompts)
        if cache.evaluated[SPLIT] > before:  # new scores: report and save them
            log(f"seed {seed}: {cache.evaluated[SPLIT] - before} prompts scored on held-out "
                f"({time.perf_counter() - start:.0f} s)")
            out.with_suffix(".json").write_text(json.dumps(record))
        return scored

    analysis = analyse(results, score, lambda rows: tuple(int(i) for i in ids[list(rows)]),
                       strategies, seeds, args.budget, args.top)
    cache.close()
    rows = table(analysis, strategies, seeds, args.top)
    record.update(analysis=analysis, table=rows, budget=args.budget, top=args.top,
                  machine=machine())
    out.with_suffix(".json").write_text(json.dumps(record))
    text = markdown(rows, args.top, args.examples, args.budget)
    out.with_suffix(".md").write_text(text)
    plot(analysis, strategies, out.with_suffix(".png"),
         f"{path.stem}: top {args.top} prompts per run at budget {args.budget}")
    print(text)
    log(f"wrote {out.with_suffix('.json')}, {out.with_suffix('.md')} and "
        f"{out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
