"""Declared options: one definition per option, one parser from strings to typed values.

Evaluators and strategies take options that arrive as strings (``-o k=8`` on the command
line, ``StudySpec.options`` over the wire) or as Python values. Each option is declared
once, as an :class:`Option` (name, kind, default, bounds or choices, a help line), and
:func:`parse_options` checks a mapping against the declarations: an unknown name, a value
of the wrong kind or out of range is an :class:`~promptbo.errors.InvalidArgumentError`
that names the option. Every component reads booleans with the same words,
:data:`TRUE_WORDS` and :data:`FALSE_WORDS`.

A group of options that code reads as attributes is a frozen dataclass whose fields are
made with :func:`option`; :func:`declared` lists its :class:`Option` objects and
:func:`parse_into` builds an instance from a mapping::

    @dataclass(frozen=True, kw_only=True)
    class Retry:
        attempts: int = option("int", 3, "tries per request", minimum=1)

    parse_into(Retry, {"attempts": "5"}, owner="evaluator 'x'")   # Retry(attempts=5)

This module imports nothing beyond the standard library and :mod:`promptbo.errors`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from promptbo.errors import InvalidArgumentError

#: Words read as true and as false (compared stripped and lower-cased).
TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")

#: ``int``, ``float``, ``bool``, ``str``; ``switch``: ``auto`` or a boolean, read as
#: ``"auto"``, ``"on"`` or ``"off"``; ``text-or-list``: a string kept as it is, or a
#: sequence of strings kept as a tuple.
Kind = Literal["int", "float", "bool", "str", "switch", "text-or-list"]

_KIND_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false",
               "str": "a string", "switch": "auto, on or off",
               "text-or-list": "a string or a list of strings"}
_METADATA_KEY = "promptbo.option"


class _Required:
    """The default of an option that must be given."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


def _where(name: str, owner: str) -> str:
    return f"{owner}: option {name}" if owner else f"option {name}"


def parse_bool(name: str, value: Any, owner: str = "") -> bool:
    """``value`` as a bool: a bool, or one of :data:`TRUE_WORDS` / :data:`FALSE_WORDS`."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise InvalidArgumentError(
        f"{_where(name, owner)} must be true or false ({'/'.join(TRUE_WORDS)} or "
        f"{'/'.join(FALSE_WORDS)}), got {value!r}"
    )


def parse_int(name: str, value: Any, owner: str = "", minimum: float | None = None,
              maximum: float | None = None) -> int:
    """``value`` (an int, a whole float or a string of one) as an int within the bounds."""
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        out = int(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidArgumentError(
            f"{_where(name, owner)} must be an integer, got {value!r}") from None
    _check_range(name, owner, out, minimum, maximum)
    return out


def parse_float(name: str, value: Any, owner: str = "", minimum: float | None = None,
                maximum: float | None = None) -> float:
    """``value`` (a number or a string of one) as a float within the bounds; NaN is refused
    when there is a bound."""
    try:
        if isinstance(value, bool):
            raise ValueError
        out = float(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(
            f"{_where(name, owner)} must be a number, got {value!r}") from None
    _check_range(name, owner, out, minimum, maximum)
    return out


def _check_range(name: str, owner: str, value: float, minimum: float | None,
                 maximum: float | None) -> None:
    if minimum is None and maximum is None:
        return
    low = -math.inf if minimum is None else minimum
    high = math.inf if maximum is None else maximum
    if low <= value <= high:  # NaN fails here
        return
    if maximum is None:
        wanted = f"at least {minimum:g}"
    elif minimum is None:
        wanted = f"at most {maximum:g}"
    else:
        wanted = f"in [{minimum:g}, {maximum:g}]"
    raise InvalidArgumentError(f"{_where(name, owner)} must be {wanted}, got {value:g}")


def parse_choice(name: str, value: Any, choices: Sequence[str], owner: str = "") -> str:
    """``value`` as one of ``choices`` (compared stripped and lower-cased)."""
    text = str(value).strip().lower()
    if text not in choices:
        raise InvalidArgumentError(
            f"{_where(name, owner)} must be one of {', '.join(choices)}, got {value!r}"
        )
    return text


@dataclass(frozen=True)
class Option:
    """The declaration of one option.

    ``default`` is used when the option is not given, given as an empty string, or
    (unless it is free text) given as ``default``; :data:`REQUIRED` makes it required.
    ``minimum``/``maximum`` bound numbers, ``choices`` lists the accepted words of a
    ``str`` option, ``shown_default`` is how help and docs show the default when
    ``str(default)`` would not say it well.
    """

    name: str
    kind: Kind
    default: Any = REQUIRED
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    shown_default: str | None = None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def type_name(self) -> str:
        """The kind as help shows it: ``int``, ``float >= 1``, ``auto/on/off``, ..."""
        if self.choices:
            return "/".join(self.choices)
        if self.kind == "switch":
            return "auto/on/off"
        if self.kind in ("int", "float") and (self.minimum is not None
                                              or self.maximum is not None):
            if self.maximum is None:
                return f"{self.kind} >= {self.minimum:g}"
            if self.minimum is None:
                return f"{self.kind} <= {self.maximum:g}"
            return f"{self.kind} in [{self.minimum:g}, {self.maximum:g}]"
        return "text or list" if self.kind == "text-or-list" else self.kind

    @property
    def default_text(self) -> str:
        """The default as help shows it (empty for none)."""
        if self.shown_default is not None:
            return self.shown_default
        if self.required:
            return "(required)"
        return "" if self.default is None else str(self.default)

    def _means_default(self, value: Any) -> bool:
        if value is None:
            return True
        if not isinstance(value, str):
            return False
        if self.kind in ("str", "text-or-list") and not self.choices:
            return value == ""  # free text may be "default" or blank on purpose
        return value.strip().lower() in ("", "default")

    def parse(self, value: Any, owner: str = "") -> Any:
        """``value`` converted to this option's kind and checked.

        Raises:
            InvalidArgumentError: the value is of the wrong kind or out of range; the
                message names the option, what it expects and what it got.
        """
        if self._means_default(value):
            if self.required:
                raise InvalidArgumentError(f"{_where(self.name, owner)} is required")
            return self.default
        if self.choices:
            return parse_choice(self.name, value, self.choices, owner)
        if self.kind == "int":
            return parse_int(self.name, value, owner, self.minimum, self.maximum)
        if self.kind == "float":
            return parse_float(self.name, value, owner, self.minimum, self.maximum)
        if self.kind == "bool":
            return parse_bool(self.name, value, owner)
        if self.kind == "switch":
            if str(value).strip().lower() == "auto":
                return "auto"
            try:
                return "on" if parse_bool(self.name, value) else "off"
            except InvalidArgumentError:
                raise InvalidArgumentError(
                    f"{_where(self.name, owner)} must be auto, on or off, got {value!r}"
                ) from None
        if self.kind == "text-or-list" and not isinstance(value, str):
            if isinstance(value, Iterable) and not isinstance(value, Mapping):
                return tuple(str(v) for v in value)
        elif isinstance(value, str | os.PathLike):
            return os.fspath(value)
        raise InvalidArgumentError(
            f"{_where(self.name, owner)} must be {_KIND_NAMES[self.kind]}, got {value!r}"
        )


def parse_options(declared: Sequence[Option], given: Mapping[str, Any], owner: str = "",
                  allow_extra: bool = False) -> dict[str, Any]:
    """The value of every declared option, parsed from ``given`` or its default.

    Args:
        declared: the declarations.
        given: option name -> value (strings are converted).
        owner: who takes the options, for messages (``"evaluator 'hf-causal'"``).
        allow_extra: keep names that are not declared, unparsed, instead of refusing them.

    Raises:
        InvalidArgumentError: an unknown option (the message lists the valid ones and
            suggests a close one), a required option missing, or a bad value.
    """
    by_name = {o.name: o for o in declared}
    unknown = [name for name in given if name not in by_name]
    if unknown and not allow_extra:
        raise InvalidArgumentError(unknown_option_message(unknown, list(by_name), owner))
    missing = [o.name for o in declared if o.required and given.get(o.name) in (None, "")]
    if missing:
        raise InvalidArgumentError(
            f"{owner or 'this'} needs option {', '.join(missing)} (-o {missing[0]}=...)"
        )
    out = {o.name: o.parse(given.get(o.name), owner) for o in declared}
    out.update((name, given[name]) for name in unknown)
    return out


def unknown_option_message(unknown: Sequence[str], known: Sequence[str], owner: str) -> str:
    """``"<owner> has no option x (did you mean y?); its options are ..."``."""
    names = ", ".join(unknown)
    close = difflib.get_close_matches(unknown[0], known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    valid = ", ".join(sorted(known)) or "none"
    return f"{owner or 'this'} has no option {names}{hint}; its options are: {valid}"


def option(kind: Kind, default: Any = REQUIRED, help: str = "", **details: Any) -> Any:
    """A dataclass field declaring an option (name: the field's name); ``details`` are the
    other :class:`Option` fields (``minimum``, ``maximum``, ``choices``,
    ``shown_default``)."""
    decl = Option("", kind, default, help, **details)
    if default is REQUIRED:
        return dataclasses.field(metadata={_METADATA_KEY: decl})
    return dataclasses.field(default=default, metadata={_METADATA_KEY: decl})


def declared(options_class: type) -> tuple[Option, ...]:
    """The options declared by the fields of a dataclass made with :func:`option`: those
    the class itself declares first, then those of its bases, each in field order."""
    fields = {f.name: f for f in dataclasses.fields(options_class)
              if _METADATA_KEY in f.metadata}
    order: list[str] = []  # a subclass's own options first, then its bases'
    for klass in options_class.__mro__:
        order += [n for n in vars(klass).get("__annotations__", {})
                  if n in fields and n not in order]
    return tuple(dataclasses.replace(fields[n].metadata[_METADATA_KEY], name=n) for n in order)


T = TypeVar("T")


def parse_into(options_class: type[T], given: Mapping[str, Any], owner: str = "") -> T:
    """An instance of ``options_class`` from ``given``, parsed by :func:`parse_options`."""
    return options_class(**parse_options(declared(options_class), given, owner))


def describe_options(declared_options: Sequence[Option], indent: str = "  ") -> list[str]:
    """One help line per option: name, type, default and help, in columns."""
    if not declared_options:
        return [f"{indent}(no options)"]
    rows = [(o.name, o.type_name, o.default_text or "-", o.help) for o in declared_options]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return [f"{indent}{n:<{widths[0]}}  {t:<{widths[1]}}  {d:<{widths[2]}}  {h}".rstrip()
            for n, t, d, h in rows]


def options_table(declared_options: Sequence[Option]) -> str:
    """The options as a Markdown table (option, type, default, meaning)."""
    lines = ["| option | type | default | meaning |", "|---|---|---|---|"]
    for o in declared_options:
        default = o.default_text
        if default and not o.required and o.shown_default is None:
            default = f"`{default}`"
        lines.append(f"| `{o.name}` | {o.type_name} | {default} | {o.help} |")
    return "\n".join(lines)
