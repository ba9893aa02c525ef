"""The openai evaluator against a fake OpenAI-compatible server on 127.0.0.1 (port 0).

The fake "model" knows the demo labels: it reads the review out of the request and puts
the right label word first, confidently when the prompt asks "Sentiment?". Scripted
failures (429, 503, slow answers) exercise the retries.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

pytest.importorskip("httpx")

from promptbo.errors import (  # noqa: E402
    FailedPreconditionError,
    InvalidArgumentError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from promptbo.evaluators import create_evaluator  # noqa: E402
from promptbo.evaluators.data import demo_path, read_examples  # noqa: E402
from promptbo.types import Prompt  # noqa: E402

LABELS = {ex.text: ex.label for ex in read_examples(demo_path())}
GOOD, WEAK = (-0.05, -3.0), (-0.6, -0.8)


class FakeOpenAI:
    """State shared with the handler: a failure script, request log, concurrency gauge."""

    def __init__(self):
        self.failures: list[tuple[int, float]] = []  # (status or 0 for "sleep", seconds)
        self.requests: list[tuple[str, dict, dict]] = []
        self.logprobs = True
        self.in_flight = self.max_in_flight = 0
        self.delay = 0.0
        self.lock = threading.Lock()

    def reply(self, path: str, body: dict) -> dict:
        if path.endswith("/chat/completions"):
            text = body["messages"][-1]["content"]
        else:
            text = body["prompt"]
        review = text.split("Review: ", 1)[1].split("\n", 1)[0]
        label = LABELS[review]
        right, wrong = GOOD if "sentiment?" in text.lower() else WEAK
        words = ["negative", "positive"]
        top = {" " + words[label]: right, " " + words[1 - label]: wrong, " neutral": -4.0}
        usage = {"prompt_tokens": len(text.split()), "completion_tokens": 1}
        if path.endswith("/chat/completions"):
            choice = {"message": {"role": "assistant", "content": words[label].capitalize()}}
            if self.logprobs:
                choice["logprobs"] = {"content": [{"token": words[label], "logprob": right,
                                                   "top_logprobs": [
                                                       {"token": t.strip().capitalize(),
                                                        "logprob": lp}
                                                       for t, lp in top.items()]}]}
        else:
            choice = {"text": " " + words[label]}
            if self.logprobs:
                choice["logprobs"] = {"tokens": [" " + words[label]], "top_logprobs": [top]}
        return {"choices": [choice], "usage": usage}


@pytest.fixture
def fake():
    state = FakeOpenAI()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with state.lock:
                state.requests.append((self.path, body, dict(self.headers)))
                failure = state.failures.pop(0) if state.failures else None
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
            try:
                time.sleep(state.delay)
                if failure and failure[0] == 0:
                    time.sleep(failure[1])
                    failure = None
                if failure:
                    status, retry_after = failure
                    self.send_response(status)
                    if retry_after:
                        self.send_header("Retry-After", str(retry_after))
                    payload = b'{"error": {"message": "scripted failure"}}'
                else:
                    self.send_response(200)
                    payload = json.dumps(state.reply(self.path, body)).encode()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                with state.lock:
                    state.in_flight -= 1

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield state
    server.shutdown()
    server.server_close()


def make(fake, **options):
    defaults = {"model": "fake-model", "base_url": fake.url, "k": 2, "backoff": 0.01,
                "api_key_env": "PROMPTBO_TEST_FAKE_KEY"}
    return create_evaluator("openai", **{**defaults, **options})


PROMPTS = [Prompt(token_ids=(1,), tokens=(" Sentiment?",), text=" Sentiment?"),
           Prompt(token_ids=(2,), tokens=(" Hm.",), text=" Hm.")]


def expected_log_prob(right: float, wrong: float) -> float:
    return right - np.logaddexp(right, wrong)


def test_completions_with_logprobs(fake, monkeypatch, caplog):
    monkeypatch.setenv("PROMPTBO_TEST_FAKE_KEY", "sk-secret-123")
    caplog.set_level(logging.DEBUG)
    with make(fake) as ev:
        scores = ev.score(PROMPTS)
        assert "sk-secret" not in repr(ev)
    assert scores[0].value == pytest.approx(expected_log_prob(*GOOD))
    assert scores[1].value == pytest.approx(expected_log_prob(*WEAK))
    assert scores[0].metrics["accuracy"] == scores[1].metrics["accuracy"] == 1.0
    assert scores[0].metrics["completion_tokens"] == 4.0  # 4 examples, one token each
    # requests run concurrently, so they may arrive in any order: read one of the
    # second prompt's
    path, body, headers = next(r for r in fake.requests if " Hm." in r[1]["prompt"])
    assert path == "/v1/completions"
    assert body["model"] == "fake-model" and body["temperature"] == 0
    assert body["logprobs"] == 5 and body["max_tokens"] == 3
    # the prompt comes first (the default template), then the review and the answer cue
    assert body["prompt"].startswith(" Hm.\nReview: ")
    assert body["prompt"].endswith("\nSentiment:")
    review = body["prompt"].split("Review: ", 1)[1].split("\n")[0]
    assert review in LABELS
    assert headers["Authorization"] == "Bearer sk-secret-123"
    assert len(fake.requests) == 8
    prompt_tokens = sum(len(b["prompt"].split()) for _, b, _ in fake.requests
                        if " Hm." in b["prompt"])
    assert scores[1].metrics["prompt_tokens"] == prompt_tokens
    assert "sk-secret" not in caplog.text


def test_chat_mode(fake):
    with make(fake, mode="chat", system="Answer with one word.", top_logprobs=3) as ev:
        scores = ev.score(PROMPTS[:1])
    assert scores[0].value == pytest.approx(expected_log_prob(*GOOD))
    path, body, headers = fake.requests[-1]
    assert path == "/v1/chat/completions" and "Authorization" not in headers
    assert body["messages"][0] == {"role": "system", "content": "Answer with one word."}
    assert body["logprobs"] is True and body["top_logprobs"] == 3


def test_without_logprobs_the_generated_label_counts(fake):
    fake.logprobs = False
    with make(fake, mode="chat", top_logprobs=0) as ev:
        score = ev.score(PROMPTS[:1])[0]
    assert score.value == 1.0 and score.metrics["accuracy"] == 1.0
    assert "log_prob" not in score.metrics


def test_missing_logprobs_is_an_error_not_a_silent_switch(fake):
    fake.logprobs = False
    with make(fake, mode="chat") as ev, pytest.raises(FailedPreconditionError,
                                                      match="top_logprobs=0"):
        ev.score(PROMPTS[:1])


def test_retries_on_429_5xx_and_timeouts(fake):
    fake.failures = [(429, 0.05), (503, 0), (0, 2.0), (502, 0)]
    with make(fake, k=1, concurrency=1, timeout=0.5) as ev:
        t0 = time.monotonic()
        scores = ev.score(PROMPTS[:1])
        assert ev.retries == 4
    assert scores[0].metrics["accuracy"] == 1.0
    assert time.monotonic() - t0 < 10


def test_retries_are_bounded(fake):
    fake.failures = [(503, 0)] * 3
    with make(fake, k=1, concurrency=1, max_retries=2) as ev, \
            pytest.raises(UnavailableError, match="failed after 3 attempts; last: HTTP 503"):
        ev.score(PROMPTS[:1])
    fake.failures = [(429, 0)] * 2
    with make(fake, k=1, concurrency=1, max_retries=1) as ev, \
            pytest.raises(ResourceExhaustedError, match="HTTP 429"):
        ev.score(PROMPTS[:1])


def test_client_errors_are_not_retried(fake):
    fake.failures = [(401, 0)]
    with make(fake, k=1, concurrency=1) as ev, pytest.raises(UnauthenticatedError):
        ev.score(PROMPTS[:1])
    fake.failures = [(400, 0)]
    with make(fake, k=1, concurrency=1) as ev, \
            pytest.raises(InvalidArgumentError, match="rejected the request: HTTP 400"):
        ev.score(PROMPTS[:1])
        assert ev.retries == 0


def test_unreachable_server(fake):
    with make(fake, base_url="http://127.0.0.1:9/v1", k=1, max_retries=1) as ev, \
            pytest.raises(UnavailableError, match="failed after 2 attempts"):
        ev.score(PROMPTS[:1])


def test_concurrency_limit(fake):
    fake.delay = 0.05
    with make(fake, k=4, concurrency=3) as ev:
        ev.score(PROMPTS)
    assert fake.max_in_flight == 3
    assert len(fake.requests) == 16


def test_soft_prompts_are_refused(fake):
    with make(fake) as ev, pytest.raises(InvalidArgumentError, match="hard prompts only"):
        ev.score([Prompt(vector=np.zeros((2, 4), dtype=np.float32))])


def test_label_matching_helpers():
    from promptbo.evaluators.openai import OpenAIEvaluator

    lp = OpenAIEvaluator._label_log_probs({" pos": -1.0, "Positive": -1.0, "x": -5.0},
                                          ["positive", "negative"])
    assert lp == pytest.approx([-1.0 + np.log(2), -5.0])
    assert OpenAIEvaluator._predict(" Negative.", ["positive", "negative"]) == 1
    assert OpenAIEvaluator._predict(" pos", ["positive", "negative"]) == 0
    assert OpenAIEvaluator._predict("maybe", ["positive", "negative"]) == -1


def test_pool_prompts_are_written_into_the_template(fake):
    pool_prompt = Prompt(text="What is the sentiment?", pool_index=4)
    with make(fake) as ev:
        score = ev.score([pool_prompt])[0]
    assert score.value == pytest.approx(expected_log_prob(*GOOD))
    bodies = [b["prompt"] for _, b, _ in fake.requests]
    assert bodies and all(b.startswith("What is the sentiment?\nReview: ") for b in bodies)
