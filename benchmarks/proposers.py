"""Ask/tell searches as the benchmarks run them, without a server.

A proposer is a promptbo engine (``suggest(n)`` → vocabulary rows `n x L`,
``observe(rows, values)``) or :class:`TPEProposer`, Optuna's TPE behind the same two
methods. :func:`optimize` runs one to a budget and records a :class:`Trace`, which it can
also resume (the trace is what the results JSON keeps under ``runs``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

OPTUNA_TPE = "optuna-tpe"


@dataclass
class Trace:
    """One (strategy, seed) run: evaluated vocabulary rows (`n x L`), their objective
    values and accuracies, and the time spent suggesting and scoring."""

    rows: list[list[int]] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    suggest_seconds: float = 0.0
    score_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, list) else v for k, v in self.__dict__.items()}


class TPEProposer:
    """Optuna's TPE as an ask/tell proposer over ``allowed`` vocabulary rows (one
    categorical distribution per position); it may repeat a prompt."""

    def __init__(self, allowed: Sequence[int], length: int, seed: int):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna
        choices = tuple(int(r) for r in allowed)
        self.dists = {f"t{i}": optuna.distributions.CategoricalDistribution(choices)
                      for i in range(length)}
        self.study = optuna.create_study(
            direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
        self._open: list[Any] = []

    def suggest(self, n: int) -> torch.Tensor:
        self._open = [self.study.ask(self.dists) for _ in range(n)]
        return torch.tensor([[t.params[k] for k in self.dists] for t in self._open])

    def observe(self, rows: torch.Tensor, values: torch.Tensor) -> None:
        if self._open:  # answers to the last suggest
            for t, v in zip(self._open, values.tolist(), strict=True):
                self.study.tell(t, v)
            self._open = []
            return
        for r, v in zip(rows.tolist(), values.tolist(), strict=True):  # replayed history
            params = {k: int(x) for k, x in zip(self.dists, r, strict=True)}
            self.study.add_trial(self.optuna.trial.create_trial(
                params=params, distributions=self.dists, value=float(v)))


def make_proposer(strategy: str, space, embeddings: np.ndarray, allowed: Sequence[int],
                  seed: int, options: dict[str, str] | None = None):
    """A promptbo engine (``make_engine``) or, for ``optuna-tpe``, a :class:`TPEProposer`."""
    if strategy == OPTUNA_TPE:
        return TPEProposer(allowed, space.prompt_length, seed)
    from promptbo.server.optim import make_engine

    return make_engine(space, strategy, options, seed=seed, embeddings=embeddings)


def optimize(proposer, budget: int, evaluate: Callable[[list[list[int]]], list[tuple]],
             trace: Trace | None = None, batch: int = 1,
             progress: Callable[[Trace], None] | None = None) -> Trace:
    """Runs suggest → ``evaluate(rows)`` → observe until ``budget`` evaluations.

    A partial ``trace`` (from an interrupted run) is replayed through ``observe`` first,
    as the server rebuilds an engine from stored trials.
    """
    trace = trace or Trace()
    if trace.rows:
        proposer.observe(torch.tensor(trace.rows, dtype=torch.long),
                         torch.tensor(trace.values, dtype=torch.float64))
    while len(trace.rows) < budget:
        n = min(batch, budget - len(trace.rows))
        start = time.perf_counter()
        rows = proposer.suggest(n)
        trace.suggest_seconds += time.perf_counter() - start
        start = time.perf_counter()
        scores = evaluate(rows.tolist())
        trace.score_seconds += time.perf_counter() - start
        values = torch.tensor([s[0] for s in scores], dtype=torch.float64)
        proposer.observe(rows, values)
        trace.rows += rows.tolist()
        trace.values += values.tolist()
        trace.accuracy += [s[1] for s in scores]
        if progress:
            progress(trace)
    return trace
