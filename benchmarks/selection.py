"""The final pick of a search: the best prompt on dev among its best few on the objective.

A search's trace lists the prompts it evaluated in order with their objective values. At a
budget ``b``, only its first ``b`` evaluations count; a prompt evaluated twice counts once,
with the value of its first evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from benchmarks.scoring import Key, ScoreCache


def ranked_prompts(prompts: Sequence[Key], values: Sequence[float],
                   budget: int) -> list[tuple[Key, float]]:
    """The distinct prompts among the first ``budget`` evaluated, with the objective value
    of their first evaluation, best first (ties: the earlier one)."""
    best: dict[Key, float] = {}
    for p, v in zip(prompts[:budget], values[:budget], strict=True):
        best.setdefault(tuple(p), float(v))
    return sorted(best.items(), key=lambda kv: -kv[1])


def select_prompt(prompts: Sequence[Key], values: Sequence[float], budget: int,
                  dev_values: Callable[[list[Key]], list[float]],
                  top_k: int = 3) -> dict[str, Any]:
    """Picks the final prompt after ``budget`` evaluations.

    The distinct prompts among the first ``budget`` evaluated are ranked by objective value
    (ties: the earlier one); the ``top_k`` best are scored on dev with ``dev_values`` and
    the best on dev wins (ties: the better objective). Returns ``prompt``, ``objective``,
    ``dev`` and the ``candidates`` with their objective and dev values.
    """
    best = dict(ranked_prompts(prompts, values, budget))
    ranked = list(best)[:top_k]
    dev = dev_values(ranked)
    win = max(range(len(ranked)), key=lambda i: (dev[i], -i))
    return {
        "prompt": list(ranked[win]),
        "objective": best[ranked[win]],
        "dev": float(dev[win]),
        "candidates": [{"prompt": list(p), "objective": best[p], "dev": float(d)}
                       for p, d in zip(ranked, dev, strict=True)],
    }


def select_and_test(cache: ScoreCache, seed: int, prompts: Sequence[Key],
                    values: Sequence[float], budget: int, top_k: int = 3) -> dict[str, Any]:
    """:func:`select_prompt` with dev scores from ``cache``, then the pick scored on test.

    Returns the selection plus ``seed``, ``budget``, the pick's ``text`` and its
    ``test_value`` and ``test_accuracy`` (test is read only for the report, never to pick).
    """
    sel = select_prompt(prompts, values, budget,
                        lambda ps: [v for v, _ in cache.score("dev", seed, ps)], top_k=top_k)
    pick = tuple(sel["prompt"])
    (test_value, test_acc), = cache.score("test", seed, [pick])
    sel.update(seed=seed, budget=budget, text=cache.prompt(pick).text,
               test_value=test_value, test_accuracy=test_acc)
    return sel
