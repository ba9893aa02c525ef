"""A classification task: examples, a template that places the prompt, label words, a metric.

Template
    A string with the slots ``{prompt}`` (where the prompt goes), ``{text}`` (the input),
    optionally ``{text_b}`` (the second input of a pair) and ``{answer}`` (where the label
    word goes: the next tokens of a causal LM, so it must come last there; the mask of a
    masked LM). Write ``{{`` and ``}}`` for literal braces. The prompt may sit before or
    after the input, e.g. ``"Review: {text}\\n{prompt}\\nSentiment: {answer}"``.

    Spaces right before ``{answer}`` belong to the label word: with ``"Sentiment: {answer}"``
    and the label word ``positive`` the model scores the token(s) of ``" positive"``. Spaces
    right before ``{prompt}`` are dropped when token ids are spliced in, because hard-prompt
    tokens carry their own leading space (``"Ġgreat"``).

Label words
    One word per class, class ``i`` ↔ ``label_words[i]``. A causal LM may split a word into
    several tokens (their log-probabilities are summed); a masked LM needs one token each.

Objective
    Per example, the log-probability of each label word under the model is normalised over
    the label words (a log-softmax restricted to them). ``metric="log_prob"`` (the default)
    makes the score the mean normalised log-probability of the gold word; ``accuracy`` and
    ``macro_f1`` use the arg-max prediction. Every score carries all of them as metrics,
    plus ``raw_log_prob`` (the mean unnormalised log-probability of the gold word).

Splits
    From the training pool, ``k`` examples per class (drawn with ``seed``) form the
    ``objective`` set the optimizer sees and ``k`` more the disjoint ``dev`` set; ``test``
    is the dataset's test split, or the rest of the pool when it has none. ``holdout`` is
    always that rest of the training pool, shuffled with ``seed``: a larger validation
    sample that leaves the test split untouched. ``pool`` is the labeled pool of a
    fidelity study: every training example outside ``dev`` (the objective set first, then
    the rest shuffled with ``seed``; ``max_examples`` caps it, e.g. at 1000). It needs a
    test split of its own, since without one the rest of the training pool *is* the test
    split.

Example subsets (fidelity)
    A prompt whose ``examples`` holds indices is scored on those examples of the split
    only (:meth:`Task.subset`); the score's ``stderr`` is the standard error of the value
    over the per-example scores (log-probability of the gold word, or 1/0 for a correct
    prediction; none for macro-F1) and ``examples`` their number.
"""

from __future__ import annotations

import random
import string
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from promptbo.errors import InvalidArgumentError
from promptbo.evaluators.data import Example, few_shot_splits, load_dataset, resolve_labels
from promptbo.options import option, parse_into
from promptbo.types import Prompt, Score, mean_and_stderr

SPLITS = ("objective", "dev", "test", "holdout", "pool")
METRICS = ("log_prob", "accuracy", "macro_f1")
_FIELDS = ("prompt", "text", "text_b", "answer")
DEFAULT_TEMPLATE = "{prompt}\nReview: {text}\nSentiment: {answer}"
DEFAULT_LABELS = ("negative", "positive")


class _Slot(str):
    """Marks the prompt and answer positions in a rendered template."""


PROMPT = _Slot("{prompt}")
ANSWER = _Slot("{answer}")


class Template:
    """A parsed template (see the module docstring).

    Raises:
        InvalidArgumentError: no ``{answer}``, ``{prompt}`` or ``{text}``, a repeated slot,
            an unknown field, or a format spec.
    """

    def __init__(self, source: str):
        self.source = source
        self._parts: list[str] = []  # literal format chunks and the PROMPT / ANSWER slots
        counts = dict.fromkeys(_FIELDS, 0)
        literal = ""
        try:
            parsed = list(string.Formatter().parse(source))
        except ValueError as exc:
            raise InvalidArgumentError(
                f"template {source!r} is malformed ({exc}); write {{{{ and }}}} for braces"
            ) from None
        for text, field, spec, conversion in parsed:
            literal += text.replace("{", "{{").replace("}", "}}")
            if field is None:
                continue
            if field not in _FIELDS or spec or conversion:
                raise InvalidArgumentError(
                    f"template {source!r} has an unknown slot {{{field}}}; the slots are "
                    f"{', '.join('{' + f + '}' for f in _FIELDS)} (write {{{{ and }}}} for braces)"
                )
            counts[field] += 1
            if field in ("text", "text_b"):
                literal += "{" + field + "}"
            else:
                self._parts += [literal, PROMPT if field == "prompt" else ANSWER]
                literal = ""
        self._parts.append(literal)
        if PROMPT in self._parts:
            self._space_before_prompt = self._parts[self._parts.index(PROMPT) - 1].endswith(
                (" ", "\t"))
        if counts["answer"] != 1:
            raise InvalidArgumentError(
                f"template {source!r} needs exactly one {{answer}} slot, where the label word "
                f"goes (the mask for a masked LM); it has {counts['answer']}"
            )
        if counts["prompt"] != 1:
            raise InvalidArgumentError(
                f"template {source!r} needs exactly one {{prompt}} slot; it has "
                f"{counts['prompt']}"
            )
        if counts["text"] < 1:
            raise InvalidArgumentError(f"template {source!r} has no {{text}} slot for the input")
        self.uses_text_b = counts["text_b"] > 0

    @property
    def space_before_prompt(self) -> bool:
        """Whether the template has a space right before ``{prompt}`` (after some text);
        a prompt given as text then starts with one."""
        return self._space_before_prompt

    @property
    def answer_last(self) -> bool:
        """Whether only whitespace follows ``{answer}`` (required by causal LMs)."""
        return self._parts[-2] is ANSWER and not self._parts[-1].strip()

    @property
    def prompt_after_input(self) -> bool:
        """Whether the input (``{text}`` / ``{text_b}``) comes before ``{prompt}``."""
        before = "".join(self._parts[: self._parts.index(PROMPT)])
        return "{text}" in before or "{text_b}" in before

    def render(self, example: Example) -> tuple[list[str], str]:
        """``(pieces, answer_space)``: literal strings with the example filled in, and the
        :data:`PROMPT` / :data:`ANSWER` markers, in order; empty literals are left out.
        Spaces before ``{answer}`` are returned as ``answer_space``; those before
        ``{prompt}`` are removed."""
        pieces: list[str] = []
        answer_space = ""
        for i, part in enumerate(self._parts):
            if isinstance(part, _Slot):
                pieces.append(part)
                continue
            text = part.format(text=example.text, text_b=example.text_b or "")
            nxt = self._parts[i + 1] if i + 1 < len(self._parts) else None
            if nxt is ANSWER or nxt is PROMPT:
                stripped = text.rstrip(" \t")
                if nxt is ANSWER:
                    answer_space = text[len(stripped):]
                text = stripped
            if text:
                pieces.append(text)
        return pieces, answer_space

    def render_text(self, example: Example, prompt_text: str) -> str:
        """The template as plain text up to the answer, the prompt written in (for APIs).

        A space the template has before ``{prompt}`` is kept unless the prompt text starts
        with whitespace itself; spaces before ``{answer}`` are dropped."""
        pieces, _ = self.render(example)
        out = ""
        for piece in pieces:
            if piece is ANSWER:
                break
            if piece is PROMPT:
                if out and self._space_before_prompt and not prompt_text[:1].isspace():
                    out += " "
                out += prompt_text
            else:
                out += piece
        return out.rstrip(" \t")

    def __repr__(self) -> str:
        return f"Template({self.source!r})"


@dataclass(frozen=True)
class Task:
    """Examples of one split, rendered by ``template``, classified by ``label_words``.

    ``examples[i].label`` is a class index into ``label_words``.
    """

    examples: tuple[Example, ...]
    template: Template
    label_words: tuple[str, ...]
    metric: str = "log_prob"
    split: str = "objective"

    def __post_init__(self) -> None:
        check_label_words(self.label_words)
        if self.metric not in METRICS:
            raise InvalidArgumentError(
                f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}"
            )
        if not self.examples:
            fix = "a smaller k" if self.split == "holdout" else "a smaller k, or test_data"
            raise InvalidArgumentError(
                f"the {self.split} split has no examples (the training pool went to the "
                f"objective and dev sets: pass {fix})"
            )
        for ex in self.examples:
            if not isinstance(ex.label, int) or not 0 <= ex.label < len(self.label_words):
                raise InvalidArgumentError(
                    f"{ex.source}: unknown label {ex.label!r} for {len(self.label_words)} "
                    "label words"
                )
            if self.template.uses_text_b and ex.text_b is None:
                raise InvalidArgumentError(
                    f"{ex.source}: the template uses {{text_b}} but this example has no text_b"
                )

    @property
    def gold(self) -> np.ndarray:
        """The class index of each example, shape `n`."""
        return np.array([ex.label for ex in self.examples], dtype=np.int64)

    def score_log_probs(self, label_log_probs: np.ndarray) -> Score:
        """Aggregates per-example label-word log-probabilities into a :class:`Score`.

        Args:
            label_log_probs: `n x C`, ``log p(label word c | example)`` under the model's full
                vocabulary (summed over the word's tokens).
        """
        lp = np.asarray(label_log_probs, dtype=np.float64)
        if lp.shape != (len(self.examples), len(self.label_words)):
            expected = (len(self.examples), len(self.label_words))
            raise ValueError(f"expected log-probs of shape {expected}, got {lp.shape}")
        gold = self.gold
        rows = np.arange(len(gold))
        top = lp.max(axis=1, keepdims=True)
        normalised = lp - (top + np.log(np.exp(lp - top).sum(axis=1, keepdims=True)))
        pred = normalised.argmax(axis=1)
        per_example = {"log_prob": normalised[rows, gold], "accuracy": (pred == gold) * 1.0}
        metrics = {
            "log_prob": float(normalised[rows, gold].mean()),
            "raw_log_prob": float(lp[rows, gold].mean()),
            **self._classification_metrics(pred),
        }
        return self._score(metrics, per_example)

    def _score(self, metrics: dict[str, float], per_example: dict[str, np.ndarray]) -> Score:
        values = per_example.get(self.metric)
        stderr = None if values is None else mean_and_stderr(values)[1]
        return Score(metrics[self.metric], metrics, stderr=stderr, examples=len(self.examples))

    def subset(self, indices: Sequence[int]) -> Task:
        """This task restricted to ``examples[i]`` for ``i`` in ``indices`` (a fidelity
        study's example subset).

        Raises:
            InvalidArgumentError: an index outside the split, or no index.
        """
        n = len(self.examples)
        bad = [i for i in indices if not 0 <= int(i) < n]
        if bad or not len(indices):
            raise InvalidArgumentError(
                f"example indices {bad[:5] or '[]'} are not in the {self.split} split of {n} "
                f"examples; the study's pool_size must equal the evaluator's example count"
            )
        return replace(self, examples=tuple(self.examples[int(i)] for i in indices))

    def score_predictions(self, predicted: np.ndarray) -> Score:
        """A :class:`Score` from predicted class indices (`n`, -1 for "none"); the value is
        the accuracy unless ``metric`` is ``macro_f1`` (there are no log-probabilities)."""
        pred = np.asarray(predicted, dtype=np.int64)
        metrics = self._classification_metrics(pred)
        if self.metric == "macro_f1":
            return Score(metrics["macro_f1"], metrics, examples=len(self.examples))
        correct = (pred == self.gold) * 1.0
        return Score(metrics["accuracy"], metrics, stderr=mean_and_stderr(correct)[1],
                     examples=len(self.examples))

    def _classification_metrics(self, pred: np.ndarray) -> dict[str, float]:
        gold = self.gold
        f1s = []
        for c in range(len(self.label_words)):
            tp = float(np.sum((pred == c) & (gold == c)))
            denom = float(np.sum(pred == c) + np.sum(gold == c))
            f1s.append(2 * tp / denom if denom else 0.0)
        return {"accuracy": float(np.mean(pred == gold)), "macro_f1": float(np.mean(f1s)),
                "examples": float(len(gold))}


def parse_label_words(labels: str | Sequence[str]) -> tuple[str, ...]:
    """Label words from a list, a JSON list string, or a comma-separated string."""
    if isinstance(labels, str):
        text = labels.strip()
        if text.startswith("["):
            import json

            try:
                labels = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InvalidArgumentError(f"labels {text!r} is not a JSON list: {exc}") from None
        else:
            labels = text.split(",")
    return check_label_words(tuple(str(w).strip() for w in labels))


def check_label_words(words: tuple[str, ...]) -> tuple[str, ...]:
    """``words`` if there are at least two and none is empty."""
    if len(words) < 2:
        raise InvalidArgumentError(f"a task needs at least two label words, got {list(words)}")
    if any(not w.strip() for w in words):
        raise InvalidArgumentError(f"label words must not be empty: {list(words)}")
    return words


@dataclass(frozen=True, kw_only=True)
class TaskOptions:
    """The options of a classification task, shared by the built-in model evaluators
    (their option classes extend this one)."""

    data: str = option("str", "demo", "`demo`, a `.jsonl`/`.csv` file, a dataset folder or a "
                       "hub name (see Data)")
    template: str | None = option("str", None, "where the prompt, the input and the label "
                                  "word go (see Templates)", shown_default="per evaluator")
    labels: str | tuple[str, ...] | None = option(
        "text-or-list", None, "one label word per class: `negative,positive` or a JSON list",
        shown_default="class names")
    split: str = option("str", "objective", "the examples scored (see Splits)", choices=SPLITS)
    k: int = option("int", 8, "examples per class in `objective` and in `dev`", minimum=1)
    seed: int = option("int", 0, "seed of the few-shot draw")
    test_data: str | None = option("str", None, "a `.jsonl`/`.csv` file used as the test "
                                   "split")
    max_examples: int | None = option("int", None, "keep only the first N examples of the "
                                      "chosen split", minimum=1, shown_default="all")
    metric: str = option("str", "log_prob", "the score's value", choices=METRICS)


def build_task(options: TaskOptions, default_template: str = DEFAULT_TEMPLATE) -> Task:
    """Builds the :class:`Task` that ``options`` describe; ``default_template`` is used
    when they set none.

    Raises:
        InvalidArgumentError: the data cannot be read, the template or the label words are
            invalid, or the chosen split is empty.
    """
    split, seed = options.split, options.seed
    parsed = Template(options.template if options.template is not None else default_template)
    dataset = load_dataset(options.data, options.test_data)
    if options.labels is not None:
        words = parse_label_words(options.labels)
    elif dataset.label_names:
        words = tuple(dataset.label_names)
    else:
        words = DEFAULT_LABELS
    names = dataset.label_names or ()
    pool = resolve_labels(dataset.train, words, names)
    objective, dev, rest = few_shot_splits(pool, len(words), options.k, seed)
    if split == "objective":
        examples = objective
    elif split == "dev":
        examples = dev
    elif split == "holdout":
        examples = rest.copy()
        random.Random(seed).shuffle(examples)
    elif split == "pool":
        if not dataset.test:
            raise InvalidArgumentError(
                f"split=pool needs a dataset with a test split of its own (a folder with a "
                f"test file, or test_data): in {options.data!r} the training examples outside "
                "the objective and dev sets are the test split"
            )
        examples = rest.copy()
        random.Random(seed).shuffle(examples)
        examples = objective + examples
    else:
        examples = resolve_labels(dataset.test, words, names) if dataset.test else rest
    if options.max_examples is not None:
        examples = examples[: options.max_examples]
    return Task(tuple(examples), parsed, words, options.metric, split)


def load_task(data: str = "demo", default_template: str = DEFAULT_TEMPLATE,
              **options: Any) -> Task:
    """Builds a :class:`Task` from :class:`TaskOptions` given as keywords (strings are
    converted), e.g. ``load_task("demo", k="8", split="dev")``.

    Raises:
        InvalidArgumentError: an unknown option or a bad value, or as :func:`build_task`.
    """
    return build_task(parse_into(TaskOptions, {"data": data, **options}, owner="task"),
                      default_template)


def group_by_examples(prompts: Sequence[Prompt]) -> list[tuple[tuple[int, ...] | None, list[int]]]:
    """Positions of ``prompts`` grouped by their example subset (``Prompt.examples``; None:
    the whole split), in order of first appearance: each group is scored in one pass."""
    groups: dict[tuple[int, ...] | None, list[int]] = {}
    for i, p in enumerate(prompts):
        key = None if p.examples is None else tuple(int(e) for e in p.examples)
        groups.setdefault(key, []).append(i)
    return list(groups.items())
