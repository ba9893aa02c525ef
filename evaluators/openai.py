"""``openai``: scores hard prompts through an OpenAI-compatible HTTP API.

Each (prompt, example) pair is sent as one request: the template rendered as text up to
``{answer}`` with ``prompt.text`` written in, to ``{base_url}/completions`` (``mode=
completions``, the default) or as the user message to ``{base_url}/chat/completions``
(``mode=chat``), at temperature 0 with a few ``max_tokens``.

Scoring
    When the response carries ``top_logprobs`` for the first generated token, a label
    word's log-probability is the log-sum-exp over the listed tokens that start it
    (compared stripped and lower-cased; ``" pos"`` and ``"positive"`` both count for
    ``positive``). A word with no listed token gets the smallest listed log-probability,
    an upper bound. The score is then built as for the transformers evaluators
    (``log_prob`` by default). With ``top_logprobs=0`` the generated text is matched
    against the label words instead and each example counts 1 or 0 (the value is the
    accuracy). A reply that lacks the requested log-probabilities is an error, never a
    silent switch to accuracy: the values of one study must all mean the same thing.
    Token usage is summed into the metrics ``prompt_tokens`` and ``completion_tokens``.

Reliability
    Up to ``concurrency`` requests run at once. A 429, a 5xx, a timeout or a dropped
    connection is retried up to ``max_retries`` times, waiting ``backoff * 2**attempt``
    seconds (or the server's ``Retry-After``), at most ``max_backoff``.

The API key is read from the environment variable named by ``api_key_env`` (default
``OPENAI_API_KEY``; requests go without a key when it is unset) and never logged.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from promptbo.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from promptbo.evaluators.base import Evaluator, register_evaluator
from promptbo.evaluators.task import Task, TaskOptions, build_task
from promptbo.options import option
from promptbo.types import Prompt, Score

log = logging.getLogger(__name__)

MODES = ("completions", "chat")
_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class _Reply:
    """One completion: the generated text, first-token alternatives and token usage."""

    text: str
    top: dict[str, float] | None
    prompt_tokens: int
    completion_tokens: int


def _norm(text: str) -> str:
    return text.strip().lower()


@dataclass(frozen=True, kw_only=True)
class OpenAIOptions(TaskOptions):
    """The options of ``openai``: the API, its requests, and the task (default template
    ``"Review: {text}\\n{prompt}\\nSentiment: {answer}"``)."""

    model: str = option("str", help="the model name the server expects")
    base_url: str = option("str", "https://api.openai.com/v1", "the API root including `/v1` "
                           "(`http://127.0.0.1:8000/v1` for a local llama.cpp server)")
    mode: str = option("str", "completions", "the endpoint", choices=MODES)
    api_key_env: str = option("str", "OPENAI_API_KEY", "environment variable holding the key "
                              "(none is sent when it is unset)")
    system: str | None = option("str", None, "a system message (chat)")
    top_logprobs: int = option("int", 5, "alternatives requested for the first token; 0 "
                               "scores the generated text by accuracy", minimum=0)
    max_tokens: int = option("int", 3, "tokens generated per request", minimum=1)
    concurrency: int = option("int", 8, "requests in flight", minimum=1)
    max_retries: int = option("int", 4, "retries of a failed request", minimum=0)
    backoff: float = option("float", 0.5, "seconds before the first retry (doubling)",
                            minimum=0)
    max_backoff: float = option("float", 20.0, "longest wait between retries, seconds",
                                minimum=0)
    timeout: float = option("float", 60.0, "seconds per request", minimum=0.001)


@register_evaluator("openai")
class OpenAIEvaluator(Evaluator):
    """OpenAI-compatible API evaluator, built from :class:`OpenAIOptions`; see the module
    docstring."""

    Options: ClassVar[type | None] = OpenAIOptions

    def __init__(self, options: OpenAIOptions):
        import httpx

        self.model = options.model
        self.base_url = options.base_url.rstrip("/")
        self.mode = options.mode
        self.system = options.system
        self.top_logprobs = options.top_logprobs
        self.max_tokens = options.max_tokens
        self.concurrency = options.concurrency
        self.max_retries = options.max_retries
        self.backoff = options.backoff
        self.max_backoff = options.max_backoff
        request_timeout = options.timeout
        self.task: Task = build_task(options)
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(options.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._http = httpx.Client(
            headers=headers, timeout=request_timeout,
            limits=httpx.Limits(max_connections=self.concurrency),
        )
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="promptbo-openai")
        self._lock = threading.Lock()
        self.retries = 0  # retried requests so far, for tests and logs

    def __repr__(self) -> str:  # no headers: they hold the key
        return f"OpenAIEvaluator(model={self.model!r}, base_url={self.base_url!r})"

    # --- Evaluator -------------------------------------------------------------------
    def score(self, prompts: Sequence[Prompt]) -> list[Score]:
        for p in prompts:
            if p.is_soft:
                raise InvalidArgumentError(
                    "the openai evaluator scores hard prompts only (text); this study has soft "
                    "prompts: use hf-causal or hf-mlm"
                )
        tasks = [self.task if p.examples is None else self.task.subset(p.examples)
                 for p in prompts]
        jobs = [(p.text, ex) for p, task in zip(prompts, tasks, strict=True)
                for ex in task.examples]
        replies = list(self._pool.map(lambda job: self._ask(self.task.template.render_text(
            job[1], job[0])), jobs))
        out, start = [], 0
        for task in tasks:
            n = len(task.examples)
            out.append(self._score(replies[start:start + n], task))
            start += n
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._http.close()

    # --- scoring ---------------------------------------------------------------------
    def _score(self, replies: list[_Reply], task: Task) -> Score:
        words = [_norm(w) for w in self.task.label_words]
        usage = {
            "prompt_tokens": float(sum(r.prompt_tokens for r in replies)),
            "completion_tokens": float(sum(r.completion_tokens for r in replies)),
        }
        if self.top_logprobs:
            missing = sum(1 for r in replies if not r.top)
            if missing:
                raise FailedPreconditionError(
                    f"the API at {self.base_url} returned no top_logprobs for {missing} of "
                    f"{len(replies)} requests (model {self.model!r}); use a server that "
                    "returns log-probabilities (for llama.cpp: --logits_all true), or set "
                    "top_logprobs=0 to score generated text by accuracy for the whole study"
                )
            lp = np.array([self._label_log_probs(r.top or {}, words) for r in replies])
            base = task.score_log_probs(lp)
        else:
            base = task.score_predictions(np.array([self._predict(r.text, words)
                                                    for r in replies]))
        return Score(base.value, {**base.metrics, **usage}, base.stderr, base.examples)

    @staticmethod
    def _label_log_probs(top: dict[str, float], words: list[str]) -> list[float]:
        floor = min(top.values())
        out = []
        for word in words:
            hits = [lp for tok, lp in top.items() if _norm(tok) and word.startswith(_norm(tok))]
            if hits:
                m = max(hits)
                out.append(m + math.log(sum(math.exp(h - m) for h in hits)))
            else:
                out.append(floor)
        return out

    @staticmethod
    def _predict(text: str, words: list[str]) -> int:
        said = _norm(text)
        if not said:
            return -1
        matches = [(len(w), c) for c, w in enumerate(words)
                   if said.startswith(w) or w.startswith(said)]
        return max(matches)[1] if matches else -1

    # --- HTTP ------------------------------------------------------------------------
    def _ask(self, text: str) -> _Reply:
        body: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens,
                                "temperature": 0}
        if self.mode == "completions":
            url = f"{self.base_url}/completions"
            body["prompt"] = text
            if self.top_logprobs:
                body["logprobs"] = self.top_logprobs
        else:
            url = f"{self.base_url}/chat/completions"
            messages = [{"role": "system", "content": self.system}] if self.system else []
            body["messages"] = [*messages, {"role": "user", "content": text}]
            if self.top_logprobs:
                body["logprobs"] = True
                body["top_logprobs"] = self.top_logprobs
        data = self._post(url, body)
        try:
            choice = data["choices"][0]
            usage = data.get("usage") or {}
            if self.mode == "completions":
                reply_text = choice.get("text") or ""
                tops = (choice.get("logprobs") or {}).get("top_logprobs") or []
                top = dict(tops[0]) if tops and tops[0] else None
            else:
                reply_text = (choice.get("message") or {}).get("content") or ""
                content = (choice.get("logprobs") or {}).get("content") or []
                top = ({t["token"]: float(t["logprob"]) for t in content[0]["top_logprobs"]}
                       if content and content[0].get("top_logprobs") else None)
            return _Reply(reply_text, top, int(usage.get("prompt_tokens") or 0),
                          int(usage.get("completion_tokens") or 0))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise UnavailableError(
                f"{url} answered with an unexpected body ({exc!r}): {str(data)[:300]}"
            ) from exc

    def _post(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        last = ""
        for attempt in range(self.max_retries + 1):
            wait = min(self.max_backoff, self.backoff * 2**attempt)
            try:
                response = self._http.post(url, json=body)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 400:
                    return response.json()
                last = f"HTTP {response.status_code}: {response.text[:300]}"
                if response.status_code in (401, 403):
                    raise UnauthenticatedError(
                        f"{url} refused the request ({last}); check the key in the variable "
                        "named by api_key_env"
                    )
                if response.status_code not in _RETRY_STATUS:
                    raise InvalidArgumentError(f"{url} rejected the request: {last}")
                retry_after = response.headers.get("Retry-After", "")
                if retry_after.replace(".", "", 1).isdigit():
                    wait = min(self.max_backoff, float(retry_after))
            if attempt == self.max_retries:
                break
            with self._lock:
                self.retries += 1
            log.info("retrying %s in %.2fs after %s", url, wait, last)
            time.sleep(wait)
        error = ResourceExhaustedError if last.startswith("HTTP 429") else UnavailableError
        raise error(f"{url} failed after {self.max_retries + 1} attempts; last: {last}")
