"""When a prefetched suggestion may still be handed out, and how many to keep ready.

Each study's runtime versions the data its engine learns from with a
:class:`DataVersion`: ``epoch`` counts the changes after which every earlier suggestion is
obsolete (an ``AddTrials``), ``observed`` counts the observations queued for the engine
(tells and added trials). A batch of prefetched suggestions carries the version of the
data the engine had drained when it computed them.

The rule (:func:`still_valid`): a batch computed on version ``(e, n)`` may be handed out
at version ``(E, N)`` if and only if

- ``e == E``: no ``AddTrials`` arrived since (an added batch can reshape the model
  anywhere, whatever its size), and
- ``N - n <= max(MIN_TOLERATED, STALE_FRACTION * n)``: at most a few new results, two or
  5% of the data the model was fitted on, whichever is more.

A few single tells do not invalidate a suggestion: most of them were pending when it was
computed, and a pending-aware acquisition (qEI/qUCB with fantasies, as asynchronous BO
uses) already accounted for those points; a GP fitted on ``n`` points moves little with a
few more. A batch of tells beyond the bound (``CompleteTrials`` with many results, or many
workers telling while one refill runs) does invalidate it. Invalid suggestions are dropped,
never handed out; a refill whose data went stale while it computed is cancelled (the
engine polls ``should_stop``) or its result dropped, and a new one starts.

How many to keep ready adapts per study to measured times (:func:`adaptive_depth`, fed
by :class:`Pace`): none when suggestions are cheap relative to evaluations, up to
``--prefetch`` when workers are fast.

``UpdateStudy`` changes only budgets, the active-trial cap and labels, which no engine
sees, so it leaves the version alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: New observations a prefetched suggestion survives whatever the data's size.
MIN_TOLERATED = 2
#: Fraction of the observations it was computed on that may arrive before it is stale.
STALE_FRACTION = 0.05


@dataclass(frozen=True, order=True)
class DataVersion:
    """The version of a study's data: ``epoch`` (bumped by ``AddTrials``) and
    ``observed`` (observations queued for the engine, added ones included)."""

    epoch: int = 0
    observed: int = 0


def tolerated(computed: DataVersion) -> int:
    """New observations a suggestion computed on ``computed`` survives."""
    return max(MIN_TOLERATED, int(STALE_FRACTION * computed.observed))


def still_valid(computed: DataVersion, now: DataVersion) -> bool:
    """Whether a suggestion computed on data version ``computed`` may be handed out at
    version ``now`` (see the module doc)."""
    return computed.epoch == now.epoch and now.observed - computed.observed <= tolerated(computed)


# --- how deep to prefetch ---------------------------------------------------------------
#: Below this ratio of suggestion to evaluation time, suggestions are computed on demand:
#: an ask then costs its worker at most 5% of an evaluation.
CHEAP_RATIO = 0.05
#: Weight of the newest measurement in the running averages.
SMOOTHING = 0.3


def adaptive_depth(limit: int, suggest_s: float | None, eval_s: float | None,
                   workers: int) -> int:
    """Suggestions to keep ready for a study, at most ``limit`` (``--prefetch``).

    ``suggest_s``: seconds one batch of suggestions takes; ``eval_s``: seconds between
    handing out a trial and its result; ``workers``: trials the study has out. Before
    both are measured: ``limit``. When suggestions are cheap relative to evaluations
    (``suggest_s <= CHEAP_RATIO * eval_s``): none, as computing on demand costs the
    worker little and a prefetched suggestion only goes stale. Otherwise the asks that
    arrive while one batch is computed, ``ceil(workers * suggest_s / eval_s)``, clamped
    to ``[1, limit]``: deep when workers are fast.
    """
    if limit <= 0:
        return 0
    if suggest_s is None or eval_s is None:
        return limit
    if suggest_s <= CHEAP_RATIO * eval_s:
        return 0
    asks = max(1, workers) * suggest_s / max(eval_s, 1e-6)
    return max(1, min(limit, math.ceil(asks)))


class Pace:
    """A study's measured suggestion and evaluation times (running averages)."""

    def __init__(self) -> None:
        self.suggest_s: float | None = None
        self.eval_s: float | None = None

    @staticmethod
    def _mix(old: float | None, new: float) -> float:
        return new if old is None else (1 - SMOOTHING) * old + SMOOTHING * new

    def suggested(self, seconds: float) -> None:
        """Records one batch of suggestions computed in ``seconds``."""
        self.suggest_s = self._mix(self.suggest_s, max(0.0, seconds))

    def evaluated(self, seconds: float) -> None:
        """Records one trial's time from hand-out to result."""
        self.eval_s = self._mix(self.eval_s, max(0.0, seconds))

    def depth(self, limit: int, workers: int) -> int:
        """See :func:`adaptive_depth`."""
        return adaptive_depth(limit, self.suggest_s, self.eval_s, workers)
