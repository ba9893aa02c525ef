"""Picking a study's final prompt: re-score its best trials on examples the search never saw.

A study's best trial is the prompt that scored best on the few examples the optimizer saw,
and part of its lead is fitted to those examples (the held-out check in
``docs/benchmarks.md`` measures how much, per strategy). :func:`rescore` scores the study's
``top`` best distinct prompts with a second evaluator, typically on the ``dev`` split, and
ranks them by that score: the first is the prompt to ship. ``promptbo select`` runs it from
the command line.

Only numpy and the client are needed here; the evaluator is anything with
``score(prompts) -> list[Score]`` (a :class:`promptbo.evaluators.base.Evaluator`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from promptbo.client import Study, Trial
from promptbo.errors import InvalidArgumentError
from promptbo.types import Prompt, Score
from promptbo.v1 import resources_pb2 as pb


class Scorer(Protocol):
    def score(self, prompts: Sequence[Prompt]) -> list[Score]: ...


@dataclass(frozen=True)
class Rescored:
    """One re-scored prompt: the study's ``trial`` (None for the unprompted reference)
    and the second evaluator's ``score`` of its prompt."""

    trial: Trial | None
    prompt: Prompt
    score: Score

    @property
    def objective(self) -> float | None:
        """The trial's value in the study (what the search saw)."""
        return None if self.trial is None else self.trial.value


def _key(prompt: Prompt) -> bytes | tuple:
    if prompt.pool_index is not None:
        return ("pool", prompt.pool_index)
    return prompt.vector.tobytes() if prompt.vector is not None else tuple(prompt.token_ids)


def top_trials(trials: Iterable[Trial], n: int, minimize: bool = False) -> list[Trial]:
    """The ``n`` best completed trials with distinct prompts, best first.

    A prompt told more than once counts with its first (lowest-id) trial; ties in value go
    to the lower id. The unprompted reference (source ``reference``) is no candidate.
    """
    first: dict[bytes | tuple, tuple[Trial, float]] = {}
    for t in sorted(trials, key=lambda t: t.id):
        if t.value is not None and t.source != "reference":
            first.setdefault(_key(t.prompt), (t, t.value))
    sign = 1.0 if minimize else -1.0
    ranked = sorted(first.values(), key=lambda tv: (sign * tv[1], tv[0].id))
    return [t for t, _ in ranked[:n]]


def candidates(study: Study, top: int) -> list[Trial]:
    """The study's ``top`` best completed trials with distinct prompts, best first in the
    study's direction (what :func:`rescore` scores; cheap, so check it before loading a
    model).

    Raises:
        InvalidArgumentError: ``top`` below 1, or the study has no completed trial.
    """
    if top < 1:
        raise InvalidArgumentError(f"top must be at least 1, got {top}")
    best = top_trials(study.trials(state="completed"), top, _minimizes(study))
    if not best:
        raise InvalidArgumentError(f"study {study.name!r} has no completed trial to re-score")
    return best


def rescore(study: Study, scorer: Scorer, top: int = 5, unprompted: bool = False,
            trials: Sequence[Trial] | None = None) -> list[Rescored]:
    """Scores the study's ``top`` best distinct prompts (or the given ``trials``, e.g. from
    :func:`candidates`) with ``scorer`` in one batch and returns them ranked by that score,
    best first, in the study's direction; ties keep the study's order. ``unprompted`` adds
    the empty prompt as a reference row.

    Raises:
        InvalidArgumentError: see :func:`candidates`; or the scorer returned a wrong count.
    """
    best = list(trials) if trials is not None else candidates(study, top)
    # A trial's pool examples (fidelity) index the study's pool, not this split: dropped.
    rows: list[tuple[Trial | None, Prompt]] = [(t, replace(t.prompt, examples=None))
                                               for t in best]
    if unprompted:
        rows.append((None, Prompt()))
    scores = scorer.score([p for _, p in rows])
    if len(scores) != len(rows):
        raise InvalidArgumentError(
            f"the evaluator returned {len(scores)} scores for {len(rows)} prompts")
    sign = 1.0 if _minimizes(study) else -1.0
    order = sorted(range(len(rows)), key=lambda i: (sign * scores[i].value, i))
    return [Rescored(rows[i][0], rows[i][1], scores[i]) for i in order]


def _minimizes(study: Study) -> bool:
    return study.info.spec.goal == pb.GOAL_MINIMIZE
