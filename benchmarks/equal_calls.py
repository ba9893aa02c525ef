"""The "equal model calls" protocol: test accuracy of the recommended prompt per scored example.

Beside the 16-shot protocol of :mod:`benchmarks.quality`: every strategy gets a labeled
pool of ``--pool`` training examples (the ``pool`` split of the task: training examples
outside ``dev``, objective set first) and a budget counted in *scored examples*, the
model calls a user pays for. At each budget of ``--budgets`` the prompt the strategy
recommends at that point is scored on the test split. Columns:

- ``mf``: promptbo's multi-fidelity strategy through a real :class:`StudyManager` (pool,
  ledger, fresh examples on promotion, the GetRecommendation ranking);
- ``gp-fixed``, ``turbo-fixed``: today's protocol, every trial scored on the same fixed
  sample of ``--fixed`` pool examples (the first ones: the objective set), recommendation
  by GetRecommendation (posterior mean);
- ``random-full``: random prompts, each scored on the whole pool; the best is recommended;
- ``optuna-tpe``: Optuna's TPE on the fixed sample, best observed recommended;
- ``mipro-tpe``: a MIPROv2-style minibatch TPE, written after DSPy's ``MIPROv2``: each
  trial is scored on a fresh random minibatch of ``--minibatch`` (35) pool examples and
  TPE sees the minibatch score; every ``--full-every`` (5) trials the candidate with the
  best mean minibatch score that has no full score yet is scored on the whole pool; the
  recommendation is the best fully scored candidate (the best minibatch mean before any);
- ``unprompted``: the empty prompt.

A manager column may carry strategy options in brackets, as a column of its own:
``mf[top_examples=1000]`` is ``mf`` with its top rung at the whole pool of 1,000.

Scores are cached per (prompt, pool example), so CPU is not spent twice, but every
scoring is charged to the budget as the service would charge it. Two intervals of the
recommendation's pool accuracy are checked against its test accuracy: 95% over every
example the strategy scored it on, and the service's selection-aware interval (over the
examples its estimate stands on: the latest trial of a promoted prompt, simultaneous over
the prompts it was chosen among; see :mod:`promptbo.server.recommend`), applied alike to
the baselines (``mipro-tpe``: its full scores, chosen among the fully scored prompts).

    python -m benchmarks.equal_calls --data-dir ../shared/datasets/sst2 --pool 1000 \\
        --budgets 4000,8000 --seeds 0,1,2 \\
        --strategies mf,gp-fixed,turbo-fixed,random-full,optuna-tpe,mipro-tpe,unprompted \\
        --out benchmarks/results/equal-calls-sst2

writes ``<out>.json`` (every run's checkpoints) and ``<out>.md`` (the table); finished
(strategy, seed) runs in an existing ``<out>.json`` are kept (the harness resumes).
Runs made by several processes (each its own ``--out``) are united with
``--merge a.json,b.json --out <out>``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.proposers import TPEProposer
from benchmarks.report import machine
from benchmarks.scoring import task_style

Z95 = 1.959963984540054
STRATEGIES = ("mf", "gp-fixed", "turbo-fixed", "random-full", "optuna-tpe", "mipro-tpe",
              "unprompted")
#: Columns that run through the study manager (and so take ``[key=value;...]`` options).
MANAGER_STRATEGIES = ("mf", "gp-fixed", "turbo-fixed", "random-full")


def parse_column(column: str) -> tuple[str, dict[str, str]]:
    """``"mf[top_examples=1000;eta=3]"`` -> ``("mf", {"top_examples": "1000", "eta": "3"})``;
    a plain name has no options. Raises ValueError for a malformed column."""
    name, bracket, rest = column.partition("[")
    if not bracket:
        return column, {}
    if not rest.endswith("]"):
        raise ValueError(f"{column!r}: options go in brackets, e.g. mf[top_examples=1000]")
    options: dict[str, str] = {}
    for item in filter(None, rest[:-1].split(";")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"{column!r}: option {item!r} is not key=value")
        options[key.strip()] = value.strip()
    if name not in MANAGER_STRATEGIES:
        raise ValueError(f"{column!r}: only {', '.join(MANAGER_STRATEGIES)} take options")
    return name, options


def column_order(columns) -> list[str]:
    """Columns in :data:`STRATEGIES` order, each variant after its base strategy."""
    rank = {s: i for i, s in enumerate(STRATEGIES)}
    return sorted(columns, key=lambda c: (rank.get(parse_column(c)[0], len(rank)), c))


class PoolScorer:
    """Per-example scores of prompts on the pool, cached; ``charged`` counts every scoring.

    A prompt is a tuple of model token ids. ``score(key, idx)`` returns the per-example
    values (normalised log-prob of the gold word) and correctness (0/1) for ``idx``.
    """

    def __init__(self, pool_ev, test_ev):
        self.pool_ev = pool_ev
        self.test_ev = test_ev
        self.value: dict[tuple, dict[int, float]] = {}
        self.correct: dict[tuple, dict[int, float]] = {}
        self.test: dict[tuple, float] = {}
        self.charged = 0

    def score(self, key: tuple, idx: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        from promptbo.types import Prompt

        v = self.value.setdefault(key, {})
        c = self.correct.setdefault(key, {})
        missing = sorted({int(i) for i in idx} - set(v))
        if missing:
            lp = self.pool_ev.label_log_probs([Prompt(token_ids=key)], missing)[0]
            task = self.pool_ev.task.subset(missing)
            norm = lp - np.logaddexp.reduce(lp, axis=1, keepdims=True)
            gold = task.gold
            for j, i in enumerate(missing):
                v[i] = float(norm[j, gold[j]])
                c[i] = float(norm[j].argmax() == gold[j])
        self.charged += len(idx)
        return np.array([v[int(i)] for i in idx]), np.array([c[int(i)] for i in idx])

    def accuracy_interval(self, key: tuple, idx: Sequence[int]) -> tuple[float, float, int]:
        """Pool accuracy over ``idx`` (distinct) with its standard error, and the count."""
        c = np.array([self.correct[key][int(i)] for i in sorted(set(idx))])
        se = float(c.std(ddof=1) / math.sqrt(len(c))) if len(c) > 1 else 0.0
        return float(c.mean()), se, len(c)

    def test_accuracy(self, key: tuple) -> float:
        from promptbo.types import Prompt

        if key not in self.test:
            self.test[key] = self.test_ev.score([Prompt(token_ids=key)])[0].metrics["accuracy"]
        return self.test[key]


class Run:
    """One (strategy, seed): records a checkpoint each time the charged examples pass a
    budget: the recommended prompt, its pool accuracy interval and examples."""

    def __init__(self, budgets: Sequence[int], label: str = ""):
        self.budgets = sorted(budgets)
        self.label = label
        self.checkpoints: list[dict[str, Any]] = []
        self._start = time.perf_counter()

    def add(self, checkpoint: dict[str, Any]) -> None:
        """Records a checkpoint and, for a labelled run, prints it (progress of long runs)."""
        self.checkpoints.append(checkpoint)
        if self.label:
            print(f"  {self.label} @{checkpoint['budget']} examples: test "
                  f"{checkpoint['test_accuracy']:.3f}, pool {checkpoint['pool_accuracy']:.3f} "
                  f"on {checkpoint['examples']} ({time.perf_counter() - self._start:.0f} s)",
                  flush=True)

    def due(self, charged: int) -> list[int]:
        done = {c["budget"] for c in self.checkpoints}
        return [b for b in self.budgets if b <= charged and b not in done]


def run_manager(strategy: str, seed: int, args, scorer: PoolScorer, space, vocab) -> Run:
    """mf, gp-fixed, turbo-fixed, random-full (with options: ``mf[key=value]``) through
    the study manager."""
    from promptbo.server.domain import StudySpec
    from promptbo.server.manager import StudyManager, TrialResult
    from promptbo.server.storage.memory import InMemoryStorage
    from promptbo.types import mean_and_stderr

    label = f"{strategy}|{seed}"
    strategy, options = parse_column(strategy)
    fixed = strategy.endswith("-fixed")
    base = strategy.removesuffix("-fixed").removesuffix("-full")
    top = max(args.budgets)
    manager = StudyManager(InMemoryStorage())
    manager.upload_vocabulary(vocab)
    spec = StudySpec(
        space=space, strategy=base, seed=seed, strategy_options=options,
        pool_size=0 if fixed else args.pool,
        max_examples=0 if fixed else top,
        examples_per_trial=args.pool if strategy == "random-full" else 0,
        max_trials=top // args.fixed if fixed else 0,
    )
    manager.create_study("s", spec)
    run = Run(args.budgets, label)
    seen: dict[tuple, set[int]] = {}
    fixed_idx = list(range(args.fixed))
    fixed_charged = 0
    while True:
        trials, done = manager.suggest_trials("s", 1, "bench")
        if not trials:
            break
        t = trials[0]
        key = tuple(t.prompt.token_ids)
        idx = fixed_idx if fixed else list(t.examples)
        values, _ = scorer.score(key, idx)
        seen.setdefault(key, set()).update(idx)
        m, se = mean_and_stderr(values)
        manager.complete_trials("s", [TrialResult(t.id, m, {}, value_stderr=se,
                                                  examples_scored=len(idx))], "bench")
        fixed_charged += len(idx)
        charged = fixed_charged if fixed else manager.examples_scored("s")
        for b in run.due(charged):
            rec, _, _ = manager.recommendation("s")
            assert rec is not None
            rkey = tuple(rec.prompt.token_ids)
            basis = list(rec.trial.examples) or fixed_idx  # what the estimate stands on
            run.add(checkpoint(b, rkey, seen[rkey], scorer, basis, rec.candidates))
        if done:
            break
    return run


def checkpoint(budget: int, key: tuple, idx, scorer: PoolScorer, basis=None,
               candidates: int = 1) -> dict[str, Any]:
    """The recommendation at ``budget``: its pool accuracy over every example it was
    scored on (``idx``), over the examples its estimate stands on (``basis``: what the
    service's recommendation reports, default ``idx``) with the number of ``candidates``
    it was chosen among (its interval is simultaneous over them), and its test accuracy."""
    acc, se, n = scorer.accuracy_interval(key, sorted(idx))
    b_acc, b_se, b_n = scorer.accuracy_interval(key, sorted(basis if basis is not None
                                                            else idx))
    return {"budget": budget, "prompt": list(key), "pool_accuracy": acc, "stderr": se,
            "examples": n, "basis_accuracy": b_acc, "basis_stderr": b_se,
            "basis_examples": b_n, "candidates": int(candidates),
            "test_accuracy": scorer.test_accuracy(key)}


def run_tpe(strategy: str, seed: int, args, scorer: PoolScorer, space, ids, allowed) -> Run:
    """optuna-tpe on the fixed sample, or the MIPROv2-style minibatch TPE."""
    tpe = TPEProposer(allowed, space.prompt_length, seed)
    rng = np.random.default_rng(seed)
    run = Run(args.budgets, f"{strategy}|{seed}")
    top = max(args.budgets)
    charged = 0
    minis: dict[tuple, list[float]] = {}  # key -> minibatch means (mipro)
    seen: dict[tuple, set[int]] = {}
    full: dict[tuple, float] = {}
    trials = 0

    def best() -> tuple:
        if strategy == "optuna-tpe" or not full:
            return max(minis, key=lambda k: float(np.mean(minis[k])))
        return max(full, key=lambda k: full[k])

    def record(b: int) -> None:
        k = best()
        m = len(full) if k in full else len(minis)  # chosen among these
        run.add(checkpoint(b, k, seen[k], scorer, None, m))

    while True:
        mipro = strategy == "mipro-tpe"
        size = min(args.minibatch, args.pool) if mipro else args.fixed
        if charged + size > top:
            break
        rows = tpe.suggest(1)
        key = tuple(int(i) for i in ids[rows[0].tolist()])
        idx = (sorted(rng.choice(args.pool, size=size, replace=False).tolist()) if mipro
               else list(range(args.fixed)))
        values, _ = scorer.score(key, idx)
        charged += len(idx)
        seen.setdefault(key, set()).update(idx)
        minis.setdefault(key, []).append(float(values.mean()))
        import torch

        tpe.observe(rows, torch.tensor([float(values.mean())], dtype=torch.float64))
        trials += 1
        if mipro and trials % args.full_every == 0:
            pending = [k for k in minis if k not in full]
            if pending and charged + args.pool <= top:
                k = max(pending, key=lambda k: float(np.mean(minis[k])))
                all_idx = list(range(args.pool))
                v, _ = scorer.score(k, all_idx)
                charged += args.pool
                seen[k].update(all_idx)
                full[k] = float(v.mean())
        for b in run.due(charged):
            record(b)
    for b in run.budgets:  # budgets the last step could not reach exactly
        if b not in {c["budget"] for c in run.checkpoints}:
            record(b)
    return run


#: Settings that runs must share to sit in one table.
SHARED = ("data_dir", "pool", "prompt_length", "top_n", "pca_dims", "k", "fixed", "minibatch",
          "full_every", "limit_test", "model", "template")


def merge_results(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The union of several runs' results (e.g. one process per strategy); they must share
    :data:`SHARED` settings and a (strategy, seed) may appear in one part only."""
    def setting(config: dict[str, Any], k: str) -> Any:
        v = config.get(k)
        return Path(v).name if k == "data_dir" and v else v  # run from another directory

    merged: dict[str, Any] = {"config": dict(parts[0]["config"]), "runs": {}}
    for part in parts:
        diff = [k for k in SHARED
                if setting(part["config"], k) != setting(merged["config"], k)]
        if diff:
            raise ValueError(f"cannot merge runs with different {', '.join(diff)}")
        twice = sorted(set(part["runs"]) & set(merged["runs"]))
        if twice:
            raise ValueError(f"{', '.join(twice)} appear in more than one part")
        merged["runs"].update(part["runs"])
    merged["config"]["budgets"] = sorted({b for p in parts for b in p["config"]["budgets"]})
    merged["machine"] = parts[0].get("machine")
    return merged


def summarize(results: dict[str, Any], strategies: Sequence[str], budgets: Sequence[int],
              seeds: Sequence[int]) -> str:
    """The table: test accuracy per budget (mean ± std over seeds) and how often the
    recommendation's interval covers its test accuracy: the 95% interval of its pool
    accuracy over every example it was scored on ("all examples"), and the service's
    interval (over the examples its estimate stands on, simultaneous over the candidates
    it was chosen among; "selection-aware", – for runs recorded before it existed)."""
    from promptbo.server.recommend import interval_z

    lines = ["| strategy | " + " | ".join(f"test acc @ {b}" for b in budgets)
             + " | all-examples interval covers test | selection-aware interval covers |",
             "|---|" + "---:|" * (len(budgets) + 2)]
    for s in strategies:
        cells, covered, total, aware, aware_total = [], 0, 0, 0, 0
        for b in budgets:
            accs = []
            for seed in seeds:
                run = results["runs"].get(f"{s}|{seed}")
                if run is None:
                    continue
                for c in run["checkpoints"]:
                    if c["budget"] == b:
                        accs.append(c["test_accuracy"])
                        lo = c["pool_accuracy"] - Z95 * c["stderr"]
                        hi = c["pool_accuracy"] + Z95 * c["stderr"]
                        if s != "unprompted":
                            covered += lo <= c["test_accuracy"] <= hi
                            total += 1
                            if "basis_accuracy" in c:
                                half = interval_z(c["candidates"]) * c["basis_stderr"]
                                aware += abs(c["basis_accuracy"] - c["test_accuracy"]) <= half
                                aware_total += 1
            cells.append(f"{100 * np.mean(accs):.1f} ± {100 * np.std(accs):.1f}" if accs
                         else "–")
        cover = f"{covered}/{total}" if total else "–"
        cover2 = f"{aware}/{aware_total}" if aware_total else "–"
        lines.append(f"| {s} | " + " | ".join(cells) + f" | {cover} | {cover2} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--pool", type=int, default=1000, help="labeled pool size")
    p.add_argument("--budgets", default="4000,8000", help="scored examples")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--prompt-length", type=int, default=5)
    p.add_argument("--top-n", type=int, default=2000)
    p.add_argument("--pca-dims", type=int, default=16)
    p.add_argument("--k", type=int, default=16, help="dev examples per class (kept out)")
    p.add_argument("--fixed", type=int, default=32, help="the fixed sample of *-fixed")
    p.add_argument("--minibatch", type=int, default=35, help="mipro-tpe minibatch")
    p.add_argument("--full-every", type=int, default=5, help="mipro-tpe full evaluations")
    p.add_argument("--limit-test", type=int, default=0)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--template", default=None, help="default: the dataset's TASK_STYLES entry")
    p.add_argument("--out", default="benchmarks/results/equal-calls-sst2")
    p.add_argument("--merge", default="",
                   help="comma-separated results JSON files to unite into --out (no runs)")
    args = p.parse_args(argv)
    args.budgets = sorted(int(b) for b in args.budgets.split(","))
    seeds = [int(s) for s in args.seeds.split(",")]
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    if args.merge:
        out = Path(args.out)
        parts = [json.loads(Path(f).read_text()) for f in args.merge.split(",") if f]
        try:
            merged = merge_results(parts)
        except ValueError as exc:
            p.error(str(exc))
        out.with_suffix(".json").write_text(json.dumps(merged, indent=1))
        have = {t.split("|")[0] for t in merged["runs"]}
        table_md = summarize(merged, column_order(have),
                             merged["config"]["budgets"],
                             sorted({int(t.split("|")[1]) for t in merged["runs"]}))
        out.with_suffix(".md").write_text(table_md + "\n")
        print(table_md)
        return
    try:
        unknown = sorted({parse_column(s)[0] for s in strategies} - set(STRATEGIES))
    except ValueError as exc:
        p.error(str(exc))
    if unknown:
        p.error(f"unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")

    from promptbo.evaluators import create_evaluator
    from promptbo.server.domain import HardPromptSpace, Vocabulary
    from promptbo.server.optim.spaces import filtered_rows
    from promptbo.wordlists import word_scores

    template, labels = task_style(args.data_dir)
    template = args.template or template
    out = Path(args.out)
    path = out.with_suffix(".json")
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    results["config"] = {k: v for k, v in vars(args).items()}
    results["machine"] = machine()
    for seed in seeds:
        opts: dict[str, Any] = {"model": args.model, "data": args.data_dir, "k": args.k,
                                "seed": seed}
        if template:
            opts["template"] = template
        if labels:
            opts["labels"] = labels
        pool_ev = create_evaluator("hf-causal", split="pool", max_examples=args.pool, **opts)
        test_opts = {**opts, **({"max_examples": args.limit_test} if args.limit_test else {})}
        test_ev = create_evaluator("hf-causal", split="test", **test_opts)
        if len(pool_ev.task.examples) < args.pool:
            p.error(f"the pool split has {len(pool_ev.task.examples)} examples, "
                    f"fewer than --pool {args.pool}")
        table = pool_ev.vocabulary()
        vocab = Vocabulary(tuple(table.tokens), tuple(table.token_ids), table.embeddings)
        scores = word_scores(table.tokens, table.token_ids)
        space = HardPromptSpace(args.prompt_length, vocab.id, pca_dims=args.pca_dims,
                                top_n=args.top_n, top_n_scores=tuple(scores.tolist()))
        allowed = filtered_rows(space, vocab.size).tolist()
        ids = np.asarray(table.token_ids, dtype=np.int64)
        scorer = PoolScorer(pool_ev, test_ev)
        for s in strategies:
            tag = f"{s}|{seed}"
            if tag in results["runs"]:
                continue
            start = time.perf_counter()
            if s == "unprompted":
                scorer.score((), list(range(args.pool)))
                acc, se, n = scorer.accuracy_interval((), list(range(args.pool)))
                run = Run(args.budgets)
                run.checkpoints = [{"budget": b, "prompt": [], "pool_accuracy": acc,
                                    "stderr": se, "examples": n,
                                    "test_accuracy": scorer.test_accuracy(())}
                                   for b in args.budgets]
            elif s in ("optuna-tpe", "mipro-tpe"):
                run = run_tpe(s, seed, args, scorer, space, ids, allowed)
            else:
                run = run_manager(s, seed, args, scorer, space, vocab)
            results["runs"][tag] = {"checkpoints": run.checkpoints,
                                    "seconds": time.perf_counter() - start}
            print(f"{tag}: " + ", ".join(f"@{c['budget']} test {c['test_accuracy']:.3f}"
                                         for c in run.checkpoints), flush=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(results, indent=1))
        pool_ev.close()
        test_ev.close()
    table_md = summarize(results, strategies, args.budgets, seeds)
    out.with_suffix(".md").write_text(table_md + "\n")
    print(table_md)


if __name__ == "__main__":
    main()
