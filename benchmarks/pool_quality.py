"""Pool-quality benchmark: test accuracy of the pool candidate each pool strategy picks.

The pool is built once, independent of the benchmark seeds, as ``promptbo pool build``
builds it (:func:`~promptbo.evaluators.pools.combine` and
:func:`~promptbo.evaluators.pools.build_pool`): the 24 instructions of
:mod:`benchmarks.pool_synthetic` × its 3 label phrases × ``--demo-sets`` draws of
``--demos`` demonstrations, embedded with all-MiniLM-L6-v2. The demonstrations are drawn
with seed ``--pool-seed`` from the training examples outside the objective and dev sets of
that seed and of the ``--reserved-seeds`` (0, 1, 2), so the pool does not depend on which
seeds a run measures (``demo_overlap`` records the check: per measured seed, the candidates
that contain the text of an example it scores). The evaluator is ``hf-causal`` on ``--model``
(SmolLM2-135M-Instruct) with its default template (the prompt before the input) and the
class names as label words. Per benchmark seed, as in :mod:`benchmarks.quality`:

- objective: ``--k`` training examples per class drawn with the seed; each strategy
  maximizes the evaluator's value (mean normalised log-probability of the gold label word);
- dev: ``--k`` more per class; at each budget ``b`` the top ``--top-k`` by objective among
  the first ``b`` evaluated are scored on dev and the best on dev is the pick
  (:func:`benchmarks.selection.select_prompt`);
- test: the test split (``--limit-test N`` keeps its first N), only for the reported
  accuracy of the pick and of the unprompted model.

Each (strategy, seed) is one run to the largest budget, made in passes: every seed and
strategy reaches the first of ``--passes`` (default: each budget in turn) before any goes
further (a run is continued by replaying its trace into a fresh engine, as the server
rebuilds an engine), so a run stopped early has every strategy and seed at the same
budget. ``optuna-tpe`` is Optuna's seeded TPE over the pool index
(:class:`benchmarks.proposers.TPEProposer`). Every score is kept in ``<out>.scores.json``
keyed by (split, seed, candidate), so candidates shared by strategies are scored once and a
restarted run (``--resume``) scores nothing twice; ``<out>.json`` is rewritten after every
(strategy, seed) in the form :mod:`benchmarks.report` reads.

    python -m benchmarks.pool_quality --data-dir ../shared/datasets/sst2 \\
        --budgets 25,50,100,165 --seeds 0,1,2 --strategies zopo,gp,random,optuna-tpe \\
        --limit-test 300 --out benchmarks/results/pool-quality-sst2-full

writes ``<out>.json``, ``<out>.md`` (the tables) and ``<out>.png``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.pool_synthetic import INSTRUCTIONS, LABEL_PHRASES
from benchmarks.proposers import OPTUNA_TPE, TPEProposer, Trace, optimize
from benchmarks.report import machine, markdown, plot, summarize
from benchmarks.scoring import Key, ScoreCache, hf_evaluators, unprompted_scores
from benchmarks.selection import select_and_test
from promptbo.evaluators.pools import demo_counts
from promptbo.types import Prompt

#: Config entries that must match for ``--resume`` and for the score cache.
FIXED_CONFIG = ("data_dir", "model", "k", "demos", "demo_sets", "pool_seed", "reserved_seeds",
                "limit_test", "top_k")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--strategies", default=f"zopo,gp,random,{OPTUNA_TPE}")
    p.add_argument("--budgets", default="25,50,100,165")
    p.add_argument("--passes", default="",
                   help="budgets every (seed, strategy) reaches before any goes further "
                        "(default: each of --budgets)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--k", type=int, default=16, help="examples per class (objective, dev)")
    p.add_argument("--top-k", type=int, default=3, help="candidates re-scored on dev")
    p.add_argument("--demos", type=demo_counts, default=1,
                   help="demonstrations per candidate; several counts (0,1) put each "
                        "combination in once per count")
    p.add_argument("--demo-sets", type=int, default=7, help="demonstration draws per pair")
    p.add_argument("--pool-seed", type=int, default=0, help="seed of the pool's draws")
    p.add_argument("--reserved-seeds", default="0,1,2",
                   help="benchmark seeds whose objective and dev examples are no demonstrations")
    p.add_argument("--limit-test", type=int, default=300, help="first N test examples (0: all)")
    p.add_argument("--instructions", default="",
                   help="file of candidate instructions, one per line (default: the 24 "
                        "SST-2 instructions of benchmarks.pool_synthetic)")
    p.add_argument("--label-phrase", action="append", default=None, dest="label_phrases",
                   help="a sentence naming the label words, repeatable; '' adds none "
                        "(default: the SST-2 phrases of benchmarks.pool_synthetic)")
    p.add_argument("--template", default=None,
                   help="the evaluator's template ({prompt}, {text}, {answer}; default: "
                        "hf-causal's, the prompt before the input)")
    p.add_argument("--labels", default=None,
                   help="comma-separated label words (default: the dataset's class names)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--out", default="benchmarks/results/pool-quality-sst2-full")
    p.add_argument("--resume", action="store_true", help="continue from <out>.json")
    p.add_argument("--report", action="store_true",
                   help="only rewrite <out>.md/.png (and the summary in <out>.json) from "
                        "<out>.json for these strategies, budgets and seeds")
    args = p.parse_args(argv)
    args.budgets = sorted({int(b) for b in args.budgets.split(",")})
    passes = [int(b) for b in args.passes.split(",") if b] or args.budgets
    args.passes = sorted({*passes, args.budgets[-1]})
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.reserved_seeds = sorted({int(s) for s in args.reserved_seeds.split(",") if s})
    args.strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    args.test_kv_cache_mb = 1024  # what hf_evaluators reads besides the above
    return args


def pool_parts(args) -> tuple[list[str], list[str]]:
    """The instructions and label phrases the pool combines."""
    from promptbo.evaluators.pools import read_instructions

    instructions = read_instructions(args.instructions) if args.instructions else INSTRUCTIONS
    phrases = LABEL_PHRASES if args.label_phrases is None else args.label_phrases
    return list(instructions), list(phrases)


def make_pool(args, log) -> tuple[Any, dict[str, int]]:
    """The pool (a :class:`~promptbo.evaluators.pools.PoolTable`) and, per benchmark seed,
    the number of candidates that contain the text of one of its objective or dev examples
    (0 but for duplicate texts in the training file)."""
    from promptbo.evaluators.pools import build_pool, combine, training_examples

    start = time.perf_counter()
    rest = {seed: set(training_examples(args.data_dir, args.labels, args.k, seed))
            for seed in {args.pool_seed, *args.reserved_seeds, *args.seeds}}
    demos = training_examples(args.data_dir, args.labels, args.k, args.pool_seed)
    # Examples a reserved seed scores (its objective and dev sets) are no demonstrations.
    scored = {seed: set(demos) - r for seed, r in rest.items()}
    demos = [d for d in demos
             if not any(d in scored[seed] for seed in args.reserved_seeds)]
    instructions, phrases = pool_parts(args)
    texts = combine(instructions, label_phrases=phrases, demonstrations=demos,
                    k=args.demos, demo_sets=args.demo_sets, seed=args.pool_seed)
    table = build_pool(texts)
    # A check: candidates containing the text of an example a benchmark seed scores.
    overlap = {str(seed): sum(any(f"Input: {x} Answer:" in c for x, _ in scored[seed])
                              for c in table.texts) for seed in args.seeds}
    log(f"pool: {len(table.texts)} candidates, {table.embedding_model}, "
        f"{time.perf_counter() - start:.0f} s; candidates with a seed's objective/dev "
        f"example as demonstration: {overlap}")
    return table, overlap


def fingerprint(args, texts: Sequence[str]) -> dict[str, Any]:
    """What a cached score depends on: the fixed config and the pool's texts."""
    digest = hashlib.sha256(json.dumps(list(texts)).encode()).hexdigest()[:16]
    fp = {**{k: getattr(args, k) for k in FIXED_CONFIG}, "pool_sha256": digest}
    # Template and label words change every score; they enter only when set, so the
    # caches written before these options existed (the defaults) stay valid.
    fp.update({k: getattr(args, k) for k in ("template", "labels") if getattr(args, k)})
    return fp


def write_json(path: Path, doc: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)


class PoolBenchmark:
    """Runs every (seed, strategy) on one pool, selects at each budget, writes the outputs."""

    def __init__(self, args, table, cache: ScoreCache, results: dict[str, Any], log=print):
        self.args, self.table, self.cache, self.results, self.log = args, table, cache, results, log
        self.out = Path(args.out)
        self.out.parent.mkdir(parents=True, exist_ok=True)

    def run(self) -> None:
        a = self.args
        for budget in a.passes:
            for seed in a.seeds:
                self.unprompted(seed)
                for strategy in a.strategies:
                    self.run_one(strategy, seed, budget)
                    self.write()

    def unprompted(self, seed: int) -> None:
        if str(seed) in self.results["unprompted"]:
            return
        row = unprompted_scores(self.cache, seed)
        self.results["unprompted"][str(seed)] = row
        self.log(f"unprompted (seed {seed}): objective {row['objective']:.4f} "
                 f"(acc {row['objective_accuracy']:.3f}), "
                 f"test accuracy {row['test_accuracy']:.4f}")

    def proposer(self, strategy: str, seed: int):
        if strategy == OPTUNA_TPE:
            return TPEProposer(range(len(self.table.texts)), 1, seed)
        from promptbo.server.domain import PoolSpace
        from promptbo.server.optim import make_engine

        return make_engine(PoolSpace("bench"), strategy, {}, seed, self.table.embeddings)

    def run_one(self, strategy: str, seed: int, budget: int) -> None:
        name = f"{strategy}|{seed}"
        stored = self.results["runs"].get(name)
        trace = Trace(**stored) if stored else Trace()
        if len(trace.values) >= budget:
            return
        start = time.perf_counter()

        def evaluate(rows: list[list[int]]) -> list[tuple[float, float]]:
            return self.cache.score("objective", seed, [tuple(r) for r in rows])

        def progress(t: Trace) -> None:
            n = len(t.values)
            if n % self.args.log_every == 0 or n == budget:
                self.results["runs"][name] = t.to_json()
                self.save_scores()
                self.log(f"{strategy} seed {seed}: {n}/{budget} evals, best objective "
                         f"{max(t.values):.4f}; suggest {t.suggest_seconds:.0f} s, "
                         f"score {t.score_seconds:.0f} s")

        trace = optimize(self.proposer(strategy, seed), budget, evaluate, trace,
                         progress=progress)
        self.results["runs"][name] = trace.to_json()
        for b in (b for b in self.args.budgets if b <= budget):
            self.select(strategy, seed, b, trace)
        self.log(f"{strategy} seed {seed}: to {budget} in {time.perf_counter() - start:.0f} s; "
                 f"prompts scored so far {dict(self.cache.evaluated)}")

    def select(self, strategy: str, seed: int, budget: int, trace: Trace) -> None:
        keys: list[Key] = [tuple(r) for r in trace.rows]
        sel = select_and_test(self.cache, seed, keys, trace.values, budget, self.args.top_k)
        test_acc = sel["test_accuracy"]
        self.results["selections"][f"{strategy}|{seed}|{budget}"] = sel
        self.log(f"{strategy} seed {seed} b={budget}: objective {sel['objective']:.4f}, dev "
                 f"{sel['dev']:.4f} -> test accuracy {test_acc:.4f}: {sel['text'][:80]!r}")

    def save_scores(self) -> None:
        write_json(self.out.with_name(self.out.name + ".scores.json"),
                   {"fingerprint": self.results["fingerprint"], "scores": self.cache.store})

    def write(self, final: bool = False) -> None:
        self.save_scores()
        render(self.results, self.args, final)


def render(results: dict[str, Any], args, final: bool = False) -> None:
    """Writes ``<out>.json`` with the summary of ``args``' strategies, seeds and budgets,
    its tables to ``<out>.md`` and, if ``final``, its figure to ``<out>.png``."""
    out = Path(args.out)
    summary = summarize(results, args.strategies, args.seeds, args.budgets)
    results["summary"] = summary
    write_json(out.with_suffix(".json"), results)
    counts = {f"{s} b={b}": r["seeds"] for s, row in summary["table"].items()
              for b, r in row.items()}
    note = (f"\nPool of {results['pool_size']} candidates; seeds {args.seeds}; seeds per "
            f"cell: {counts}.\n")
    out.with_suffix(".md").write_text(markdown(summary, args.budgets, args.limit_test) + note)
    if final:
        plot(results, args.strategies, args.seeds, args.budgets, out.with_suffix(".png"),
             f"{Path(args.data_dir).name}: pool of {results['pool_size']}, "
             "SmolLM2-135M-Instruct")


def load_store(path: Path, expected: dict[str, Any]) -> dict[str, list[float]]:
    """The cached scores in ``path`` if they were made with the same pool and settings."""
    if not path.exists():
        return {}
    doc = json.loads(path.read_text())
    if doc.get("fingerprint") != expected:
        sys.exit(f"{path} holds scores of another pool or other settings; move it away")
    return doc["scores"]


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    out = Path(args.out)
    previous = out.with_suffix(".json")
    if args.report:
        render(json.loads(previous.read_text()), args, final=True)
        print(out.with_suffix(".md").read_text())
        return
    log(f"pool-quality benchmark ({machine()})")
    table, overlap = make_pool(args, log)
    fp = fingerprint(args, table.texts)
    if args.resume and previous.exists():
        results = json.loads(previous.read_text())
        if results.get("fingerprint") != fp:
            sys.exit(f"--resume: {previous} was written with another pool or settings")
    else:
        results = {"runs": {}, "selections": {}, "unprompted": {}}
    results.update(fingerprint=fp, pool_size=len(table.texts), demo_overlap=overlap,
                   test_examples=args.limit_test, machine=machine(),
                   config={**vars(args)})
    store = load_store(out.with_name(out.name + ".scores.json"), fp)
    log(f"{len(store)} cached scores")

    def prompt_of(key: Key) -> Prompt:
        return Prompt(text=table.texts[key[0]] if key else "", pool_index=None)

    cache = ScoreCache(hf_evaluators(args), prompt_of, store)
    bench = PoolBenchmark(args, table, cache, results, log)
    try:
        bench.run()
        bench.write(final=True)
    finally:
        cache.close()
    print(out.with_suffix(".md").read_text())
    log(f"wrote {out}.json/.md/.png; prompts scored: {dict(cache.evaluated)}")


if __name__ == "__main__":
    main()
