"""The telemetry hooks (server/telemetry.py): no-ops without observers, fits labelled by
the strategy the runtime names, observers that fail never fail the engine, removal."""

from __future__ import annotations

import numpy as np
import torch

from promptbo.server import telemetry
from promptbo.server.domain import PoolSpace
from promptbo.server.optim import make_engine


class Recorder:
    def __init__(self) -> None:
        self.fits: list[tuple[str, float]] = []
        self.suggestions: list[tuple[str, float]] = []
        self.leases: list[tuple[str, int]] = []

    def observe_suggestion(self, strategy: str, seconds: float) -> None:
        self.suggestions.append((strategy, seconds))

    def observe_fit(self, strategy: str, seconds: float) -> None:
        self.fits.append((strategy, seconds))

    def lease_expired(self, study: str, count: int) -> None:
        self.leases.append((study, count))


class Broken(Recorder):
    def observe_fit(self, strategy: str, seconds: float) -> None:
        raise RuntimeError("observer bug")


def pool_gp():
    table = np.random.default_rng(0).standard_normal((30, 6)).astype(np.float32)
    eng = make_engine(PoolSpace("p"), "gp", {"num_initial": "3"}, 0, table)
    x = eng.suggest(3)
    eng.observe(x, torch.tensor([0.1, 0.5, 0.3], dtype=torch.float64))
    return eng


def test_hooks_are_no_ops_without_observers(monkeypatch):
    monkeypatch.setattr(telemetry, "_observers", [])
    assert not telemetry.enabled()
    with telemetry.fit_timer():
        pass
    telemetry.observe_suggestion("gp", 1.0)
    telemetry.lease_expired("s", 2)


def test_fits_are_labelled_by_the_strategy_around_them_and_broken_observers_are_ignored():
    eng = pool_gp()
    rec, broken = Recorder(), Broken()
    telemetry.add_observer(broken)
    telemetry.add_observer(rec)
    try:
        with telemetry.strategy_context("gp"):
            eng.suggest(1)
        eng.suggest(1)  # outside any strategy context
        telemetry.lease_expired("s", 0)  # nothing lapsed: not reported
        telemetry.lease_expired("s", 2)
    finally:
        telemetry.remove_observer(rec)
        telemetry.remove_observer(broken)
    assert [s for s, _ in rec.fits] == ["gp", "unknown"]
    assert all(sec >= 0 for _, sec in rec.fits)
    assert rec.leases == [("s", 2)]
    eng.suggest(1)
    assert len(rec.fits) == 2  # removed observers hear nothing more
    telemetry.remove_observer(rec)  # removing twice is harmless
