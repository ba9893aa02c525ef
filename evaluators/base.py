"""The evaluator interface and the registry of evaluators by name.

An evaluator scores a batch of prompts: ``score(prompts) -> list[Score]``, one score per
prompt, in order, where a larger ``Score.value`` is better. Evaluators are built from
keyword options, which arrive as strings when they come from the command line
(``promptbo worker --evaluator hf-causal -o k=8``); the ``option_*`` helpers below turn
them into typed values with errors that name the option.

Built-in evaluators register themselves with :func:`register_evaluator`; third-party
packages add theirs through the ``promptbo.evaluators`` entry-point group::

    [project.entry-points."promptbo.evaluators"]
    my-scorer = "my_package.scoring:MyScorer"      # an Evaluator subclass
"""

from __future__ import annotations

import abc
import importlib.metadata
import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

from promptbo.errors import InvalidArgumentError
from promptbo.types import Prompt, Score, VocabularyTable

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "promptbo.evaluators"


class Evaluator(abc.ABC):
    """Scores prompts. Subclasses implement :meth:`score`; the rest is optional."""

    #: The registry name, set by :func:`register_evaluator`.
    name: ClassVar[str] = ""

    @abc.abstractmethod
    def score(self, prompts: Sequence[Prompt]) -> list[Score]:
        """One :class:`Score` per prompt, in order. ``value`` is the objective (larger is
        better); ``metrics`` holds extra numbers such as ``accuracy`` or ``log_prob``."""

    def vocabulary(self) -> VocabularyTable | None:
        """The model's token table for hard-prompt studies (``tokens`` joined give a
        prompt's text, ``embeddings`` is `V x D` float32), or None if not applicable."""
        return None

    def soft_prompt_shape(self) -> tuple[int, float] | None:
        """``(embedding_dim, embedding_std)`` for soft-prompt studies: the width `D` of the
        model's input embeddings and the standard deviation of their entries (a scale for
        the search space), or None if soft prompts are unsupported."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Releases models, connections and processes. Safe to call twice."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


E = TypeVar("E", bound=type[Evaluator])

_REGISTRY: dict[str, type[Evaluator]] = {}
_entry_points_loaded = False


def register_evaluator(name: str) -> Callable[[E], E]:
    """Class decorator that registers an :class:`Evaluator` subclass under ``name``.

    Raises:
        InvalidArgumentError: ``name`` is taken by another class, or the class is not an
            Evaluator.
    """
    if not name or not isinstance(name, str):
        raise InvalidArgumentError("an evaluator name must be a non-empty string")

    def decorate(cls: E) -> E:
        if not (isinstance(cls, type) and issubclass(cls, Evaluator)):
            raise InvalidArgumentError(
                f"@register_evaluator({name!r}) decorates {cls!r}, which is not a subclass of "
                "promptbo.evaluators.Evaluator"
            )
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls:
            raise InvalidArgumentError(
                f"an evaluator named {name!r} is already registered "
                f"({existing.__module__}.{existing.__qualname__}); register yours under another "
                f"name, e.g. @register_evaluator('my-{name}')"
            )
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY:
            continue
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plug-in must not hide the others
            log.warning("evaluator plug-in %r (%s) failed to load: %s", ep.name, ep.value, exc)
            continue
        if isinstance(obj, type) and issubclass(obj, Evaluator) and ep.name not in _REGISTRY:
            register_evaluator(ep.name)(obj)


def evaluator_names() -> list[str]:
    """The registered evaluator names (built-in and plug-ins), sorted."""
    _load_entry_points()
    return sorted(_REGISTRY)


def get_evaluator(name: str) -> type[Evaluator]:
    """The evaluator class registered as ``name``.

    Raises:
        InvalidArgumentError: no evaluator has that name (the message lists the known ones).
    """
    if name not in _REGISTRY:
        _load_entry_points()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InvalidArgumentError(
            f"unknown evaluator {name!r}; known evaluators: {', '.join(evaluator_names())}"
        ) from None


def create_evaluator(name: str, **options: Any) -> Evaluator:
    """Builds the evaluator ``name`` from keyword ``options`` (strings are converted).

    Raises:
        InvalidArgumentError: unknown evaluator or option, or an option with a bad value.
    """
    check_options(name, options)
    return get_evaluator(name)(**options)


def check_options(name: str, options: dict[str, Any]) -> None:
    """Checks, without building anything, that evaluator ``name`` exists, takes every key
    of ``options`` and is given its required options.

    Raises:
        InvalidArgumentError: unknown evaluator or option, or a required option missing.
    """
    params = inspect.signature(get_evaluator(name).__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        known = [n for n, p in params.items() if n != "self" and p.kind is not p.VAR_POSITIONAL]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise InvalidArgumentError(
                f"evaluator {name!r} has no option {', '.join(map(repr, unknown))}; "
                f"its options are: {', '.join(known)}"
            )
    missing = [n for n, p in params.items() if n != "self" and p.default is p.empty
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in options]
    if missing:
        raise InvalidArgumentError(
            f"evaluator {name!r} needs option {', '.join(missing)} (-o {missing[0]}=...)"
        )


# --- option conversion -------------------------------------------------------------------

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def option_int(name: str, value: Any, minimum: int | None = None) -> int:
    """``value`` (an int or a string of one) as an int, at least ``minimum``."""
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        out = int(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"option {name} must be an integer, got {value!r}") from None
    if minimum is not None and out < minimum:
        raise InvalidArgumentError(f"option {name} must be at least {minimum}, got {out}")
    return out


def option_float(name: str, value: Any, minimum: float | None = None) -> float:
    """``value`` (a number or a string of one) as a float, at least ``minimum``."""
    try:
        if isinstance(value, bool):
            raise ValueError
        out = float(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"option {name} must be a number, got {value!r}") from None
    if minimum is not None and not out >= minimum:
        raise InvalidArgumentError(f"option {name} must be at least {minimum}, got {out}")
    return out


def option_bool(name: str, value: Any) -> bool:
    """``value`` as a bool; strings ``1/true/yes/on`` and ``0/false/no/off`` are accepted."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidArgumentError(f"option {name} must be true or false, got {value!r}")


def option_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` as one of ``choices`` (case-insensitive)."""
    text = str(value).strip().lower()
    if text not in choices:
        raise InvalidArgumentError(
            f"option {name} must be one of {', '.join(choices)}, got {value!r}"
        )
    return text
