"""Fidelity: which pool examples each trial is scored on, and the scored-example budget.

A study with ``pool_size = N`` has a labeled pool of ``N`` examples that every evaluator of
the study indexes alike (``0..N-1``). For each new trial the server picks a subset: the
strategy asks for a number of examples (multi-fidelity strategies per suggestion, the
others take ``examples_per_trial``, 0 meaning the whole pool), and :class:`ExampleLedger`
draws that many indices, uniformly at random and *fresh for the prompt*: examples this
prompt was not scored on before come first, so re-scoring a prompt adds new evidence
instead of repeating the old. The draw is seeded by ``(study seed, trial number)``, so a
study replays identically.

Budget: a completed trial charges ``len(examples)``; an active one reserves it; a failed
one frees it. A new trial gets at most ``max_examples - charged - reserved`` examples, so
the completed trials of a study end at exactly ``max_examples`` scored examples (the last
trial is cut to fit), and the study completes when they reach it.

Pure Python and NumPy: no gRPC, no storage; the study manager owns one ledger per study.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

import numpy as np

from promptbo.server.domain import StudySpec, Trial, TrialState


def _seed(*parts: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]))


class ExampleLedger:
    """The examples a study has handed out, charged and reserved.

    Args:
        spec: the study's spec (``pool_size`` > 0 enables the ledger).
        trials: the study's stored trials (any order), to rebuild the ledger after a restart.
    """

    def __init__(self, spec: StudySpec, trials: Iterable[Trial] = ()) -> None:
        self.spec = spec
        self.charged = 0
        self.reserved = 0
        self.created = 0
        self._used: dict[Hashable, set[int]] = {}
        for t in trials:
            self.created += 1
            self._record(t)
            self._account(t, +1)

    @property
    def enabled(self) -> bool:
        return self.spec.pool_size > 0

    @property
    def remaining(self) -> int | None:
        """Examples the budget still allows to hand out (None: no budget)."""
        if not self.spec.max_examples:
            return None
        return max(0, self.spec.max_examples - self.charged - self.reserved)

    @property
    def exhausted(self) -> bool:
        """Whether the completed trials used the whole scored-example budget."""
        return bool(self.spec.max_examples) and self.charged >= self.spec.max_examples

    def default_count(self) -> int:
        return self.spec.examples_per_trial or self.spec.pool_size

    def allot(self, key: Hashable, requested: int | None) -> tuple[int, ...]:
        """The examples of the next trial of the prompt ``key`` (``requested`` of them, or
        the study's default; cut to the pool and the budget); empty when the budget
        allows none. Reserves them: pass the resulting trial to :meth:`created_trial`."""
        n = min(requested or self.default_count(), self.spec.pool_size)
        left = self.remaining
        if left is not None:
            n = min(n, left)
        if n <= 0:
            return ()
        rng = _seed(self.spec.seed, 0xF1DE, self.created)
        used = self._used.get(key, set())
        pool = np.arange(self.spec.pool_size)
        fresh = pool[~np.isin(pool, list(used))] if used else pool
        take = rng.choice(fresh, size=min(n, len(fresh)), replace=False)
        if len(take) < n:  # every example was scored once: repeat old ones
            old = np.array(sorted(used))
            take = np.concatenate([take, rng.choice(old, size=n - len(take), replace=False)])
        return tuple(int(i) for i in np.sort(take))

    def created_trial(self, key: Hashable, trial: Trial) -> None:
        """A new trial with ``trial.examples`` was stored."""
        self.created += 1
        self._record(trial, key)
        self._account(trial, +1)

    def finished(self, before: Trial, after: Trial) -> None:
        """An ACTIVE trial (``before``) completed or failed (``after``)."""
        self._account(before, -1)
        self._account(after, +1)

    def added(self, trial: Trial) -> None:
        """A trial was stored without being handed out (AddTrials)."""
        self.created += 1
        self._record(trial)
        self._account(trial, +1)

    def _record(self, t: Trial, key: Hashable | None = None) -> None:
        if t.examples:
            self._used.setdefault(key if key is not None else t.prompt.key(), set()).update(
                t.examples
            )

    def _account(self, t: Trial, sign: int) -> None:
        n = len(t.examples)
        if t.source == "reference" or not n:
            return
        if t.state is TrialState.COMPLETED:
            self.charged += sign * n
        elif t.state is TrialState.ACTIVE:
            self.reserved += sign * n


def pooled(trials: Sequence[Trial], values: Sequence[float]) -> tuple[float, float, int]:
    """The mean of a prompt's objective over all the examples of its ``trials`` (each
    trial's ``values[i]`` weighted by its examples), its standard error, and the number
    of examples. Trials without a told count weigh 1; without a told standard error they
    add no variance (the error is then a lower bound, 0 when none was told)."""
    weights = np.array([max(t.examples_scored or len(t.examples), 1) for t in trials], float)
    v = np.asarray(values, dtype=float)
    total = float(weights.sum())
    mean = float((weights * v).sum() / total)
    se = np.array([t.value_stderr or 0.0 for t in trials], float)
    stderr = float(np.sqrt(((weights * se) ** 2).sum()) / total)
    return mean, stderr, int(total)
