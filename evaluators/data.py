"""Labelled examples: reading JSONL/CSV files and drawing few-shot splits.

A dataset is one of

- ``demo``: the small sentiment set shipped with promptbo (64 reviews, 0=negative, 1=positive);
- a ``.jsonl`` file, one ``{"text": ..., "label": ...}`` object a line (``"text_b"`` for pairs);
- a ``.csv`` file with a header row naming the columns ``text``, ``label`` (and ``text_b``);
- a folder holding ``train.jsonl`` (or ``train.csv``) and optionally ``test.jsonl`` and a
  ``meta.json`` whose ``"labels"`` list names the classes (used as default label words);
- any other name is handed to Hugging Face ``datasets`` (if installed and a hub is reachable),
  optionally as ``name:config``; its ``train`` and ``test`` (or ``validation``) splits are used.

Labels are class indices ``0..C-1``; strings are accepted when they are digits or name a
class (one of the label names or label words, case-insensitive).
"""

from __future__ import annotations

import csv
import json
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from promptbo.errors import InvalidArgumentError

DEMO = "demo"
_FILE_SUFFIXES = (".jsonl", ".csv")


@dataclass(frozen=True)
class Example:
    """One labelled input. ``label`` is a class index, or a raw string until resolved."""

    text: str
    label: int | str
    text_b: str | None = None
    #: ``file:line`` the example came from, for error messages.
    source: str = field(default="", compare=False)


@dataclass(frozen=True)
class Dataset:
    """A pool to draw few-shot sets from, an optional held-out test split and class names."""

    train: list[Example]
    test: list[Example] | None = None
    label_names: list[str] | None = None


def demo_path() -> Path:
    """The shipped demo file ``promptbo/data/sentiment_demo.jsonl``."""
    import promptbo

    return Path(promptbo.__file__).parent / "data" / "sentiment_demo.jsonl"


def load_dataset(data: str, test_data: str | None = None) -> Dataset:
    """Reads ``data`` (see the module docstring); ``test_data`` overrides the test split."""
    data = str(data).strip()
    if data == DEMO:
        ds = Dataset(read_examples(demo_path()), None, ["negative", "positive"])
    else:
        path = Path(data).expanduser()
        if path.is_dir():
            ds = _load_folder(path)
        elif path.is_file():
            ds = Dataset(read_examples(path))
        elif path.suffix in _FILE_SUFFIXES or "\\" in data or data.startswith((".", "/", "~")):
            raise InvalidArgumentError(f"dataset file {data!r} does not exist")
        else:
            ds = _load_hub(data)
    if test_data:
        ds = Dataset(ds.train, read_examples(Path(test_data).expanduser()), ds.label_names)
    return ds


def read_examples(path: Path) -> list[Example]:
    """The examples of a ``.jsonl`` or ``.csv`` file (labels not yet resolved).

    Raises:
        InvalidArgumentError: missing or empty file, malformed line (named by number),
            missing ``text``/``label`` fields.
    """
    if not path.is_file():
        raise InvalidArgumentError(f"dataset file {str(path)!r} does not exist")
    reader = _read_csv if path.suffix.lower() == ".csv" else _read_jsonl
    examples = reader(path)
    if not examples:
        raise InvalidArgumentError(f"dataset file {str(path)!r} has no examples")
    return examples


def _read_jsonl(path: Path) -> list[Example]:
    out = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path.name}:{n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidArgumentError(
                    f"{path}: line {n} is not valid JSON ({exc.msg}); each line must be an "
                    'object like {"text": "...", "label": 0}'
                ) from None
            out.append(_example(row, where, f"{path}: line {n}"))
    return out


def _read_csv(path: Path) -> list[Example]:
    out = []
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        columns = set(reader.fieldnames or ())
        if not {"text", "label"} <= columns:
            raise InvalidArgumentError(
                f"{path}: the header row must name the columns text and label (and optionally "
                f"text_b); found {sorted(columns)}"
            )
        for row in reader:
            n = reader.line_num
            extra = row.pop(None, None) or []
            if extra or any(v is None for v in row.values()):
                fields = sum(v is not None for v in row.values()) + len(extra)
                raise InvalidArgumentError(
                    f"{path}: line {n} has {fields} fields where the header names {len(columns)}"
                )
            if not any(v.strip() for v in row.values()):
                continue
            out.append(_example(row, f"{path.name}:{n}", f"{path}: line {n}"))
    return out


def _example(row: object, where: str, context: str) -> Example:
    if not isinstance(row, dict) or "text" not in row or "label" not in row:
        raise InvalidArgumentError(f"{context} needs the fields 'text' and 'label'")
    text, label, text_b = row["text"], row["label"], row.get("text_b")
    if not isinstance(text, str) or (text_b is not None and not isinstance(text_b, str)):
        raise InvalidArgumentError(f"{context}: 'text' and 'text_b' must be strings")
    if isinstance(label, bool) or not isinstance(label, (int, str)):
        raise InvalidArgumentError(
            f"{context}: 'label' must be a class index or a class name, got {label!r}"
        )
    return Example(text, label, text_b or None, where)


def _load_folder(path: Path) -> Dataset:
    def first(stem: str) -> Path | None:
        return next((path / (stem + s) for s in _FILE_SUFFIXES if (path / (stem + s)).is_file()),
                    None)

    train = first("train")
    if train is None:
        raise InvalidArgumentError(
            f"dataset folder {str(path)!r} has no train.jsonl or train.csv"
        )
    test = first("test")
    names = None
    meta = path / "meta.json"
    if meta.is_file():
        try:
            names = json.loads(meta.read_text(encoding="utf-8")).get("labels")
        except (json.JSONDecodeError, AttributeError) as exc:
            raise InvalidArgumentError(f"{meta} is not a JSON object: {exc}") from None
    return Dataset(read_examples(train), read_examples(test) if test else None, names)


def _load_hub(name: str) -> Dataset:  # pragma: no cover - needs a reachable hub
    try:
        import datasets
    except ImportError:
        raise InvalidArgumentError(
            f"no dataset file or folder {name!r}; to load a Hugging Face dataset by name, "
            "pip install datasets"
        ) from None
    repo, _, config = name.partition(":")
    try:
        loaded = datasets.load_dataset(repo, config or None)
    except Exception as exc:
        raise InvalidArgumentError(f"could not load the dataset {name!r}: {exc}") from exc

    def convert(split) -> list[Example]:
        cols = split.column_names
        text_col = next((c for c in ("text", "sentence", "sentence1", "premise") if c in cols),
                        None)
        pair_col = next((c for c in ("text_b", "sentence2", "hypothesis") if c in cols), None)
        if text_col is None or "label" not in cols:
            raise InvalidArgumentError(f"dataset {name!r} has no text/label columns: {cols}")
        return [Example(r[text_col], int(r["label"]), r[pair_col] if pair_col else None,
                        f"{name}:{i}") for i, r in enumerate(split)]

    test_split = next((s for s in ("test", "validation") if s in loaded), None)
    names = getattr(loaded["train"].features.get("label"), "names", None)
    return Dataset(convert(loaded["train"]),
                   convert(loaded[test_split]) if test_split else None, names)


def resolve_labels(
    examples: Sequence[Example], label_words: Sequence[str], label_names: Sequence[str] = ()
) -> list[Example]:
    """The examples with labels as class indices ``0..C-1``, ``C = len(label_words)``.

    A string label may be a number, a label word or a class name (case-insensitive).

    Raises:
        InvalidArgumentError: a label that is out of range or names no class.
    """
    lookup = {n.strip().lower(): i for i, n in enumerate(label_names)}
    lookup.update({w.strip().lower(): i for i, w in enumerate(label_words)})
    n = len(label_words)
    out = []
    for ex in examples:
        label = ex.label
        if isinstance(label, str):
            key = label.strip().lower()
            label = int(key) if key.isdigit() else lookup.get(key, -1)
        if not 0 <= label < n:
            raise InvalidArgumentError(
                f"{ex.source}: unknown label {ex.label!r}; with the label words "
                f"{list(label_words)} labels must be 0..{n - 1} or one of those words "
                "(pass one label word per class with labels=...)"
            )
        out.append(Example(ex.text, label, ex.text_b, ex.source))
    return out


def few_shot_splits(
    pool: Sequence[Example], n_classes: int, k: int, seed: int
) -> tuple[list[Example], list[Example], list[Example]]:
    """Draws ``k`` examples per class for the objective set and ``k`` more (as many as
    there are) for the dev set; returns ``(objective, dev, rest)``, all disjoint.

    The draw depends only on ``seed`` and the pool's order. Objective and dev are shuffled.

    Raises:
        InvalidArgumentError: a class has fewer than ``k`` examples.
    """
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, ex in enumerate(pool):
        by_class[int(ex.label)].append(i)
    rng = random.Random(seed)
    objective, dev = [], []
    for c in range(n_classes):
        idx = by_class.get(c, [])
        if len(idx) < k:
            raise InvalidArgumentError(
                f"class {c} has {len(idx)} examples in the training pool, fewer than k={k}; "
                "pass a smaller k"
            )
        idx = idx.copy()
        rng.shuffle(idx)
        objective += idx[:k]
        dev += idx[k:2 * k]
    rng.shuffle(objective)
    rng.shuffle(dev)
    used = set(objective) | set(dev)
    rest = [ex for i, ex in enumerate(pool) if i not in used]
    return [pool[i] for i in objective], [pool[i] for i in dev], rest
