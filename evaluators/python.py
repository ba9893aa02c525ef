"""``python``: scores prompts with a Python function of your own.

``function="package.module:name"`` (or ``"path/to/file.py:name"``) names a callable that
takes the list of :class:`~promptbo.types.Prompt` and returns one number or
:class:`~promptbo.types.Score` per prompt (a ``{"value": .., "metrics": {..}}`` dict also
works, optionally with ``"stderr"`` and ``"examples"``). In a fidelity study each prompt's
``examples`` holds the pool examples to score; score exactly those. Any other option is
passed to it as a keyword argument on every call::

    promptbo worker --study s --evaluator python -o function=my_scoring:score -o scale=2
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from promptbo.errors import InvalidArgumentError
from promptbo.evaluators.base import Evaluator, register_evaluator
from promptbo.options import option
from promptbo.types import Prompt, Score


def load_callable(spec: str) -> Callable[..., Any]:
    """The callable named by ``"module:attr"`` or ``"file.py:attr"`` (dots walk attributes).

    Raises:
        InvalidArgumentError: malformed spec, missing module/file or attribute, or not callable.
    """
    module_name, sep, attr = str(spec).rpartition(":")
    if not sep or not module_name or not attr:
        raise InvalidArgumentError(
            f"function {spec!r} must look like 'package.module:callable' or 'file.py:callable'"
        )
    if module_name.endswith(".py"):
        path = Path(module_name).expanduser()
        if not path.is_file():
            raise InvalidArgumentError(f"function {spec!r}: no file {module_name!r}")
        mod_spec = importlib.util.spec_from_file_location(f"_promptbo_user_{path.stem}", path)
        if mod_spec is None or mod_spec.loader is None:
            raise InvalidArgumentError(f"function {spec!r}: {module_name!r} cannot be imported")
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise InvalidArgumentError(f"function {spec!r}: cannot import {module_name!r}: {exc}"
                                       ) from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise InvalidArgumentError(
                f"function {spec!r}: {module_name!r} has no attribute {attr!r}"
            ) from None
    if not callable(obj):
        raise InvalidArgumentError(f"function {spec!r} is not callable")
    return obj


def as_score(item: Any, where: str) -> Score:
    """A number, a :class:`Score` or a ``{"value", "metrics"}`` mapping as a Score.

    Raises:
        InvalidArgumentError: anything else, or a value that is not finite.
    """
    if isinstance(item, Score):
        return item
    try:
        if isinstance(item, dict):
            metrics = {str(k): float(v) for k, v in (item.get("metrics") or {}).items()}
            stderr = item.get("stderr")
            return Score(float(item["value"]), metrics,
                         None if stderr is None else float(stderr), int(item.get("examples", 0)))
        if isinstance(item, bool):
            raise TypeError
        value = float(item)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise InvalidArgumentError(
            f"{where} is {item!r}; expected a number or {{\"value\": number, \"metrics\": {{}}}}"
        ) from None
    if not math.isfinite(value):
        raise InvalidArgumentError(f"{where} is {value}, not a finite number")
    return Score(value)


@dataclass(frozen=True, kw_only=True)
class PythonOptions:
    """The declared option of ``python``; any other option goes to the function."""

    function: str = option("str", help="`package.module:name` (imported) or "
                           "`path/to/file.py:name` (loaded from the file); dots after the "
                           "colon walk attributes (`my_scoring:Scorer.score`)")


@register_evaluator("python")
class PythonEvaluator(Evaluator):
    """Calls ``function(prompts, **options)``; see the module docstring."""

    Options: ClassVar[type | None] = PythonOptions
    extra_options: ClassVar[bool] = True

    def __init__(self, options: PythonOptions, **extra: Any):
        self.function = load_callable(options.function)
        self.spec = options.function
        self.options = extra

    def score(self, prompts: Sequence[Prompt]) -> list[Score]:
        results = list(self.function(list(prompts), **self.options))
        if len(results) != len(prompts):
            raise InvalidArgumentError(
                f"{self.spec} returned {len(results)} scores for {len(prompts)} prompts"
            )
        return [as_score(r, f"{self.spec}'s score #{i}") for i, r in enumerate(results)]
