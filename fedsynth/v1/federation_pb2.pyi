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
