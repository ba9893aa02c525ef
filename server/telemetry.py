"""Dependency-free hooks that report what the server's engines and manager spend time on.

The engines and the study manager call these hooks; they import nothing else and cost one
check of an empty list unless an observer is registered. The HTTP side
(:class:`promptbo.server.http.Metrics`) registers one that feeds Prometheus. Hooks:

- :func:`observe_suggestion`: seconds an engine spent computing one batch of suggestions
  (foreground or background prefetch), by strategy;
- :func:`observe_fit` (and the :func:`fit_timer` context manager, and :func:`fit_done` for
  a fit a suggestion pool's worker ran): seconds spent fitting one GP surrogate, by
  strategy;
- :func:`lease_expired`: trials of a study whose lease lapsed and were handed out again.

The strategy of a fit is the one of the suggestion that runs it: the study runtime sets it
with :func:`strategy_context` around the engine's calls, so engines need not know their
strategy's name. Observers are process-wide: several servers in one process each see every
observation.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Iterator
from typing import Protocol

log = logging.getLogger(__name__)


class Observer(Protocol):
    def observe_suggestion(self, strategy: str, seconds: float) -> None: ...

    def observe_fit(self, strategy: str, seconds: float) -> None: ...

    def lease_expired(self, study: str, count: int) -> None: ...


_observers: list[Observer] = []
_strategy: contextvars.ContextVar[str] = contextvars.ContextVar(
    "promptbo_strategy", default="unknown"
)


def add_observer(observer: Observer) -> None:
    """Registers ``observer``; it gets every later observation until removed."""
    _observers.append(observer)


def remove_observer(observer: Observer) -> None:
    """Unregisters ``observer`` (no-op if it is not registered)."""
    with contextlib.suppress(ValueError):
        _observers.remove(observer)


def enabled() -> bool:
    return bool(_observers)


def _each(method: str, *args: object) -> None:
    for obs in list(_observers):
        try:
            getattr(obs, method)(*args)
        except Exception:  # an observer must never fail a suggestion
            log.exception("telemetry observer %r failed", obs)


def observe_suggestion(strategy: str, seconds: float) -> None:
    if _observers:
        _each("observe_suggestion", strategy, seconds)


def observe_fit(strategy: str, seconds: float) -> None:
    if _observers:
        _each("observe_fit", strategy, seconds)


def lease_expired(study: str, count: int = 1) -> None:
    if _observers and count > 0:
        _each("lease_expired", study, count)


def fit_done(seconds: float) -> None:
    """Reports one GP fit of the current strategy that took ``seconds`` elsewhere (in a
    suggestion pool's worker)."""
    if _observers:
        observe_fit(_strategy.get(), seconds)


@contextlib.contextmanager
def strategy_context(strategy: str) -> Iterator[None]:
    """Names the strategy that fits inside this block are reported under."""
    token = _strategy.set(strategy)
    try:
        yield
    finally:
        _strategy.reset(token)


@contextlib.contextmanager
def fit_timer() -> Iterator[None]:
    """Reports the block's duration as one GP fit of the current strategy (also when it
    raises)."""
    if not _observers:
        yield
        return
    t0 = time.perf_counter()
    try:
        yield
    finally:
        observe_fit(_strategy.get(), time.perf_counter() - t0)
