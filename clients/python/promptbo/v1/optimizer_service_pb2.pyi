from google.protobuf import field_mask_pb2 as _field_mask_pb2
from promptbo.v1 import resources_pb2 as _resources_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateStudyRequest(_message.Message):
    __slots__ = ("name", "spec", "request_id", "validate_only")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    name: str
    spec: _resources_pb2.StudySpec
    request_id: str
    validate_only: bool
    def __init__(self, name: _Optional[str] = ..., spec: _Optional[_Union[_resources_pb2.StudySpec, _Mapping]] = ..., request_id: _Optional[str] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class CreateStudyResponse(_message.Message):
    __slots__ = ("study", "created")
    STUDY_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    study: _resources_pb2.Study
    created: bool
    def __init__(self, study: _Optional[_Union[_resources_pb2.Study, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetStudyRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetStudyResponse(_message.Message):
    __slots__ = ("study", "transfer_sources")
    STUDY_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_SOURCES_FIELD_NUMBER: _ClassVar[int]
    study: _resources_pb2.Study
    transfer_sources: _containers.RepeatedCompositeFieldContainer[_resources_pb2.TransferSource]
    def __init__(self, study: _Optional[_Union[_resources_pb2.Study, _Mapping]] = ..., transfer_sources: _Optional[_Iterable[_Union[_resources_pb2.TransferSource, _Mapping]]] = ...) -> None: ...

class ListStudiesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListStudiesResponse(_message.Message):
    __slots__ = ("studies", "next_page_token")
    STUDIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    studies: _containers.RepeatedCompositeFieldContainer[_resources_pb2.Study]
    next_page_token: str
    def __init__(self, studies: _Optional[_Iterable[_Union[_resources_pb2.Study, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteStudyRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteStudyResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UploadVocabularyRequest(_message.Message):
    __slots__ = ("size", "embedding_dim", "tokens", "token_ids", "embeddings", "expected_id")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_DIM_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_ID_FIELD_NUMBER: _ClassVar[int]
    size: int
    embedding_dim: int
    tokens: _containers.RepeatedScalarFieldContainer[str]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    embeddings: bytes
    expected_id: str
    def __init__(self, size: _Optional[int] = ..., embedding_dim: _Optional[int] = ..., tokens: _Optional[_Iterable[str]] = ..., token_ids: _Optional[_Iterable[int]] = ..., embeddings: _Optional[bytes] = ..., expected_id: _Optional[str] = ...) -> None: ...

class UploadVocabularyResponse(_message.Message):
    __slots__ = ("vocabulary_id", "size", "embedding_dim", "already_present")
    VOCABULARY_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_DIM_FIELD_NUMBER: _ClassVar[int]
    ALREADY_PRESENT_FIELD_NUMBER: _ClassVar[int]
    vocabulary_id: str
    size: int
    embedding_dim: int
    already_present: bool
    def __init__(self, vocabulary_id: _Optional[str] = ..., size: _Optional[int] = ..., embedding_dim: _Optional[int] = ..., already_present: _Optional[bool] = ...) -> None: ...

class SuggestTrialsRequest(_message.Message):
    __slots__ = ("study", "count", "client_id")
    STUDY_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    study: str
    count: int
    client_id: str
    def __init__(self, study: _Optional[str] = ..., count: _Optional[int] = ..., client_id: _Optional[str] = ...) -> None: ...

class SuggestTrialsResponse(_message.Message):
    __slots__ = ("trials", "study_done")
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    STUDY_DONE_FIELD_NUMBER: _ClassVar[int]
    trials: _containers.RepeatedCompositeFieldContainer[_resources_pb2.Trial]
    study_done: bool
    def __init__(self, trials: _Optional[_Iterable[_Union[_resources_pb2.Trial, _Mapping]]] = ..., study_done: _Optional[bool] = ...) -> None: ...

class CompleteTrialRequest(_message.Message):
    __slots__ = ("study", "trial_id", "value", "metrics", "failure_reason", "client_id", "suggest_count", "value_stderr", "examples_scored")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    STUDY_FIELD_NUMBER: _ClassVar[int]
    TRIAL_ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SUGGEST_COUNT_FIELD_NUMBER: _ClassVar[int]
    VALUE_STDERR_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_SCORED_FIELD_NUMBER: _ClassVar[int]
    study: str
    trial_id: int
    value: float
    metrics: _containers.ScalarMap[str, float]
    failure_reason: str
    client_id: str
    suggest_count: int
    value_stderr: float
    examples_scored: int
    def __init__(self, study: _Optional[str] = ..., trial_id: _Optional[int] = ..., value: _Optional[float] = ..., metrics: _Optional[_Mapping[str, float]] = ..., failure_reason: _Optional[str] = ..., client_id: _Optional[str] = ..., suggest_count: _Optional[int] = ..., value_stderr: _Optional[float] = ..., examples_scored: _Optional[int] = ...) -> None: ...

class CompleteTrialResponse(_message.Message):
    __slots__ = ("trial", "next_trials", "study_done")
    TRIAL_FIELD_NUMBER: _ClassVar[int]
    NEXT_TRIALS_FIELD_NUMBER: _ClassVar[int]
    STUDY_DONE_FIELD_NUMBER: _ClassVar[int]
    trial: _resources_pb2.Trial
    next_trials: _containers.RepeatedCompositeFieldContainer[_resources_pb2.Trial]
    study_done: bool
    def __init__(self, trial: _Optional[_Union[_resources_pb2.Trial, _Mapping]] = ..., next_trials: _Optional[_Iterable[_Union[_resources_pb2.Trial, _Mapping]]] = ..., study_done: _Optional[bool] = ...) -> None: ...

class TrialResult(_message.Message):
    __slots__ = ("trial_id", "value", "metrics", "failure_reason", "value_stderr", "examples_scored")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TRIAL_ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    VALUE_STDERR_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_SCORED_FIELD_NUMBER: _ClassVar[int]
    trial_id: int
    value: float
    metrics: _containers.ScalarMap[str, float]
    failure_reason: str
    value_stderr: float
    examples_scored: int
    def __init__(self, trial_id: _Optional[int] = ..., value: _Optional[float] = ..., metrics: _Optional[_Mapping[str, float]] = ..., failure_reason: _Optional[str] = ..., value_stderr: _Optional[float] = ..., examples_scored: _Optional[int] = ...) -> None: ...

class CompleteTrialsRequest(_message.Message):
    __slots__ = ("study", "results", "client_id", "suggest_count")
    STUDY_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SUGGEST_COUNT_FIELD_NUMBER: _ClassVar[int]
    study: str
    results: _containers.RepeatedCompositeFieldContainer[TrialResult]
    client_id: str
    suggest_count: int
    def __init__(self, study: _Optional[str] = ..., results: _Optional[_Iterable[_Union[TrialResult, _Mapping]]] = ..., client_id: _Optional[str] = ..., suggest_count: _Optional[int] = ...) -> None: ...

class CompleteTrialsResponse(_message.Message):
    __slots__ = ("trials", "next_trials", "study_done")
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    NEXT_TRIALS_FIELD_NUMBER: _ClassVar[int]
    STUDY_DONE_FIELD_NUMBER: _ClassVar[int]
    trials: _containers.RepeatedCompositeFieldContainer[_resources_pb2.Trial]
    next_trials: _containers.RepeatedCompositeFieldContainer[_resources_pb2.Trial]
    study_done: bool
    def __init__(self, trials: _Optional[_Iterable[_Union[_resources_pb2.Trial, _Mapping]]] = ..., next_trials: _Optional[_Iterable[_Union[_resources_pb2.Trial, _Mapping]]] = ..., study_done: _Optional[bool] = ...) -> None: ...

class HeartbeatTrialRequest(_message.Message):
    __slots__ = ("study", "trial_id", "client_id")
    STUDY_FIELD_NUMBER: _ClassVar[int]
    TRIAL_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    study: str
    trial_id: int
    client_id: str
    def __init__(self, study: _Optional[str] = ..., trial_id: _Optional[int] = ..., client_id: _Optional[str] = ...) -> None: ...

class HeartbeatTrialResponse(_message.Message):
    __slots__ = ("trial",)
    TRIAL_FIELD_NUMBER: _ClassVar[int]
    trial: _resources_pb2.Trial
    def __init__(self, trial: _Optional[_Union[_resources_pb2.Trial, _Mapping]] = ...) -> None: ...

class ListTrialsRequest(_message.Message):
    __slots__ = ("study", "state", "page_size", "page_token")
    STUDY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    study: str
    state: _resources_pb2.TrialState
    page_size: int
    page_token: str
    def __init__(self, study: _Optional[str] = ..., state: _Optional[_Union[_resources_pb2.TrialState, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTrialsResponse(_message.Message):
    __slots__ = ("trials", "next_page_token")
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    trials: _containers.RepeatedCompositeFieldContainer[_resources_pb2.Trial]
    next_page_token: str
    def __init__(self, trials: _Optional[_Iterable[_Union[_resources_pb2.Trial, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetBestTrialRequest(_message.Message):
    __slots__ = ("study",)
    STUDY_FIELD_NUMBER: _ClassVar[int]
    study: str
    def __init__(self, study: _Optional[str] = ...) -> None: ...

class GetBestTrialResponse(_message.Message):
    __slots__ = ("trial",)
    TRIAL_FIELD_NUMBER: _ClassVar[int]
    trial: _resources_pb2.Trial
    def __init__(self, trial: _Optional[_Union[_resources_pb2.Trial, _Mapping]] = ...) -> None: ...

class AddTrialsRequest(_message.Message):
    __slots__ = ("study", "trials", "reference")
    STUDY_FIELD_NUMBER: _ClassVar[int]
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    study: str
    trials: _containers.RepeatedCompositeFieldContainer[KnownTrial]
    reference: bool
    def __init__(self, study: _Optional[str] = ..., trials: _Optional[_Iterable[_Union[KnownTrial, _Mapping]]] = ..., reference: _Optional[bool] = ...) -> None: ...

class KnownTrial(_message.Message):
    __slots__ = ("prompt", "value", "metrics", "value_stderr", "examples_scored")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    VALUE_STDERR_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_SCORED_FIELD_NUMBER: _ClassVar[int]
    prompt: _resources_pb2.Prompt
    value: float
    metrics: _containers.ScalarMap[str, float]
    value_stderr: float
    examples_scored: int
    def __init__(self, prompt: _Optional[_Union[_resources_pb2.Prompt, _Mapping]] = ..., value: _Optional[float] = ..., metrics: _Optional[_Mapping[str, float]] = ..., value_stderr: _Optional[float] = ..., examples_scored: _Optional[int] = ...) -> None: ...

class AddTrialsResponse(_message.Message):
    __slots__ = ("trials",)
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    trials: _containers.RepeatedCompositeFieldContainer[_resources_pb2.Trial]
    def __init__(self, trials: _Optional[_Iterable[_Union[_resources_pb2.Trial, _Mapping]]] = ...) -> None: ...

class WatchStudyRequest(_message.Message):
    __slots__ = ("study",)
    STUDY_FIELD_NUMBER: _ClassVar[int]
    study: str
    def __init__(self, study: _Optional[str] = ...) -> None: ...

class WatchStudyResponse(_message.Message):
    __slots__ = ("event", "study", "trial")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    STUDY_FIELD_NUMBER: _ClassVar[int]
    TRIAL_FIELD_NUMBER: _ClassVar[int]
    event: str
    study: _resources_pb2.Study
    trial: _resources_pb2.Trial
    def __init__(self, event: _Optional[str] = ..., study: _Optional[_Union[_resources_pb2.Study, _Mapping]] = ..., trial: _Optional[_Union[_resources_pb2.Trial, _Mapping]] = ...) -> None: ...

class UpdateStudyRequest(_message.Message):
    __slots__ = ("name", "spec", "update_mask")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    name: str
    spec: _resources_pb2.StudySpec
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, name: _Optional[str] = ..., spec: _Optional[_Union[_resources_pb2.StudySpec, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class UpdateStudyResponse(_message.Message):
    __slots__ = ("study",)
    STUDY_FIELD_NUMBER: _ClassVar[int]
    study: _resources_pb2.Study
    def __init__(self, study: _Optional[_Union[_resources_pb2.Study, _Mapping]] = ...) -> None: ...

class UploadPoolRequest(_message.Message):
    __slots__ = ("size", "embedding_dim", "texts", "embeddings", "expected_id", "embedding_model")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_DIM_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_ID_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_MODEL_FIELD_NUMBER: _ClassVar[int]
    size: int
    embedding_dim: int
    texts: _containers.RepeatedScalarFieldContainer[str]
    embeddings: bytes
    expected_id: str
    embedding_model: str
    def __init__(self, size: _Optional[int] = ..., embedding_dim: _Optional[int] = ..., texts: _Optional[_Iterable[str]] = ..., embeddings: _Optional[bytes] = ..., expected_id: _Optional[str] = ..., embedding_model: _Optional[str] = ...) -> None: ...

class UploadPoolResponse(_message.Message):
    __slots__ = ("pool_id", "size", "embedding_dim", "already_present")
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_DIM_FIELD_NUMBER: _ClassVar[int]
    ALREADY_PRESENT_FIELD_NUMBER: _ClassVar[int]
    pool_id: str
    size: int
    embedding_dim: int
    already_present: bool
    def __init__(self, pool_id: _Optional[str] = ..., size: _Optional[int] = ..., embedding_dim: _Optional[int] = ..., already_present: _Optional[bool] = ...) -> None: ...

class GetRecommendationRequest(_message.Message):
    __slots__ = ("study",)
    STUDY_FIELD_NUMBER: _ClassVar[int]
    study: str
    def __init__(self, study: _Optional[str] = ...) -> None: ...

class Recommendation(_message.Message):
    __slots__ = ("prompt", "trial", "estimate", "stderr", "lower", "upper", "examples", "trials", "posterior_mean", "method", "candidates", "pooled_estimate", "pooled_examples")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    TRIAL_FIELD_NUMBER: _ClassVar[int]
    ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    POSTERIOR_MEAN_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    POOLED_ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    POOLED_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    prompt: _resources_pb2.Prompt
    trial: _resources_pb2.Trial
    estimate: float
    stderr: float
    lower: float
    upper: float
    examples: int
    trials: int
    posterior_mean: float
    method: str
    candidates: int
    pooled_estimate: float
    pooled_examples: int
    def __init__(self, prompt: _Optional[_Union[_resources_pb2.Prompt, _Mapping]] = ..., trial: _Optional[_Union[_resources_pb2.Trial, _Mapping]] = ..., estimate: _Optional[float] = ..., stderr: _Optional[float] = ..., lower: _Optional[float] = ..., upper: _Optional[float] = ..., examples: _Optional[int] = ..., trials: _Optional[int] = ..., posterior_mean: _Optional[float] = ..., method: _Optional[str] = ..., candidates: _Optional[int] = ..., pooled_estimate: _Optional[float] = ..., pooled_examples: _Optional[int] = ...) -> None: ...

class GetRecommendationResponse(_message.Message):
    __slots__ = ("recommendation", "best_observed", "reference")
    RECOMMENDATION_FIELD_NUMBER: _ClassVar[int]
    BEST_OBSERVED_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    recommendation: Recommendation
    best_observed: _resources_pb2.Trial
    reference: _resources_pb2.Trial
    def __init__(self, recommendation: _Optional[_Union[Recommendation, _Mapping]] = ..., best_observed: _Optional[_Union[_resources_pb2.Trial, _Mapping]] = ..., reference: _Optional[_Union[_resources_pb2.Trial, _Mapping]] = ...) -> None: ...
