"""`promptbo worker` end to end: a real server on port 0, a worker process that loads a
tiny causal LM, uploads its vocabulary, creates the study and runs it to its budget."""

from __future__ import annotations

import subprocess
import sys

import promptbo
from promptbo.server.app import ServerOptions, create_server


def run_worker(address: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "promptbo.cli", "worker", "--server", address, "--quiet", *args],
        capture_output=True, text=True, timeout=240,
    )


def test_worker_creates_a_hard_prompt_study_and_fills_its_budget(tmp_path, tiny_llama_dir):
    server, port, manager = create_server(f"sqlite:///{tmp_path / 'w.db'}", ServerOptions(port=0))
    address = f"127.0.0.1:{port}"
    try:
        missing = run_worker(address, "--study", "cli", "--evaluator", "hf-causal",
                             "-o", f"model={tiny_llama_dir}", "-o", "data=demo", "-o", "k=3")
        assert missing.returncode != 0
        assert "--prompt-length" in missing.stderr

        done = run_worker(
            address, "--study", "cli", "--evaluator", "hf-causal",
            "-o", f"model={tiny_llama_dir}", "-o", "data=demo", "-o", "k=3",
            "--prompt-length", "2", "--strategy", "random", "--trials", "4", "--top-n", "50",
        )
        assert done.returncode == 0, done.stderr
        assert "4 completed" in done.stdout
        with promptbo.Client(address) as client:
            study = client.get_study("cli")
            trials = list(study.trials(state="completed"))
            assert len(trials) == 4
            assert all(len(t.prompt.token_ids) == 2 and t.metrics.get("accuracy") is not None
                       for t in trials)
    finally:
        server.stop(0)
        manager.close()
