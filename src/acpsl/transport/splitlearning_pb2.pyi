from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper

DESCRIPTOR: _descriptor.FileDescriptor

class Session(_message.Message):
    __slots__ = ("client_id", "key")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    key: bytes
    def __init__(self, client_id: int | None = ..., key: bytes | None = ...) -> None: ...

class ConfigRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    def __init__(self, version: str | None = ...) -> None: ...

class ConfigReply(_message.Message):
    __slots__ = ("config_toml",)
    CONFIG_TOML_FIELD_NUMBER: _ClassVar[int]
    config_toml: str
    def __init__(self, config_toml: str | None = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("fresh", "requested_id", "version")
    REQUESTED_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FRESH_FIELD_NUMBER: _ClassVar[int]
    requested_id: int
    version: str
    fresh: bool
    def __init__(
        self, requested_id: int | None = ..., version: str | None = ..., fresh: bool | None = ...
    ) -> None: ...

class JoinReply(_message.Message):
    __slots__ = ("poll_s", "session")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    POLL_S_FIELD_NUMBER: _ClassVar[int]
    session: Session
    poll_s: float
    def __init__(
        self, session: Session | _Mapping | None = ..., poll_s: float | None = ...
    ) -> None: ...

class TaskRequest(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: Session
    def __init__(self, session: Session | _Mapping | None = ...) -> None: ...

class Task(_message.Message):
    __slots__ = (
        "client_state",
        "kind",
        "message",
        "model_state",
        "reset",
        "round",
        "t_start",
        "total",
        "turn",
    )
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        WAIT: _ClassVar[Task.Kind]
        TRAIN: _ClassVar[Task.Kind]
        EVAL: _ClassVar[Task.Kind]
        DONE: _ClassVar[Task.Kind]

    WAIT: Task.Kind
    TRAIN: Task.Kind
    EVAL: Task.Kind
    DONE: Task.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    TURN_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    T_START_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    MODEL_STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_STATE_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    kind: Task.Kind
    turn: int
    round: int
    t_start: int
    total: int
    model_state: bytes
    message: str
    client_state: bytes
    reset: bool
    def __init__(
        self,
        kind: Task.Kind | str | None = ...,
        turn: int | None = ...,
        round: int | None = ...,
        t_start: int | None = ...,
        total: int | None = ...,
        model_state: bytes | None = ...,
        message: str | None = ...,
        client_state: bytes | None = ...,
        reset: bool | None = ...,
    ) -> None: ...

class StepRequest(_message.Message):
    __slots__ = ("labels", "session", "smashed", "t", "turn")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    TURN_FIELD_NUMBER: _ClassVar[int]
    T_FIELD_NUMBER: _ClassVar[int]
    SMASHED_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    session: Session
    turn: int
    t: int
    smashed: bytes
    labels: bytes
    def __init__(
        self,
        session: Session | _Mapping | None = ...,
        turn: int | None = ...,
        t: int | None = ...,
        smashed: bytes | None = ...,
        labels: bytes | None = ...,
    ) -> None: ...

class StepReply(_message.Message):
    __slots__ = ("grad",)
    GRAD_FIELD_NUMBER: _ClassVar[int]
    grad: bytes
    def __init__(self, grad: bytes | None = ...) -> None: ...

class TurnResult(_message.Message):
    __slots__ = ("client_state", "model_state", "session", "stats_json", "turn")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    TURN_FIELD_NUMBER: _ClassVar[int]
    MODEL_STATE_FIELD_NUMBER: _ClassVar[int]
    STATS_JSON_FIELD_NUMBER: _ClassVar[int]
    CLIENT_STATE_FIELD_NUMBER: _ClassVar[int]
    session: Session
    turn: int
    model_state: bytes
    stats_json: str
    client_state: bytes
    def __init__(
        self,
        session: Session | _Mapping | None = ...,
        turn: int | None = ...,
        model_state: bytes | None = ...,
        stats_json: str | None = ...,
        client_state: bytes | None = ...,
    ) -> None: ...

class EvalRequest(_message.Message):
    __slots__ = ("labels", "session", "smashed", "turn", "uncompressed")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    TURN_FIELD_NUMBER: _ClassVar[int]
    SMASHED_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    UNCOMPRESSED_FIELD_NUMBER: _ClassVar[int]
    session: Session
    turn: int
    smashed: bytes
    labels: bytes
    uncompressed: bool
    def __init__(
        self,
        session: Session | _Mapping | None = ...,
        turn: int | None = ...,
        smashed: bytes | None = ...,
        labels: bytes | None = ...,
        uncompressed: bool | None = ...,
    ) -> None: ...

class EvalReply(_message.Message):
    __slots__ = ("correct", "loss_sum")
    LOSS_SUM_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    loss_sum: float
    correct: int
    def __init__(self, loss_sum: float | None = ..., correct: int | None = ...) -> None: ...

class EvalDone(_message.Message):
    __slots__ = ("session", "turn")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    TURN_FIELD_NUMBER: _ClassVar[int]
    session: Session
    turn: int
    def __init__(
        self, session: Session | _Mapping | None = ..., turn: int | None = ...
    ) -> None: ...

class Ack(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
