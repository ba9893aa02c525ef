"""An expensive-looking engine for suggestion pool tests, importable by worker processes.

:func:`slow_engine` is a ``make_engine``-compatible factory: random soft prompts that take
``delay`` seconds (a strategy option) to compute, polling ``should_stop`` every 10 ms.
Worker processes unpickle the factory by reference, so it lives in a module of its own
(on the path pytest gives the tests, which spawned workers inherit).
"""

from __future__ import annotations

import time

import torch

from promptbo.server.optim.baselines import RandomEngine


class SlowEngine(RandomEngine):
    """Random suggestions that take ``delay`` seconds and stop when asked to."""

    cheap = False

    def __init__(self, *args, delay: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.delay = delay

    def suggest(self, n: int, pending: torch.Tensor | None = None) -> torch.Tensor:
        deadline = time.monotonic() + self.delay
        while time.monotonic() < deadline:
            self.check_stop()
            time.sleep(0.01)
        return super().suggest(n, pending)


def slow_engine(space, strategy="slow", options=None, seed=0, embeddings=None) -> SlowEngine:
    opts = dict(options or {})
    delay = float(opts.pop("delay", "0"))
    return SlowEngine(space=space, options=opts, seed=seed, embeddings=embeddings, delay=delay)
