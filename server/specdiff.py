"""Which fields of two study specs differ, for messages that say what to change.

:func:`spec_differences` compares two :class:`~promptbo.spec.StudySpec` field by
field and names each difference by its protobuf path (``max_trials``,
``hard.prompt_length``, ``strategy_options.num_initial``, ``labels.promptbo.setup/model``)
with both values, so an ALREADY_EXISTS error can say exactly what differs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from promptbo.spec import StudySpec

#: Fields of a hard space that depend on the uploaded vocabulary, which a client checking
#: its flags before loading a model does not know yet.
VOCABULARY_FIELDS = frozenset({"hard.vocabulary_id", "hard.top_n_scores"})


def _show(value: Any) -> str:
    if isinstance(value, tuple) and len(value) > 4:
        return f"<{len(value)} values>"
    if hasattr(value, "value") and hasattr(value, "name"):  # an enum
        return str(value.value)
    return repr(value)


def spec_differences(existing: StudySpec, wanted: StudySpec) -> list[str]:
    """``"path: A there, B here"`` for each field where ``existing`` and ``wanted`` differ
    (space fields prefixed ``hard.``/``soft.``/``pool.``; map fields per key), in field order."""
    out: list[str] = []

    def diff(path: str, a: Any, b: Any) -> None:
        if a != b:
            out.append(f"{path}: {_show(a)} there, {_show(b)} here")

    kind_a, kind_b = existing.space.kind, wanted.space.kind
    if kind_a != kind_b:
        diff("space", kind_a, kind_b)
    else:
        for f in dataclasses.fields(existing.space):
            diff(f"{kind_a}.{f.name}", getattr(existing.space, f.name),
                 getattr(wanted.space, f.name))
    for f in dataclasses.fields(StudySpec):
        if f.name == "space":
            continue
        a, b = getattr(existing, f.name), getattr(wanted, f.name)
        if isinstance(a, dict):
            for key in sorted(set(a) | set(b)):
                diff(f"{f.name}.{key}", a.get(key, ""), b.get(key, ""))
        else:
            diff(f.name, a, b)
    return out


def paths(differences: list[str]) -> set[str]:
    """The field paths of :func:`spec_differences`' lines."""
    return {d.split(":", 1)[0] for d in differences}
