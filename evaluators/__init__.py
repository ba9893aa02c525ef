"""Evaluators: score prompts with a language model, an API, a function or a program.

Every evaluator implements :class:`Evaluator` (``score(prompts) -> list[Score]``) and is
registered under a name; build one with ``create_evaluator(name, **options)``:

==============  ======================================================================
``hf-causal``   transformers causal LM, label words as next tokens (``promptbo[hf]``)
``hf-mlm``      transformers masked LM, label words at the mask (``promptbo[hf]``)
``openai``      an OpenAI-compatible HTTP API (``promptbo[openai]``)
``python``      a Python function ``module:callable``
``command``     an external program speaking JSON on stdin/stdout
==============  ======================================================================

Each evaluator declares its options once (``Evaluator.Options``, a frozen dataclass; the
task options are :class:`TaskOptions`); ``promptbo worker --help`` lists them. Heavy
dependencies (torch, transformers, httpx) are imported only when an evaluator that
needs them is built. Other packages add evaluators through the ``promptbo.evaluators``
entry-point group.
"""

from promptbo.evaluators import command, hf_causal, hf_mlm, openai, python  # noqa: F401
from promptbo.evaluators.base import (
    Evaluator,
    create_evaluator,
    evaluator_names,
    evaluator_options,
    get_evaluator,
    register_evaluator,
)
from promptbo.evaluators.data import Example
from promptbo.evaluators.task import Task, TaskOptions, Template, load_task

__all__ = [
    "Evaluator",
    "Example",
    "Task",
    "TaskOptions",
    "Template",
    "create_evaluator",
    "evaluator_names",
    "evaluator_options",
    "get_evaluator",
    "load_task",
    "register_evaluator",
]
