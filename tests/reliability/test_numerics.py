"""The GP surrogate survives any finite values, through a real server and a restart.

Values at the ends of float64 (``±1e308``), one huge outlier among ordinary values, and
constants must never make a ``gp``/``turbo`` suggestion fail: before and after the server
restarts and rebuilds the engine from storage.
"""

from __future__ import annotations

import pytest

import promptbo
from promptbo.server.app import ServerOptions, create_server

CASES = {
    "extremes": [1e308, -1e308] * 7,
    "outlier": [0.1 * i for i in range(13)] + [1e160],
    "tiny-outlier": [0.1 * i for i in range(13)] + [-1e300],
    "constant": [3.0] * 14,
    "mixed-scale": [1e-300, 1e300, 0.0, -5.0, 1e-10, 2.0, 7e250] * 2,
}


def _run(url: str, fn):
    server, port, _ = create_server(url, ServerOptions(port=0))
    try:
        with promptbo.Client(f"127.0.0.1:{port}", timeout=120) as c:
            return fn(c)
    finally:
        server.stop(None).wait()


@pytest.mark.parametrize("strategy", ["gp", "turbo"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_extreme_finite_values_never_break_a_suggestion(tmp_path, strategy, case):
    url = f"sqlite:///{tmp_path / 'n.db'}"
    options = {"num_initial": 4, "raw_samples": 16, "num_restarts": 1, "maxiter": 5,
               "mc_samples": 16, "full_maxiter": 20}

    def fill(c):
        study = c.create_study("s", promptbo.SoftPromptSpace(2, 2), strategy=strategy,
                               strategy_options=options)
        for v in CASES[case]:
            (t,) = study.ask()
            study.tell(t, v)
        return [t.id for t in study.ask(2)]

    def after_restart(c):
        return [t.id for t in c.get_study("s").ask(2, client_id="other")]

    assert len(_run(url, fill)) == 2
    assert len(_run(url, after_restart)) == 2
