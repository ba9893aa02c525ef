"""The evaluator registry, entry-point plug-ins and declared options."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import ClassVar

import pytest

import promptbo.evaluators as evaluators
from promptbo.errors import InvalidArgumentError
from promptbo.evaluators import base
from promptbo.options import option
from promptbo.types import Score


@dataclass(frozen=True, kw_only=True)
class ConstantOptions:
    value: float = option("float", 1.0, "the score")


class Constant(evaluators.Evaluator):
    Options: ClassVar[type | None] = ConstantOptions

    def __init__(self, options: ConstantOptions):
        self.value = options.value

    def score(self, prompts):
        return [Score(self.value) for _ in prompts]


@pytest.fixture
def clean_registry(monkeypatch):
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    monkeypatch.setattr(base, "_entry_points_loaded", False)
    return base._REGISTRY


def test_public_api():
    assert sorted(evaluators.__all__) == sorted(
        ["Evaluator", "Example", "Task", "TaskOptions", "Template", "create_evaluator",
         "evaluator_names", "evaluator_options", "get_evaluator", "load_task",
         "register_evaluator"])
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
    with pytest.raises(InvalidArgumentError, match=r"evaluator 'constant' has no option valu "
                       r"\(did you mean value\?\); its options are: value"):
        evaluators.create_evaluator("constant", valu=1)
    with pytest.raises(InvalidArgumentError,
                       match="evaluator 'constant': option value must be a number, got 'high'"):
        evaluators.create_evaluator("constant", value="high")


def test_undeclared_plugins_take_keyword_options(clean_registry):
    @evaluators.register_evaluator("loose")
    class Loose(evaluators.Evaluator):
        def __init__(self, scale: float = 1.0):
            self.scale = float(scale)

        def score(self, prompts):
            return [Score(self.scale) for _ in prompts]

    assert evaluators.create_evaluator("loose", scale="3").scale == 3.0
    assert evaluators.evaluator_options("loose") == ()
    assert "loose: options not declared" in base.describe_evaluators()


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




def test_worker_help_lists_every_declared_option(capsys):
    from promptbo import cli

    with pytest.raises(SystemExit) as done:
        cli.main(["worker", "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and "evaluator options (-o KEY=VALUE):" in out
    for name in ("hf-causal", "hf-mlm", "openai", "python", "command"):
        assert name in out
        for o in evaluators.evaluator_options(name):
            row = rf"^ +{o.name} +{re.escape(o.type_name)} +{re.escape(o.default_text or '-')} "
            assert re.search(row, out, re.MULTILINE), (name, o.name)
    assert re.search(r"^ +kv_cache +auto/on/off +auto +reuse the keys", out, re.MULTILINE)
    with pytest.raises(SystemExit):
        cli.main(["worker"])  # a usage error shows the usage only
    assert "evaluator options" not in capsys.readouterr().err
