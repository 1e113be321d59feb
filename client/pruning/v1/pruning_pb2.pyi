import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ArtifactKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ARTIFACT_KIND_UNSPECIFIED: _ClassVar[ArtifactKind]
    ARTIFACT_KIND_MODEL: _ClassVar[ArtifactKind]
    ARTIFACT_KIND_DATASET: _ClassVar[ArtifactKind]
    ARTIFACT_KIND_EXPORT: _ClassVar[ArtifactKind]

class BlockPoolingType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BLOCK_POOLING_TYPE_UNSPECIFIED: _ClassVar[BlockPoolingType]
    BLOCK_POOLING_TYPE_AVG: _ClassVar[BlockPoolingType]
    BLOCK_POOLING_TYPE_MAX: _ClassVar[BlockPoolingType]

class PruningPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRUNING_POLICY_UNSPECIFIED: _ClassVar[PruningPolicy]
    PRUNING_POLICY_PRUNE_FOR_LATENCY_ON_XNNPACK: _ClassVar[PruningPolicy]

class ExportFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPORT_FORMAT_UNSPECIFIED: _ClassVar[ExportFormat]
    EXPORT_FORMAT_KERAS: _ClassVar[ExportFormat]
    EXPORT_FORMAT_H5: _ClassVar[ExportFormat]
    EXPORT_FORMAT_SAVED_MODEL: _ClassVar[ExportFormat]
    EXPORT_FORMAT_TFLITE: _ClassVar[ExportFormat]
    EXPORT_FORMAT_TFLITE_INT8: _ClassVar[ExportFormat]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_CANCELLING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
ARTIFACT_KIND_UNSPECIFIED: ArtifactKind
ARTIFACT_KIND_MODEL: ArtifactKind
ARTIFACT_KIND_DATASET: ArtifactKind
ARTIFACT_KIND_EXPORT: ArtifactKind
BLOCK_POOLING_TYPE_UNSPECIFIED: BlockPoolingType
BLOCK_POOLING_TYPE_AVG: BlockPoolingType
BLOCK_POOLING_TYPE_MAX: BlockPoolingType
PRUNING_POLICY_UNSPECIFIED: PruningPolicy
PRUNING_POLICY_PRUNE_FOR_LATENCY_ON_XNNPACK: PruningPolicy
EXPORT_FORMAT_UNSPECIFIED: ExportFormat
EXPORT_FORMAT_KERAS: ExportFormat
EXPORT_FORMAT_H5: ExportFormat
EXPORT_FORMAT_SAVED_MODEL: ExportFormat
EXPORT_FORMAT_TFLITE: ExportFormat
EXPORT_FORMAT_TFLITE_INT8: ExportFormat
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_CANCELLING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState

class UploadHeader(_message.Message):
    __slots__ = ("filename", "size", "sha256")
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    filename: str
    size: int
    sha256: str
    def __init__(self, filename: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class UploadRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class Artifact(_message.Message):
    __slots__ = ("id", "kind", "filename", "size", "sha256", "created_at", "format")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: ArtifactKind
    filename: str
    size: int
    sha256: str
    created_at: _timestamp_pb2.Timestamp
    format: str
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[_Union[ArtifactKind, str]] = ..., filename: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., format: _Optional[str] = ...) -> None: ...

class DownloadArtifactRequest(_message.Message):
    __slots__ = ("artifact_id", "offset")
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    artifact_id: str
    offset: int
    def __init__(self, artifact_id: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class DownloadChunk(_message.Message):
    __slots__ = ("offset", "data", "total_size", "sha256")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    total_size: int
    sha256: str
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., total_size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class ConstantSparsity(_message.Message):
    __slots__ = ("target_sparsity", "begin_step", "end_step", "frequency")
    TARGET_SPARSITY_FIELD_NUMBER: _ClassVar[int]
    BEGIN_STEP_FIELD_NUMBER: _ClassVar[int]
    END_STEP_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_FIELD_NUMBER: _ClassVar[int]
    target_sparsity: float
    begin_step: int
    end_step: int
    frequency: int
    def __init__(self, target_sparsity: _Optional[float] = ..., begin_step: _Optional[int] = ..., end_step: _Optional[int] = ..., frequency: _Optional[int] = ...) -> None: ...

class PolynomialDecay(_message.Message):
    __slots__ = ("initial_sparsity", "final_sparsity", "begin_step", "end_step", "power", "frequency")
    INITIAL_SPARSITY_FIELD_NUMBER: _ClassVar[int]
    FINAL_SPARSITY_FIELD_NUMBER: _ClassVar[int]
    BEGIN_STEP_FIELD_NUMBER: _ClassVar[int]
    END_STEP_FIELD_NUMBER: _ClassVar[int]
    POWER_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_FIELD_NUMBER: _ClassVar[int]
    initial_sparsity: float
    final_sparsity: float
    begin_step: int
    end_step: int
    power: float
    frequency: int
    def __init__(self, initial_sparsity: _Optional[float] = ..., final_sparsity: _Optional[float] = ..., begin_step: _Optional[int] = ..., end_step: _Optional[int] = ..., power: _Optional[float] = ..., frequency: _Optional[int] = ...) -> None: ...

class PruningSchedule(_message.Message):
    __slots__ = ("constant_sparsity", "polynomial_decay")
    CONSTANT_SPARSITY_FIELD_NUMBER: _ClassVar[int]
    POLYNOMIAL_DECAY_FIELD_NUMBER: _ClassVar[int]
    constant_sparsity: ConstantSparsity
    polynomial_decay: PolynomialDecay
    def __init__(self, constant_sparsity: _Optional[_Union[ConstantSparsity, _Mapping]] = ..., polynomial_decay: _Optional[_Union[PolynomialDecay, _Mapping]] = ...) -> None: ...

class LayerSelection(_message.Message):
    __slots__ = ("include_names", "include_types", "exclude_names", "exclude_types")
    INCLUDE_NAMES_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_TYPES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_NAMES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_TYPES_FIELD_NUMBER: _ClassVar[int]
    include_names: _containers.RepeatedScalarFieldContainer[str]
    include_types: _containers.RepeatedScalarFieldContainer[str]
    exclude_names: _containers.RepeatedScalarFieldContainer[str]
    exclude_types: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, include_names: _Optional[_Iterable[str]] = ..., include_types: _Optional[_Iterable[str]] = ..., exclude_names: _Optional[_Iterable[str]] = ..., exclude_types: _Optional[_Iterable[str]] = ...) -> None: ...

class SparsityMByN(_message.Message):
    __slots__ = ("m", "n")
    M_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    m: int
    n: int
    def __init__(self, m: _Optional[int] = ..., n: _Optional[int] = ...) -> None: ...

class PruningSpec(_message.Message):
    __slots__ = ("schedule", "block_size", "block_pooling_type", "layers", "sparsity_m_by_n", "policy")
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    BLOCK_POOLING_TYPE_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    SPARSITY_M_BY_N_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    schedule: PruningSchedule
    block_size: _containers.RepeatedScalarFieldContainer[int]
    block_pooling_type: BlockPoolingType
    layers: LayerSelection
    sparsity_m_by_n: SparsityMByN
    policy: PruningPolicy
    def __init__(self, schedule: _Optional[_Union[PruningSchedule, _Mapping]] = ..., block_size: _Optional[_Iterable[int]] = ..., block_pooling_type: _Optional[_Union[BlockPoolingType, str]] = ..., layers: _Optional[_Union[LayerSelection, _Mapping]] = ..., sparsity_m_by_n: _Optional[_Union[SparsityMByN, _Mapping]] = ..., policy: _Optional[_Union[PruningPolicy, str]] = ...) -> None: ...

class TrainingSpec(_message.Message):
    __slots__ = ("epochs", "batch_size", "optimizer", "learning_rate", "loss", "validation_split", "seed", "skip_baseline", "max_train_samples")
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_SPLIT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SKIP_BASELINE_FIELD_NUMBER: _ClassVar[int]
    MAX_TRAIN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    epochs: int
    batch_size: int
    optimizer: str
    learning_rate: float
    loss: str
    validation_split: float
    seed: int
    skip_baseline: bool
    max_train_samples: int
    def __init__(self, epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., optimizer: _Optional[str] = ..., learning_rate: _Optional[float] = ..., loss: _Optional[str] = ..., validation_split: _Optional[float] = ..., seed: _Optional[int] = ..., skip_baseline: _Optional[bool] = ..., max_train_samples: _Optional[int] = ...) -> None: ...

class ExportSpec(_message.Message):
    __slots__ = ("formats",)
    FORMATS_FIELD_NUMBER: _ClassVar[int]
    formats: _containers.RepeatedScalarFieldContainer[ExportFormat]
    def __init__(self, formats: _Optional[_Iterable[_Union[ExportFormat, str]]] = ...) -> None: ...

class DatasetRef(_message.Message):
    __slots__ = ("artifact_id", "builtin")
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    BUILTIN_FIELD_NUMBER: _ClassVar[int]
    artifact_id: str
    builtin: str
    def __init__(self, artifact_id: _Optional[str] = ..., builtin: _Optional[str] = ...) -> None: ...

class JobSpec(_message.Message):
    __slots__ = ("model_id", "dataset", "pruning", "training", "export")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    PRUNING_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    EXPORT_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    dataset: DatasetRef
    pruning: PruningSpec
    training: TrainingSpec
    export: ExportSpec
    def __init__(self, model_id: _Optional[str] = ..., dataset: _Optional[_Union[DatasetRef, _Mapping]] = ..., pruning: _Optional[_Union[PruningSpec, _Mapping]] = ..., training: _Optional[_Union[TrainingSpec, _Mapping]] = ..., export: _Optional[_Union[ExportSpec, _Mapping]] = ...) -> None: ...

class JobError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("phase", "epoch", "total_epochs", "step", "total_steps", "loss", "accuracy", "sparsity", "eta_seconds")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TOTAL_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    SPARSITY_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    phase: str
    epoch: int
    total_epochs: int
    step: int
    total_steps: int
    loss: float
    accuracy: float
    sparsity: float
    eta_seconds: float
    def __init__(self, phase: _Optional[str] = ..., epoch: _Optional[int] = ..., total_epochs: _Optional[int] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., loss: _Optional[float] = ..., accuracy: _Optional[float] = ..., sparsity: _Optional[float] = ..., eta_seconds: _Optional[float] = ...) -> None: ...

class Metrics(_message.Message):
    __slots__ = ("loss", "accuracy")
    LOSS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    loss: float
    accuracy: float
    def __init__(self, loss: _Optional[float] = ..., accuracy: _Optional[float] = ...) -> None: ...

class LayerSparsity(_message.Message):
    __slots__ = ("name", "type", "pruned", "weights", "nonzero", "sparsity")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PRUNED_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    NONZERO_FIELD_NUMBER: _ClassVar[int]
    SPARSITY_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    pruned: bool
    weights: int
    nonzero: int
    sparsity: float
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., pruned: _Optional[bool] = ..., weights: _Optional[int] = ..., nonzero: _Optional[int] = ..., sparsity: _Optional[float] = ...) -> None: ...

class SizeStats(_message.Message):
    __slots__ = ("raw_bytes", "gzip_bytes")
    RAW_BYTES_FIELD_NUMBER: _ClassVar[int]
    GZIP_BYTES_FIELD_NUMBER: _ClassVar[int]
    raw_bytes: int
    gzip_bytes: int
    def __init__(self, raw_bytes: _Optional[int] = ..., gzip_bytes: _Optional[int] = ...) -> None: ...

class PruneResult(_message.Message):
    __slots__ = ("baseline", "pruned", "accuracy_delta", "overall_sparsity", "pruned_kernel_sparsity", "layers", "total_params", "nonzero_params", "size_before", "size_after", "compression_ratio", "fine_tune_seconds", "device", "artifacts")
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    PRUNED_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_DELTA_FIELD_NUMBER: _ClassVar[int]
    OVERALL_SPARSITY_FIELD_NUMBER: _ClassVar[int]
    PRUNED_KERNEL_SPARSITY_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_PARAMS_FIELD_NUMBER: _ClassVar[int]
    NONZERO_PARAMS_FIELD_NUMBER: _ClassVar[int]
    SIZE_BEFORE_FIELD_NUMBER: _ClassVar[int]
    SIZE_AFTER_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_RATIO_FIELD_NUMBER: _ClassVar[int]
    FINE_TUNE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    baseline: Metrics
    pruned: Metrics
    accuracy_delta: float
    overall_sparsity: float
    pruned_kernel_sparsity: float
    layers: _containers.RepeatedCompositeFieldContainer[LayerSparsity]
    total_params: int
    nonzero_params: int
    size_before: SizeStats
    size_after: SizeStats
    compression_ratio: float
    fine_tune_seconds: float
    device: str
    artifacts: _containers.RepeatedCompositeFieldContainer[Artifact]
    def __init__(self, baseline: _Optional[_Union[Metrics, _Mapping]] = ..., pruned: _Optional[_Union[Metrics, _Mapping]] = ..., accuracy_delta: _Optional[float] = ..., overall_sparsity: _Optional[float] = ..., pruned_kernel_sparsity: _Optional[float] = ..., layers: _Optional[_Iterable[_Union[LayerSparsity, _Mapping]]] = ..., total_params: _Optional[int] = ..., nonzero_params: _Optional[int] = ..., size_before: _Optional[_Union[SizeStats, _Mapping]] = ..., size_after: _Optional[_Union[SizeStats, _Mapping]] = ..., compression_ratio: _Optional[float] = ..., fine_tune_seconds: _Optional[float] = ..., device: _Optional[str] = ..., artifacts: _Optional[_Iterable[_Union[Artifact, _Mapping]]] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "state", "created_at", "started_at", "finished_at", "attempt", "spec", "labels", "progress", "error", "result", "last_event_id")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    LAST_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: JobState
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    attempt: int
    spec: JobSpec
    labels: _containers.ScalarMap[str, str]
    progress: Progress
    error: JobError
    result: PruneResult
    last_event_id: str
    def __init__(self, id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attempt: _Optional[int] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., error: _Optional[_Union[JobError, _Mapping]] = ..., result: _Optional[_Union[PruneResult, _Mapping]] = ..., last_event_id: _Optional[str] = ...) -> None: ...

class StateChange(_message.Message):
    __slots__ = ("to", "attempt", "error")
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    to: JobState
    attempt: int
    error: JobError
    def __init__(self, to: _Optional[_Union[JobState, str]] = ..., attempt: _Optional[int] = ..., error: _Optional[_Union[JobError, _Mapping]] = ..., **kwargs) -> None: ...

class LogLine(_message.Message):
    __slots__ = ("level", "message")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    level: str
    message: str
    def __init__(self, level: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("id", "time", "job_id", "state_change", "progress", "log", "result")
    ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_CHANGE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    id: str
    time: _timestamp_pb2.Timestamp
    job_id: str
    state_change: StateChange
    progress: Progress
    log: LogLine
    result: PruneResult
    def __init__(self, id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., job_id: _Optional[str] = ..., state_change: _Optional[_Union[StateChange, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., log: _Optional[_Union[LogLine, _Mapping]] = ..., result: _Optional[_Union[PruneResult, _Mapping]] = ...) -> None: ...

class CreateJobRequest(_message.Message):
    __slots__ = ("spec", "labels", "idempotency_key")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SPEC_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    spec: JobSpec
    labels: _containers.ScalarMap[str, str]
    idempotency_key: str
    def __init__(self, spec: _Optional[_Union[JobSpec, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "states", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    states: _containers.RepeatedScalarFieldContainer[JobState]
    labels: _containers.ScalarMap[str, str]
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., states: _Optional[_Iterable[_Union[JobState, str]]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id", "after_event_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after_event_id: str
    def __init__(self, job_id: _Optional[str] = ..., after_event_id: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...
