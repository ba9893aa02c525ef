"""The option tables in docs/evaluators.md are the declarations, rendered."""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import pytest

from promptbo.evaluators import TaskOptions, evaluator_options
from promptbo.options import Option, declared, options_table

DOCS = Path(__file__).resolve().parents[2] / "docs" / "evaluators.md"


def documented_tables() -> dict[str, tuple[Option, ...]]:
    """Section heading -> the options its table shows: the task options once, and each
    built-in evaluator's other options under its own heading."""
    task = declared(TaskOptions)
    out = {"### Task options": task}
    for name in ("hf-causal", "hf-mlm", "openai", "python", "command"):
        out[f"### {name}"] = tuple(o for o in evaluator_options(name) if o not in task)
    return out


def section(text: str, heading: str) -> str:
    body = text.split(f"\n{heading}\n", 1)[1]
    return body.split("\n## ", 1)[0].split("\n### ", 1)[0]


def test_docs_option_tables_match_the_declarations():
    text = DOCS.read_text()
    for heading, options in documented_tables().items():
        table = options_table(options)
        assert table in section(text, heading), (
            f"docs/evaluators.md, {heading}: the option table should read\n{table}")


def test_every_builtin_option_is_documented():
    shown = {o.name for options in documented_tables().values() for o in options}
    for name in ("hf-causal", "hf-mlm", "openai", "python", "command"):
        assert {o.name for o in evaluator_options(name)} <= shown


def test_custom_evaluator_example_declares_and_parses_its_options(monkeypatch):
    from promptbo.errors import InvalidArgumentError
    from promptbo.evaluators import base, create_evaluator
    from promptbo.types import Prompt

    text = DOCS.read_text()
    block = text.split("# my_package/scoring.py\n", 1)[1].split("```", 1)[0]
    calls = []

    class Client:
        def log_probs(self, text, words):
            return [-1.0] * len(words)

        def close(self):
            pass

    def connect(endpoint, workers):
        calls.append((endpoint, workers))
        return Client()

    monkeypatch.setitem(sys.modules, "my_lm", types.SimpleNamespace(connect=connect))
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    module = types.ModuleType("my_scoring_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(block, "my_package/scoring.py", "exec"), module.__dict__)
    with create_evaluator("my-scorer", endpoint="http://x", workers="2", k="2") as ev:
        assert calls == [("http://x", 2)] and len(ev.task.examples) == 4
        assert ev.score([Prompt(text="Rate it.")])[0].value == pytest.approx(-math.log(2))
    with pytest.raises(InvalidArgumentError, match="option workers must be at least 1"):
        create_evaluator("my-scorer", endpoint="http://x", workers="0")
    assert any(o.name == "endpoint" for o in evaluator_options("my-scorer"))
