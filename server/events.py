"""Study progress events: what WatchStudy streams, and the hub that fans them out.

The manager publishes an :class:`Event` after each change it made to a study (a trial
handed out, completed or failed, the study done); :class:`EventHub` passes it to every
callback subscribed to that study, on the publishing thread. The gRPC layers turn the
callbacks into streams: :func:`follow` for a thread, an asyncio queue in
:mod:`~promptbo.server.async_servicer`.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from promptbo.server.domain import Study, Trial, TrialState


@dataclass(frozen=True)
class Event:
    """A study progress event for WatchStudy: ``kind`` is snapshot (the state when the
    watch began), suggested, completed, failed or done; ``trial`` is the trial concerned
    (None for snapshot and done); ``counts`` and ``best`` are the study's trial counts per
    state and best trial right after the event."""

    kind: str
    study: Study
    trial: Trial | None = None
    counts: dict[TrialState, int] | None = None
    best: Trial | None = None


#: Receives each event of a study; None once the study is deleted. Must not block.
Callback = Callable[[Event | None], None]


class EventHub:
    """The subscribers of each study. Thread-safe; a study nobody watches takes no memory."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._watchers: dict[str, list[Callback]] = {}

    def __len__(self) -> int:
        """The number of studies with at least one subscriber."""
        with self._guard:
            return len(self._watchers)

    def subscribe(self, name: str, callback: Callback) -> Callable[[], None]:
        """Registers ``callback`` for study ``name``; returns the function that removes it."""
        with self._guard:
            self._watchers.setdefault(name, []).append(callback)

        def unsubscribe() -> None:
            with self._guard:
                callbacks = self._watchers.get(name, [])
                if callback in callbacks:
                    callbacks.remove(callback)
                if not callbacks:
                    self._watchers.pop(name, None)

        return unsubscribe

    def names(self) -> list[str]:
        """The studies with at least one subscriber."""
        with self._guard:
            return list(self._watchers)

    def publish(self, name: str, make_event: Callable[[], Event | None]) -> None:
        """Passes the event ``make_event`` builds to the study's subscribers; it is built
        only when there are some (None from it: nothing to publish)."""
        with self._guard:
            callbacks = list(self._watchers.get(name, ()))
        if not callbacks:
            return
        event = make_event()
        if event is None:
            return
        for callback in callbacks:
            callback(event)

    def close(self, name: str) -> None:
        """Tells the study's subscribers it was deleted (None) and forgets them."""
        with self._guard:
            callbacks = self._watchers.pop(name, [])
        for callback in callbacks:
            callback(None)


def follow(
    subscribe: Callable[[Callback], tuple[Event, Callable[[], None]]],
    stop: threading.Event | None = None,
) -> Iterator[Event]:
    """Yields the events ``subscribe`` delivers until a ``done`` event, the study's
    deletion, or ``stop`` (checked twice a second). The state ``subscribe`` returns is
    yielded only when it is ``done`` (the study is complete: nothing more will come)."""
    q: queue.Queue[Event | None] = queue.Queue()
    first, unsubscribe = subscribe(q.put)
    try:
        if first.kind == "done":
            yield first
            return
        while stop is None or not stop.is_set():
            try:
                item = q.get(timeout=0.5)
            except queue.Empty:
                continue
            if item is None:
                return
            yield item
            if item.kind == "done":
                return
    finally:
        unsubscribe()
