"""The Python client: ask/tell against a promptbo server.

Needs only grpcio, protobuf and NumPy, so it embeds in any pipeline::

    import promptbo

    client = promptbo.Client("127.0.0.1:50051")
    study = client.create_study("sst2", promptbo.SoftPromptSpace(4, 576, intrinsic_dim=10),
                                strategy="gp", max_trials=100)
    for trial in study.ask(4):
        study.tell(trial, score(trial.prompt), {"accuracy": acc})

    with study.trial_context() as trial:        # heartbeats while you work
        trial.report(score(trial.prompt))       # told on exit; failed on an exception

Status codes come back as the exceptions of :mod:`promptbo.errors`. Every RPC is safe
to retry (CreateStudy takes a request id, SuggestTrials returns the caller's active
trials again, repeated completions are no-ops), and the channel retries UNAVAILABLE.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import grpc
import numpy as np

from promptbo import types
from promptbo.errors import (
    InvalidArgumentError,
    PromptboError,
    UnavailableError,
    error_for_code,
)
from promptbo.spec import (
    Goal,
    HardPromptSpace,
    PoolSpace,
    SoftPromptSpace,
    StudySpec,
    spec_from_pb,
    spec_to_pb,
)
from promptbo.v1 import optimizer_service_pb2 as api
from promptbo.v1 import optimizer_service_pb2_grpc as api_grpc
from promptbo.v1 import resources_pb2 as pb

DEFAULT_ADDRESS = "127.0.0.1:50051"
UPLOAD_CHUNK_BYTES = 4 * 1024 * 1024
_STATE_NAMES = {pb.TRIAL_STATE_ACTIVE: "active", pb.TRIAL_STATE_COMPLETED: "completed",
                pb.TRIAL_STATE_FAILED: "failed", pb.TRIAL_STATE_UNSPECIFIED: "unspecified"}
_STATES_BY_NAME = {v: k for k, v in _STATE_NAMES.items()}
_RETRY_CONFIG = json.dumps({
    "methodConfig": [{
        "name": [{"service": "promptbo.v1.OptimizerService"}],
        "retryPolicy": {
            "maxAttempts": 5, "initialBackoff": "0.2s", "maxBackoff": "5s",
            "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }]
})


class StudyDoneError(PromptboError):
    """The study's trial budget is used up; there is nothing left to evaluate."""

    code = "FAILED_PRECONDITION"


@dataclass
class Trial:
    """A trial as the client sees it; ``prompt`` is what to evaluate."""

    study: str
    id: int
    state: str
    prompt: types.Prompt
    client_id: str = ""
    value: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    failure_reason: str = ""
    source: str = ""
    lease_deadline: float = 0.0
    #: Fidelity: the told standard error of ``value`` (None: not told) and the number of
    #: examples it averages; the examples to score are ``prompt.examples``.
    value_stderr: float | None = None
    examples_scored: int = 0
    _reported: types.Score | None = field(default=None, repr=False)

    def report(self, value: float, metrics: dict[str, float] | None = None,
               stderr: float | None = None, examples: int = 0) -> None:
        """Sets the result told when a :meth:`Study.trial_context` block exits."""
        self._reported = types.Score(float(value), dict(metrics or {}), stderr, examples)


@dataclass(frozen=True)
class Recommendation:
    """What :meth:`Study.recommendation` returns: the recommended prompt's ``trial``
    (its latest) and how many ``trials`` it has; its ``estimate`` from the ``examples``
    scored after its last promotion (the latest trial; the only one for a prompt scored
    once) with ``stderr`` and a 95% interval ``lower``..``upper`` simultaneous over the
    ``candidates`` it was chosen among; its mean over all its trials
    (``pooled_estimate`` on ``pooled_examples``), the surrogate's ``posterior_mean`` and
    the ``method`` (``posterior_mean`` or ``observed_mean``); ``best_observed`` is the
    best single trial and ``reference`` the unprompted model's score, when recorded."""

    trial: Trial | None
    estimate: float
    stderr: float
    lower: float
    upper: float
    examples: int
    trials: int
    posterior_mean: float
    method: str
    best_observed: Trial | None
    reference: Trial | None
    candidates: int = 1
    pooled_estimate: float = float("nan")
    pooled_examples: int = 0


def _trial_from_pb(msg: pb.Trial, soft_shape: tuple[int, int] | None) -> Trial:
    p = msg.prompt
    vector = None
    if len(p.vector):
        vector = np.asarray(p.vector, dtype=np.float32)
        if soft_shape is not None:
            vector = vector.reshape(soft_shape)
    prompt = types.Prompt(
        token_ids=tuple(p.token_ids), tokens=tuple(p.tokens), text=p.text, vector=vector,
        pool_index=p.pool_index if p.HasField("pool_index") else None,
        examples=tuple(msg.example_indices) if len(msg.example_indices) else None,
    )
    return Trial(
        study=msg.study, id=msg.id, state=_STATE_NAMES[msg.state], prompt=prompt,
        client_id=msg.client_id,
        value=msg.value if msg.state == pb.TRIAL_STATE_COMPLETED else None,
        metrics=dict(msg.metrics), failure_reason=msg.failure_reason, source=msg.source,
        lease_deadline=msg.lease_deadline.ToNanoseconds() / 1e9,
        value_stderr=msg.value_stderr if msg.HasField("value_stderr") else None,
        examples_scored=msg.examples_scored,
    )


def _set_fidelity(msg, stderr: float | None, examples: int) -> None:
    if stderr is not None:
        msg.value_stderr = float(stderr)
    msg.examples_scored = int(examples)


def _prompt_to_pb(prompt: types.Prompt) -> pb.Prompt:
    msg = pb.Prompt(token_ids=prompt.token_ids, tokens=prompt.tokens, text=prompt.text)
    if prompt.vector is not None:
        msg.vector.extend(np.asarray(prompt.vector, dtype=np.float32).ravel().tolist())
    if prompt.pool_index is not None:
        msg.pool_index = prompt.pool_index
    return msg


class Client:
    """A connection to a promptbo server.

    Args:
        target: ``host:port`` of the server (default: ``PROMPTBO_SERVER``, else
            127.0.0.1:50051).
        token: bearer token (or set ``PROMPTBO_TOKEN``); sent as ``authorization`` metadata.
        ca_file: PEM file of the CA that signed the server's certificate; enables TLS.
        tls: use TLS with the system's roots (implied by ``ca_file``).
        timeout: seconds per RPC.
        client_id: identifies this worker to the server (default: a random one).
        stub: use this stub instead of a channel (e.g.
            :class:`promptbo.server.local.LocalStub` for an in-process servicer).
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        token: str | None = None,
        ca_file: str | None = None,
        tls: bool = False,
        timeout: float = 60.0,
        client_id: str | None = None,
        max_message_bytes: int = 64 * 1024 * 1024,
        stub=None,
    ) -> None:
        target = target or os.environ.get("PROMPTBO_SERVER") or DEFAULT_ADDRESS
        self.target = target
        self.timeout = timeout
        self.client_id = client_id or f"client-{uuid.uuid4().hex[:12]}"
        token = token if token is not None else os.environ.get("PROMPTBO_TOKEN", "")
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.enable_retries", 1),
            ("grpc.service_config", _RETRY_CONFIG),
        ]
        self._channel: grpc.Channel | None = None
        if stub is not None:
            self._stub = stub
            return
        if ca_file or tls:
            roots = Path(ca_file).read_bytes() if ca_file else None
            creds = grpc.ssl_channel_credentials(root_certificates=roots)
            self._channel = grpc.secure_channel(target, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._stub = api_grpc.OptimizerServiceStub(self._channel)

    # --- plumbing ----------------------------------------------------------------------
    def _call(self, name: str, request, timeout: float | None = None):
        try:
            return getattr(self._stub, name)(
                request, timeout=timeout or self.timeout, metadata=self._metadata
            )
        except grpc.RpcError as err:
            raise _translate(err) from None

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Blocks until the server is reachable; UnavailableError after ``timeout`` s."""
        if self._channel is None:
            return
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise UnavailableError(
                f"no promptbo server at {self.target} after {timeout}s"
            ) from None

    # --- vocabularies ------------------------------------------------------------------
    def upload_vocabulary(
        self, table: types.VocabularyTable, chunk_bytes: int = UPLOAD_CHUNK_BYTES
    ) -> str:
        """Uploads a vocabulary in chunks (a no-op on the wire's far side if present);
        returns its content id for :class:`HardPromptSpace`."""
        emb = np.ascontiguousarray(table.embeddings, dtype="<f4")
        size, dim = emb.shape
        expected = types.vocabulary_id(table.tokens, table.token_ids, emb)
        rows_per_chunk = max(1, chunk_bytes // (dim * 4 + 64))

        def chunks():
            for start in range(0, size, rows_per_chunk):
                stop = min(size, start + rows_per_chunk)
                msg = api.UploadVocabularyRequest(
                    tokens=table.tokens[start:stop],
                    token_ids=table.token_ids[start:stop],
                    embeddings=emb[start:stop].tobytes(),
                )
                if start == 0:
                    msg.size, msg.embedding_dim, msg.expected_id = size, dim, expected
                yield msg

        timeout = max(self.timeout, 600.0)
        return self._call("UploadVocabulary", chunks(), timeout).vocabulary_id

    # --- candidate pools ---------------------------------------------------------------
    def upload_pool(self, table: types.PoolTable, chunk_bytes: int = UPLOAD_CHUNK_BYTES) -> str:
        """Uploads a pool of candidate prompts in chunks (a no-op on the server if it has
        it); returns its content id for :class:`PoolSpace`."""
        emb = np.ascontiguousarray(table.embeddings, dtype="<f4")
        size, dim = emb.shape
        expected = types.pool_id(table.texts, emb, table.embedding_model)
        longest = max((len(t.encode("utf-8")) for t in table.texts), default=0)
        rows_per_chunk = max(1, chunk_bytes // (dim * 4 + longest + 16))

        def chunks():
            for start in range(0, size, rows_per_chunk):
                stop = min(size, start + rows_per_chunk)
                msg = api.UploadPoolRequest(
                    texts=table.texts[start:stop], embeddings=emb[start:stop].tobytes()
                )
                if start == 0:
                    msg.size, msg.embedding_dim, msg.expected_id = size, dim, expected
                    msg.embedding_model = table.embedding_model
                yield msg

        timeout = max(self.timeout, 600.0)
        return self._call("UploadPool", chunks(), timeout).pool_id

    # --- studies -----------------------------------------------------------------------
    def create_study(
        self,
        name: str,
        space: HardPromptSpace | SoftPromptSpace | PoolSpace,
        *,
        strategy: str | None = None,
        strategy_options: dict[str, object] | None = None,
        goal: str | None = None,
        objective: str | None = None,
        max_trials: int | None = None,
        max_active_trials: int | None = None,
        lease_seconds: float | None = None,
        seed: int | None = None,
        labels: dict[str, str] | None = None,
        request_id: str | None = None,
        validate_only: bool = False,
        pool_size: int | None = None,
        max_examples: int | None = None,
        examples_per_trial: int | None = None,
        transfer_from: Sequence[str] | None = None,
        transfer: str | None = None,
    ) -> Study:
        """Creates a study, or returns the existing one of that name if its spec is equal.

        The settings are the fields of :class:`~promptbo.spec.StudySpec`, where they and
        their defaults are described; one left at None takes the server's default (only
        the settings given travel). ``goal`` is "maximize" or "minimize";
        ``strategy_options`` values are sent as strings.

        ``transfer_from`` names earlier studies of the same space whose results warm-start
        this one; ``transfer`` says how ("both", the default, "init" or "surrogate"; see
        docs/optimizer.md).

        With ``validate_only`` the server only checks the request (name, ranges, strategy
        and options; an existing study's spec) and creates nothing: the returned handle
        describes the study that would be created. A hard space's vocabulary need not be
        uploaded yet for that check (any ``vocabulary_id`` will do).

        Fidelity: ``pool_size`` declares a labeled pool of that many examples (the server
        then picks each trial's examples, ``trial.prompt.examples``), ``max_examples`` a
        budget in scored examples, ``examples_per_trial`` the examples of a trial for
        strategies that do not choose (0: the whole pool).

        Raises InvalidArgumentError for a value out of range before any call (the checks
        of :mod:`promptbo.spec`), and the server's errors."""
        settings: dict[str, Any] = dict(
            strategy=strategy, objective=objective, max_trials=max_trials,
            max_active_trials=max_active_trials, lease_seconds=lease_seconds, seed=seed,
            labels=labels, pool_size=pool_size, max_examples=max_examples,
            examples_per_trial=examples_per_trial, transfer_from=transfer_from,
            transfer=transfer or None, goal=Goal(goal) if goal else None,
            strategy_options=strategy_options and {
                k: str(v) for k, v in strategy_options.items()},
        )
        spec = StudySpec(space, **{k: v for k, v in settings.items() if v is not None})
        req = api.CreateStudyRequest(
            name=name, spec=spec_to_pb(spec, changed_only=True),
            request_id=request_id or uuid.uuid4().hex, validate_only=validate_only,
        )
        return Study(self, self._call("CreateStudy", req).study)

    def get_study(self, name: str) -> Study:
        return Study(self, self._call("GetStudy", api.GetStudyRequest(name=name)).study)

    def list_studies(self) -> list[Study]:
        """Every study (the visible ones, with scoped tokens), fetched page by page."""
        out: list[Study] = []
        token = ""
        while True:
            resp = self._call("ListStudies", api.ListStudiesRequest(page_token=token))
            out.extend(Study(self, s) for s in resp.studies)
            token = resp.next_page_token
            if not token:
                return out

    def delete_study(self, name: str) -> None:
        self._call("DeleteStudy", api.DeleteStudyRequest(name=name))

    def update_study(
        self, name: str, *, max_trials: int | None = None, max_active_trials: int | None = None,
        labels: dict[str, str] | None = None,
    ) -> Study:
        """Changes a study's budget (``max_trials``, 0: no limit), its cap on trials in
        flight and/or its labels (replaced as a whole); None leaves a field as it is.
        Raising the budget of a completed study reactivates it."""
        req = api.UpdateStudyRequest(name=name)
        if labels is not None:
            req.spec.labels.update(labels)
            req.update_mask.paths.append("labels")
        for path, value in (("max_trials", max_trials), ("max_active_trials", max_active_trials)):
            if value is not None:
                if value < 0:
                    raise InvalidArgumentError(f"{path} must be >= 0, got {value}")
                setattr(req.spec, path, value)
                req.update_mask.paths.append(path)
        if not req.update_mask.paths:
            raise InvalidArgumentError(
                "update_study needs max_trials, max_active_trials and/or labels")
        return Study(self, self._call("UpdateStudy", req).study)


class Study:
    """A handle on one study; cheap, holds the last fetched description in ``info``."""

    def __init__(self, client: Client, info: pb.Study) -> None:
        self.client = client
        self.name = info.name
        self.info = info
        space = self.spec.space
        self._soft_shape = (
            (space.prompt_length, space.embedding_dim)
            if isinstance(space, SoftPromptSpace) else None
        )

    def __repr__(self) -> str:
        return f"Study({self.name!r}, state={pb.StudyState.Name(self.info.state)})"

    @property
    def spec(self) -> StudySpec:
        """The study's spec as of the last fetch (``info``), defaults filled in."""
        return spec_from_pb(self.info.spec)

    def refresh(self) -> pb.Study:
        self.info = self.client._call("GetStudy", api.GetStudyRequest(name=self.name)).study
        return self.info

    def transfer_sources(self) -> list[pb.TransferSource]:
        """The study's transfer sources with their current weights in its surrogate
        (``study``, ``weight``, ``trials`` read, ``note``); empty without transfer."""
        resp = self.client._call("GetStudy", api.GetStudyRequest(name=self.name))
        self.info = resp.study
        return list(resp.transfer_sources)

    @property
    def done(self) -> bool:
        return self.info.state == pb.STUDY_STATE_COMPLETED

    def _trial(self, msg: pb.Trial) -> Trial:
        return _trial_from_pb(msg, self._soft_shape)

    def ask(self, n: int = 1, *, client_id: str | None = None) -> list[Trial]:
        """Up to ``n`` trials to evaluate (empty when the budget is used up).

        ``client_id`` overrides the client's own, e.g. one id per Ray Tune trial."""
        req = api.SuggestTrialsRequest(
            study=self.name, count=n, client_id=client_id or self.client.client_id
        )
        resp = self.client._call("SuggestTrials", req)
        if resp.study_done:
            self.info.state = pb.STUDY_STATE_COMPLETED
        return [self._trial(t) for t in resp.trials]

    def tell(
        self,
        trial: Trial | int,
        value: float,
        metrics: dict[str, float] | None = None,
        *,
        client_id: str | None = None,
        stderr: float | None = None,
        examples: int = 0,
    ) -> Trial:
        """Reports ``value`` (and ``metrics``) for an active trial; ``stderr`` is the
        value's standard error over the ``examples`` examples scored (fidelity)."""
        req = api.CompleteTrialRequest(
            study=self.name, trial_id=_id(trial), value=float(value),
            metrics={k: float(v) for k, v in (metrics or {}).items()},
            client_id=client_id or self.client.client_id,
        )
        _set_fidelity(req, stderr, examples)
        return self._trial(self.client._call("CompleteTrial", req).trial)

    def tell_and_ask(
        self,
        trial: Trial | int,
        value: float,
        metrics: dict[str, float] | None = None,
        n: int = 1,
        *,
        client_id: str | None = None,
    ) -> tuple[Trial, list[Trial]]:
        """:meth:`tell` and :meth:`ask` in one round trip; returns ``(told, next_trials)``.

        ``next_trials`` is empty when the budget is used up (then :attr:`done` is True) or
        when no trial can be handed out right now; :meth:`ask` then says which."""
        req = api.CompleteTrialRequest(
            study=self.name, trial_id=_id(trial), value=float(value),
            metrics={k: float(v) for k, v in (metrics or {}).items()},
            client_id=client_id or self.client.client_id, suggest_count=n,
        )
        resp = self.client._call("CompleteTrial", req)
        if resp.study_done:
            self.info.state = pb.STUDY_STATE_COMPLETED
        return self._trial(resp.trial), [self._trial(t) for t in resp.next_trials]

    def tell_many(
        self,
        results: Sequence[
            tuple[Trial | int, float]
            | tuple[Trial | int, float, dict]
            | tuple[Trial | int, types.Score]
        ],
        n: int = 0,
        *,
        client_id: str | None = None,
    ) -> tuple[list[Trial], list[Trial]]:
        """Reports several results in one round trip; returns ``(told, next_trials)``.

        ``results`` holds ``(trial, value)``, ``(trial, value, metrics)`` or
        ``(trial, Score)`` (a Score also carries the standard error and example count);
        all are recorded or, on an error, none. With ``n > 0`` up to ``n`` next trials
        come back as with :meth:`tell_and_ask`; with ``n == 0`` ``next_trials`` is empty."""
        msgs = []
        for r in results:
            if len(r) == 2 and isinstance(r[1], types.Score):
                trial, s = r[0], r[1]
                msg = api.TrialResult(
                    trial_id=_id(trial), value=float(s.value),
                    metrics={k: float(v) for k, v in s.metrics.items()},
                )
                _set_fidelity(msg, s.stderr, s.examples)
                msgs.append(msg)
                continue
            trial, value, metrics = (*r, None) if len(r) == 2 else r
            msgs.append(api.TrialResult(
                trial_id=_id(trial), value=float(value),
                metrics={k: float(v) for k, v in (metrics or {}).items()},
            ))
        req = api.CompleteTrialsRequest(
            study=self.name, results=msgs, client_id=client_id or self.client.client_id,
            suggest_count=n,
        )
        resp = self.client._call("CompleteTrials", req)
        if resp.study_done:
            self.info.state = pb.STUDY_STATE_COMPLETED
        return [self._trial(t) for t in resp.trials], [self._trial(t) for t in resp.next_trials]

    def fail(self, trial: Trial | int, reason: str, *, client_id: str | None = None) -> Trial:
        """Marks a trial failed; ``reason`` says why (it is stored, not retried)."""
        req = api.CompleteTrialRequest(
            study=self.name, trial_id=_id(trial), failure_reason=reason or "failed",
            client_id=client_id or self.client.client_id,
        )
        return self._trial(self.client._call("CompleteTrial", req).trial)

    def heartbeat(self, trial: Trial | int) -> Trial:
        req = api.HeartbeatTrialRequest(
            study=self.name, trial_id=_id(trial), client_id=self.client.client_id
        )
        return self._trial(self.client._call("HeartbeatTrial", req).trial)

    def trials(self, state: str | None = None, page_size: int = 500) -> Iterator[Trial]:
        """All trials by id (``state``: active, completed or failed), fetched page by page."""
        token = ""
        while True:
            req = api.ListTrialsRequest(
                study=self.name, state=_STATES_BY_NAME[state or "unspecified"],
                page_size=page_size, page_token=token,
            )
            resp = self.client._call("ListTrials", req)
            yield from (self._trial(t) for t in resp.trials)
            token = resp.next_page_token
            if not token:
                return

    def best_trial(self) -> Trial | None:
        resp = self.client._call("GetBestTrial", api.GetBestTrialRequest(study=self.name))
        return self._trial(resp.trial) if resp.HasField("trial") else None

    def recommendation(self) -> Recommendation:
        """The recommended prompt with its estimate and interval, beside the best
        observed trial and the unprompted reference (see :class:`Recommendation`;
        ``trial`` is None while no trial completed)."""
        resp = self.client._call(
            "GetRecommendation", api.GetRecommendationRequest(study=self.name)
        )
        r = resp.recommendation
        has = resp.HasField("recommendation")
        return Recommendation(
            trial=self._trial(r.trial) if has else None, estimate=r.estimate, stderr=r.stderr,
            lower=r.lower, upper=r.upper, examples=r.examples, trials=r.trials,
            posterior_mean=r.posterior_mean, method=r.method,
            candidates=r.candidates, pooled_estimate=r.pooled_estimate,
            pooled_examples=r.pooled_examples,
            best_observed=self._trial(resp.best_observed)
            if resp.HasField("best_observed") else None,
            reference=self._trial(resp.reference) if resp.HasField("reference") else None,
        )

    def add_reference(self, score: types.Score) -> Trial:
        """Records the unprompted model's ``score`` as the study's reference trial (once;
        AlreadyExistsError after that)."""
        req = api.AddTrialsRequest(study=self.name, reference=True)
        k = req.trials.add(prompt=pb.Prompt(), value=float(score.value),
                           metrics={k: float(v) for k, v in score.metrics.items()})
        _set_fidelity(k, score.stderr, score.examples)
        return self._trial(self.client._call("AddTrials", req).trials[0])

    def add_trials(
        self, known: Iterable[tuple[types.Prompt, float] | tuple[types.Prompt, float, dict]]
    ) -> list[Trial]:
        """Adds prompts with known values (warm start); hard prompts by ``token_ids``, pool
        prompts by ``pool_index``."""
        req = api.AddTrialsRequest(study=self.name)
        for item in known:
            prompt, value = item[0], item[1]
            metrics = item[2] if len(item) > 2 else {}
            req.trials.add(prompt=_prompt_to_pb(prompt), value=float(value), metrics=metrics)
        return [self._trial(t) for t in self.client._call("AddTrials", req).trials]

    def watch(self) -> Iterator[tuple[str, pb.Study, Trial | None]]:
        """Yields ``(event, study, trial)`` as the study progresses, until it completes."""
        call = self.client._stub.WatchStudy(
            api.WatchStudyRequest(study=self.name), metadata=self.client._metadata
        )
        try:
            for msg in call:
                trial = self._trial(msg.trial) if msg.HasField("trial") else None
                yield msg.event, msg.study, trial
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.CANCELLED:
                raise _translate(err) from None
        finally:
            cancel = getattr(call, "cancel", None) or getattr(call, "close", None)
            if cancel is not None:
                cancel()

    def delete(self) -> None:
        self.client.delete_study(self.name)

    def trial_context(self, heartbeat_seconds: float | None = None) -> TrialContext:
        """Asks one trial and returns a context manager that heartbeats its lease while the
        block runs, tells the reported value on exit and fails the trial on an exception.
        Raises :class:`StudyDoneError` when the budget is used up."""
        return TrialContext(self, heartbeat_seconds)


class TrialContext:
    """See :meth:`Study.trial_context`."""

    def __init__(self, study: Study, heartbeat_seconds: float | None) -> None:
        self.study = study
        lease = study.spec.lease_seconds
        self.interval = heartbeat_seconds or max(0.5, lease / 3)
        self.trial: Trial | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Trial:
        trials = self.study.ask(1)
        if not trials:
            raise StudyDoneError(f"study {self.study.name!r} has used up its trial budget")
        self.trial = trials[0]
        self._thread = threading.Thread(target=self._beat, daemon=True, name="promptbo-heartbeat")
        self._thread.start()
        return self.trial

    def _beat(self) -> None:
        assert self.trial is not None
        while not self._stop.wait(self.interval):
            # A failed beat is retried by the next; completion reports a lasting problem.
            with contextlib.suppress(PromptboError):
                self.study.heartbeat(self.trial)

    def __exit__(self, exc_type, exc, tb) -> Literal[False]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        trial = self.trial
        assert trial is not None
        if exc is not None:
            reason = f"{exc_type.__name__}: {exc}"
            self.study.fail(trial, reason[:2000])
            return False
        if trial._reported is None:
            self.study.fail(trial, "the trial block ended without trial.report(value)")
            raise PromptboError(f"trial {trial.id} ended without trial.report(value)")
        rep = trial._reported
        done = self.study.tell(trial, rep.value, rep.metrics, stderr=rep.stderr,
                               examples=rep.examples)
        trial.state, trial.value, trial.metrics = done.state, done.value, done.metrics
        return False


def _id(trial: Trial | int) -> int:
    return trial if isinstance(trial, int) else trial.id


def _translate(err: grpc.RpcError) -> PromptboError:
    code = err.code() if hasattr(err, "code") else None
    details = err.details() if hasattr(err, "details") else str(err)
    name = code.name if code is not None else "UNKNOWN"
    if name == "DEADLINE_EXCEEDED":  # transient, like an unreachable server: safe to retry
        return UnavailableError(f"deadline exceeded: {details}")
    return error_for_code(name, details or name)
