import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Goal(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GOAL_UNSPECIFIED: _ClassVar[Goal]
    GOAL_MAXIMIZE: _ClassVar[Goal]
    GOAL_MINIMIZE: _ClassVar[Goal]

class StudyState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STUDY_STATE_UNSPECIFIED: _ClassVar[StudyState]
    STUDY_STATE_ACTIVE: _ClassVar[StudyState]
    STUDY_STATE_COMPLETED: _ClassVar[StudyState]

class TrialState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRIAL_STATE_UNSPECIFIED: _ClassVar[TrialState]
    TRIAL_STATE_ACTIVE: _ClassVar[TrialState]
    TRIAL_STATE_COMPLETED: _ClassVar[TrialState]
    TRIAL_STATE_FAILED: _ClassVar[TrialState]
GOAL_UNSPECIFIED: Goal
GOAL_MAXIMIZE: Goal
GOAL_MINIMIZE: Goal
STUDY_STATE_UNSPECIFIED: StudyState
STUDY_STATE_ACTIVE: StudyState
STUDY_STATE_COMPLETED: StudyState
TRIAL_STATE_UNSPECIFIED: TrialState
TRIAL_STATE_ACTIVE: TrialState
TRIAL_STATE_COMPLETED: TrialState
TRIAL_STATE_FAILED: TrialState

class VocabularyFilter(_message.Message):
    __slots__ = ("top_n", "allowed")
    class TopN(_message.Message):
        __slots__ = ("n", "scores")
        N_FIELD_NUMBER: _ClassVar[int]
        SCORES_FIELD_NUMBER: _ClassVar[int]
        n: int
        scores: _containers.RepeatedScalarFieldContainer[float]
        def __init__(self, n: _Optional[int] = ..., scores: _Optional[_Iterable[float]] = ...) -> None: ...
    class Allowed(_message.Message):
        __slots__ = ("indices",)
        INDICES_FIELD_NUMBER: _ClassVar[int]
        indices: _containers.RepeatedScalarFieldContainer[int]
        def __init__(self, indices: _Optional[_Iterable[int]] = ...) -> None: ...
    TOP_N_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    top_n: VocabularyFilter.TopN
    allowed: VocabularyFilter.Allowed
    def __init__(self, top_n: _Optional[_Union[VocabularyFilter.TopN, _Mapping]] = ..., allowed: _Optional[_Union[VocabularyFilter.Allowed, _Mapping]] = ...) -> None: ...

class HardPromptSpace(_message.Message):
    __slots__ = ("prompt_length", "vocabulary_id", "pca_dims", "filter")
    PROMPT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    VOCABULARY_ID_FIELD_NUMBER: _ClassVar[int]
    PCA_DIMS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    prompt_length: int
    vocabulary_id: str
    pca_dims: int
    filter: VocabularyFilter
    def __init__(self, prompt_length: _Optional[int] = ..., vocabulary_id: _Optional[str] = ..., pca_dims: _Optional[int] = ..., filter: _Optional[_Union[VocabularyFilter, _Mapping]] = ...) -> None: ...

class SoftPromptSpace(_message.Message):
    __slots__ = ("prompt_length", "embedding_dim", "intrinsic_dim", "bound", "embedding_std")
    PROMPT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_DIM_FIELD_NUMBER: _ClassVar[int]
    INTRINSIC_DIM_FIELD_NUMBER: _ClassVar[int]
    BOUND_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_STD_FIELD_NUMBER: _ClassVar[int]
    prompt_length: int
    embedding_dim: int
    intrinsic_dim: int
    bound: float
    embedding_std: float
    def __init__(self, prompt_length: _Optional[int] = ..., embedding_dim: _Optional[int] = ..., intrinsic_dim: _Optional[int] = ..., bound: _Optional[float] = ..., embedding_std: _Optional[float] = ...) -> None: ...

class PoolSpace(_message.Message):
    __slots__ = ("pool_id",)
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    pool_id: str
    def __init__(self, pool_id: _Optional[str] = ...) -> None: ...

class StudySpec(_message.Message):
    __slots__ = ("hard", "soft", "pool", "strategy", "strategy_options", "goal", "objective", "max_trials", "max_active_trials", "lease_seconds", "seed", "labels", "pool_size", "max_examples", "examples_per_trial", "transfer_from", "transfer")
    class StrategyOptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    HARD_FIELD_NUMBER: _ClassVar[int]
    SOFT_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    GOAL_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    MAX_TRIALS_FIELD_NUMBER: _ClassVar[int]
    MAX_ACTIVE_TRIALS_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    POOL_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_PER_TRIAL_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_FROM_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_FIELD_NUMBER: _ClassVar[int]
    hard: HardPromptSpace
    soft: SoftPromptSpace
    pool: PoolSpace
    strategy: str
    strategy_options: _containers.ScalarMap[str, str]
    goal: Goal
    objective: str
    max_trials: int
    max_active_trials: int
    lease_seconds: float
    seed: int
    labels: _containers.ScalarMap[str, str]
    pool_size: int
    max_examples: int
    examples_per_trial: int
    transfer_from: _containers.RepeatedScalarFieldContainer[str]
    transfer: str
    def __init__(self, hard: _Optional[_Union[HardPromptSpace, _Mapping]] = ..., soft: _Optional[_Union[SoftPromptSpace, _Mapping]] = ..., pool: _Optional[_Union[PoolSpace, _Mapping]] = ..., strategy: _Optional[str] = ..., strategy_options: _Optional[_Mapping[str, str]] = ..., goal: _Optional[_Union[Goal, str]] = ..., objective: _Optional[str] = ..., max_trials: _Optional[int] = ..., max_active_trials: _Optional[int] = ..., lease_seconds: _Optional[float] = ..., seed: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., pool_size: _Optional[int] = ..., max_examples: _Optional[int] = ..., examples_per_trial: _Optional[int] = ..., transfer_from: _Optional[_Iterable[str]] = ..., transfer: _Optional[str] = ...) -> None: ...

class TransferSource(_message.Message):
    __slots__ = ("study", "weight", "trials", "note")
    STUDY_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    study: str
    weight: float
    trials: int
    note: str
    def __init__(self, study: _Optional[str] = ..., weight: _Optional[float] = ..., trials: _Optional[int] = ..., note: _Optional[str] = ...) -> None: ...

class Prompt(_message.Message):
    __slots__ = ("token_ids", "tokens", "text", "vector", "pool_index")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    POOL_INDEX_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    tokens: _containers.RepeatedScalarFieldContainer[str]
    text: str
    vector: _containers.RepeatedScalarFieldContainer[float]
    pool_index: int
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., tokens: _Optional[_Iterable[str]] = ..., text: _Optional[str] = ..., vector: _Optional[_Iterable[float]] = ..., pool_index: _Optional[int] = ...) -> None: ...

class Trial(_message.Message):
    __slots__ = ("study", "id", "state", "prompt", "client_id", "lease_deadline", "value", "metrics", "failure_reason", "create_time", "complete_time", "source", "principal", "example_indices", "value_stderr", "examples_scored")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    STUDY_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_DEADLINE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_TIME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    EXAMPLE_INDICES_FIELD_NUMBER: _ClassVar[int]
    VALUE_STDERR_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_SCORED_FIELD_NUMBER: _ClassVar[int]
    study: str
    id: int
    state: TrialState
    prompt: Prompt
    client_id: str
    lease_deadline: _timestamp_pb2.Timestamp
    value: float
    metrics: _containers.ScalarMap[str, float]
    failure_reason: str
    create_time: _timestamp_pb2.Timestamp
    complete_time: _timestamp_pb2.Timestamp
    source: str
    principal: str
    example_indices: _containers.RepeatedScalarFieldContainer[int]
    value_stderr: float
    examples_scored: int
    def __init__(self, study: _Optional[str] = ..., id: _Optional[int] = ..., state: _Optional[_Union[TrialState, str]] = ..., prompt: _Optional[_Union[Prompt, _Mapping]] = ..., client_id: _Optional[str] = ..., lease_deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., value: _Optional[float] = ..., metrics: _Optional[_Mapping[str, float]] = ..., failure_reason: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., complete_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source: _Optional[str] = ..., principal: _Optional[str] = ..., example_indices: _Optional[_Iterable[int]] = ..., value_stderr: _Optional[float] = ..., examples_scored: _Optional[int] = ...) -> None: ...

class Study(_message.Message):
    __slots__ = ("name", "state", "spec", "trial_count", "completed_count", "failed_count", "active_count", "best_trial", "create_time", "examples_scored")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    TRIAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_COUNT_FIELD_NUMBER: _ClassVar[int]
    FAILED_COUNT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_COUNT_FIELD_NUMBER: _ClassVar[int]
    BEST_TRIAL_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_SCORED_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: StudyState
    spec: StudySpec
    trial_count: int
    completed_count: int
    failed_count: int
    active_count: int
    best_trial: Trial
    create_time: _timestamp_pb2.Timestamp
    examples_scored: int
    def __init__(self, name: _Optional[str] = ..., state: _Optional[_Union[StudyState, str]] = ..., spec: _Optional[_Union[StudySpec, _Mapping]] = ..., trial_count: _Optional[int] = ..., completed_count: _Optional[int] = ..., failed_count: _Optional[int] = ..., active_count: _Optional[int] = ..., best_trial: _Optional[_Union[Trial, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., examples_scored: _Optional[int] = ...) -> None: ...
