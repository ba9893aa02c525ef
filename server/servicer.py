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
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from promptbo.errors import STATUS_CODES, NotFoundError, PromptboError
from promptbo.server import convert
from promptbo.server.auth import Role
from promptbo.server.limits import clip
from promptbo.server.manager import Event, KnownTrial, StudyManager, TrialResult
from promptbo.server.pool_upload import PoolUpload
from promptbo.server.upload import TableUpload, VocabularyUpload
from promptbo.server.wire import MalformedRequest
from promptbo.v1 import optimizer_service_pb2 as api
from promptbo.v1 import optimizer_service_pb2_grpc as api_grpc

log = logging.getLogger(__name__)

_Upload = TypeVar("_Upload", bound=TableUpload)

#: Longest error message sent back; longer ones (quoting a huge input) are cut.
MAX_ERROR_CHARS = 1024


def _gone(context) -> Callable[[], bool]:
    """Whether the caller of ``context`` went away (cancelled, or its deadline passed)."""
    return lambda: not context.is_active()


def _owner(context, admin: bool = True) -> dict[str, Any]:
    """The manager's ``principal`` (and ``admin``) arguments for the caller of ``context``
    (empty without principals; see :mod:`promptbo.server.auth`)."""
    principal = getattr(context, "principal", None)
    if principal is None:
        return {}
    out: dict[str, Any] = {"principal": principal.name}
    if admin:
        out["admin"] = principal.role >= Role.ADMIN
    return out


def _receive(upload: _Upload, request_iterator, context) -> _Upload:
    """``upload`` with every chunk of the stream; aborts at the first bad chunk."""
    try:
        for chunk in request_iterator:
            upload.add(chunk)
    except PromptboError as err:
        context.abort(grpc_code(err), clip(str(err), MAX_ERROR_CHARS))
    return upload


def grpc_code(err: PromptboError) -> grpc.StatusCode:
    """The status code of a promptbo error (the table lives in :mod:`promptbo.errors`)."""
    return getattr(grpc.StatusCode, STATUS_CODES.get(type(err), "UNKNOWN"), grpc.StatusCode.UNKNOWN)


def _rpc(method):
    """Maps promptbo errors to status codes; aborts the RPC so the handler stops there."""

    @functools.wraps(method)
    def wrapper(self, request, context):
        if isinstance(request, MalformedRequest):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.details)
        try:
            return method(self, request, context)
        except PromptboError as err:
            context.abort(grpc_code(err), clip(str(err), MAX_ERROR_CHARS))
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
        study, created = self.manager.create_study(
            request.name, spec, request.request_id, validate_only=request.validate_only
        )
        if request.validate_only:
            try:
                return api.CreateStudyResponse(study=self._study_pb(study))
            except NotFoundError:  # no study of that name: the one that would be created
                return api.CreateStudyResponse(study=convert.study_to_pb(study))
        return api.CreateStudyResponse(study=self._study_pb(study), created=created)

    @_rpc
    def GetStudy(self, request, context):
        return api.GetStudyResponse(
            study=self._study_pb(self.manager.get_study(request.name)),
            transfer_sources=convert.transfer_sources_to_pb(
                self.manager.transfer_status(request.name)
            ),
        )

    @_rpc
    def ListStudies(self, request, context):
        studies, token = self.manager.list_studies(request.page_size, request.page_token)
        return api.ListStudiesResponse(
            studies=[self._study_pb(s) for s in studies], next_page_token=token
        )

    @_rpc
    def DeleteStudy(self, request, context):
        self.manager.delete_study(request.name)
        return api.DeleteStudyResponse()

    @_rpc
    def UpdateStudy(self, request, context):
        fields = convert.study_update_from_pb(request.spec, request.update_mask.paths)
        study = self.manager.update_study(request.name, **fields)
        return api.UpdateStudyResponse(study=self._study_pb(study))

    def UploadVocabulary(self, request_iterator, context):
        return self.store_vocabulary(_receive(VocabularyUpload(), request_iterator, context),
                                     context)

    @_rpc
    def store_vocabulary(self, upload: VocabularyUpload, context):
        """Checks a fully received upload and stores its vocabulary."""
        vocab, expected = upload.finish()
        vocab_id, present = self.manager.upload_vocabulary(vocab, expected)
        return api.UploadVocabularyResponse(
            vocabulary_id=vocab_id, size=vocab.size, embedding_dim=vocab.embedding_dim,
            already_present=present,
        )

    def UploadPool(self, request_iterator, context):
        return self.store_pool(_receive(PoolUpload(), request_iterator, context), context)

    @_rpc
    def store_pool(self, upload: PoolUpload, context):
        """Checks a fully received pool upload and stores it."""
        pool, expected = upload.finish()
        pool_id, present = self.manager.upload_pool(pool, expected)
        return api.UploadPoolResponse(
            pool_id=pool_id, size=pool.size, embedding_dim=pool.embedding_dim,
            already_present=present,
        )

    @_rpc
    def SuggestTrials(self, request, context):
        trials, done = self.manager.suggest_trials(
            request.study, request.count or 1, request.client_id, _gone(context),
            **_owner(context, admin=False),
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
        trial = self.manager.complete_trials(
            request.study, [result], request.client_id, **_owner(context)
        )[0]
        response = api.CompleteTrialResponse(trial=convert.trial_to_pb(trial))
        self._hand_out_next(request, response, context)
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
        trials = self.manager.complete_trials(
            request.study, results, request.client_id, **_owner(context)
        )
        response = api.CompleteTrialsResponse(trials=[convert.trial_to_pb(t) for t in trials])
        self._hand_out_next(request, response, context)
        return response

    def _hand_out_next(self, request, response, context) -> None:
        """Fills ``next_trials``/``study_done`` of a completion's response."""
        if not request.suggest_count:
            return
        # The results are stored; a refusal to hand out more (cap reached, bad count) must
        # not turn into an error the worker would answer by re-sending the results.
        try:
            trials, done = self.manager.suggest_trials(
                request.study, request.suggest_count, request.client_id, _gone(context),
                **_owner(context, admin=False),
            )
        except PromptboError as err:
            log.debug("no next trial for %r with its results: %s", request.client_id, err)
        else:
            response.next_trials.extend(convert.trial_to_pb(t) for t in trials)
            response.study_done = done

    @_rpc
    def HeartbeatTrial(self, request, context):
        trial = self.manager.heartbeat_trial(
            request.study, request.trial_id, request.client_id, **_owner(context)
        )
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
        if isinstance(request, MalformedRequest):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.details)
        stop = threading.Event()
        context.add_callback(stop.set)
        try:
            for event in self.manager.watch(request.study, stop):
                yield watch_message(event)
        except PromptboError as err:
            context.abort(grpc_code(err), clip(str(err), MAX_ERROR_CHARS))


def watch_message(event: Event) -> api.WatchStudyResponse:
    """The WatchStudy message of a study event."""
    msg = api.WatchStudyResponse(
        event=event.kind, study=convert.study_to_pb(event.study, event.counts, event.best),
    )
    if event.trial is not None:
        msg.trial.CopyFrom(convert.trial_to_pb(event.trial))
    return msg
