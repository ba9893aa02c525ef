"""Pool-quality benchmark: test accuracy of the pool candidate each pool strategy picks.

The pool is built with :mod:`promptbo.evaluators.pools`, as ``promptbo pool build`` does:
the 24 instructions of :mod:`benchmarks.pool_synthetic` × its 3 label phrases ×
``--demo-sets`` draws of ``--demos`` demonstrations from the training pool outside the
objective and dev sets, embedded with all-MiniLM-L6-v2. The evaluator is ``hf-causal`` on
``--model`` (SmolLM2-135M-Instruct) with the SST-2 style of :mod:`benchmarks.quality`
(its default template, label words = the class names), and the selection is the same:

- objective: ``--k`` training examples per class; each strategy maximizes the evaluator's
  value (mean normalised log-probability of the gold label word);
- dev: ``--k`` more per class; the top 3 by objective among the first ``b`` evaluated
  are scored on dev and the best on dev is the pick;
- test: the test split (``--limit-test N`` keeps its first N), only for the reported
  accuracy. The unprompted model is the reference.

Strategies run through the engine directly (``suggest`` → score → ``observe``); scores are
cached per (split, candidate), so candidates shared by strategies are scored once.

    python -m benchmarks.pool_quality --data-dir ../shared/datasets/sst2 --budget 25 \\
        --strategies zopo,gp,random --seed 0 --out benchmarks/results/pool-quality-sst2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.pool_synthetic import INSTRUCTIONS, LABEL_PHRASES
from benchmarks.selection import select_prompt
from promptbo.server.domain import PoolSpace
from promptbo.server.optim import make_engine
from promptbo.types import Prompt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--strategies", default="zopo,gp,random")
    parser.add_argument("--budget", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--demos", type=int, default=1)
    parser.add_argument("--demo-sets", type=int, default=7)
    parser.add_argument("--limit-test", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from promptbo.evaluators import create_evaluator
    from promptbo.evaluators.pools import build_pool, combine, training_examples

    t0 = time.perf_counter()
    demos = training_examples(args.data_dir, None, args.k, args.seed)
    texts = combine(INSTRUCTIONS, label_phrases=LABEL_PHRASES,
                    demonstrations=demos, k=args.demos, demo_sets=args.demo_sets,
                    seed=args.seed)
    table = build_pool(texts)
    print(f"pool: {len(table.texts)} candidates, {table.embedding_model}, "
          f"{time.perf_counter() - t0:.0f}s", flush=True)

    evaluators: dict[str, Any] = {}
    cache: dict[tuple[str, int], tuple[float, float]] = {}

    def score(split: str, indices: list[int]) -> list[tuple[float, float]]:
        todo = [i for i in dict.fromkeys(indices) if (split, i) not in cache]
        if todo:
            if split not in evaluators:
                opts: dict[str, Any] = {"model": args.model, "data": args.data_dir,
                                        "split": split, "k": args.k, "seed": args.seed}
                if split == "test" and args.limit_test:
                    opts["max_examples"] = args.limit_test
                evaluators[split] = create_evaluator("hf-causal", **opts)
            prompts = [Prompt(text=table.texts[i] if i >= 0 else "", pool_index=None)
                       for i in todo]
            for i, s in zip(todo, evaluators[split].score(prompts), strict=True):
                cache[(split, i)] = (s.value, s.metrics["accuracy"])
        return [cache[(split, i)] for i in indices]

    rows = []
    results: dict[str, Any] = {"config": vars(args), "pool_size": len(table.texts), "runs": {}}
    for name in args.strategies.split(","):
        t0 = time.perf_counter()
        engine = make_engine(PoolSpace("bench"), name, {}, args.seed, table.embeddings)
        picked: list[int] = []
        values: list[float] = []
        for _ in range(args.budget):
            c = engine.suggest(1)
            i = int(c[0, 0])
            value = score("objective", [i])[0][0]
            engine.observe(c, torch.tensor([value], dtype=torch.float64))
            picked.append(i)
            values.append(value)
        sel = select_prompt([[i] for i in picked], values, args.budget,
                            lambda ps: [score("dev", [p[0]])[0][0] for p in ps])
        best = sel["prompt"][0]
        test_value, test_acc = score("test", [best])[0]
        secs = time.perf_counter() - t0
        rows.append((name, 100 * test_acc, max(values), sel["dev"], table.texts[best], secs))
        results["runs"][name] = {"picked": picked, "values": values, "selection": sel,
                                 "test_accuracy": test_acc, "seconds": secs}
        print(f"{name}: test acc {100 * test_acc:.1f}%  best obj {max(values):.3f}  "
              f"({secs:.0f}s)", flush=True)
    unprompted = score("test", [-1])[0][1]
    results["unprompted_test_accuracy"] = unprompted
    n_test = len(evaluators["test"].task.examples)
    print("\n| strategy | test acc (%) | best obj. | dev of pick | picked candidate |"
          "\n|---|---:|---:|---:|---|")
    for name, acc, obj, dev, text, _ in rows:
        print(f"| {name} | {acc:.1f} | {obj:.3f} | {dev:.3f} | {text[:90]!r} |")
    print(f"| unprompted | {100 * unprompted:.1f} | | | |")
    print(f"\n{len(table.texts)} candidates, budget {args.budget}, seed {args.seed}, "
          f"{n_test} test examples")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(f"{args.out}.json").write_text(json.dumps(results, indent=1, default=str))
    for ev in evaluators.values():
        ev.close()



if __name__ == "__main__":
    main()
