"""Each evaluator serves a real study through a real gRPC server (port 0, SQLite) with the
worker runtime: hard prompts on a tiny RoBERTa and a tiny Llama (vocabulary uploaded from
the evaluator), soft prompts through ``inputs_embeds`` on both, and an external command.
The llama.cpp server variant lives in test_llamacpp.py."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest

import promptbo
from promptbo.evaluators import create_evaluator
from promptbo.server.app import ServerOptions, create_server
from promptbo.worker import Worker

TRIALS = 4


@pytest.fixture
def client(tmp_path):
    server, port, manager = create_server(f"sqlite:///{tmp_path / 'e2e.db'}", ServerOptions(port=0))
    try:
        with promptbo.Client(f"127.0.0.1:{port}") as c:
            yield c
    finally:
        server.stop(0)
        manager.close()


def serve(study, evaluator) -> list:
    stats = Worker(study, evaluator, batch_size=2).run()
    assert stats.completed == TRIALS and stats.failed == 0
    trials = list(study.trials(state="completed"))
    assert len(trials) == TRIALS
    assert all(np.isfinite(t.value) for t in trials)
    assert study.best_trial() is not None
    return trials


def hard_study(client, evaluator, name: str, strategy: str = "random"):
    vocab_id = client.upload_vocabulary(evaluator.vocabulary())
    return client.create_study(name, promptbo.HardPromptSpace(3, vocab_id), strategy=strategy,
                               max_trials=TRIALS, seed=1)


def soft_study(client, evaluator, name: str, strategy: str = "cmaes"):
    dim, std = evaluator.soft_prompt_shape()
    space = promptbo.SoftPromptSpace(2, dim, intrinsic_dim=4, embedding_std=std)
    return client.create_study(name, space, strategy=strategy, max_trials=TRIALS, seed=1)


@pytest.mark.parametrize("kind", ["hf-mlm", "hf-causal"])
def test_hf_evaluators_serve_hard_and_soft_studies(client, kind, tiny_roberta_dir,
                                                   tiny_llama_dir):
    model = tiny_roberta_dir if kind == "hf-mlm" else tiny_llama_dir
    with create_evaluator(kind, model=str(model), data="demo", k=3) as ev:
        hard = serve(hard_study(client, ev, f"{kind}-hard"), ev)
        assert all(len(t.prompt.token_ids) == 3 and t.prompt.text for t in hard)
        assert all(0.0 <= t.metrics["accuracy"] <= 1.0 for t in hard)
        # The stored value is what the evaluator computes for that prompt.
        again = ev.score([hard[0].prompt])[0]
        assert again.value == pytest.approx(hard[0].value, abs=1e-5)

        soft = serve(soft_study(client, ev, f"{kind}-soft"), ev)
        assert all(t.prompt.vector.shape == (2, ev.soft_prompt_shape()[0]) for t in soft)
        assert len({round(t.value, 6) for t in soft}) > 1   # the vectors change the output


def test_command_evaluator_serves_a_soft_study(client, tmp_path):
    script = tmp_path / "scorer.py"
    script.write_text(textwrap.dedent("""
        import json, sys
        doc = json.load(sys.stdin)
        print(json.dumps({"scores": [
            {"value": -sum(x * x for row in p["vector"] for x in row), "metrics": {"n": 1}}
            for p in doc["prompts"]]}))
    """))
    study = client.create_study("cmd", promptbo.SoftPromptSpace(2, 3), strategy="gp",
                                max_trials=TRIALS, seed=1)
    with create_evaluator("command", command=[sys.executable, str(script)]) as ev:
        trials = serve(study, ev)
    for t in trials:
        assert t.value == pytest.approx(-float((t.prompt.vector ** 2).sum()), rel=1e-5)
        assert t.metrics == {"n": 1.0}
