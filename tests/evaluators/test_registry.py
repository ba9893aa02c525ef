"""The evaluator registry, entry-point plug-ins and option conversion."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest

import promptbo.evaluators as evaluators
from promptbo.errors import InvalidArgumentError
from promptbo.evaluators import base
from promptbo.evaluators.base import option_bool, option_float, option_int
from promptbo.types import Score


class Constant(evaluators.Evaluator):
    def __init__(self, value: float = 1.0):
        self.value = option_float("value", value)

    def score(self, prompts):
        return [Score(self.value) for _ in prompts]


@pytest.fixture
def clean_registry(monkeypatch):
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    monkeypatch.setattr(base, "_entry_points_loaded", False)
    return base._REGISTRY


def test_public_api():
    assert sorted(evaluators.__all__) == sorted(
        ["Evaluator", "Example", "Task", "Template", "create_evaluator", "evaluator_names",
         "get_evaluator", "load_task", "register_evaluator"])
    for name in evaluators.__all__:
        assert hasattr(evaluators, name)


def test_builtins_are_registered():
    assert {"hf-causal", "hf-mlm", "openai", "python", "command"} <= set(
        evaluators.evaluator_names())
    cls = evaluators.get_evaluator("hf-causal")
    assert cls.name == "hf-causal" and issubclass(cls, evaluators.Evaluator)


def test_importing_evaluators_does_not_import_torch_or_httpx():
    code = ("import sys, promptbo.evaluators as e; e.evaluator_names(); "
            "print('torch' in sys.modules, 'httpx' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "False"]


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(InvalidArgumentError, match="unknown evaluator 'nope'.*hf-causal"):
        evaluators.get_evaluator("nope")


def test_register_refuses_duplicates_and_non_evaluators(clean_registry):
    evaluators.register_evaluator("constant")(Constant)
    assert evaluators.get_evaluator("constant") is Constant
    evaluators.register_evaluator("constant")(Constant)  # the same class again is harmless

    class Other(Constant):
        pass

    with pytest.raises(InvalidArgumentError, match="already registered.*my-constant"):
        evaluators.register_evaluator("constant")(Other)
    with pytest.raises(InvalidArgumentError, match="not a subclass"):
        evaluators.register_evaluator("thing")(object)


def test_create_evaluator_converts_and_checks_options(clean_registry):
    evaluators.register_evaluator("constant")(Constant)
    ev = evaluators.create_evaluator("constant", value="2.5")
    assert ev.score([evaluators.Evaluator, None]) == [Score(2.5), Score(2.5)]
    with pytest.raises(InvalidArgumentError, match="has no option 'valu'; its options are: value"):
        evaluators.create_evaluator("constant", valu=1)
    with pytest.raises(InvalidArgumentError, match="option value must be a number"):
        evaluators.create_evaluator("constant", value="high")


class _EntryPoint:
    def __init__(self, name, obj=None, error=None):
        self.name, self.value, self._obj, self._error = name, f"pkg:{name}", obj, error

    def load(self):
        if self._error:
            raise self._error
        return self._obj


def test_entry_point_plugins_are_loaded(clean_registry, monkeypatch):
    def entry_points(group):
        assert group == "promptbo.evaluators"
        return [_EntryPoint("plugged", Constant), _EntryPoint("broken", error=ImportError("x"))]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    assert evaluators.get_evaluator("plugged") is Constant
    names = evaluators.evaluator_names()
    assert "plugged" in names and "broken" not in names


def test_option_helpers():
    assert option_int("k", "8") == 8 and option_int("k", 8.0) == 8
    assert option_bool("x", "Yes") is True and option_bool("x", "off") is False
    for bad in ("8.5", "eight", True):
        with pytest.raises(InvalidArgumentError, match="option k must be an integer"):
            option_int("k", bad)
    with pytest.raises(InvalidArgumentError, match="must be at least 1"):
        option_int("k", "0", minimum=1)
    with pytest.raises(InvalidArgumentError, match="true or false"):
        option_bool("x", "maybe")
    with pytest.raises(InvalidArgumentError, match="at least 0"):
        option_float("t", "nan", minimum=0)
