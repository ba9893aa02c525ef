"""The openai evaluator against a real llama.cpp server running the bundled SmolLM2 GGUF.

Needs ``llama-cpp-python[server]`` (``.ci/llamacpp.sh`` installs it). Skipped when it is
missing, unless PROMPTBO_REQUIRE_LLAMACPP=1, as CI sets.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = [pytest.mark.llamacpp, pytest.mark.slow]

STARTUP_TIMEOUT_S = 120


def _require_llamacpp() -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        if os.environ.get("PROMPTBO_REQUIRE_LLAMACPP") == "1":
            pytest.fail("llama-cpp-python is required (PROMPTBO_REQUIRE_LLAMACPP=1): run "
                        ".ci/llamacpp.sh")
        pytest.skip("llama-cpp-python is not installed (run .ci/llamacpp.sh)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """Base URL (with /v1) of a llama.cpp server on a free port; stopped afterwards."""
    _require_llamacpp()
    import httpx

    from promptbo.evaluators.models import smollm2_gguf_path

    port = _free_port()
    log_path = tmp_path_factory.mktemp("llamacpp") / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf_path()),
             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
             "--logits_all", "true", "--verbose", "false"],
            stdout=log, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                pytest.fail(f"llama.cpp server exited with {proc.returncode}:\n{tail}")
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama.cpp server not ready after {STARTUP_TIMEOUT_S} s")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def _prompts():
    from promptbo.types import Prompt

    return [Prompt(token_ids=(0,), text=" Is this review positive or negative?"),
            Prompt(token_ids=(1,), text=" zq xv")]


def test_completions_scores_from_logprobs(llama_server):
    from promptbo.evaluators import create_evaluator

    with create_evaluator("openai", base_url=llama_server, model="smollm2", split="dev", k=3,
                          top_logprobs=20, concurrency=2, timeout=60, max_retries=1) as ev:
        scores = ev.score(_prompts())
    assert len(scores) == 2
    for s in scores:
        assert np.isfinite(s.value) and s.value <= 0
        assert s.metrics["examples"] == 6 and "raw_log_prob" in s.metrics
        assert s.metrics["prompt_tokens"] > 6 * 10 and s.metrics["completion_tokens"] >= 6
    assert scores[0].metrics["accuracy"] >= 0.5


def test_chat_mode(llama_server):
    from promptbo.evaluators import create_evaluator

    with create_evaluator("openai", base_url=llama_server, model="smollm2", mode="chat",
                          k=2, concurrency=2, timeout=60, max_retries=1,
                          template="Review: {text}\n{prompt} Answer positive or negative."
                                   "{answer}") as ev:
        score = ev.score(_prompts()[:1])[0]
    assert 0.0 <= score.metrics["accuracy"] <= 1.0 and np.isfinite(score.value)
    assert score.metrics["completion_tokens"] >= 4


def test_hf_causal_agrees_with_llamacpp_on_the_same_weights(llama_server):
    """llama.cpp runs the 4-bit GGUF, hf-causal its dequantized copy: an independent check of
    hf-causal's token assembly. Exact label tokens listed by llama.cpp must match."""
    pytest.importorskip("transformers")
    import httpx

    from promptbo.evaluators import create_evaluator
    from promptbo.types import Prompt

    text = " Is this review positive or negative?"
    with create_evaluator("hf-causal", model="smollm2", split="dev", k=3) as hf:
        ids = tuple(hf.tokenizer(text, add_special_tokens=False)["input_ids"])
        local = hf.label_log_probs([Prompt(token_ids=ids, text=text)])[0]
        compared = 0
        for e, example in enumerate(hf.task.examples):
            body = {"model": "smollm2", "prompt": hf.task.template.render_text(example, text),
                    "max_tokens": 1, "temperature": 0, "logprobs": 20}
            reply = httpx.post(f"{llama_server}/completions", json=body, timeout=60).json()
            top = reply["choices"][0]["logprobs"]["top_logprobs"][0]
            for c, word in enumerate(hf.task.label_words):
                if " " + word in top:
                    assert top[" " + word] == pytest.approx(local[e, c], abs=0.4)
                    compared += 1
    assert compared >= 3


def test_worker_serves_a_study_through_llamacpp(llama_server, tmp_path):
    """The whole path: SmolLM2's vocabulary uploaded to a real promptbo server, a hard-prompt
    study, and the worker runtime scoring its trials through the llama.cpp API."""
    pytest.importorskip("transformers")
    import promptbo
    from promptbo.evaluators import create_evaluator
    from promptbo.server.app import ServerOptions, create_server
    from promptbo.worker import Worker

    server, port, manager = create_server(f"sqlite:///{tmp_path / 'l.db'}", ServerOptions(port=0))
    try:
        with promptbo.Client(f"127.0.0.1:{port}") as client:
            with create_evaluator("hf-causal", model="smollm2", k=1) as hf:
                vocab_id = client.upload_vocabulary(hf.vocabulary())
            study = client.create_study("llama", promptbo.HardPromptSpace(3, vocab_id),
                                        strategy="random", max_trials=3, seed=0)
            with create_evaluator("openai", base_url=llama_server, model="smollm2", k=2,
                                  top_logprobs=20, concurrency=2, timeout=60,
                                  max_retries=1) as api:
                stats = Worker(study, api).run()
            assert stats.completed == 3 and stats.failed == 0
            trials = list(study.trials(state="completed"))
            assert all(t.value <= 0 and t.metrics["completion_tokens"] >= 4 for t in trials)
    finally:
        server.stop(0)
        manager.close()
