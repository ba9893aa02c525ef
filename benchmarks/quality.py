"""Prompt-quality benchmark: held-out accuracy of the prompts each strategy finds.

A hard prompt of ``--prompt-length`` tokens is searched for SmolLM2-135M-Instruct (the
``hf-causal`` evaluator) on a few-shot classification task, with a template and label
words in the usual style of each dataset (:data:`TASK_STYLES`, keyed by the ``name`` in the
dataset's ``meta.json``; ``--template``/``--labels`` override them), e.g.
``"Review: {text}\\n{prompt}\\nSentiment: {answer}"`` for SST-2:

- objective: ``--k`` training examples per class (drawn with the benchmark seed); the
  value each strategy maximizes is the evaluator's value, the mean log-probability of the
  gold label word normalised over the label words (its accuracy is recorded too);
- dev: ``--k`` more, disjoint training examples per class, used only to pick the final
  prompt;
- test: the dataset's test split (``--limit-test N`` keeps its first N examples, for quick
  runs only), used only to report accuracy.

Candidates are the ``--top-n`` most frequent whole-word tokens (``" word"``), the same list
for every strategy: ranked by BPE merge order (``--vocab merges``,
:func:`promptbo.wordlists.word_scores`) or by how often the word occurs in the dataset's
training texts (``--vocab data``, :func:`promptbo.wordlists.text_word_scores`; the training
file is the pool the objective and dev examples come from, the test split is not read). promptbo's
strategies run through the engine directly (``suggest`` → score → ``observe``, no
server); ``optuna-tpe`` is Optuna's seeded ``TPESampler`` with one categorical
distribution per position over the same token list. The unprompted model (empty prompt)
is the reference.

At each budget ``b``: among the first ``b`` evaluated prompts the top ``--top-k`` by
objective are scored on dev, the best on dev is scored on test, and its test accuracy is
reported. Scores are cached per (split, seed, prompt), so no prompt is scored twice on a
split, and saved in the JSON; ``--resume`` continues an interrupted run from it.

    python -m benchmarks.quality --data-dir ../shared/datasets/sst2 --budgets 25,50,100 \\
        --seeds 0,1,2 --strategies gp,turbo,random,index,cmaes,optuna-tpe \\
        --prompt-length 5 --out benchmarks/results/quality-sst2

writes ``<out>.json`` (config, every score, every trace, the selections, the summary),
``<out>.md`` (the tables) and ``<out>.png`` (best objective vs evaluations).
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

from benchmarks.proposers import OPTUNA_TPE, Trace, make_proposer, optimize
from benchmarks.report import machine, markdown, plot, summarize
from benchmarks.scoring import (
    Key,
    MakeEvaluator,
    ScoreCache,
    hf_evaluators,
    task_style,
    unprompted_scores,
)
from benchmarks.selection import select_and_test
from promptbo.evaluators.base import Evaluator
from promptbo.types import VocabularyTable, vocabulary_id

#: Config entries that must match for ``--resume`` (they change what a score means).
FIXED_CONFIG = ("data_dir", "template", "labels", "k", "prompt_length", "top_n", "pca_dims",
                "limit_test", "model", "batch", "top_k", "vocab")
#: Values of FIXED_CONFIG entries added after results were first written.
_CONFIG_DEFAULTS = {"vocab": "merges"}


class Benchmark:
    """Runs every (seed, strategy), selects prompts at each budget, writes the outputs."""

    def __init__(self, args, make_evaluator: MakeEvaluator, vocabulary: VocabularyTable,
                 results: dict[str, Any] | None = None, log=print):
        from promptbo.server.domain import HardPromptSpace
        from promptbo.server.optim.spaces import filtered_rows
        from promptbo.wordlists import read_texts, text_word_scores, word_scores

        self.args = args
        self.log = log
        self.vocab = vocabulary
        self.results = results or {"scores": {}, "runs": {}, "selections": {},
                                   "unprompted": {}}
        self.results["config"] = config_of(args)
        self.results["machine"] = machine()
        self.cache = ScoreCache(make_evaluator, vocabulary, self.results["scores"])
        if args.vocab == "data":
            texts = read_texts(Path(args.data_dir) / "train.jsonl")
            scores = text_word_scores(vocabulary.tokens, texts)
        else:
            scores = word_scores(vocabulary.tokens, vocabulary.token_ids)
        vid = vocabulary_id(vocabulary.tokens, vocabulary.token_ids, vocabulary.embeddings)
        self.space = HardPromptSpace(args.prompt_length, vid, pca_dims=args.pca_dims,
                                     top_n=args.top_n, top_n_scores=tuple(scores.tolist()))
        self.allowed = filtered_rows(self.space, len(vocabulary.tokens)).tolist()
        self.ids = np.asarray(vocabulary.token_ids, dtype=np.int64)
        self.max_budget = max(args.budgets)
        self._start = time.perf_counter()
        self._done = 0  # evaluations scored by this process (for the ETA)

    def key_of(self, rows: Sequence[int]) -> Key:
        return tuple(int(i) for i in self.ids[list(rows)])

    def run(self) -> dict[str, Any]:
        a = self.args
        todo = sum(self.max_budget - len(self.results["runs"].get(f"{s}|{seed}", {})
                                         .get("values", [])) for s in a.strategies
                   for seed in a.seeds)
        self._todo = max(todo, 1)
        for seed in a.seeds:
            self.unprompted(seed)
            for strategy in a.strategies:
                self.run_one(strategy, seed)
                self.write()
        self.cache.close()
        return self.results

    def unprompted(self, seed: int) -> None:
        if str(seed) in self.results["unprompted"]:
            return
        row = unprompted_scores(self.cache, seed)
        # A resumed run may find every test score cached and build no test evaluator.
        self.results["test_examples"] = self._test_size() or self.results.get("test_examples", 0)
        self.results["unprompted"][str(seed)] = row
        self.log(f"unprompted (seed {seed}): objective {row['objective']:.4f} "
                 f"(acc {row['objective_accuracy']:.3f}), "
                 f"test accuracy {row['test_accuracy']:.4f}")

    def run_one(self, strategy: str, seed: int) -> None:
        name = f"{strategy}|{seed}"
        stored = self.results["runs"].get(name)
        trace = Trace(**stored) if stored else Trace()
        if len(trace.values) < self.max_budget:
            proposer = make_proposer(strategy, self.space, self.vocab.embeddings,
                                     self.allowed, seed)

            def evaluate(rows: list[list[int]]) -> list[tuple]:
                return self.cache.score("objective", seed, [self.key_of(r) for r in rows])

            every = self.args.log_every

            seen = [len(trace.values)]

            def progress(t: Trace) -> None:
                n = len(t.values)
                self._done += n - seen[0]
                seen[0] = n
                if n % every == 0 or n == self.max_budget:
                    self.results["runs"][name] = t.to_json()
                    i = int(np.argmax(t.values))
                    rate = (time.perf_counter() - self._start) / self._done
                    eta = rate * max(self._todo - self._done, 0)
                    self.log(f"{strategy} seed {seed}: {n}/{self.max_budget} evals, best "
                             f"{t.values[i]:.4f} (acc {t.accuracy[i]:.3f}) "
                             f"{self.cache.prompt(self.key_of(t.rows[i])).text!r}; "
                             f"suggest {t.suggest_seconds:.0f} s, score {t.score_seconds:.0f} s;"
                             f" ETA {eta / 60:.0f} min")
                    if n % (every * 5) == 0:
                        self.write()

            trace = optimize(proposer, self.max_budget, evaluate, trace,
                             batch=self.args.batch, progress=progress)
            self.results["runs"][name] = trace.to_json()
        keys = [self.key_of(r) for r in trace.rows]
        for b in self.args.budgets:
            sel = select_and_test(self.cache, seed, keys, trace.values, b, self.args.top_k)
            test_acc = sel["test_accuracy"]
            self.results["selections"][f"{strategy}|{seed}|{b}"] = sel
            self.log(f"{strategy} seed {seed} b={b}: chose {sel['text']!r} (objective "
                     f"{sel['objective']:.4f}, dev {sel['dev']:.4f}) → test accuracy "
                     f"{test_acc:.4f}")

    def write(self, final: bool = False) -> None:
        a = self.args
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        summary = summarize(self.results, a.strategies, a.seeds, a.budgets)
        self.results["summary"] = summary
        self.results["evaluated"] = dict(self.cache.evaluated)
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.results))
        tmp.replace(out.with_suffix(".json"))
        test_n = self.results.get("test_examples", 0)
        out.with_suffix(".md").write_text(markdown(summary, a.budgets, test_n))
        if final:
            plot(self.results, a.strategies, a.seeds, a.budgets, out.with_suffix(".png"),
                 f"{Path(a.data_dir).name}: {a.prompt_length}-token prompts, "
                 f"SmolLM2-135M-Instruct")

    def _test_size(self) -> int:
        ev = self.cache._evaluators.get(("test", 0))
        return len(ev.task.examples) if ev is not None and hasattr(ev, "task") else 0


def config_of(args) -> dict[str, Any]:
    return {k: getattr(args, k) for k in (*FIXED_CONFIG, "budgets", "seeds", "strategies")}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", required=True, help="dataset folder (train/test.jsonl)")
    p.add_argument("--budgets", default="25,50,100")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--strategies", default=f"gp,turbo,random,index,cmaes,{OPTUNA_TPE}")
    p.add_argument("--prompt-length", type=int, default=5)
    p.add_argument("--top-n", type=int, default=2000, help="candidate whole-word tokens")
    p.add_argument("--vocab", choices=("merges", "data"), default="merges",
                   help="rank candidate words by BPE merge order or by count in train.jsonl")
    p.add_argument("--pca-dims", type=int, default=16, help="the space's PCA dimensions")
    p.add_argument("--k", type=int, default=16, help="examples per class (objective, dev)")
    p.add_argument("--top-k", type=int, default=3, help="prompts re-scored on dev")
    p.add_argument("--batch", type=int, default=1, help="prompts per suggest call")
    p.add_argument("--template", default=None, help="default: the dataset's TASK_STYLES entry")
    p.add_argument("--labels", default=None,
                   help="comma-separated label words; default: TASK_STYLES, else the class names")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--limit-test", type=int, default=0, help="first N test examples (0: all)")
    p.add_argument("--test-kv-cache-mb", type=float, default=4096)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--out", default="benchmarks/results/quality-sst2")
    p.add_argument("--resume", action="store_true", help="continue from <out>.json")
    args = p.parse_args(argv)
    args.budgets = sorted({int(b) for b in args.budgets.split(",")})
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    template, labels = task_style(args.data_dir)
    args.template = args.template or template
    args.labels = args.labels or labels
    return args


def load_previous(args) -> dict[str, Any] | None:
    path = Path(args.out).with_suffix(".json")
    if not (args.resume and path.exists()):
        return None
    previous = json.loads(path.read_text())
    old, new = previous.get("config", {}), config_of(args)
    changed = [k for k in FIXED_CONFIG if old.get(k, _CONFIG_DEFAULTS.get(k)) != new[k]]
    if changed:
        sys.exit(f"--resume: {path} was written with other settings ({', '.join(changed)}); "
                 "use the same ones or another --out")
    return previous


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    from promptbo.server.optim import strategy_names

    unknown = set(args.strategies) - set(strategy_names()) - {OPTUNA_TPE}
    if unknown:
        sys.exit(f"unknown strategies {sorted(unknown)}; choose from "
                 f"{', '.join(strategy_names())}, {OPTUNA_TPE}")

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    make = hf_evaluators(args)
    log(f"loading the model and its vocabulary ({machine()})")
    first = make("objective", args.seeds[0])
    vocabulary = first.vocabulary()
    built = {("objective", args.seeds[0]): first}

    def reuse_first(split: str, seed: int) -> Evaluator:
        return built.pop((split, seed), None) or make(split, seed)

    bench = Benchmark(args, reuse_first, vocabulary, load_previous(args), log=log)
    bench.run()
    bench.write(final=True)
    out = Path(args.out)
    print(out.with_suffix(".md").read_text())
    log(f"wrote {out.with_suffix('.json')}, {out.with_suffix('.md')}, {out.with_suffix('.png')};"
        f" prompts scored: {dict(bench.cache.evaluated)}")


if __name__ == "__main__":
    main()
