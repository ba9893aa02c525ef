"""Declared options: the one parser, validation against declarations, help and docs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from promptbo.errors import InvalidArgumentError
from promptbo.options import (
    FALSE_WORDS,
    TRUE_WORDS,
    Option,
    declared,
    describe_options,
    option,
    options_table,
    parse_bool,
    parse_float,
    parse_int,
    parse_into,
    parse_options,
)


@dataclass(frozen=True, kw_only=True)
class Base:
    size: int = option("int", 8, "how many", minimum=1)
    mode: str = option("str", "fast", "how", choices=("fast", "slow"))


@dataclass(frozen=True, kw_only=True)
class Derived(Base):
    path: str = option("str", help="where")
    cache: str = option("switch", "auto", "whether to cache")
    ratio: float | None = option("float", None, "a share", minimum=0, maximum=1)
    words: str | tuple[str, ...] | None = option("text-or-list", None, "some words")


def test_one_set_of_boolean_words():
    for word in TRUE_WORDS:
        assert parse_bool("x", word.upper()) is True
    for word in FALSE_WORDS:
        assert parse_bool("x", f" {word} ") is False
    assert parse_bool("x", True) is True
    with pytest.raises(InvalidArgumentError, match="option x must be true or false .* got 'maybe'"):
        parse_bool("x", "maybe")


def test_numbers_are_parsed_and_bounded():
    assert parse_int("k", "8") == 8 and parse_int("k", 8.0) == 8
    for bad in ("8.5", "eight", True, 8.5):
        with pytest.raises(InvalidArgumentError, match=f"option k must be an integer, got {bad!r}"):
            parse_int("k", bad)
    with pytest.raises(InvalidArgumentError, match="option k must be at least 1, got 0"):
        parse_int("k", "0", minimum=1)
    with pytest.raises(InvalidArgumentError, match=r"option t must be in \[0, 1\], got 2"):
        parse_float("t", "2", minimum=0, maximum=1)
    with pytest.raises(InvalidArgumentError, match="at least 0, got nan"):
        parse_float("t", "nan", minimum=0)
    assert math.isnan(parse_float("t", "nan"))  # no bounds, no check
    with pytest.raises(InvalidArgumentError, match="option t must be a number, got 'x'"):
        parse_float("t", "x")


def test_declared_options_subclass_first_with_names():
    names = [o.name for o in declared(Derived)]
    assert names == ["path", "cache", "ratio", "words", "size", "mode"]
    assert declared(Derived)[0] == Option("path", "str", help="where")


def test_parse_into_converts_strings_and_fills_defaults():
    got = parse_into(Derived, {"path": "p", "size": "3", "cache": "yes", "ratio": "0.5",
                               "words": ["a", "b"]})
    assert got == Derived(path="p", size=3, mode="fast", cache="on", ratio=0.5, words=("a", "b"))
    got = parse_into(Derived, {"path": "p", "cache": "off", "mode": "SLOW", "ratio": ""})
    assert (got.cache, got.mode, got.ratio, got.words) == ("off", "slow", None, None)
    assert parse_into(Derived, {"path": "p"}).cache == "auto"
    got = parse_into(Derived, {"path": "default", "size": "default", "mode": " default"})
    assert (got.path, got.size, got.mode) == ("default", 8, "fast")  # free text stays


@pytest.mark.parametrize("given, message", [
    ({"path": "p", "sise": "3"},
     r"thing 'x' has no option sise \(did you mean size\?\); its options are: cache, mode, "
     "path, ratio, size, words"),
    ({"size": "3"}, r"thing 'x' needs option path \(-o path=\.\.\.\)"),
    ({"path": "p", "size": "many"}, "thing 'x': option size must be an integer, got 'many'"),
    ({"path": "p", "mode": "medium"}, "option mode must be one of fast, slow, got 'medium'"),
    ({"path": "p", "cache": "maybe"}, "option cache must be auto, on or off, got 'maybe'"),
    ({"path": "p", "ratio": "1.5"}, r"option ratio must be in \[0, 1\], got 1.5"),
    ({"path": 3}, "option path must be a string, got 3"),
    ({"path": "p", "words": 3}, "option words must be a string or a list of strings, got 3"),
])
def test_validation_errors_name_the_option(given, message):
    with pytest.raises(InvalidArgumentError, match=message):
        parse_into(Derived, given, owner="thing 'x'")


def test_extra_options_are_kept_when_allowed():
    decl = [Option("a", "int", 1)]
    assert parse_options(decl, {"a": "2", "b": "x"}, allow_extra=True) == {"a": 2, "b": "x"}
    with pytest.raises(InvalidArgumentError, match="has no option b; its options are: a"):
        parse_options(decl, {"b": "x"})


def test_help_and_table_show_type_default_and_help():
    lines = describe_options(declared(Derived))
    assert lines[0].split() == ["path", "str", "(required)", "where"]
    assert lines[-2].split()[:3] == ["size", "int", ">="]
    assert "fast/slow" in lines[-1] and "fast" in lines[-1].split()
    table = options_table(declared(Base))
    assert table.splitlines()[2] == "| `size` | int >= 1 | `8` | how many |"
