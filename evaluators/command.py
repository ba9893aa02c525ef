"""``command``: scores prompts with an external program, JSON over stdin and stdout.

The program receives one JSON object on stdin::

    {"prompts": [{"token_ids": [..], "tokens": [..], "text": "..", "vector": [[..], ..],
                  "pool_index": null}, ..]}

(``vector`` is null for hard prompts; a soft prompt has empty ``token_ids``/``tokens``/``text``;
a pool prompt has its ``pool_index`` and ``text`` and empty ``token_ids``/``tokens``;
``examples``, present only in a fidelity study, lists the pool examples to score)
and must print one JSON object on stdout and exit with status 0::

    {"scores": [0.71, {"value": 0.64, "metrics": {"accuracy": 0.8}}, ..]}

(a score object may also give ``"stderr"``, the value's standard error over the examples,
and ``"examples"``, how many it averages)

one entry per prompt, in order. Options: :class:`CommandOptions`.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from promptbo.errors import FailedPreconditionError, InvalidArgumentError
from promptbo.evaluators.base import Evaluator, register_evaluator
from promptbo.evaluators.python import as_score
from promptbo.options import option
from promptbo.types import Prompt, Score

_TAIL = 2000


def prompts_to_json(prompts: Sequence[Prompt]) -> str:
    """The stdin document for ``prompts``."""
    return json.dumps({"prompts": [_prompt_doc(p) for p in prompts]})


def _prompt_doc(p: Prompt) -> dict:
    doc: dict = {
        "token_ids": [int(i) for i in p.token_ids],
        "tokens": list(p.tokens),
        "text": p.text,
        "vector": None if p.vector is None else [[float(x) for x in row] for row in p.vector],
        "pool_index": p.pool_index,
    }
    if p.examples is not None:
        doc["examples"] = [int(i) for i in p.examples]
    return doc


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _TAIL else "..." + text[-_TAIL:]


@dataclass(frozen=True, kw_only=True)
class CommandOptions:
    """The options of ``command``."""

    command: str | tuple[str, ...] = option(
        "text-or-list", help="the program and its arguments: a shell-style string split with "
        "`shlex`, or a list (from Python); run without a shell")
    timeout: float = option("float", 600, "seconds per run", minimum=0.001)
    cwd: str | None = option("str", None, "working directory of the program",
                             shown_default="the worker's")


@register_evaluator("command")
class CommandEvaluator(Evaluator):
    """Runs ``command`` once per batch; see the module docstring."""

    Options: ClassVar[type | None] = CommandOptions

    def __init__(self, options: CommandOptions):
        command = options.command
        argv = shlex.split(command) if isinstance(command, str) else list(command)
        if not argv:
            raise InvalidArgumentError("option command is empty")
        self.argv = argv
        self.timeout = options.timeout
        self.cwd = options.cwd

    def score(self, prompts: Sequence[Prompt]) -> list[Score]:
        if not prompts:
            return []
        name = shlex.join(self.argv)
        try:
            done = subprocess.run(
                self.argv, input=prompts_to_json(prompts), capture_output=True, text=True,
                timeout=self.timeout, cwd=self.cwd, check=False,
            )
        except FileNotFoundError:
            raise InvalidArgumentError(f"command {self.argv[0]!r} was not found") from None
        except subprocess.TimeoutExpired as exc:
            stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (
                exc.stderr or "")
            raise FailedPreconditionError(
                f"command {name!r} did not finish within {self.timeout:g} s; stderr: "
                f"{_tail(stderr) or '(empty)'}"
            ) from None
        if done.returncode != 0:
            raise FailedPreconditionError(
                f"command {name!r} exited with status {done.returncode}; stderr: "
                f"{_tail(done.stderr) or '(empty)'}"
            )
        try:
            scores = json.loads(done.stdout)["scores"]
            if not isinstance(scores, list):
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError):
            raise FailedPreconditionError(
                f"command {name!r} must print {{\"scores\": [...]}} as JSON; it printed "
                f"{_tail(done.stdout)!r}; stderr: {_tail(done.stderr) or '(empty)'}"
            ) from None
        if len(scores) != len(prompts):
            raise FailedPreconditionError(
                f"command {name!r} returned {len(scores)} scores for {len(prompts)} prompts"
            )
        try:
            return [as_score(s, f"score #{i} of command {name!r}") for i, s in enumerate(scores)]
        except InvalidArgumentError as exc:
            raise FailedPreconditionError(str(exc)) from None
