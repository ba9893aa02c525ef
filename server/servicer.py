"""The gRPC servicer of promptbo.v1.OptimizerService: converts and delegates.

Each RPC converts its request with :mod:`promptbo.server.convert`, calls the
:class:`~promptbo.server.manager.StudyManager`, and converts the result back. Errors of
:mod:`promptbo.errors` become status codes through :func:`grpc_code` (one table); any
other exception is logged and reported as INTERNAL.
"""

from __future__ import annotations

import functools
import logging
import threading

import grpc
import numpy as np

from promptbo.errors import STATUS_CODES, InvalidArgumentError, PromptboError
from promptbo.server import convert
from promptbo.server.domain import Vocabulary
from promptbo.server.manager import KnownTrial, StudyManager, TrialResult
from promptbo.v1 import optimizer_service_pb2 as api
from promptbo.v1 import optimizer_service_pb2_grpc as api_grpc

log = logging.getLogger(__name__)

MAX_VOCABULARY_SIZE = 1_000_000
MAX_VOCABULARY_BYTES = 2 * 1024**3


def grpc_code(err: PromptboError) -> grpc.StatusCode:
    """The status code of a promptbo error (the table lives in :mod:`promptbo.errors`)."""
    return getattr(grpc.StatusCode, STATUS_CODES.get(type(err), "UNKNOWN"), grpc.StatusCode.UNKNOWN)


def _rpc(method):
    """Maps promptbo errors to status codes; aborts the RPC so the handler stops there."""

    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except PromptboError as err:
            context.abort(grpc_code(err), str(err))
        except Exception:
            log.exception("internal error in %s", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method.__name__}")

    return wrapper


class OptimizerServicer(api_grpc.OptimizerServiceServicer):
    def __init__(self, manager: StudyManager) -> None:
        self.manager = manager

    def _study_pb(self, study):
        return convert.study_to_pb(
            *self.manager.describe(study.name), self.manager.examples_scored(study.name)
        )

    @_rpc
    def CreateStudy(self, request, context):
        spec = convert.spec_from_pb(request.spec)
        study, created = self.manager.create_study(request.name, spec, request.request_id)
        return api.CreateStudyResponse(study=self._study_pb(study), created=created)

    @_rpc
    def GetStudy(self, request, context):
        return api.GetStudyResponse(study=self._study_pb(self.manager.get_study(request.name)))

    @_rpc
    def ListStudies(self, request, context):
        studies = [self._study_pb(s) for s in self.manager.list_studies()]
        return api.ListStudiesResponse(studies=studies)

    @_rpc
    def DeleteStudy(self, request, context):
        self.manager.delete_study(request.name)
        return api.DeleteStudyResponse()

    @_rpc
    def UploadVocabulary(self, request_iterator, context):
        vocab, expected = _assemble_vocabulary(request_iterator)
        vocab_id, present = self.manager.upload_vocabulary(vocab, expected)
        return api.UploadVocabularyResponse(
            vocabulary_id=vocab_id, size=vocab.size, embedding_dim=vocab.embedding_dim,
            already_present=present,
        )

    @_rpc
    def SuggestTrials(self, request, context):
        trials, done = self.manager.suggest_trials(
            request.study, request.count or 1, request.client_id
        )
        return api.SuggestTrialsResponse(
            trials=[convert.trial_to_pb(t) for t in trials], study_done=done
        )

    @_rpc
    def CompleteTrial(self, request, context):
        result = TrialResult(
            request.trial_id, request.value, dict(request.metrics), request.failure_reason,
            request.value_stderr if request.HasField("value_stderr") else None,
            request.examples_scored,
        )
        trial = self.manager.complete_trials(request.study, [result], request.client_id)[0]
        response = api.CompleteTrialResponse(trial=convert.trial_to_pb(trial))
        self._hand_out_next(request, response)
        return response

    @_rpc
    def CompleteTrials(self, request, context):
        results = [
            TrialResult(
                r.trial_id, r.value, dict(r.metrics), r.failure_reason,
                r.value_stderr if r.HasField("value_stderr") else None, r.examples_scored,
            )
            for r in request.results
        ]
        trials = self.manager.complete_trials(request.study, results, request.client_id)
        response = api.CompleteTrialsResponse(trials=[convert.trial_to_pb(t) for t in trials])
        self._hand_out_next(request, response)
        return response

    def _hand_out_next(self, request, response) -> None:
        """Fills ``next_trials``/``study_done`` of a completion's response."""
        if not request.suggest_count:
            return
        # The results are stored; a refusal to hand out more (cap reached, bad count) must
        # not turn into an error the worker would answer by re-sending the results.
        try:
            trials, done = self.manager.suggest_trials(
                request.study, request.suggest_count, request.client_id
            )
        except PromptboError as err:
            log.debug("no next trial for %r with its results: %s", request.client_id, err)
        else:
            response.next_trials.extend(convert.trial_to_pb(t) for t in trials)
            response.study_done = done

    @_rpc
    def HeartbeatTrial(self, request, context):
        trial = self.manager.heartbeat_trial(request.study, request.trial_id, request.client_id)
        return api.HeartbeatTrialResponse(trial=convert.trial_to_pb(trial))

    @_rpc
    def ListTrials(self, request, context):
        trials, token = self.manager.list_trials(
            request.study, convert.trial_state_from_pb(request.state), request.page_size,
            request.page_token,
        )
        return api.ListTrialsResponse(
            trials=[convert.trial_to_pb(t) for t in trials], next_page_token=token
        )

    @_rpc
    def GetBestTrial(self, request, context):
        best = self.manager.best_trial(request.study)
        if best is None:
            return api.GetBestTrialResponse()
        return api.GetBestTrialResponse(trial=convert.trial_to_pb(best))

    @_rpc
    def AddTrials(self, request, context):
        known = [
            KnownTrial(
                convert.prompt_from_pb(k.prompt), k.value, dict(k.metrics),
                k.value_stderr if k.HasField("value_stderr") else None, k.examples_scored,
            )
            for k in request.trials
        ]
        trials = self.manager.add_trials(request.study, known, request.reference)
        return api.AddTrialsResponse(trials=[convert.trial_to_pb(t) for t in trials])

    @_rpc
    def GetRecommendation(self, request, context):
        rec, best, ref = self.manager.recommendation(request.study)
        response = api.GetRecommendationResponse()
        if rec is not None:
            response.recommendation.CopyFrom(convert.recommendation_to_pb(rec))
        if best is not None:
            response.best_observed.CopyFrom(convert.trial_to_pb(best))
        if ref is not None:
            response.reference.CopyFrom(convert.trial_to_pb(ref))
        return response

    def WatchStudy(self, request, context):
        stop = threading.Event()
        context.add_callback(stop.set)
        try:
            for event in self.manager.watch(request.study, stop):
                msg = api.WatchStudyResponse(
                    event=event.kind,
                    study=convert.study_to_pb(event.study, event.counts, event.best),
                )
                if event.trial is not None:
                    msg.trial.CopyFrom(convert.trial_to_pb(event.trial))
                yield msg
        except PromptboError as err:
            context.abort(grpc_code(err), str(err))


def _assemble_vocabulary(chunks) -> tuple[Vocabulary, str]:
    """Joins the chunks of an UploadVocabulary stream; returns the vocabulary and the
    client's expected id. Raises InvalidArgumentError for inconsistent chunks."""
    size = dim = 0
    expected = ""
    tokens: list[str] = []
    ids: list[int] = []
    parts: list[bytes] = []
    nbytes = 0
    for i, chunk in enumerate(chunks):
        if i == 0:
            size, dim, expected = chunk.size, chunk.embedding_dim, chunk.expected_id
            if not (1 <= size <= MAX_VOCABULARY_SIZE) or not (1 <= dim <= 65536):
                raise InvalidArgumentError(
                    f"the first chunk must give size in [1, {MAX_VOCABULARY_SIZE}] and "
                    f"embedding_dim in [1, 65536]; got size={size}, embedding_dim={dim}"
                )
            if size * dim * 4 > MAX_VOCABULARY_BYTES:
                raise InvalidArgumentError("the embedding table is larger than 2 GiB")
        elif (chunk.size and chunk.size != size) or (
            chunk.embedding_dim and chunk.embedding_dim != dim
        ):
            raise InvalidArgumentError(f"chunk {i} changes size or embedding_dim mid-upload")
        tokens.extend(chunk.tokens)
        ids.extend(chunk.token_ids)
        parts.append(chunk.embeddings)
        nbytes += len(chunk.embeddings)
        if len(tokens) > size or len(ids) > size or nbytes > size * dim * 4:
            raise InvalidArgumentError(
                f"chunk {i} carries more data than the declared size={size} x dim={dim}"
            )
    if size == 0:
        raise InvalidArgumentError("the upload stream was empty")
    if nbytes != size * dim * 4:
        raise InvalidArgumentError(
            f"got {nbytes} bytes of embeddings, expected size x dim x 4 = {size * dim * 4}"
        )
    if len(set(ids)) != len(ids):
        raise InvalidArgumentError("token_ids must be unique within a vocabulary")
    emb = np.frombuffer(b"".join(parts), dtype="<f4").reshape(size, dim)
    return Vocabulary(tuple(tokens), tuple(ids), emb), expected
