from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterRequest(_message.Message):
    __slots__ = ("protocol_version", "agent_version")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    protocol_version: str
    agent_version: str
    def __init__(self, protocol_version: _Optional[str] = ..., agent_version: _Optional[str] = ...) -> None: ...

class RegisterReply(_message.Message):
    __slots__ = ("protocol_version", "site", "coordinator_version", "heartbeat_interval_seconds")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_VERSION_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    protocol_version: str
    site: str
    coordinator_version: str
    heartbeat_interval_seconds: float
    def __init__(self, protocol_version: _Optional[str] = ..., site: _Optional[str] = ..., coordinator_version: _Optional[str] = ..., heartbeat_interval_seconds: _Optional[float] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("protocol_version", "agent_version")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    protocol_version: str
    agent_version: str
    def __init__(self, protocol_version: _Optional[str] = ..., agent_version: _Optional[str] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("protocol_version", "server_time_unix_ms")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    protocol_version: str
    server_time_unix_ms: int
    def __init__(self, protocol_version: _Optional[str] = ..., server_time_unix_ms: _Optional[int] = ...) -> None: ...

class PullWorkRequest(_message.Message):
    __slots__ = ("protocol_version",)
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    protocol_version: str
    def __init__(self, protocol_version: _Optional[str] = ...) -> None: ...

class Work(_message.Message):
    __slots__ = ("round_id", "spec_toml", "opened_at_unix_ms", "deadline_unix_ms")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_TOML_FIELD_NUMBER: _ClassVar[int]
    OPENED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    spec_toml: str
    opened_at_unix_ms: int
    deadline_unix_ms: int
    def __init__(self, round_id: _Optional[str] = ..., spec_toml: _Optional[str] = ..., opened_at_unix_ms: _Optional[int] = ..., deadline_unix_ms: _Optional[int] = ...) -> None: ...

class PullWorkReply(_message.Message):
    __slots__ = ("protocol_version", "work")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    WORK_FIELD_NUMBER: _ClassVar[int]
    protocol_version: str
    work: _containers.RepeatedCompositeFieldContainer[Work]
    def __init__(self, protocol_version: _Optional[str] = ..., work: _Optional[_Iterable[_Union[Work, _Mapping]]] = ...) -> None: ...

class Estimate(_message.Message):
    __slots__ = ("yi", "vi", "se", "n")
    YI_FIELD_NUMBER: _ClassVar[int]
    VI_FIELD_NUMBER: _ClassVar[int]
    SE_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    yi: float
    vi: float
    se: float
    n: int
    def __init__(self, yi: _Optional[float] = ..., vi: _Optional[float] = ..., se: _Optional[float] = ..., n: _Optional[int] = ...) -> None: ...

class Refusal(_message.Message):
    __slots__ = ("code", "reason")
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    code: str
    reason: str
    def __init__(self, code: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class Likelihood(_message.Message):
    __slots__ = ("form", "points", "values", "derivatives", "mu", "sigma", "gamma", "estimate", "se", "n")
    FORM_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    DERIVATIVES_FIELD_NUMBER: _ClassVar[int]
    MU_FIELD_NUMBER: _ClassVar[int]
    SIGMA_FIELD_NUMBER: _ClassVar[int]
    GAMMA_FIELD_NUMBER: _ClassVar[int]
    ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    SE_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    form: str
    points: _containers.RepeatedScalarFieldContainer[float]
    values: _containers.RepeatedScalarFieldContainer[float]
    derivatives: _containers.RepeatedScalarFieldContainer[float]
    mu: float
    sigma: float
    gamma: float
    estimate: float
    se: float
    n: int
    def __init__(self, form: _Optional[str] = ..., points: _Optional[_Iterable[float]] = ..., values: _Optional[_Iterable[float]] = ..., derivatives: _Optional[_Iterable[float]] = ..., mu: _Optional[float] = ..., sigma: _Optional[float] = ..., gamma: _Optional[float] = ..., estimate: _Optional[float] = ..., se: _Optional[float] = ..., n: _Optional[int] = ...) -> None: ...

class AnalysisResult(_message.Message):
    __slots__ = ("analysis", "estimate", "refusal", "likelihood")
    ANALYSIS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    LIKELIHOOD_FIELD_NUMBER: _ClassVar[int]
    analysis: str
    estimate: Estimate
    refusal: Refusal
    likelihood: Likelihood
    def __init__(self, analysis: _Optional[str] = ..., estimate: _Optional[_Union[Estimate, _Mapping]] = ..., refusal: _Optional[_Union[Refusal, _Mapping]] = ..., likelihood: _Optional[_Union[Likelihood, _Mapping]] = ...) -> None: ...

class Submission(_message.Message):
    __slots__ = ("protocol_version", "round_id", "site", "nonce", "timestamp_unix_ms", "agent_version", "results")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    protocol_version: str
    round_id: str
    site: str
    nonce: bytes
    timestamp_unix_ms: int
    agent_version: str
    results: _containers.RepeatedCompositeFieldContainer[AnalysisResult]
    def __init__(self, protocol_version: _Optional[str] = ..., round_id: _Optional[str] = ..., site: _Optional[str] = ..., nonce: _Optional[bytes] = ..., timestamp_unix_ms: _Optional[int] = ..., agent_version: _Optional[str] = ..., results: _Optional[_Iterable[_Union[AnalysisResult, _Mapping]]] = ...) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ("protocol_version", "submission", "signature")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SUBMISSION_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    protocol_version: str
    submission: bytes
    signature: bytes
    def __init__(self, protocol_version: _Optional[str] = ..., submission: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SubmitReply(_message.Message):
    __slots__ = ("protocol_version", "status", "round_id", "message")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    protocol_version: str
    status: str
    round_id: str
    message: str
    def __init__(self, protocol_version: _Optional[str] = ..., status: _Optional[str] = ..., round_id: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class StreamStepsRequest(_message.Message):
    __slots__ = ("protocol_version", "agent_version")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    protocol_version: str
    agent_version: str
    def __init__(self, protocol_version: _Optional[str] = ..., agent_version: _Optional[str] = ...) -> None: ...

class IrlsPoint(_message.Message):
    __slots__ = ("start", "names", "coefficients")
    START_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    COEFFICIENTS_FIELD_NUMBER: _ClassVar[int]
    start: bool
    names: _containers.RepeatedScalarFieldContainer[str]
    coefficients: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, start: _Optional[bool] = ..., names: _Optional[_Iterable[str]] = ..., coefficients: _Optional[_Iterable[float]] = ...) -> None: ...

class SiteFitOrder(_message.Message):
    __slots__ = ("epsilon", "maxit")
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    MAXIT_FIELD_NUMBER: _ClassVar[int]
    epsilon: float
    maxit: int
    def __init__(self, epsilon: _Optional[float] = ..., maxit: _Optional[int] = ...) -> None: ...

class HierarchicalProposal(_message.Message):
    __slots__ = ("family", "beta", "tau_zero", "log_tau", "has_log_sigma", "log_sigma", "nodes", "tol", "iteration")
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    BETA_FIELD_NUMBER: _ClassVar[int]
    TAU_ZERO_FIELD_NUMBER: _ClassVar[int]
    LOG_TAU_FIELD_NUMBER: _ClassVar[int]
    HAS_LOG_SIGMA_FIELD_NUMBER: _ClassVar[int]
    LOG_SIGMA_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    TOL_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    family: str
    beta: _containers.RepeatedScalarFieldContainer[float]
    tau_zero: bool
    log_tau: float
    has_log_sigma: bool
    log_sigma: float
    nodes: int
    tol: float
    iteration: int
    def __init__(self, family: _Optional[str] = ..., beta: _Optional[_Iterable[float]] = ..., tau_zero: _Optional[bool] = ..., log_tau: _Optional[float] = ..., has_log_sigma: _Optional[bool] = ..., log_sigma: _Optional[float] = ..., nodes: _Optional[int] = ..., tol: _Optional[float] = ..., iteration: _Optional[int] = ...) -> None: ...

class IecvModel(_message.Message):
    __slots__ = ("variant", "family", "names", "coefficients", "recalibrate", "developed_on")
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    COEFFICIENTS_FIELD_NUMBER: _ClassVar[int]
    RECALIBRATE_FIELD_NUMBER: _ClassVar[int]
    DEVELOPED_ON_FIELD_NUMBER: _ClassVar[int]
    variant: str
    family: str
    names: _containers.RepeatedScalarFieldContainer[str]
    coefficients: _containers.RepeatedScalarFieldContainer[float]
    recalibrate: bool
    developed_on: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, variant: _Optional[str] = ..., family: _Optional[str] = ..., names: _Optional[_Iterable[str]] = ..., coefficients: _Optional[_Iterable[float]] = ..., recalibrate: _Optional[bool] = ..., developed_on: _Optional[_Iterable[str]] = ...) -> None: ...

class ModelStep(_message.Message):
    __slots__ = ("protocol_version", "round_id", "step_id", "model", "kind", "fit", "sequence", "spec_toml", "deadline_unix_ms", "held_out", "irls", "site_fit", "hierarchical", "iecv")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    FIT_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SPEC_TOML_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    HELD_OUT_FIELD_NUMBER: _ClassVar[int]
    IRLS_FIELD_NUMBER: _ClassVar[int]
    SITE_FIT_FIELD_NUMBER: _ClassVar[int]
    HIERARCHICAL_FIELD_NUMBER: _ClassVar[int]
    IECV_FIELD_NUMBER: _ClassVar[int]
    protocol_version: str
    round_id: str
    step_id: str
    model: str
    kind: str
    fit: str
    sequence: int
    spec_toml: str
    deadline_unix_ms: int
    held_out: str
    irls: IrlsPoint
    site_fit: SiteFitOrder
    hierarchical: HierarchicalProposal
    iecv: IecvModel
    def __init__(self, protocol_version: _Optional[str] = ..., round_id: _Optional[str] = ..., step_id: _Optional[str] = ..., model: _Optional[str] = ..., kind: _Optional[str] = ..., fit: _Optional[str] = ..., sequence: _Optional[int] = ..., spec_toml: _Optional[str] = ..., deadline_unix_ms: _Optional[int] = ..., held_out: _Optional[str] = ..., irls: _Optional[_Union[IrlsPoint, _Mapping]] = ..., site_fit: _Optional[_Union[SiteFitOrder, _Mapping]] = ..., hierarchical: _Optional[_Union[HierarchicalProposal, _Mapping]] = ..., iecv: _Optional[_Union[IecvModel, _Mapping]] = ...) -> None: ...

class IrlsAggregates(_message.Message):
    __slots__ = ("names", "n", "xtwx", "score", "deviance", "minus_twice_loglik", "boundary")
    NAMES_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    XTWX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    DEVIANCE_FIELD_NUMBER: _ClassVar[int]
    MINUS_TWICE_LOGLIK_FIELD_NUMBER: _ClassVar[int]
    BOUNDARY_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    n: int
    xtwx: _containers.RepeatedScalarFieldContainer[float]
    score: _containers.RepeatedScalarFieldContainer[float]
    deviance: float
    minus_twice_loglik: float
    boundary: bool
    def __init__(self, names: _Optional[_Iterable[str]] = ..., n: _Optional[int] = ..., xtwx: _Optional[_Iterable[float]] = ..., score: _Optional[_Iterable[float]] = ..., deviance: _Optional[float] = ..., minus_twice_loglik: _Optional[float] = ..., boundary: _Optional[bool] = ...) -> None: ...

class SiteFitResult(_message.Message):
    __slots__ = ("status", "reason", "n", "names", "coefficients", "covariance", "iterations")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    COEFFICIENTS_FIELD_NUMBER: _ClassVar[int]
    COVARIANCE_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    status: str
    reason: str
    n: int
    names: _containers.RepeatedScalarFieldContainer[str]
    coefficients: _containers.RepeatedScalarFieldContainer[float]
    covariance: _containers.RepeatedScalarFieldContainer[float]
    iterations: int
    def __init__(self, status: _Optional[str] = ..., reason: _Optional[str] = ..., n: _Optional[int] = ..., names: _Optional[_Iterable[str]] = ..., coefficients: _Optional[_Iterable[float]] = ..., covariance: _Optional[_Iterable[float]] = ..., iterations: _Optional[int] = ...) -> None: ...

class HierarchicalContribution(_message.Message):
    __slots__ = ("n", "defined", "loglik", "gradient", "hessian", "nodes", "quadrature_error", "mode", "mode_sd", "posterior_mean", "posterior_sd")
    N_FIELD_NUMBER: _ClassVar[int]
    DEFINED_FIELD_NUMBER: _ClassVar[int]
    LOGLIK_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_FIELD_NUMBER: _ClassVar[int]
    HESSIAN_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    QUADRATURE_ERROR_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    MODE_SD_FIELD_NUMBER: _ClassVar[int]
    POSTERIOR_MEAN_FIELD_NUMBER: _ClassVar[int]
    POSTERIOR_SD_FIELD_NUMBER: _ClassVar[int]
    n: int
    defined: bool
    loglik: float
    gradient: _containers.RepeatedScalarFieldContainer[float]
    hessian: _containers.RepeatedScalarFieldContainer[float]
    nodes: int
    quadrature_error: float
    mode: float
    mode_sd: float
    posterior_mean: float
    posterior_sd: float
    def __init__(self, n: _Optional[int] = ..., defined: _Optional[bool] = ..., loglik: _Optional[float] = ..., gradient: _Optional[_Iterable[float]] = ..., hessian: _Optional[_Iterable[float]] = ..., nodes: _Optional[int] = ..., quadrature_error: _Optional[float] = ..., mode: _Optional[float] = ..., mode_sd: _Optional[float] = ..., posterior_mean: _Optional[float] = ..., posterior_sd: _Optional[float] = ...) -> None: ...

class IecvMeasures(_message.Message):
    __slots__ = ("n", "auc", "auc_var", "logit_auc", "logit_auc_var", "calibration_slope", "calibration_slope_var", "calibration_in_the_large", "calibration_in_the_large_var", "observed", "expected", "log_oe", "log_oe_var", "recalibration", "refused")
    class RefusedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    N_FIELD_NUMBER: _ClassVar[int]
    AUC_FIELD_NUMBER: _ClassVar[int]
    AUC_VAR_FIELD_NUMBER: _ClassVar[int]
    LOGIT_AUC_FIELD_NUMBER: _ClassVar[int]
    LOGIT_AUC_VAR_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_SLOPE_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_SLOPE_VAR_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_IN_THE_LARGE_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_IN_THE_LARGE_VAR_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    LOG_OE_FIELD_NUMBER: _ClassVar[int]
    LOG_OE_VAR_FIELD_NUMBER: _ClassVar[int]
    RECALIBRATION_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    n: int
    auc: float
    auc_var: float
    logit_auc: float
    logit_auc_var: float
    calibration_slope: float
    calibration_slope_var: float
    calibration_in_the_large: float
    calibration_in_the_large_var: float
    observed: float
    expected: float
    log_oe: float
    log_oe_var: float
    recalibration: float
    refused: _containers.ScalarMap[str, str]
    def __init__(self, n: _Optional[int] = ..., auc: _Optional[float] = ..., auc_var: _Optional[float] = ..., logit_auc: _Optional[float] = ..., logit_auc_var: _Optional[float] = ..., calibration_slope: _Optional[float] = ..., calibration_slope_var: _Optional[float] = ..., calibration_in_the_large: _Optional[float] = ..., calibration_in_the_large_var: _Optional[float] = ..., observed: _Optional[float] = ..., expected: _Optional[float] = ..., log_oe: _Optional[float] = ..., log_oe_var: _Optional[float] = ..., recalibration: _Optional[float] = ..., refused: _Optional[_Mapping[str, str]] = ...) -> None: ...

class StepAnswer(_message.Message):
    __slots__ = ("protocol_version", "round_id", "site", "nonce", "timestamp_unix_ms", "agent_version", "step_id", "request_digest", "irls", "site_fit", "refusal", "hierarchical", "iecv")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    IRLS_FIELD_NUMBER: _ClassVar[int]
    SITE_FIT_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    HIERARCHICAL_FIELD_NUMBER: _ClassVar[int]
    IECV_FIELD_NUMBER: _ClassVar[int]
    protocol_version: str
    round_id: str
    site: str
    nonce: bytes
    timestamp_unix_ms: int
    agent_version: str
    step_id: str
    request_digest: bytes
    irls: IrlsAggregates
    site_fit: SiteFitResult
    refusal: Refusal
    hierarchical: HierarchicalContribution
    iecv: IecvMeasures
    def __init__(self, protocol_version: _Optional[str] = ..., round_id: _Optional[str] = ..., site: _Optional[str] = ..., nonce: _Optional[bytes] = ..., timestamp_unix_ms: _Optional[int] = ..., agent_version: _Optional[str] = ..., step_id: _Optional[str] = ..., request_digest: _Optional[bytes] = ..., irls: _Optional[_Union[IrlsAggregates, _Mapping]] = ..., site_fit: _Optional[_Union[SiteFitResult, _Mapping]] = ..., refusal: _Optional[_Union[Refusal, _Mapping]] = ..., hierarchical: _Optional[_Union[HierarchicalContribution, _Mapping]] = ..., iecv: _Optional[_Union[IecvMeasures, _Mapping]] = ...) -> None: ...

class AnswerStepRequest(_message.Message):
    __slots__ = ("protocol_version", "answer", "signature")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    protocol_version: str
    answer: bytes
    signature: bytes
    def __init__(self, protocol_version: _Optional[str] = ..., answer: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class AnswerStepReply(_message.Message):
    __slots__ = ("protocol_version", "status", "step_id", "message")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    protocol_version: str
    status: str
    step_id: str
    message: str
    def __init__(self, protocol_version: _Optional[str] = ..., status: _Optional[str] = ..., step_id: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...
