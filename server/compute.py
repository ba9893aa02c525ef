"""How many CPU cores suggestion compute may use, and how it shares them.

Engine computations (GP fits, acquisition optimization) are CPU-bound torch code. Run
side by side with torch's default thread count, each one starts a thread per core and
they oversubscribe the machine: every suggestion gets slower than if they had run one
after another. A server therefore bounds them twice:

- :class:`ComputeSlots`: at most ``workers`` engine computations run at once, foreground
  suggestions and background prefetch alike (the others wait for a slot);
- :func:`configure_torch_threads`: torch's intra-op threads are set so that
  ``workers x threads <= cores``.

``workers`` defaults to the cores this process may run on (its CPU affinity mask), so by
default every computation runs on one torch thread and as many run at once as there are
cores.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager


def available_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def suggest_workers(requested: int = 0) -> int:
    """Concurrent engine computations: ``requested``, or the available cores if 0."""
    if requested < 0:
        raise ValueError(f"suggest workers must be >= 0 (0: one per core), got {requested}")
    return requested or available_cores()


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Torch threads per computation so that ``workers x threads <= cores`` (at least 1)."""
    return max(1, (cores or available_cores()) // max(1, workers))


def configure_torch_threads(workers: int) -> int:
    """Sets torch's intra-op thread count (process-wide) for ``workers`` concurrent
    computations; returns it."""
    import torch

    threads = threads_per_worker(workers)
    torch.set_num_threads(threads)
    return threads


class ComputeSlots:
    """At most ``size`` engine computations at once (a counting semaphore).

    Lock order: taken after a runtime's ``engine_lock`` and before its ``inbox_lock``.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"compute slots must be >= 1, got {size}")
        self.size = size
        self._sem = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._busy = 0

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Holds one slot for a ``with`` block, waiting for one to free up."""
        with self._sem:
            with self._lock:
                self._busy += 1
            try:
                yield
            finally:
                with self._lock:
                    self._busy -= 1

    @property
    def busy(self) -> int:
        """Slots held now."""
        return self._busy
