from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ParamGroup(_message.Message):
    __slots__ = ("values", "betas", "dtypes")
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class DtypesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VALUES_FIELD_NUMBER: _ClassVar[int]
    BETAS_FIELD_NUMBER: _ClassVar[int]
    DTYPES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.ScalarMap[str, float]
    betas: _containers.RepeatedScalarFieldContainer[float]
    dtypes: _containers.ScalarMap[str, str]
    def __init__(self, values: _Optional[_Mapping[str, float]] = ..., betas: _Optional[_Iterable[float]] = ..., dtypes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Bounds(_message.Message):
    __slots__ = ("min", "max")
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    min: float
    max: float
    def __init__(self, min: _Optional[float] = ..., max: _Optional[float] = ...) -> None: ...

class JobSpec(_message.Message):
    __slots__ = ("param_scheduler_json", "initial_values", "epoch_length", "max_epochs", "max_iters", "bounds", "max_jump_factor", "semantics", "val_interval")
    class BoundsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Bounds
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Bounds, _Mapping]] = ...) -> None: ...
    PARAM_SCHEDULER_JSON_FIELD_NUMBER: _ClassVar[int]
    INITIAL_VALUES_FIELD_NUMBER: _ClassVar[int]
    EPOCH_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MAX_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    MAX_ITERS_FIELD_NUMBER: _ClassVar[int]
    BOUNDS_FIELD_NUMBER: _ClassVar[int]
    MAX_JUMP_FACTOR_FIELD_NUMBER: _ClassVar[int]
    SEMANTICS_FIELD_NUMBER: _ClassVar[int]
    VAL_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    param_scheduler_json: str
    initial_values: _containers.RepeatedCompositeFieldContainer[ParamGroup]
    epoch_length: int
    max_epochs: int
    max_iters: int
    bounds: _containers.MessageMap[str, Bounds]
    max_jump_factor: float
    semantics: int
    val_interval: int
    def __init__(self, param_scheduler_json: _Optional[str] = ..., initial_values: _Optional[_Iterable[_Union[ParamGroup, _Mapping]]] = ..., epoch_length: _Optional[int] = ..., max_epochs: _Optional[int] = ..., max_iters: _Optional[int] = ..., bounds: _Optional[_Mapping[str, Bounds]] = ..., max_jump_factor: _Optional[float] = ..., semantics: _Optional[int] = ..., val_interval: _Optional[int] = ...) -> None: ...

class RankProgress(_message.Message):
    __slots__ = ("rank", "iteration")
    RANK_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    rank: int
    iteration: int
    def __init__(self, rank: _Optional[int] = ..., iteration: _Optional[int] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "spec", "generation", "world_size", "params", "num_groups", "momentum_via_betas", "max_iters", "epoch_length", "progress", "version", "created_at", "issued_until", "num_changes", "incarnation", "run_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    NUM_GROUPS_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_VIA_BETAS_FIELD_NUMBER: _ClassVar[int]
    MAX_ITERS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_LENGTH_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ISSUED_UNTIL_FIELD_NUMBER: _ClassVar[int]
    NUM_CHANGES_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    spec: JobSpec
    generation: int
    world_size: int
    params: _containers.RepeatedScalarFieldContainer[str]
    num_groups: int
    momentum_via_betas: bool
    max_iters: int
    epoch_length: int
    progress: _containers.RepeatedCompositeFieldContainer[RankProgress]
    version: int
    created_at: float
    issued_until: int
    num_changes: int
    incarnation: str
    run_id: str
    def __init__(self, job_id: _Optional[str] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ..., generation: _Optional[int] = ..., world_size: _Optional[int] = ..., params: _Optional[_Iterable[str]] = ..., num_groups: _Optional[int] = ..., momentum_via_betas: _Optional[bool] = ..., max_iters: _Optional[int] = ..., epoch_length: _Optional[int] = ..., progress: _Optional[_Iterable[_Union[RankProgress, _Mapping]]] = ..., version: _Optional[int] = ..., created_at: _Optional[float] = ..., issued_until: _Optional[int] = ..., num_changes: _Optional[int] = ..., incarnation: _Optional[str] = ..., run_id: _Optional[str] = ...) -> None: ...

class Plan(_message.Message):
    __slots__ = ("start_iteration", "num_iterations", "params", "num_groups", "values", "generation", "waits_for_epoch", "max_iters", "incarnation", "stride", "horizon_token")
    START_ITERATION_FIELD_NUMBER: _ClassVar[int]
    NUM_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    NUM_GROUPS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    WAITS_FOR_EPOCH_FIELD_NUMBER: _ClassVar[int]
    MAX_ITERS_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    HORIZON_TOKEN_FIELD_NUMBER: _ClassVar[int]
    start_iteration: int
    num_iterations: int
    params: _containers.RepeatedScalarFieldContainer[str]
    num_groups: int
    values: _containers.RepeatedScalarFieldContainer[float]
    generation: int
    waits_for_epoch: int
    max_iters: int
    incarnation: str
    stride: int
    horizon_token: str
    def __init__(self, start_iteration: _Optional[int] = ..., num_iterations: _Optional[int] = ..., params: _Optional[_Iterable[str]] = ..., num_groups: _Optional[int] = ..., values: _Optional[_Iterable[float]] = ..., generation: _Optional[int] = ..., waits_for_epoch: _Optional[int] = ..., max_iters: _Optional[int] = ..., incarnation: _Optional[str] = ..., stride: _Optional[int] = ..., horizon_token: _Optional[str] = ...) -> None: ...

class AttachJobRequest(_message.Message):
    __slots__ = ("job_id", "spec", "world_size", "rank", "plan_size", "run_id", "start_over")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    PLAN_SIZE_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    START_OVER_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    spec: JobSpec
    world_size: int
    rank: int
    plan_size: int
    run_id: str
    start_over: bool
    def __init__(self, job_id: _Optional[str] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ..., world_size: _Optional[int] = ..., rank: _Optional[int] = ..., plan_size: _Optional[int] = ..., run_id: _Optional[str] = ..., start_over: _Optional[bool] = ...) -> None: ...

class AttachJobResponse(_message.Message):
    __slots__ = ("job", "created", "plan", "resume_required")
    JOB_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    RESUME_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    job: Job
    created: bool
    plan: Plan
    resume_required: bool
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ..., created: _Optional[bool] = ..., plan: _Optional[_Union[Plan, _Mapping]] = ..., resume_required: _Optional[bool] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("prefix", "page_size", "page_token")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    page_size: int
    page_token: str
    def __init__(self, prefix: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class DeleteJobResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...

class ReportProgressRequest(_message.Message):
    __slots__ = ("job_id", "generation", "rank", "iteration", "epoch_end", "metrics", "has_metrics", "plan_size", "incarnation", "validation_at", "held_until", "horizon_token", "skip_held")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    EPOCH_END_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    HAS_METRICS_FIELD_NUMBER: _ClassVar[int]
    PLAN_SIZE_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_AT_FIELD_NUMBER: _ClassVar[int]
    HELD_UNTIL_FIELD_NUMBER: _ClassVar[int]
    HORIZON_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SKIP_HELD_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    generation: int
    rank: int
    iteration: int
    epoch_end: int
    metrics: _containers.ScalarMap[str, float]
    has_metrics: bool
    plan_size: int
    incarnation: str
    validation_at: int
    held_until: int
    horizon_token: str
    skip_held: bool
    def __init__(self, job_id: _Optional[str] = ..., generation: _Optional[int] = ..., rank: _Optional[int] = ..., iteration: _Optional[int] = ..., epoch_end: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., has_metrics: _Optional[bool] = ..., plan_size: _Optional[int] = ..., incarnation: _Optional[str] = ..., validation_at: _Optional[int] = ..., held_until: _Optional[int] = ..., horizon_token: _Optional[str] = ..., skip_held: _Optional[bool] = ...) -> None: ...

class ReportProgressResponse(_message.Message):
    __slots__ = ("plan",)
    PLAN_FIELD_NUMBER: _ClassVar[int]
    plan: Plan
    def __init__(self, plan: _Optional[_Union[Plan, _Mapping]] = ...) -> None: ...

class GetValuesRequest(_message.Message):
    __slots__ = ("job_id", "start_iteration", "stop_iteration", "stride", "page_token")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    START_ITERATION_FIELD_NUMBER: _ClassVar[int]
    STOP_ITERATION_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    start_iteration: int
    stop_iteration: int
    stride: int
    page_token: str
    def __init__(self, job_id: _Optional[str] = ..., start_iteration: _Optional[int] = ..., stop_iteration: _Optional[int] = ..., stride: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class GetValuesResponse(_message.Message):
    __slots__ = ("plan", "next_page_token")
    PLAN_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    plan: Plan
    next_page_token: str
    def __init__(self, plan: _Optional[_Union[Plan, _Mapping]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetStateRequest(_message.Message):
    __slots__ = ("job_id", "iteration", "generation", "incarnation")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    iteration: int
    generation: int
    incarnation: str
    def __init__(self, job_id: _Optional[str] = ..., iteration: _Optional[int] = ..., generation: _Optional[int] = ..., incarnation: _Optional[str] = ...) -> None: ...

class GetStateResponse(_message.Message):
    __slots__ = ("state_json",)
    STATE_JSON_FIELD_NUMBER: _ClassVar[int]
    state_json: str
    def __init__(self, state_json: _Optional[str] = ...) -> None: ...

class LoadStateRequest(_message.Message):
    __slots__ = ("job_id", "state_json", "plan_size", "run_id", "world_size", "rank", "fork", "allow_unsigned")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_JSON_FIELD_NUMBER: _ClassVar[int]
    PLAN_SIZE_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    FORK_FIELD_NUMBER: _ClassVar[int]
    ALLOW_UNSIGNED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state_json: str
    plan_size: int
    run_id: str
    world_size: int
    rank: int
    fork: bool
    allow_unsigned: bool
    def __init__(self, job_id: _Optional[str] = ..., state_json: _Optional[str] = ..., plan_size: _Optional[int] = ..., run_id: _Optional[str] = ..., world_size: _Optional[int] = ..., rank: _Optional[int] = ..., fork: _Optional[bool] = ..., allow_unsigned: _Optional[bool] = ...) -> None: ...

class LoadStateResponse(_message.Message):
    __slots__ = ("job", "plan", "resumed")
    JOB_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    job: Job
    plan: Plan
    resumed: bool
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ..., plan: _Optional[_Union[Plan, _Mapping]] = ..., resumed: _Optional[bool] = ...) -> None: ...

class PreviewScheduleRequest(_message.Message):
    __slots__ = ("spec", "start_iteration", "stop_iteration", "decisions", "stride", "page_token")
    class DecisionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: MetricsDecision
        def __init__(self, key: _Optional[int] = ..., value: _Optional[_Union[MetricsDecision, _Mapping]] = ...) -> None: ...
    SPEC_FIELD_NUMBER: _ClassVar[int]
    START_ITERATION_FIELD_NUMBER: _ClassVar[int]
    STOP_ITERATION_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    spec: JobSpec
    start_iteration: int
    stop_iteration: int
    decisions: _containers.MessageMap[int, MetricsDecision]
    stride: int
    page_token: str
    def __init__(self, spec: _Optional[_Union[JobSpec, _Mapping]] = ..., start_iteration: _Optional[int] = ..., stop_iteration: _Optional[int] = ..., decisions: _Optional[_Mapping[int, MetricsDecision]] = ..., stride: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class MetricsDecision(_message.Message):
    __slots__ = ("metrics", "has_metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    METRICS_FIELD_NUMBER: _ClassVar[int]
    HAS_METRICS_FIELD_NUMBER: _ClassVar[int]
    metrics: _containers.ScalarMap[str, float]
    has_metrics: bool
    def __init__(self, metrics: _Optional[_Mapping[str, float]] = ..., has_metrics: _Optional[bool] = ...) -> None: ...

class PreviewScheduleResponse(_message.Message):
    __slots__ = ("plan", "next_page_token")
    PLAN_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    plan: Plan
    next_page_token: str
    def __init__(self, plan: _Optional[_Union[Plan, _Mapping]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ParamValues(_message.Message):
    __slots__ = ("values",)
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.ScalarMap[str, float]
    def __init__(self, values: _Optional[_Mapping[str, float]] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("time", "principal", "action", "iteration", "generation", "details_json", "before", "after", "reason")
    TIME_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    DETAILS_JSON_FIELD_NUMBER: _ClassVar[int]
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    time: float
    principal: str
    action: str
    iteration: int
    generation: int
    details_json: str
    before: _containers.RepeatedCompositeFieldContainer[ParamValues]
    after: _containers.RepeatedCompositeFieldContainer[ParamValues]
    reason: str
    def __init__(self, time: _Optional[float] = ..., principal: _Optional[str] = ..., action: _Optional[str] = ..., iteration: _Optional[int] = ..., generation: _Optional[int] = ..., details_json: _Optional[str] = ..., before: _Optional[_Iterable[_Union[ParamValues, _Mapping]]] = ..., after: _Optional[_Iterable[_Union[ParamValues, _Mapping]]] = ..., reason: _Optional[str] = ...) -> None: ...

class RescheduleJobRequest(_message.Message):
    __slots__ = ("job_id", "from_iteration", "mode", "param_scheduler_json", "params", "groups", "start_values", "max_iters", "dry_run", "force", "action", "reason", "preview_iterations", "request_id")
    class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        REPLACE: _ClassVar[RescheduleJobRequest.Mode]
        MULTIPLY: _ClassVar[RescheduleJobRequest.Mode]
        STRETCH: _ClassVar[RescheduleJobRequest.Mode]
    REPLACE: RescheduleJobRequest.Mode
    MULTIPLY: RescheduleJobRequest.Mode
    STRETCH: RescheduleJobRequest.Mode
    class StartValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_ITERATION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    PARAM_SCHEDULER_JSON_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    START_VALUES_FIELD_NUMBER: _ClassVar[int]
    MAX_ITERS_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    from_iteration: int
    mode: RescheduleJobRequest.Mode
    param_scheduler_json: str
    params: _containers.RepeatedScalarFieldContainer[str]
    groups: _containers.RepeatedScalarFieldContainer[int]
    start_values: _containers.ScalarMap[str, float]
    max_iters: int
    dry_run: bool
    force: bool
    action: str
    reason: str
    preview_iterations: int
    request_id: str
    def __init__(self, job_id: _Optional[str] = ..., from_iteration: _Optional[int] = ..., mode: _Optional[_Union[RescheduleJobRequest.Mode, str]] = ..., param_scheduler_json: _Optional[str] = ..., params: _Optional[_Iterable[str]] = ..., groups: _Optional[_Iterable[int]] = ..., start_values: _Optional[_Mapping[str, float]] = ..., max_iters: _Optional[int] = ..., dry_run: _Optional[bool] = ..., force: _Optional[bool] = ..., action: _Optional[str] = ..., reason: _Optional[str] = ..., preview_iterations: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class RescheduleJobResponse(_message.Message):
    __slots__ = ("job", "from_iteration", "before", "after", "applied", "entry")
    JOB_FIELD_NUMBER: _ClassVar[int]
    FROM_ITERATION_FIELD_NUMBER: _ClassVar[int]
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    job: Job
    from_iteration: int
    before: Plan
    after: Plan
    applied: bool
    entry: AuditEntry
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ..., from_iteration: _Optional[int] = ..., before: _Optional[_Union[Plan, _Mapping]] = ..., after: _Optional[_Union[Plan, _Mapping]] = ..., applied: _Optional[bool] = ..., entry: _Optional[_Union[AuditEntry, _Mapping]] = ...) -> None: ...

class GetJobHistoryRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetJobHistoryResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ...) -> None: ...
