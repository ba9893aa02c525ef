"""When a prefetched suggestion may still be handed out.

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

``UpdateStudy`` changes only budgets, the active-trial cap and labels, which no engine
sees, so it leaves the version alone.
"""

from __future__ import annotations

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
