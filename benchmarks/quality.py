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

    python benchmarks/quality.py --data-dir ../shared/datasets/sst2 --budgets 25,50,100 \\
        --seeds 0,1,2 --strategies gp,turbo,random,index,cmaes,optuna-tpe \\
        --prompt-length 5 --out benchmarks/results/quality-sst2

writes ``<out>.json`` (config, every score, every trace, the selections, the summary),
``<out>.md`` (the tables) and ``<out>.png`` (best objective vs evaluations).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from promptbo.evaluators.base import Evaluator
from promptbo.types import Prompt, VocabularyTable, vocabulary_id

OPTUNA_TPE = "optuna-tpe"
SPLITS = ("objective", "dev", "test")
#: Config entries that must match for ``--resume`` (they change what a score means).
# dataset name (meta.json) -> (template, label words); None keeps the evaluator's default.
TASK_STYLES: dict[str, tuple[str | None, str | None]] = {
    # The template the SST-2 tables were measured with (the evaluator's default before it
    # moved the prompt ahead of the input) and the class names.
    "sst2": ("Review: {text}\n{prompt}\nSentiment: {answer}", None),
    "agnews": ("Article: {text}\n{prompt}\nTopic: {answer}", "World,Sports,Business,Tech"),
    "trec": ("Question: {text}\n{prompt}\nAnswer type: {answer}", None),
    "subj": ("Sentence: {text}\n{prompt}\nThis sentence is: {answer}", None),
}
FIXED_CONFIG = ("data_dir", "template", "labels", "k", "prompt_length", "top_n", "pca_dims",
                "limit_test", "model", "batch", "top_k", "vocab")
#: Values of FIXED_CONFIG entries added after results were first written.
_CONFIG_DEFAULTS = {"vocab": "merges"}

Key = tuple[int, ...]  # a prompt as the model's token ids
MakeEvaluator = Callable[[str, int], Evaluator]  # (split, seed) -> evaluator


# --- cached scoring ----------------------------------------------------------------------


class ScoreCache:
    """Scores prompts on a split, each (split, seed, prompt) at most once.

    ``make_evaluator(split, seed)`` builds the evaluator of a split; objective and dev
    evaluators of one seed are kept until another seed's are needed. The test split does
    not depend on the seed (the dataset's own test file), so its scores are shared.
    ``store`` maps string keys to ``[value, accuracy]`` and is what the JSON keeps.
    """

    def __init__(self, make_evaluator: MakeEvaluator, vocabulary: VocabularyTable,
                 store: dict[str, list[float]] | None = None):
        self.make_evaluator = make_evaluator
        self.store: dict[str, list[float]] = store if store is not None else {}
        self.token_of = dict(zip(vocabulary.token_ids, vocabulary.tokens, strict=True))
        self.evaluated: Counter[str] = Counter()  # prompts sent to evaluators, per split
        self.seconds: Counter[str] = Counter()
        self._evaluators: dict[tuple[str, int], Evaluator] = {}

    @staticmethod
    def key(split: str, seed: int, ids: Key) -> str:
        return f"{split}|{'*' if split == 'test' else seed}|{' '.join(map(str, ids))}"

    def prompt(self, ids: Key) -> Prompt:
        tokens = tuple(self.token_of[i] for i in ids)
        return Prompt(token_ids=tuple(ids), tokens=tokens, text="".join(tokens))

    def score(self, split: str, seed: int, prompts: Sequence[Key]) -> list[tuple[float, float]]:
        """``(value, accuracy)`` of each prompt on ``split``; misses are scored in one call."""
        keys = [self.key(split, seed, p) for p in prompts]
        missing: dict[str, Key] = {}
        for k, p in zip(keys, prompts, strict=True):
            if k not in self.store:
                missing.setdefault(k, tuple(p))
        if missing:
            start = time.perf_counter()
            scores = self._evaluator(split, seed).score([self.prompt(p) for p in missing.values()])
            self.seconds[split] += time.perf_counter() - start
            self.evaluated[split] += len(missing)
            for k, s in zip(missing, scores, strict=True):
                self.store[k] = [float(s.value), float(s.metrics.get("accuracy", math.nan))]
        return [(self.store[k][0], self.store[k][1]) for k in keys]

    def _evaluator(self, split: str, seed: int) -> Evaluator:
        seed = 0 if split == "test" else seed
        if (split, seed) not in self._evaluators:
            for other in [k for k in self._evaluators if k[0] != "test" and k[1] != seed]:
                self._evaluators.pop(other).close()
            self._evaluators[split, seed] = self.make_evaluator(split, seed)
        return self._evaluators[split, seed]

    def close(self) -> None:
        for ev in self._evaluators.values():
            ev.close()
        self._evaluators.clear()


# --- selection -----------------------------------------------------------------------------


def ranked_prompts(prompts: Sequence[Key], values: Sequence[float],
                   budget: int) -> list[tuple[Key, float]]:
    """The distinct prompts among the first ``budget`` evaluated, with the objective value
    of their first evaluation, best first (ties: the earlier one)."""
    best: dict[Key, float] = {}
    for p, v in zip(prompts[:budget], values[:budget], strict=True):
        best.setdefault(tuple(p), float(v))
    return sorted(best.items(), key=lambda kv: -kv[1])


def select_prompt(prompts: Sequence[Key], values: Sequence[float], budget: int,
                  dev_values: Callable[[list[Key]], list[float]],
                  top_k: int = 3) -> dict[str, Any]:
    """Picks the final prompt after ``budget`` evaluations.

    The distinct prompts among the first ``budget`` evaluated are ranked by objective value
    (ties: the earlier one); the ``top_k`` best are scored on dev with ``dev_values`` and
    the best on dev wins (ties: the better objective). Returns ``prompt``, ``objective``,
    ``dev`` and the ``candidates`` with their objective and dev values.
    """
    best = dict(ranked_prompts(prompts, values, budget))
    ranked = list(best)[:top_k]
    dev = dev_values(ranked)
    win = max(range(len(ranked)), key=lambda i: (dev[i], -i))
    return {
        "prompt": list(ranked[win]),
        "objective": best[ranked[win]],
        "dev": float(dev[win]),
        "candidates": [{"prompt": list(p), "objective": best[p], "dev": float(d)}
                       for p, d in zip(ranked, dev, strict=True)],
    }


# --- optimization loops --------------------------------------------------------------------


@dataclass
class Trace:
    """One (strategy, seed) run: evaluated vocabulary rows (`n x L`), their objective
    values and accuracies, and the time spent suggesting and scoring."""

    rows: list[list[int]] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    suggest_seconds: float = 0.0
    score_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, list) else v for k, v in self.__dict__.items()}


class TPEProposer:
    """Optuna's TPE as an ask/tell proposer over ``allowed`` vocabulary rows (one
    categorical distribution per position); it may repeat a prompt."""

    def __init__(self, allowed: Sequence[int], length: int, seed: int):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna
        choices = tuple(int(r) for r in allowed)
        self.dists = {f"t{i}": optuna.distributions.CategoricalDistribution(choices)
                      for i in range(length)}
        self.study = optuna.create_study(
            direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
        self._open: list[Any] = []

    def suggest(self, n: int) -> torch.Tensor:
        self._open = [self.study.ask(self.dists) for _ in range(n)]
        return torch.tensor([[t.params[k] for k in self.dists] for t in self._open])

    def observe(self, rows: torch.Tensor, values: torch.Tensor) -> None:
        if self._open:  # answers to the last suggest
            for t, v in zip(self._open, values.tolist(), strict=True):
                self.study.tell(t, v)
            self._open = []
            return
        for r, v in zip(rows.tolist(), values.tolist(), strict=True):  # replayed history
            params = {k: int(x) for k, x in zip(self.dists, r, strict=True)}
            self.study.add_trial(self.optuna.trial.create_trial(
                params=params, distributions=self.dists, value=float(v)))


def make_proposer(strategy: str, space, embeddings: np.ndarray, allowed: Sequence[int],
                  seed: int, options: dict[str, str] | None = None):
    """A promptbo engine (``make_engine``) or, for ``optuna-tpe``, a :class:`TPEProposer`."""
    if strategy == OPTUNA_TPE:
        return TPEProposer(allowed, space.prompt_length, seed)
    from promptbo.server.optim import make_engine

    return make_engine(space, strategy, options, seed=seed, embeddings=embeddings)


def optimize(proposer, budget: int, evaluate: Callable[[list[list[int]]], list[tuple]],
             trace: Trace | None = None, batch: int = 1,
             progress: Callable[[Trace], None] | None = None) -> Trace:
    """Runs suggest → ``evaluate(rows)`` → observe until ``budget`` evaluations.

    A partial ``trace`` (from an interrupted run) is replayed through ``observe`` first,
    as the server rebuilds an engine from stored trials.
    """
    trace = trace or Trace()
    if trace.rows:
        proposer.observe(torch.tensor(trace.rows, dtype=torch.long),
                         torch.tensor(trace.values, dtype=torch.float64))
    while len(trace.rows) < budget:
        n = min(batch, budget - len(trace.rows))
        start = time.perf_counter()
        rows = proposer.suggest(n)
        trace.suggest_seconds += time.perf_counter() - start
        start = time.perf_counter()
        scores = evaluate(rows.tolist())
        trace.score_seconds += time.perf_counter() - start
        values = torch.tensor([s[0] for s in scores], dtype=torch.float64)
        proposer.observe(rows, values)
        trace.rows += rows.tolist()
        trace.values += values.tolist()
        trace.accuracy += [s[1] for s in scores]
        if progress:
            progress(trace)
    return trace


# --- summary ---------------------------------------------------------------------------------


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


# --- the benchmark ----------------------------------------------------------------------------


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return (f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads, Python {platform.python_version()}")


def hf_evaluators(args, holdout_examples: int = 0) -> MakeEvaluator:
    """``(split, seed) -> hf-causal evaluator`` for the task the arguments describe; the
    ``holdout`` split (``benchmarks/holdout.py``) keeps its first ``holdout_examples``."""
    from promptbo.evaluators import create_evaluator

    def make(split: str, seed: int) -> Evaluator:
        opts: dict[str, Any] = {"model": args.model, "data": args.data_dir, "split": split,
                                "k": args.k, "seed": seed}
        if args.template:
            opts["template"] = args.template
        if args.labels:
            opts["labels"] = args.labels
        if split in ("test", "holdout"):
            opts["kv_cache_mb"] = args.test_kv_cache_mb
            limit = args.limit_test if split == "test" else holdout_examples
            if limit:
                opts["max_examples"] = limit
        return create_evaluator("hf-causal", **opts)

    return make


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
        (obj, obj_acc), = self.cache.score("objective", seed, [()])
        (dev, _), = self.cache.score("dev", seed, [()])
        (_, test_acc), = self.cache.score("test", seed, [()])
        # A resumed run may find every test score cached and build no test evaluator.
        self.results["test_examples"] = self._test_size() or self.results.get("test_examples", 0)
        self.results["unprompted"][str(seed)] = {
            "objective": obj, "objective_accuracy": obj_acc, "dev": dev,
            "test_accuracy": test_acc}
        self.log(f"unprompted (seed {seed}): objective {obj:.4f} (acc {obj_acc:.3f}), "
                 f"test accuracy {test_acc:.4f}")

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
            sel = select_prompt(keys, trace.values, b,
                                lambda ps: [v for v, _ in self.cache.score("dev", seed, ps)],
                                top_k=self.args.top_k)
            (test_value, test_acc), = self.cache.score("test", seed, [tuple(sel["prompt"])])
            sel.update(seed=seed, budget=b, text=self.cache.prompt(tuple(sel["prompt"])).text,
                       test_value=test_value, test_accuracy=test_acc)
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
    meta = Path(args.data_dir) / "meta.json"
    name = json.loads(meta.read_text()).get("name", "") if meta.exists() else ""
    template, labels = TASK_STYLES.get(name, (None, None))
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
