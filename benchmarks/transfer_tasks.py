"""Transfer on real tasks: does a study on SST-2 help a new study on MR, and does an
unrelated source (AG News for SUBJ) stay harmless?

The setup is ``benchmarks/quality.py``'s 16-shot one, with SmolLM2-135M-Instruct (the
``hf-causal`` evaluator) and its hard-prompt space (``--prompt-length`` tokens among the
``--top-n`` whole-word tokens ranked by BPE merge order, ``--pca-dims`` PCA dimensions).
The space and its vocabulary do not depend on the task, so every study below has the same
one, as ``transfer_from`` requires. Each task uses its ``TASK_STYLES`` template
(MR the SST-2 one: both are movie-review sentiment):

- objective: ``--k`` training examples per class, drawn with the run's seed; a study
  maximizes the evaluator's value (mean normalised log-probability of the gold label word);
- dev: ``--k`` more per class, only for picking the final prompt;
- test: the first ``--limit-test`` examples of the test split, only for the reported
  accuracy. The unprompted model (empty prompt) on the same examples is the reference.

Every study lives in one :class:`StudyManager` on SQLite storage (``--db``) and runs
through ``suggest_trials``/``complete_trials`` as a server's clients would. Source studies
(one per source task, ``gp``, ``--budget`` evaluations, seed 0) are created first; the
targets name them in ``transfer_from`` (``transfer`` mode ``--mode``), so the transfer
code reads the sources' trials from storage. Targets (``gp``, ``--budget`` evaluations):

====================  =============  ======================  ==========================
config                target task    sources                 seeds
====================  =============  ======================  ==========================
``mr-cold``           MR             none                    ``--seeds``
``mr<-sst2``          MR             SST-2                   ``--seeds``
``subj-cold``         SUBJ           none                    ``--seeds-unrelated``
``subj<-agnews``      SUBJ           AG News                 ``--seeds-unrelated``
``mr<-sst2+subj``     MR             SST-2, SUBJ             ``--seeds-multi``
====================  =============  ======================  ==========================

They run in that order of importance (cold and transfer interleaved by seed), each
source created when a target first needs it. At each budget ``b`` of ``--budgets`` the
pick is ``select_prompt`` (the top ``--top-k`` by objective among the first ``b``
evaluated, best on dev), and its test accuracy is reported. Scores are cached per (task,
split, seed, prompt) and kept in the JSON, which is rewritten after every run; a restart
with the same ``--out`` and ``--db`` skips finished runs and continues a study left
unfinished in storage.

    nice -n 5 python -m benchmarks.transfer_tasks --limit-test 300 \\
        --db /tmp/transfer-bench.sqlite --out benchmarks/results/transfer-real

writes ``<out>.json`` (config, scores, traces, picks, weights), ``<out>.md`` (the table)
and ``<out>.png`` (test accuracy vs evaluations per target task).

``--space pool`` runs the configs on candidate pools instead: ``combine`` and
``build_pool`` as ``promptbo pool build`` makes them, embedded with all-MiniLM-L6-v2,
scored with the prompt before the input (:data:`PROMPT_FIRST`); ``--strategy`` ``gp``
(transfer by initialization and the RGPE ensemble) or ``zopo`` (initialization only).
``--pools`` says which pools:

- ``shared`` (the default; the MR configs): one pool for every study, from
  ``--instructions`` (default the 24 sentiment instructions of
  :mod:`benchmarks.pool_synthetic`), its label phrases or ``--label-phrase``, and
  ``--demo-sets`` draws of ``--demos`` demonstrations from ``--pool-task``'s training
  examples outside the source seed's objective and dev sets, leaving out every text that
  is also in a target task's files;
- ``per-task`` (every config): each task its own pool, as a user would build it for that
  task (:data:`TASK_POOLS`: the task's instructions file in ``benchmarks/pools/`` and
  label phrases; demonstrations from its own training examples outside the objective and
  dev sets of every seed the run scores it with). A target then transfers from studies on
  other pools in the same embedding space: the sources' candidates are placed among its
  own by their embeddings.

``--configs`` runs a subset of the target configs (and the sources they need), so
independent configs can run as separate processes, each with its own ``--out`` and
``--db``; ``--merge a.json,b.json --out <out>`` then writes their union and its table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from benchmarks.report import machine
from benchmarks.scoring import TASK_STYLES, ScoreCache, hf_evaluators
from benchmarks.selection import select_prompt
from promptbo.errors import NotFoundError
from promptbo.evaluators.pools import demo_counts
from promptbo.server.domain import (
    HardPromptSpace,
    Pool,
    PoolSpace,
    StudySpec,
    TrialState,
    Vocabulary,
)
from promptbo.server.manager import StudyManager, TrialResult
from promptbo.server.storage import open_storage
from promptbo.types import Prompt, VocabularyTable, vocabulary_id
from promptbo.wordlists import word_scores

HERE = Path(__file__).resolve().parent


#: task -> (template, label words); MR is movie-review sentiment like SST-2.
STYLES = {**TASK_STYLES, "mr": TASK_STYLES["sst2"]}
#: Settings that must match to resume from an existing ``<out>.json``.
MakeTask = Callable[[str], Callable[[str, int], Any]]  # task -> (split, seed) -> evaluator
FIXED = ("data_root", "model", "k", "prompt_length", "top_n", "pca_dims", "limit_test",
         "top_k", "budget", "mode", "source_seed")
#: More settings that must match, for ``--space pool`` (absent from hard-prompt results).
POOL_FIXED = ("space", "strategy", "pool_task", "instructions", "label_phrases", "demos",
              "demo_sets")
#: Templates with the prompt before the input, for pool candidates (instructions and
#: demonstrations read before the example).
PROMPT_FIRST = {
    "sst2": "{prompt}\nReview: {text}\nSentiment: {answer}",
    "mr": "{prompt}\nReview: {text}\nSentiment: {answer}",
    "agnews": "{prompt}\nArticle: {text}\nTopic: {answer}",
    "subj": "{prompt}\nSentence: {text}\nThis sentence is: {answer}",
}
#: ``--pools per-task``: each task's instructions (a file in ``benchmarks/pools/``; None:
#: the sentiment instructions of :mod:`benchmarks.pool_synthetic`) and label phrases. The
#: AG News ones are those of the pool quality benchmark; none was chosen on test scores.
TASK_POOLS: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "sst2": (None, ("", "Answer positive or negative.", "Reply with great or terrible.")),
    "mr": (None, ("", "Answer positive or negative.", "Reply with great or terrible.")),
    "agnews": ("agnews-instructions.txt",
               ("", "Answer World, Sports, Business or Tech.",
                "Reply with the topic of the article.")),
    "subj": ("subj-instructions.txt",
             ("", "Answer subjective or objective.",
              "Reply with whether the sentence is an opinion or a fact.")),
}


@dataclass(frozen=True)
class Config:
    """A target configuration: its task, the source tasks it transfers from, and which
    argument holds its seeds."""

    name: str
    task: str
    sources: tuple[str, ...]
    seeds_arg: str


CONFIGS = (
    Config("mr-cold", "mr", (), "seeds"),
    Config("mr<-sst2", "mr", ("sst2",), "seeds"),
    Config("subj-cold", "subj", (), "seeds_unrelated"),
    Config("subj<-agnews", "subj", ("agnews",), "seeds_unrelated"),
    Config("mr<-sst2+subj", "mr", ("sst2", "subj"), "seeds_multi"),
)


def schedule(args) -> list[tuple[Config, int]]:
    """The target runs in order of importance: each pair of configs (cold, transfer) of a
    task interleaved by seed, then the multi-source config; only the configs named in
    ``--configs`` when it is given."""
    chosen = getattr(args, "configs", None)
    order: list[tuple[Config, int]] = []
    for group in (CONFIGS[0:2], CONFIGS[2:4], CONFIGS[4:]):
        seeds = getattr(args, group[0].seeds_arg)
        for seed in seeds:
            order += [(c, seed) for c in group if not chosen or c.name in chosen]
    return order


def hf_tasks(args) -> MakeTask:
    """``task -> (split, seed) -> hf-causal evaluator`` in the task's :data:`STYLES`."""

    def make(task: str):
        template, labels = STYLES[task]
        if getattr(args, "space", "hard") == "pool":
            template = PROMPT_FIRST[task]
        return hf_evaluators(SimpleNamespace(
            model=args.model, data_dir=str(Path(args.data_root) / task), k=args.k,
            template=template, labels=labels, limit_test=args.limit_test,
            test_kv_cache_mb=args.test_kv_cache_mb))

    return make


class Bench:
    """Runs the source and target studies and keeps ``results`` (the JSON) up to date.

    ``make_task(task)`` gives the task's ``(split, seed) -> evaluator`` factory;
    ``vocabulary`` is the model's (the same for every task).
    """

    def __init__(self, args, results: dict[str, Any], make_task: MakeTask,
                 vocabulary: VocabularyTable, log=print, pool: Any = None,
                 pools: dict[str, Any] | None = None):
        self.args = args
        self.log = log
        self.results = results
        for part in ("scores", "sources", "runs", "unprompted", "test_examples"):
            results.setdefault(part, {})
        results["config"] = {**fixed_config(args), "budgets": args.budgets,
                             "seeds": args.seeds, "seeds_unrelated": args.seeds_unrelated,
                             "seeds_multi": args.seeds_multi, "db": args.db}
        self.caches: dict[str, Any] = {}
        self.test_examples: dict[str, int] = results["test_examples"]
        self._make = make_task
        self.vocab = vocabulary
        scores = word_scores(vocabulary.tokens, vocabulary.token_ids)
        vid = vocabulary_id(vocabulary.tokens, vocabulary.token_ids, vocabulary.embeddings)
        self.space = HardPromptSpace(args.prompt_length, vid, pca_dims=args.pca_dims,
                                     top_n=args.top_n, top_n_scores=tuple(scores.tolist()))
        self.manager = StudyManager(open_storage(args.db))
        self.manager.upload_vocabulary(Vocabulary(tuple(vocabulary.tokens),
                                                  tuple(vocabulary.token_ids),
                                                  np.asarray(vocabulary.embeddings,
                                                             dtype=np.float32)))
        #: How a score key turns into a prompt: token ids, or ``(i,)`` for pool member i.
        self.prompt_of: Any = vocabulary
        #: Per task, its pool (``pool`` for every task, or ``pools[task]``); empty: hard.
        self.pools: dict[str, Any] = dict(pools or {})
        self.shared_pool = pool
        self._spaces: dict[int, PoolSpace] = {}
        self._active = ""

    def pool_of(self, task: str) -> Any:
        """The task's pool table (None: the hard-prompt space)."""
        return self.shared_pool if self.shared_pool is not None else self.pools.get(task)

    def space_of(self, task: str) -> Any:
        """The space the task's studies search (its pool uploaded once)."""
        table = self.pool_of(task)
        if table is None:
            return self.space
        if id(table) not in self._spaces:
            pool_id, _ = self.manager.upload_pool(
                Pool(tuple(table.texts), table.embeddings, table.embedding_model))
            self._spaces[id(table)] = PoolSpace(pool_id)
        return self._spaces[id(table)]

    def _prompts(self, task: str) -> Any:
        table = self.pool_of(task)
        if table is None:
            return self.prompt_of
        texts = list(table.texts)
        return lambda key: Prompt(text=texts[key[0]] if key else "")

    # --- scoring ---------------------------------------------------------------------
    def cache(self, task: str):
        """The task's :class:`ScoreCache`; only one task's evaluators stay loaded."""
        if task != self._active and self._active in self.caches:
            self.caches[self._active].close()
        self._active = task
        if task not in self.caches:
            store = self.results["scores"].setdefault(task, {})
            self.caches[task] = ScoreCache(self._make(task), self._prompts(task), store)
        return self.caches[task]

    def unprompted(self, task: str) -> dict[str, float]:
        done = self.results["unprompted"].get(task)
        if done is None:
            (test_value, test_acc), = self.cache(task).score("test", 0, [()])
            done = {"test_value": test_value, "test_accuracy": test_acc}
            self.results["unprompted"][task] = done
            self._note_test_size(task)
            self.log(f"{task}: unprompted test accuracy {test_acc:.4f} "
                     f"on {self.test_examples.get(task)} examples")
        return done

    def _note_test_size(self, task: str) -> None:
        ev = self.cache(task)._evaluators.get(("test", 0))
        if ev is not None and hasattr(ev, "task"):
            self.test_examples[task] = len(ev.task.examples)

    # --- studies -----------------------------------------------------------------------
    def run_study(self, name: str, task: str, seed: int, sources: tuple[str, ...]) -> dict:
        """Creates (or continues) study ``name`` on ``task`` and runs it to ``--budget``
        evaluations; returns its trace."""
        spec = StudySpec(self.space_of(task), strategy=getattr(self.args, "strategy", "gp"),
                         seed=seed, transfer_from=tuple(source_name(s) for s in sources),
                         transfer=self.args.mode)
        if not self._exists(name):
            self.manager.create_study(name, spec)
        cache = self.cache(task)
        start = time.perf_counter()
        suggest = 0.0
        while True:
            done = self._completed(name)
            if len(done) >= self.args.budget:
                break
            t0 = time.perf_counter()
            (trial,), _ = self.manager.suggest_trials(name, 1)
            suggest += time.perf_counter() - t0
            (value, acc), = cache.score("objective", seed, [self.key(trial.prompt)])
            self.manager.complete_trials(name, [TrialResult(trial.id, value,
                                                            {"accuracy": acc})])
            n = len(done) + 1
            if n % self.args.log_every == 0:
                best = max(t.value for t in done) if done else value
                self.log(f"{name}: {n}/{self.args.budget} evals, best {max(best, value):.4f}"
                         f" ({time.perf_counter() - start:.0f} s, suggest {suggest:.0f} s)")
        done = self._completed(name)[:self.args.budget]
        weights = {s.study: s.weight for s in self.manager.transfer_status(name)}
        return {
            # the model's token ids, or [pool index]
            "prompts": [list(self.key(t.prompt)) for t in done],
            "values": [float(t.value) for t in done],
            "accuracy": [float(t.metrics.get("accuracy", float("nan"))) for t in done],
            "weights": weights,
            "seconds": time.perf_counter() - start,
            "suggest_seconds": suggest,
        }

    def key(self, prompt) -> tuple[int, ...]:
        """A trial's prompt as a score key."""
        if prompt.pool_index is not None:
            return (int(prompt.pool_index),)
        return tuple(prompt.token_ids)

    def _exists(self, name: str) -> bool:
        try:
            self.manager.get_study(name)
        except NotFoundError:
            return False
        return True

    def _completed(self, name: str) -> list:
        trials, token = [], ""
        while True:
            page, token = self.manager.list_trials(name, TrialState.COMPLETED,
                                                   page_token=token)
            trials += page
            if not token:
                return trials

    def source(self, task: str) -> None:
        name = source_name(task)
        if task in self.results["sources"] and self._exists(name):
            return
        self.log(f"source study {name} ({task}, seed {self.args.source_seed})")
        trace = self.run_study(name, task, self.args.source_seed, ())
        i = int(np.argmax(trace["values"]))
        trace["best_text"] = self.cache(task).prompt(tuple(trace["prompts"][i])).text
        self.results["sources"][task] = trace
        self.log(f"{name}: best {trace['values'][i]:.4f} {trace['best_text']!r} "
                 f"({trace['seconds']:.0f} s)")
        self.write()

    def target(self, config: Config, seed: int) -> None:
        key = f"{config.name}|{seed}"
        if key in self.results["runs"]:
            return
        for s in config.sources:
            self.source(s)
        self.unprompted(config.task)
        name = f"{config.name.replace('<-', '-from-')}-s{seed}"
        self.log(f"target {name}")
        trace = self.run_study(name, config.task, seed, config.sources)
        cache = self.cache(config.task)
        keys = [tuple(p) for p in trace["prompts"]]
        picks = {}
        for b in self.args.budgets:
            sel = select_prompt(
                keys, trace["values"], b,
                lambda ps: [v for v, _ in cache.score("dev", seed, ps)], top_k=self.args.top_k)
            (test_value, test_acc), = cache.score("test", seed, [tuple(sel["prompt"])])
            sel.update(text=cache.prompt(tuple(sel["prompt"])).text, test_value=test_value,
                       test_accuracy=test_acc)
            picks[str(b)] = sel
        trace["picks"] = picks
        self.results["runs"][key] = trace
        weights = ", ".join(f"{k}={v:.2f}" if v is not None else f"{k}=-"
                            for k, v in trace["weights"].items())
        self.log(f"{name}: test acc " + ", ".join(
            f"b={b}: {picks[str(b)]['test_accuracy']:.4f}" for b in self.args.budgets)
            + f"; weights {weights or '-'}; {trace['seconds']:.0f} s; {self.throughput()}")
        self.write()

    def throughput(self) -> str:
        """Scored sentences per second by split, over this process's scoring."""
        parts = []
        for task, c in self.caches.items():
            for split, n in c.evaluated.items():
                ex = self._examples(task, split)
                if c.seconds[split] > 0 and ex:
                    parts.append(f"{task}/{split} {n * ex / c.seconds[split]:.0f}/s")
        return "sentences " + ", ".join(parts)

    def _examples(self, task: str, split: str) -> int:
        if split == "test":
            return self.test_examples.get(task, 0)
        classes = len(json.loads((Path(self.args.data_root) / task / "meta.json")
                                 .read_text())["labels"])
        return classes * self.args.k

    def run(self) -> None:
        chosen = getattr(self.args, "configs", None)
        for config, seed in schedule(self.args):
            for group_config in CONFIGS:  # a group's sources run before its first target
                if group_config.seeds_arg == config.seeds_arg and (
                        not chosen or group_config.name in chosen):
                    for s in group_config.sources:
                        self.source(s)
            self.target(config, seed)
        for c in self.caches.values():
            c.close()

    # --- outputs -----------------------------------------------------------------------
    def write(self, final: bool = False) -> None:
        write_outputs(self.results, self.args.budgets, Path(self.args.out), final)


def fixed_config(args) -> dict[str, Any]:
    """The settings a resume or a merge must match (the pool ones only for a pool run)."""
    keys = FIXED + (POOL_FIXED if getattr(args, "space", "hard") == "pool" else ())
    out = {k: getattr(args, k) for k in keys}
    if getattr(args, "pools", "shared") == "per-task":  # absent from the shared pool's runs
        out["pools"] = "per-task"
    return out


def build_per_task_pools(args, log) -> dict[str, Any]:
    """``--pools per-task``: each task of the chosen configs (targets and sources) its
    own pool (:data:`TASK_POOLS`), demonstrations drawn from its training examples outside
    the objective and dev sets of every seed the run scores it with."""
    from benchmarks.pool_synthetic import INSTRUCTIONS
    from promptbo.evaluators.pools import (
        build_pool,
        combine,
        read_instructions,
        training_examples,
    )

    chosen = [c for c in CONFIGS if c.name in args.configs]
    seeds: dict[str, set[int]] = {}
    for c in chosen:
        seeds.setdefault(c.task, set()).update(getattr(args, c.seeds_arg))
        for s in c.sources:
            seeds.setdefault(s, set()).add(args.source_seed)
    pools = {}
    for task in sorted(seeds):
        start = time.perf_counter()
        path, phrases = TASK_POOLS[task]
        instructions = read_instructions(str(HERE / "pools" / path)) if path else INSTRUCTIONS
        data, labels = str(Path(args.data_root) / task), STYLES[task][1]
        rests = [set(training_examples(data, labels, args.k, seed)) for seed in seeds[task]]
        first = training_examples(data, labels, args.k, min(seeds[task]))
        demos = [d for d in first if all(d in r for r in rests)]
        texts = combine(list(instructions), label_phrases=list(phrases),
                        demonstrations=demos, k=args.demos, demo_sets=args.demo_sets,
                        seed=args.source_seed)
        pools[task] = build_pool(texts)
        log(f"pool of {task}: {len(texts)} candidates from {len(instructions)} instructions "
            f"x {len(phrases)} phrases x demonstrations {args.demos} ({args.demo_sets} "
            f"draws) of its own training examples outside seeds {sorted(seeds[task])}' "
            f"objective and dev sets; {time.perf_counter() - start:.0f} s")
    return pools


def build_task_pool(args, log) -> Any:
    """The pool of ``--space pool`` (a :class:`~promptbo.types.PoolTable`)."""
    from benchmarks.pool_quality import pool_parts
    from promptbo.evaluators.data import load_dataset
    from promptbo.evaluators.pools import build_pool, combine, training_examples

    start = time.perf_counter()
    root = Path(args.data_root)
    instructions, phrases = pool_parts(args)  # the same options as benchmarks.pool_quality
    demos = training_examples(str(root / args.pool_task), None, args.k, args.source_seed)
    # SST-2 and MR are both Rotten Tomatoes sentences: no target text is a demonstration.
    targets = {c.task for c in CONFIGS if not args.configs or c.name in args.configs}
    taken = set()
    for task in targets - {args.pool_task}:
        data = load_dataset(str(root / task))
        taken |= {" ".join(ex.text.lower().split()) for ex in [*data.train, *data.test]}
    kept = [d for d in demos if " ".join(d[0].lower().split()) not in taken]
    texts = combine(instructions, label_phrases=phrases, demonstrations=kept,
                    k=args.demos, demo_sets=args.demo_sets, seed=args.source_seed)
    table = build_pool(texts)
    log(f"pool: {len(table.texts)} candidates from {len(instructions)} instructions x "
        f"{len(phrases)} phrases x demonstrations {args.demos} ({args.demo_sets} draws) of "
        f"{args.pool_task} ({len(demos) - len(kept)} of {len(demos)} training texts left out: "
        f"also in {', '.join(sorted(targets - {args.pool_task}))}); "
        f"{time.perf_counter() - start:.0f} s")
    return table


def source_name(task: str) -> str:
    return f"source-{task}"


def write_outputs(results: dict[str, Any], budgets, out: Path, final: bool = False) -> None:
    """Writes ``<out>.json`` and ``<out>.md`` (and with ``final`` ``<out>.png``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    results["summary"] = summarize(results, budgets)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results))
    tmp.replace(out.with_suffix(".json"))
    out.with_suffix(".md").write_text(markdown(results, budgets))
    if final:
        plot(results, budgets, out.with_suffix(".png"))


def read_part(item: str) -> dict[str, Any]:
    """One ``--merge`` part: ``FILE`` (all its runs) or ``FILE=CONFIG+CONFIG`` (only the
    runs of those configs, e.g. a rerun's targets beside an earlier run's cold ones)."""
    path, _, configs = item.partition("=")
    part = json.loads(Path(path).read_text())
    if configs:
        keep = set(configs.split("+"))
        part["runs"] = {k: v for k, v in part["runs"].items() if k.split("|")[0] in keep}
    return part


def merge_results(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The union of several ``<out>.json`` results (runs, sources, scores, unprompted
    references); the first part's config and machine. Raises ValueError if their
    :data:`FIXED` settings differ or two parts hold the same run."""
    merged: dict[str, Any] = {"config": dict(parts[0]["config"]),
                              "machine": parts[0].get("machine", "")}
    if "pool_size" in parts[0]:
        merged["pool_size"] = parts[0]["pool_size"]
    for part in parts:
        changed = [k for k in (*FIXED, *POOL_FIXED, "pools")
                   if part["config"].get(k) != merged["config"].get(k)]
        if changed:
            raise ValueError(f"results with other settings ({', '.join(changed)})")
        for key in ("runs", "sources", "unprompted", "test_examples"):
            into = merged.setdefault(key, {})
            if key == "runs" and set(into) & set(part.get(key, {})):
                raise ValueError(f"runs in two parts: {sorted(set(into) & set(part[key]))}")
            into.update(part.get(key, {}))
        for task, scores in part.get("scores", {}).items():
            merged.setdefault("scores", {}).setdefault(task, {}).update(scores)
    merged["config"]["db"] = [p["config"].get("db") for p in parts]
    return merged


def summarize(results: dict[str, Any], budgets) -> dict[str, Any]:
    """Per config: test accuracy mean/std per budget, mean final source weights, seeds."""
    out: dict[str, Any] = {}
    for c in CONFIGS:
        runs = [r for k, r in results["runs"].items() if k.split("|")[0] == c.name]
        if not runs:
            continue
        row: dict[str, Any] = {"seeds": len(runs), "task": c.task}
        for b in budgets:
            acc = np.array([r["picks"][str(b)]["test_accuracy"] for r in runs])
            row[str(b)] = [float(acc.mean()), float(acc.std(ddof=1)) if len(acc) > 1 else 0.0]
            best = np.array([max(r["values"][:b]) for r in runs])
            row[f"best_objective@{b}"] = [float(best.mean()),
                                         float(best.std(ddof=1)) if len(best) > 1 else 0.0]
        names = sorted({n for r in runs for n in r["weights"]})
        # None everywhere: no surrogate (transfer by initialization), no weight to report
        row["weights"] = {n: (None if all(r["weights"].get(n) is None for r in runs)
                              else float(np.mean([r["weights"].get(n) or 0.0 for r in runs])))
                          for n in names}
        out[c.name] = row
    return out


def markdown(results: dict[str, Any], budgets) -> str:
    summary = results["summary"]
    head = ("| target config | seeds | " + " | ".join(f"test acc @ {b} (%)" for b in budgets)
            + " | source weights at the end | unprompted test acc (%) |")
    lines = [head, "|---|---:|" + "---:|" * len(budgets) + "---|---:|"]
    for c in CONFIGS:
        row = summary.get(c.name)
        if row is None:
            continue
        cells = [f"{100 * row[str(b)][0]:.1f} ± {100 * row[str(b)][1]:.1f}" for b in budgets]
        weights = ", ".join(f"{n.removeprefix('source-')} "
                            + ("(init only)" if w is None else f"{w:.2f}")
                            for n, w in row["weights"].items()) or "–"
        base = results["unprompted"].get(c.task, {}).get("test_accuracy")
        lines.append(f"| {c.name} | {row['seeds']} | " + " | ".join(cells)
                     + f" | {weights} | " + (f"{100 * base:.1f}" if base is not None else "–")
                     + " |")
    lines += ["", "| target config | " + " | ".join(f"best objective @ {b}" for b in budgets)
              + " |", "|---|" + "---:|" * len(budgets)]
    for c in CONFIGS:
        row = summary.get(c.name)
        if row is not None:
            lines.append(f"| {c.name} | " + " | ".join(
                f"{row[f'best_objective@{b}'][0]:.3f} ± {row[f'best_objective@{b}'][1]:.3f}"
                for b in budgets) + " |")
    n = results.get("test_examples", {})
    lines += ["", "Test accuracy of the pick after b evaluations on the first "
              + ", ".join(f"{v} {k}" for k, v in sorted(n.items()))
              + " test examples, mean ± std over seeds; source weights = the final RGPE "
              "weight of each source (mean over seeds; the target's own GP has the rest). "
              "Best objective = the best value (mean normalised log-prob of the gold label "
              "word on the run's objective examples) among the first b evaluations."]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], budgets, path: Path) -> None:
    """Test accuracy of the pick vs evaluations, one line per config, one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in ("mr", "subj") if any(c.task == t and c.name in results["summary"]
                                              for c in CONFIGS)]
    fig, axes = plt.subplots(1, max(len(tasks), 1), figsize=(6 * max(len(tasks), 1), 4.4),
                             squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=False):
        configs = [c for c in CONFIGS if c.task == task and c.name in results["summary"]]
        for i, c in enumerate(configs):
            row = results["summary"][c.name]
            shift = (i - (len(configs) - 1) / 2) * 0.6
            ax.errorbar([b + shift for b in budgets], [100 * row[str(b)][0] for b in budgets],
                        yerr=[100 * row[str(b)][1] for b in budgets], marker="o", ms=4,
                        capsize=3, label=f"{c.name} ({row['seeds']} seeds)")
        base = results["unprompted"].get(task)
        if base:
            ax.axhline(100 * base["test_accuracy"], color="k", ls="--", lw=1,
                       label="unprompted")
        if results["config"].get("space") == "pool":
            size = results.get("pool_size", "?")
            what = (f"a pool of {size} candidates" if not isinstance(size, dict) else
                    f"its own pool of {size.get(task, '?')} candidates")
        else:
            what = f"{results['config']['prompt_length']}-token prompts"
        ax.set_title(f"{task.upper()}: {what}, SmolLM2-135M-Instruct")
        ax.set_xlabel("evaluations")
        ax.set_ylabel(f"test accuracy of the pick (%, {results['test_examples'].get(task)} ex.)")
        ax.set_xticks(list(budgets))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default="../shared/datasets",
                   help="folder holding sst2/, mr/, subj/, agnews/")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--seeds", default="0,1,2,3,4", help="MR cold and MR <- SST-2")
    p.add_argument("--seeds-unrelated", default=None, help="SUBJ cold and SUBJ <- AG News")
    p.add_argument("--seeds-multi", default=None, help="MR <- {SST-2, SUBJ}")
    p.add_argument("--configs", default=None,
                   help="comma-separated target configs to run (default: all); runs of "
                        "separate processes (other --out and --db) can be merged")
    p.add_argument("--source-seed", type=int, default=0)
    p.add_argument("--budget", type=int, default=50, help="evaluations per study")
    p.add_argument("--budgets", default="10,15,25,50", help="where the pick is reported")
    p.add_argument("--mode", default="both", choices=("both", "init", "surrogate"))
    p.add_argument("--space", default="hard", choices=("hard", "pool"),
                   help="hard: 5-token prompts; pool: candidate pools (see --pools)")
    p.add_argument("--pools", default="shared", choices=("shared", "per-task"),
                   help="pool: one sentiment pool for the MR configs (shared), or each "
                        "task its own pool in one embedding space (per-task, every config)")
    p.add_argument("--strategy", default="gp", help="every study's strategy (pool: gp, zopo)")
    p.add_argument("--pool-task", default="sst2", help="pool: demonstrations from this task")
    p.add_argument("--instructions", default=None,
                   help="pool: file of instructions (default: benchmarks.pool_synthetic's)")
    p.add_argument("--label-phrase", dest="label_phrases", action="append", default=None,
                   help="pool: a sentence naming the label words, repeatable ('' for none)")
    p.add_argument("--demos", type=demo_counts, default=1, help="pool: demonstrations")
    p.add_argument("--demo-sets", type=int, default=7, help="pool: draws per combination")
    p.add_argument("--prompt-length", type=int, default=5)
    p.add_argument("--top-n", type=int, default=2000)
    p.add_argument("--pca-dims", type=int, default=16)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--limit-test", type=int, default=300)
    p.add_argument("--test-kv-cache-mb", type=float, default=2048)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--db", default="/tmp/transfer-bench.sqlite", help="SQLite file")
    p.add_argument("--out", default="benchmarks/results/transfer-real")
    p.add_argument("--report", action="store_true",
                   help="only rewrite <out>.md and <out>.png from <out>.json")
    p.add_argument("--merge", default=None,
                   help="comma-separated <out>.json files of runs made with --configs in "
                        "separate processes (FILE=CONFIG+CONFIG: only those configs' runs "
                        "of FILE): writes their union to <out> (same settings required) "
                        "and its report")
    args = p.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.seeds_unrelated = ([int(s) for s in args.seeds_unrelated.split(",")]
                            if args.seeds_unrelated else args.seeds)
    args.seeds_multi = ([int(s) for s in args.seeds_multi.split(",")]
                        if args.seeds_multi else args.seeds)
    names = {c.name for c in CONFIGS}
    args.configs = [c for c in args.configs.split(",") if c] if args.configs else None
    if args.configs and not set(args.configs) <= names:
        p.error(f"--configs: unknown {sorted(set(args.configs) - names)}; "
                f"known: {', '.join(c.name for c in CONFIGS)}")
    if args.space == "pool":
        sentiment = {"sst2", "mr"}
        pool_configs = [c.name for c in CONFIGS if args.pools == "per-task"
                        or (c.task in sentiment and set(c.sources) <= sentiment)]
        args.configs = args.configs or pool_configs
        if not set(args.configs) <= set(pool_configs):
            p.error(f"--space pool runs {', '.join(pool_configs)} with --pools shared (one "
                    "pool of sentiment prompts); pass --configs among them, or --pools "
                    "per-task")
    args.budgets = sorted({int(b) for b in args.budgets.split(",")})
    if max(args.budgets) > args.budget:
        p.error("--budgets must not exceed --budget")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    path = Path(args.out).with_suffix(".json")
    if args.merge:
        results = merge_results([read_part(item) for item in args.merge.split(",") if item])
        write_outputs(results, results["config"]["budgets"], Path(args.out), final=True)
        print(Path(args.out).with_suffix(".md").read_text(), flush=True)
        return
    if args.report:
        results = json.loads(path.read_text())
        write_outputs(results, results["config"]["budgets"], Path(args.out), final=True)
        print(Path(args.out).with_suffix(".md").read_text(), flush=True)
        return
    config = fixed_config(args)
    results: dict[str, Any] = {}
    if path.exists():
        results = json.loads(path.read_text())
        changed = [k for k in (*FIXED, *POOL_FIXED, "pools")
                   if results.get("config", {}).get(k) != config.get(k)]
        if changed:
            sys.exit(f"{path} was written with other settings ({', '.join(changed)}); "
                     "use the same ones or another --out")
        log(f"resuming: {len(results['runs'])} runs done")
    results["machine"] = machine()
    log(f"loading the model and its vocabulary ({results['machine']})")
    make_task = hf_tasks(args)
    first = make_task("sst2")("objective", args.source_seed)
    vocabulary = first.vocabulary()
    first.close()
    pool, pools = None, None
    if args.space == "pool" and args.pools == "per-task":
        pools = build_per_task_pools(args, log)
        results["pool_size"] = {task: len(t.texts) for task, t in pools.items()}
    elif args.space == "pool":
        pool = build_task_pool(args, log)
        results["pool_size"] = len(pool.texts)
    bench = Bench(args, results, make_task, vocabulary, log, pool, pools)
    bench.run()
    bench.write(final=True)
    print(Path(args.out).with_suffix(".md").read_text(), flush=True)
    log(f"done; {bench.throughput()}")


if __name__ == "__main__":
    main()
