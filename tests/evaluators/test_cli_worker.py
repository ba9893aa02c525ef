"""`promptbo worker` end to end: a real server on port 0, a worker process that loads a
tiny causal LM, uploads its vocabulary, creates the study and runs it to its budget."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import promptbo
from promptbo.evaluators import create_evaluator
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
        # The summary says what the number is and names the best prompt.
        assert "value is the mean log-probability of the right label word" in done.stdout
        assert "  prompt:  '" in done.stdout and "metrics: accuracy=" in done.stdout
        with promptbo.Client(address) as client:
            study = client.get_study("cli")
            completed = list(study.trials(state="completed"))
            # The worker recorded the unprompted model as the study's reference first.
            assert [t.source for t in completed].count("reference") == 1
            trials = [t for t in completed if t.source != "reference"]
            assert len(trials) == 4
            assert all(len(t.prompt.token_ids) == 2 and t.metrics.get("accuracy") is not None
                       for t in trials)

        # The final pick: the 3 best prompts re-scored on the dev split (select's default).
        picked = subprocess.run(
            [sys.executable, "-m", "promptbo.cli", "select", "--server", address, "--study",
             "cli", "--evaluator", "hf-causal", "-o", f"model={tiny_llama_dir}", "-o",
             "data=demo", "-o", "k=3", "--top", "3", "--unprompted", "--json"],
            capture_output=True, text=True, timeout=240)
        assert picked.returncode == 0, picked.stderr
        rows = [json.loads(line) for line in picked.stdout.splitlines()]
        assert len(rows) == 4 and {r["split"] for r in rows} == {"dev"}
        assert [r["value"] for r in rows] == sorted((r["value"] for r in rows), reverse=True)
        best3 = sorted(trials, key=lambda t: -t.value)[:3]
        assert {r["trial"] for r in rows} == {t.id for t in best3} | {None}
        with create_evaluator("hf-causal", model=str(tiny_llama_dir), data="demo", k=3,
                              split="dev") as dev:
            prompt = {t.id: t.prompt for t in best3}.get(rows[0]["trial"], promptbo.Prompt())
            expect = dev.score([prompt])[0].value
        assert rows[0]["value"] == pytest.approx(expect, abs=1e-5)
    finally:
        server.stop(0)
        manager.close()


def test_worker_ranks_candidate_words_by_the_task_texts(tmp_path, tiny_llama_dir):
    import numpy as np

    from promptbo.wordlists import read_texts, text_word_scores

    texts = tmp_path / "train.jsonl"
    texts.write_text('{"text": "a great movie , a great cast", "label": 1}\n'
                     '{"text": "the movie was dull", "label": 0}\n')
    ev = create_evaluator("hf-causal", model=str(tiny_llama_dir), data="demo", k=3)
    table = ev.vocabulary()
    ev.close()
    scores = text_word_scores(table.tokens, read_texts(texts))
    allowed = {table.token_ids[i] for i in np.argsort(-scores, kind="stable")[:4]}

    server, port, manager = create_server(f"sqlite:///{tmp_path / 'w.db'}", ServerOptions(port=0))
    address = f"127.0.0.1:{port}"
    common = ("--evaluator", "hf-causal", "-o", f"model={tiny_llama_dir}", "-o", "data=demo",
              "-o", "k=3", "--prompt-length", "2", "--strategy", "random", "--trials", "3")
    try:
        refused = run_worker(address, "--study", "words", *common, "--top-n-texts", str(texts))
        assert refused.returncode != 0
        assert "--top-n-texts ranks the candidates of --top-n: add --top-n N" in refused.stderr

        done = run_worker(address, "--study", "words", *common, "--top-n", "4",
                          "--top-n-texts", str(texts))
        assert done.returncode == 0, done.stderr
        with promptbo.Client(address) as client:
            trials = [t for t in client.get_study("words").trials(state="completed")
                      if t.source != "reference"]
        assert len(trials) == 3
        assert all(set(t.prompt.token_ids) <= allowed for t in trials)
    finally:
        server.stop(0)
        manager.close()


@pytest.mark.slow
def test_python_evaluator_hard_study_takes_a_models_vocabulary(tmp_path, capsys,
                                                               tiny_llama_dir):
    from promptbo.cli import main

    scoring = tmp_path / "my_scoring.py"
    scoring.write_text("def score(prompts):\n    return [{'value': -abs(len(p.text) - 8), "
                       "'metrics': {'length': len(p.text)}} for p in prompts]\n")
    server, port, manager = create_server(f"sqlite:///{tmp_path / 'h.db'}", ServerOptions(port=0))
    address = f"127.0.0.1:{port}"
    try:
        rc = main(["worker", "--server", address, "--study", "py-hard",
                   "--evaluator", "python", "-o", f"function={scoring}:score",
                   "--vocabulary", str(tiny_llama_dir), "--prompt-length", "3",
                   "--top-n", "40", "--trials", "4", "--strategy", "random", "--quiet"])
        out, err = capsys.readouterr()
        assert rc == 0, err
        with promptbo.Client(address) as client:
            trials = list(client.get_study("py-hard").trials(state="completed"))
        assert len(trials) == 4 and all(len(t.prompt.token_ids) == 3 for t in trials)
        assert all(t.metrics["length"] == len(t.prompt.text) for t in trials)
        assert "metrics: length=" in out
    finally:
        server.stop(0)
        manager.close()
