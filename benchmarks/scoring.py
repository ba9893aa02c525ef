"""Scoring prompts on a benchmark task's splits, each (split, seed, prompt) once.

A benchmark task is a dataset folder scored by the ``hf-causal`` evaluator on its splits:
``objective`` and ``dev`` (``k`` training examples per class each, drawn with the seed),
``test`` (the dataset's test split, the same for every seed) and ``holdout`` (training
examples in neither, :mod:`benchmarks.holdout`). :data:`TASK_STYLES` holds each dataset's
usual template and label words, :func:`hf_evaluators` builds the evaluator of a split and
:class:`ScoreCache` keeps every score, in the form the results JSON stores.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from promptbo.evaluators.base import Evaluator
from promptbo.types import Prompt, VocabularyTable

#: Dataset name (``meta.json``) -> (template, label words); None keeps the evaluator's default.
TASK_STYLES: dict[str, tuple[str | None, str | None]] = {
    # The template the SST-2 tables were measured with (the evaluator's default before it
    # moved the prompt ahead of the input) and the class names.
    "sst2": ("Review: {text}\n{prompt}\nSentiment: {answer}", None),
    "agnews": ("Article: {text}\n{prompt}\nTopic: {answer}", "World,Sports,Business,Tech"),
    "trec": ("Question: {text}\n{prompt}\nAnswer type: {answer}", None),
    "subj": ("Sentence: {text}\n{prompt}\nThis sentence is: {answer}", None),
}

Key = tuple[int, ...]  # a prompt as the model's token ids
MakeEvaluator = Callable[[str, int], Evaluator]  # (split, seed) -> evaluator


class ScoreCache:
    """Scores prompts on a split, each (split, seed, prompt) at most once.

    A prompt is a :data:`Key`: token ids of ``vocabulary``, or whatever ``vocabulary``
    (then a function ``key -> Prompt``) turns into a prompt, e.g. ``(i,)`` for the ``i``-th
    member of a candidate pool. ``make_evaluator(split, seed)`` builds the evaluator of a
    split; objective and dev evaluators of one seed are kept until another seed's are
    needed. The test split does not depend on the seed (the dataset's own test file), so
    its scores are shared.
    ``store`` maps string keys to ``[value, accuracy]`` and is what the JSON keeps.
    """

    def __init__(self, make_evaluator: MakeEvaluator,
                 vocabulary: VocabularyTable | Callable[[Key], Prompt],
                 store: dict[str, list[float]] | None = None):
        self.make_evaluator = make_evaluator
        self.store: dict[str, list[float]] = store if store is not None else {}
        if isinstance(vocabulary, VocabularyTable):
            token_of = dict(zip(vocabulary.token_ids, vocabulary.tokens, strict=True))
            self.prompt_of: Callable[[Key], Prompt] = lambda ids: _hard_prompt(ids, token_of)
        else:
            self.prompt_of = vocabulary
        self.evaluated: Counter[str] = Counter()  # prompts sent to evaluators, per split
        self.seconds: Counter[str] = Counter()
        self._evaluators: dict[tuple[str, int], Evaluator] = {}

    @staticmethod
    def key(split: str, seed: int, ids: Key) -> str:
        return f"{split}|{'*' if split == 'test' else seed}|{' '.join(map(str, ids))}"

    def prompt(self, ids: Key) -> Prompt:
        return self.prompt_of(tuple(ids))

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


def _hard_prompt(ids: Key, token_of: dict[int, str]) -> Prompt:
    tokens = tuple(token_of[i] for i in ids)
    return Prompt(token_ids=tuple(ids), tokens=tokens, text="".join(tokens))


def task_style(data_dir: str | Path) -> tuple[str | None, str | None]:
    """The :data:`TASK_STYLES` entry of the dataset in ``data_dir`` (by the ``name`` in its
    ``meta.json``); ``(None, None)`` for a dataset without one."""
    meta = Path(data_dir) / "meta.json"
    name = json.loads(meta.read_text()).get("name", "") if meta.exists() else ""
    return TASK_STYLES.get(name, (None, None))


def hf_evaluators(args, holdout_examples: int = 0) -> MakeEvaluator:
    """``(split, seed) -> hf-causal evaluator`` for the task the arguments describe.

    Reads ``model``, ``data_dir``, ``k``, ``template``, ``labels`` (None or empty: the
    evaluator's default), ``limit_test`` and ``test_kv_cache_mb`` from ``args`` (the quality
    benchmark's arguments or its results' ``config``). The ``test`` split keeps its first
    ``limit_test`` examples (0: all), the ``holdout`` split its first ``holdout_examples``.
    """
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


def unprompted_scores(cache: ScoreCache, seed: int) -> dict[str, float]:
    """The unprompted model (the empty prompt, key ``()``) on the objective, dev and test
    samples of ``seed``: ``objective``, ``objective_accuracy``, ``dev``, ``test_accuracy``."""
    (obj, obj_acc), = cache.score("objective", seed, [()])
    (dev, _), = cache.score("dev", seed, [()])
    (_, test_acc), = cache.score("test", seed, [()])
    return {"objective": obj, "objective_accuracy": obj_acc, "dev": dev,
            "test_accuracy": test_acc}
