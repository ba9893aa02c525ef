"""The soak benchmark in small: workers and a chaos loop killing the server and workers.

``benchmarks/soak.py`` runs the full size (64 workers, 10 minutes); this CI version runs a
few workers for ``PROMPTBO_SOAK_SECONDS`` (default 20) and checks the same things: no
acknowledged result lost, no error but UNAVAILABLE and lost leases, memory bounded.
"""

from __future__ import annotations

import os

import pytest

from benchmarks.soak import run_soak

SECONDS = float(os.environ.get("PROMPTBO_SOAK_SECONDS", "20"))


@pytest.mark.slow
def test_soak_under_chaos_loses_nothing(tmp_path):
    figures = run_soak(workers=3, seconds=SECONDS, workdir=tmp_path, chaos_seconds=2.0,
                       seed=1)
    assert figures["server_kills"] >= 1 and figures["worker_kills"] >= 1, figures
    assert figures["acknowledged"] > 0, figures
    assert figures["lost"] == 0, figures
    assert figures["conflicting_acks"] == 0, figures
    assert figures["integrity_problems"] == [], figures
    assert figures["unexpected_errors"] == 0, figures
    assert figures["rss_mb_max"] < 1536, figures
