"""The python and command evaluators."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest

from promptbo.errors import FailedPreconditionError, InvalidArgumentError
from promptbo.evaluators import create_evaluator
from promptbo.evaluators.command import prompts_to_json
from promptbo.types import Prompt, Score

PROMPTS = [Prompt(token_ids=(5, 6), tokens=("a", " b"), text="a b"),
           Prompt(token_ids=(7,), tokens=("cc",), text="cc")]
SOFT = Prompt(vector=np.array([[0.5, -1.0], [2.0, 0.0]], dtype=np.float32))


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "user_scoring.py").write_text(textwrap.dedent("""
        from promptbo.types import Score

        def by_length(prompts, scale=1):
            return [len(p.text) * float(scale) for p in prompts]

        def rich(prompts):
            return [Score(1.0, {"accuracy": 0.5}), {"value": 2, "metrics": {"n": 3}}]

        def wrong_count(prompts):
            return [1.0]

        def not_a_number(prompts):
            return ["high" for _ in prompts]

        class Holder:
            @staticmethod
            def score(prompts):
                return [0.0 for _ in prompts]

        constant = 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_python_function_gets_prompts_and_options(user_module):
    ev = create_evaluator("python", function="user_scoring:by_length", scale="2")
    assert ev.score(PROMPTS) == [Score(6.0), Score(4.0)]
    rich = create_evaluator("python", function="user_scoring:rich").score(PROMPTS)
    assert rich == [Score(1.0, {"accuracy": 0.5}), Score(2.0, {"n": 3.0})]
    nested = create_evaluator("python", function="user_scoring:Holder.score")
    assert nested.score(PROMPTS) == [Score(0.0), Score(0.0)]


def test_python_function_from_a_file(user_module):
    ev = create_evaluator("python", function=f"{user_module / 'user_scoring.py'}:by_length")
    assert ev.score(PROMPTS[:1]) == [Score(3.0)]


@pytest.mark.parametrize("spec, message", [
    ("user_scoring", "must look like"),
    ("no_such_module_xyz:f", "cannot import 'no_such_module_xyz'"),
    ("user_scoring:missing", "has no attribute 'missing'"),
    ("user_scoring:constant", "is not callable"),
    ("/no/such/file.py:f", "no file"),
])
def test_python_spec_errors(user_module, spec, message):
    with pytest.raises(InvalidArgumentError, match=message):
        create_evaluator("python", function=spec)


def test_python_result_errors(user_module):
    with pytest.raises(InvalidArgumentError, match="returned 1 scores for 2 prompts"):
        create_evaluator("python", function="user_scoring:wrong_count").score(PROMPTS)
    with pytest.raises(InvalidArgumentError, match="score #0 is 'high'"):
        create_evaluator("python", function="user_scoring:not_a_number").score(PROMPTS)


def test_prompts_json_document():
    pool = Prompt(text="Judge the review.", pool_index=3)
    doc = json.loads(prompts_to_json([PROMPTS[0], SOFT, pool]))
    assert doc["prompts"][0] == {"token_ids": [5, 6], "tokens": ["a", " b"], "text": "a b",
                                 "vector": None, "pool_index": None}
    assert doc["prompts"][1] == {"token_ids": [], "tokens": [], "text": "",
                                 "vector": [[0.5, -1.0], [2.0, 0.0]], "pool_index": None}
    assert doc["prompts"][2] == {"token_ids": [], "tokens": [], "text": "Judge the review.",
                                 "vector": None, "pool_index": 3}


def _script(tmp_path, body: str) -> list[str]:
    path = tmp_path / "scorer.py"
    path.write_text("import json, sys\n" + textwrap.dedent(body))
    return [sys.executable, str(path)]


def test_command_round_trip(tmp_path):
    argv = _script(tmp_path, """
        doc = json.load(sys.stdin)
        out = []
        for p in doc["prompts"]:
            if p["vector"] is not None:
                out.append({"value": sum(map(sum, p["vector"])), "metrics": {"soft": 1}})
            else:
                out.append(len(p["token_ids"]))
        print(json.dumps({"scores": out}))
    """)
    ev = create_evaluator("command", command=argv, timeout="30")
    assert ev.score([PROMPTS[0], SOFT]) == [Score(2.0), Score(1.5, {"soft": 1.0})]
    as_string = create_evaluator("command", command=f"'{argv[0]}' '{argv[1]}'")
    assert as_string.score(PROMPTS[1:]) == [Score(1.0)]
    assert ev.score([]) == []


def test_command_failure_reports_stderr_tail(tmp_path):
    argv = _script(tmp_path, """
        sys.stderr.write("loading model...\\nValueError: the scorer broke\\n")
        sys.exit(3)
    """)
    with pytest.raises(FailedPreconditionError, match="(?s)exited with status 3.*the scorer broke"):
        create_evaluator("command", command=argv).score(PROMPTS)


@pytest.mark.parametrize("body, message", [
    ("print('not json')", "must print .*scores.*not json"),
    ("print(json.dumps({'values': []}))", "must print"),
    ("print(json.dumps({'scores': [1]}))", "returned 1 scores for 2 prompts"),
    ("print(json.dumps({'scores': [1, 'x']}))", "score #1 of command"),
    ("print(json.dumps({'scores': [1, float('nan')]}))", "not a finite number"),
])
def test_command_bad_output(tmp_path, body, message):
    with pytest.raises(FailedPreconditionError, match=message):
        create_evaluator("command", command=_script(tmp_path, body)).score(PROMPTS)


def test_command_timeout_and_missing_program(tmp_path):
    argv = _script(tmp_path, "import time\nsys.stderr.write('working'); sys.stderr.flush()\n"
                             "time.sleep(30)\n")
    with pytest.raises(FailedPreconditionError, match="did not finish within 0.5 s"):
        create_evaluator("command", command=argv, timeout=0.5).score(PROMPTS)
    with pytest.raises(InvalidArgumentError, match="was not found"):
        create_evaluator("command", command="promptbo-no-such-program-xyz").score(PROMPTS)
    with pytest.raises(InvalidArgumentError, match="command is empty"):
        create_evaluator("command", command="  ")
