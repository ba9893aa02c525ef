"""Fidelity end to end from the command line: `promptbo worker --pool` creates a study over
the evaluator's labeled pool with a budget in scored examples, the mf strategy hands out
example subsets, the tiny causal LM scores exactly those, and `promptbo study best` shows
the recommendation beside the unprompted reference (a real server on port 0, SQLite)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import promptbo
from promptbo.server.app import ServerOptions, create_server


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "promptbo.cli", *args],
                          capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_worker_runs_a_pool_study_to_its_example_budget(tmp_path, tiny_llama_dir, write_jsonl):
    data = tmp_path / "data"
    data.mkdir()
    words = ["great", "fun", "terrible", "boring"]
    write_jsonl(data / "train.jsonl", [
        {"text": f"The film {i} was {words[i % 4]}.", "label": int(i % 4 < 2)} for i in range(40)
    ])
    write_jsonl(data / "test.jsonl", [{"text": "It was fun.", "label": 1},
                                      {"text": "It was bad.", "label": 0}])
    server, port, manager = create_server(f"sqlite:///{tmp_path / 'f.db'}", ServerOptions(port=0))
    address = f"127.0.0.1:{port}"
    model = ["-o", f"model={tiny_llama_dir}", "-o", f"data={data}", "-o", "k=3",
             "-o", "labels=negative,positive", "-o", "metric=accuracy"]
    try:
        refused = cli("worker", "--server", address, "--quiet", "--study", "x", "--evaluator",
                      "hf-causal", *model, "--prompt-length", "2", "--max-examples", "10")
        assert refused.returncode != 0 and "add --labeled-pool" in refused.stderr

        done = cli("worker", "--server", address, "--quiet", "--study", "mf", "--evaluator",
                   "hf-causal", *model, "-o", "split=pool", "--prompt-length", "2",
                   "--top-n", "50", "--strategy", "mf", "--labeled-pool", "--max-examples", "100",
                   "--batch-size", "2")
        assert done.returncode == 0, done.stderr
        assert "recommended: trial" in done.stdout and "unprompted (reference):" in done.stdout
        with promptbo.Client(address) as client:
            study = client.get_study("mf")
            assert study.info.spec.pool_size == 34 and study.done  # 40 - 2 x 3 dev examples
            assert study.info.examples_scored == 100
            trials = list(study.trials(state="completed"))
            suggested = [t for t in trials if t.source == "suggested"]
            assert sum(len(t.prompt.examples) for t in suggested) == 100
            assert all(t.examples_scored == len(t.prompt.examples) for t in suggested)
            assert all(t.value_stderr is not None for t in suggested)
            ref = [t for t in trials if t.source == "reference"]
            assert len(ref) == 1 and ref[0].examples_scored == 34 and ref[0].prompt.text == ""
            rec = study.recommendation()
            assert rec.reference is not None and rec.trial is not None

        best = cli("study", "best", "mf", "--server", address)
        assert best.returncode == 0, best.stderr
        assert "recommended: trial" in best.stdout and "[" in best.stdout
        assert "unprompted (reference):" in best.stdout
    finally:
        server.stop(0)
        manager.close()
