"""The many-studies benchmark end to end in its quick mode: a real ``promptbo serve`` per
row, real workers, the server's CPU read from the OS; the table and the JSON must carry
every figure with sane values. The run is bounded in time and, if it overruns, killed with
the server it started (one process group)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.many_studies import (
    COLUMNS,
    Config,
    _proc_tree_cpu_seconds,
    parse_configs,
    tree_cpu_seconds,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_run_reports_every_figure(tmp_path):
    out = tmp_path / "many"
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.many_studies", "--quick", "--out", str(out),
         "--server-args", "--prefetch 2"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        pytest.fail("the quick run took over 150 s:\n" + stderr[-2000:])
    assert proc.returncode == 0, stderr[-3000:]
    assert "engine in-process, n=20" in stderr  # progress goes to stderr

    data = json.loads(out.with_suffix(".json").read_text())
    assert data["configs"] == [{"name": "default", "args": ["--prefetch", "2"]}]
    cost = data["engine"]["20"]
    assert cost["repeats"] == 3 and 0 < cost["median_s"] < 30 and 0 < cost["mean_s"] < 30
    rows = data["rows"]
    assert [(r["config"], r["K"], r["n"]) for r in rows] == [("default", 1, 20),
                                                             ("default", 2, 20)]
    for r in rows:
        assert r["errors"] == 0, r["first_error"]
        assert r["suggestions"] >= 1 and r["window_s"] >= 3
        assert math.isclose(r["suggestions_per_s"], r["suggestions"] / r["window_s"])
        assert 0 < r["ask_p50_ms"] <= r["ask_p90_ms"] < 60_000
        # The server computed the suggestions it served: CPU was spent, in its own tree.
        assert r["server_processes"] >= 1 and r["server_cpu_s"] > 0
        assert math.isclose(r["server_cpu_per_suggestion_s"],
                            r["server_cpu_s"] / r["suggestions"])
        assert r["engine_cost_s"] == cost["mean_s"]
        assert math.isclose(r["ratio"], r["server_cpu_per_suggestion_s"] / cost["mean_s"])
        assert math.isclose(r["target_per_s"], 0.75 * data["cores"] / cost["mean_s"])

    table = out.with_suffix(".md").read_text()
    assert "| " + " | ".join(COLUMNS) + " |" in table
    assert table.count("| default | ") == 2
    assert "| " + " | ".join(COLUMNS) + " |" in stdout


def test_configs_parse_as_a_shell_would():
    assert parse_configs("thread=--suggest-pool thread; p0=--prefetch 0 --suggest-workers '2';"
                         "plain=") == [
        Config("thread", ["--suggest-pool", "thread"]),
        Config("p0", ["--prefetch", "0", "--suggest-workers", "2"]),
        Config("plain", []),
    ]
    for bad in ("noflags", "=--prefetch 0", "a=;a=--prefetch 0"):
        with pytest.raises(ValueError):
            parse_configs(bad)


def test_server_cpu_counts_the_children():
    """A child that burned CPU and exited is counted in its parent's tree once reaped."""
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass"
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time\n"
         f"subprocess.run([sys.executable, '-c', {burn!r}])\nprint('done', flush=True)\n"
         "time.sleep(30)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert parent.stdout is not None and parent.stdout.readline().strip() == "done"
        for read in (tree_cpu_seconds, _proc_tree_cpu_seconds):  # psutil, then /proc
            cpu, processes = read(parent.pid)
            assert cpu >= 0.5 and processes == 1
    finally:
        parent.kill()
        parent.wait()


def test_planted_soft_prompt_scores_vectors_in_either_shape():
    from benchmarks.synthetic import PlantedSoftPrompt

    problem = PlantedSoftPrompt(5, 16, seed=3, bound=0.5)
    x = problem.random(50, seed=1)
    assert x.shape == (50, 80) and x.dtype.is_floating_point and x.abs().max() <= 0.5
    assert (problem.random(50, seed=1) == x).all()  # seeded
    flat, shaped = problem(x), problem(x.reshape(50, 5, 16).numpy())
    assert flat.shape == (50,) and (flat == shaped).all() and flat.abs().max() <= 1
    assert float(problem(problem.planted.reshape(1, -1))[0]) == pytest.approx(1.0)
