"""The evaluator interface and the registry of evaluators by name.

An evaluator scores a batch of prompts: ``score(prompts) -> list[Score]``, one score per
prompt, in order, where a larger ``Score.value`` is better. Evaluators are built from
keyword options, which arrive as strings when they come from the command line
(``promptbo worker --evaluator hf-causal -o k=8``). An evaluator declares them once, as a
frozen dataclass of :func:`promptbo.options.option` fields (:attr:`Evaluator.Options`);
:func:`create_evaluator` parses the given options against it and hands the constructor
an instance, and ``--help`` lists the declarations.

Built-in evaluators register themselves with :func:`register_evaluator`; third-party
packages add theirs through the ``promptbo.evaluators`` entry-point group::

    [project.entry-points."promptbo.evaluators"]
    my-scorer = "my_package.scoring:MyScorer"      # an Evaluator subclass
"""

from __future__ import annotations

import abc
import importlib.metadata
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from promptbo.errors import InvalidArgumentError
from promptbo.options import Option, declared, describe_options, parse_options
from promptbo.types import Prompt, Score, VocabularyTable

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "promptbo.evaluators"


class Evaluator(abc.ABC):
    """Scores prompts. Subclasses implement :meth:`score`; the rest is optional."""

    #: The registry name, set by :func:`register_evaluator`.
    name: ClassVar[str] = ""
    #: The declared options: a frozen dataclass whose fields are made with
    #: :func:`promptbo.options.option`; the constructor receives an instance. None: the
    #: constructor takes keyword options itself, unchecked by the registry.
    Options: ClassVar[type | None] = None
    #: Whether options beyond the declared ones are accepted; they reach the constructor
    #: as keyword arguments after the parsed options.
    extra_options: ClassVar[bool] = False

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

    An evaluator with declared :attr:`Evaluator.Options` receives them parsed, as an
    instance of that class (and any extra options as keywords, where it takes them); one
    without receives ``options`` as keyword arguments, unchecked.

    Raises:
        InvalidArgumentError: unknown evaluator or option, or an option with a bad value.
    """
    cls: Any = get_evaluator(name)
    if cls.Options is None:
        return cls(**options)
    parsed, extra = _parse(name, options)
    return cls(parsed, **extra)


def check_options(name: str, options: Mapping[str, Any]) -> None:
    """Checks, without building anything, that evaluator ``name`` exists and that
    ``options`` are valid for it (names, required ones, kinds and ranges).

    Raises:
        InvalidArgumentError: unknown evaluator or option, a required option missing, or a
            bad value.
    """
    if get_evaluator(name).Options is not None:
        _parse(name, options)


def evaluator_options(name: str) -> tuple[Option, ...]:
    """The options evaluator ``name`` declares (empty when it declares none)."""
    options_class = get_evaluator(name).Options
    return () if options_class is None else declared(options_class)


def describe_evaluators() -> str:
    """Every registered evaluator's declared options (name, type, default, help), for
    ``--help``; options that several evaluators declare alike are listed once, under
    all their names."""
    owners: dict[Option, list[str]] = {}
    undeclared = []
    for name in evaluator_names():
        cls = get_evaluator(name)
        if cls.Options is None:
            undeclared.append(name)
        for opt in evaluator_options(name):
            owners.setdefault(opt, []).append(name)
    groups: dict[tuple[str, ...], list[Option]] = {}
    for opt, owned_by in owners.items():
        groups.setdefault(tuple(owned_by), []).append(opt)
    lines = ["evaluator options (-o KEY=VALUE):"]
    for group, opts in sorted(groups.items(), key=lambda g: (len(g[0]), g[0])):
        extra = any(get_evaluator(n).extra_options for n in group)
        note = " (any other option is passed on as given)" if extra else ""
        lines += [f"  {', '.join(group)}{note}:", *describe_options(opts, indent="    ")]
    lines += [f"  {name}: options not declared (see its documentation)" for name in undeclared]
    return "\n".join(lines)


def _parse(name: str, options: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    cls = get_evaluator(name)
    assert cls.Options is not None
    decl = declared(cls.Options)
    values = parse_options(decl, options, owner=f"evaluator {name!r}",
                           allow_extra=cls.extra_options)
    known = {o.name for o in decl}
    parsed = cls.Options(**{k: v for k, v in values.items() if k in known})
    return parsed, {k: v for k, v in values.items() if k not in known}
