from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MaskOptions(_message.Message):
    __slots__ = ("mask", "merge", "decode_mode", "merge_op", "merge_kernel", "merge_slots")
    MASK_FIELD_NUMBER: _ClassVar[int]
    MERGE_FIELD_NUMBER: _ClassVar[int]
    DECODE_MODE_FIELD_NUMBER: _ClassVar[int]
    MERGE_OP_FIELD_NUMBER: _ClassVar[int]
    MERGE_KERNEL_FIELD_NUMBER: _ClassVar[int]
    MERGE_SLOTS_FIELD_NUMBER: _ClassVar[int]
    mask: str
    merge: bool
    decode_mode: str
    merge_op: str
    merge_kernel: int
    merge_slots: int
    def __init__(self, mask: _Optional[str] = ..., merge: _Optional[bool] = ..., decode_mode: _Optional[str] = ..., merge_op: _Optional[str] = ..., merge_kernel: _Optional[int] = ..., merge_slots: _Optional[int] = ...) -> None: ...

class CameraSpec(_message.Message):
    __slots__ = ("name", "height", "width")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    name: str
    height: int
    width: int
    def __init__(self, name: _Optional[str] = ..., height: _Optional[int] = ..., width: _Optional[int] = ...) -> None: ...

class ServerLimits(_message.Message):
    __slots__ = ("max_instruction_chars", "max_instruction_words", "max_image_pixels", "max_image_side", "max_queued_requests")
    MAX_INSTRUCTION_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_INSTRUCTION_WORDS_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_SIDE_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    max_instruction_chars: int
    max_instruction_words: int
    max_image_pixels: int
    max_image_side: int
    max_queued_requests: int
    def __init__(self, max_instruction_chars: _Optional[int] = ..., max_instruction_words: _Optional[int] = ..., max_image_pixels: _Optional[int] = ..., max_image_side: _Optional[int] = ..., max_queued_requests: _Optional[int] = ...) -> None: ...

class ActionSpace(_message.Message):
    __slots__ = ("kind", "dims", "low", "high", "num_actions", "chunk")
    KIND_FIELD_NUMBER: _ClassVar[int]
    DIMS_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    NUM_ACTIONS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    kind: str
    dims: int
    low: _containers.RepeatedScalarFieldContainer[float]
    high: _containers.RepeatedScalarFieldContainer[float]
    num_actions: int
    chunk: int
    def __init__(self, kind: _Optional[str] = ..., dims: _Optional[int] = ..., low: _Optional[_Iterable[float]] = ..., high: _Optional[_Iterable[float]] = ..., num_actions: _Optional[int] = ..., chunk: _Optional[int] = ...) -> None: ...

class PolicyInfo(_message.Message):
    __slots__ = ("model_name", "model_version", "action_space", "cameras", "history", "proprio_dim", "available_masks", "default_mask", "max_message_bytes", "default_temperature", "limits", "device", "decode_path")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTION_SPACE_FIELD_NUMBER: _ClassVar[int]
    CAMERAS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    PROPRIO_DIM_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_MASKS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MASK_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DECODE_PATH_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    action_space: ActionSpace
    cameras: _containers.RepeatedCompositeFieldContainer[CameraSpec]
    history: int
    proprio_dim: int
    available_masks: _containers.RepeatedScalarFieldContainer[str]
    default_mask: MaskOptions
    max_message_bytes: int
    default_temperature: float
    limits: ServerLimits
    device: str
    decode_path: str
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., action_space: _Optional[_Union[ActionSpace, _Mapping]] = ..., cameras: _Optional[_Iterable[_Union[CameraSpec, _Mapping]]] = ..., history: _Optional[int] = ..., proprio_dim: _Optional[int] = ..., available_masks: _Optional[_Iterable[str]] = ..., default_mask: _Optional[_Union[MaskOptions, _Mapping]] = ..., max_message_bytes: _Optional[int] = ..., default_temperature: _Optional[float] = ..., limits: _Optional[_Union[ServerLimits, _Mapping]] = ..., device: _Optional[str] = ..., decode_path: _Optional[str] = ...) -> None: ...

class StartEpisodeRequest(_message.Message):
    __slots__ = ("instruction", "mask", "seed", "temperature")
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    instruction: str
    mask: MaskOptions
    seed: int
    temperature: float
    def __init__(self, instruction: _Optional[str] = ..., mask: _Optional[_Union[MaskOptions, _Mapping]] = ..., seed: _Optional[int] = ..., temperature: _Optional[float] = ...) -> None: ...

class StartEpisodeResponse(_message.Message):
    __slots__ = ("episode_id",)
    EPISODE_ID_FIELD_NUMBER: _ClassVar[int]
    episode_id: str
    def __init__(self, episode_id: _Optional[str] = ...) -> None: ...

class EndEpisodeRequest(_message.Message):
    __slots__ = ("episode_id",)
    EPISODE_ID_FIELD_NUMBER: _ClassVar[int]
    episode_id: str
    def __init__(self, episode_id: _Optional[str] = ...) -> None: ...

class EndEpisodeResponse(_message.Message):
    __slots__ = ("steps",)
    STEPS_FIELD_NUMBER: _ClassVar[int]
    steps: int
    def __init__(self, steps: _Optional[int] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("camera", "encoding", "data", "height", "width", "channels", "dtype")
    class Encoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        RAW: _ClassVar[Image.Encoding]
        PNG: _ClassVar[Image.Encoding]
        JPEG: _ClassVar[Image.Encoding]
    RAW: Image.Encoding
    PNG: Image.Encoding
    JPEG: Image.Encoding
    CAMERA_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    camera: str
    encoding: Image.Encoding
    data: bytes
    height: int
    width: int
    channels: int
    dtype: str
    def __init__(self, camera: _Optional[str] = ..., encoding: _Optional[_Union[Image.Encoding, str]] = ..., data: _Optional[bytes] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., channels: _Optional[int] = ..., dtype: _Optional[str] = ...) -> None: ...

class Observation(_message.Message):
    __slots__ = ("images", "proprio", "client_time")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    PROPRIO_FIELD_NUMBER: _ClassVar[int]
    CLIENT_TIME_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[Image]
    proprio: _containers.RepeatedScalarFieldContainer[float]
    client_time: float
    def __init__(self, images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., proprio: _Optional[_Iterable[float]] = ..., client_time: _Optional[float] = ...) -> None: ...

class ActRequest(_message.Message):
    __slots__ = ("episode_id", "observation")
    EPISODE_ID_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    episode_id: str
    observation: Observation
    def __init__(self, episode_id: _Optional[str] = ..., observation: _Optional[_Union[Observation, _Mapping]] = ...) -> None: ...

class StatelessActRequest(_message.Message):
    __slots__ = ("episode", "frames", "step")
    EPISODE_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    episode: StartEpisodeRequest
    frames: _containers.RepeatedCompositeFieldContainer[Observation]
    step: int
    def __init__(self, episode: _Optional[_Union[StartEpisodeRequest, _Mapping]] = ..., frames: _Optional[_Iterable[_Union[Observation, _Mapping]]] = ..., step: _Optional[int] = ...) -> None: ...

class LatencyBreakdown(_message.Message):
    __slots__ = ("queue_ms", "preprocess_ms", "prefill_ms", "decode_ms", "server_ms", "batch_size")
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    PREPROCESS_MS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_MS_FIELD_NUMBER: _ClassVar[int]
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    SERVER_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    queue_ms: float
    preprocess_ms: float
    prefill_ms: float
    decode_ms: float
    server_ms: float
    batch_size: int
    def __init__(self, queue_ms: _Optional[float] = ..., preprocess_ms: _Optional[float] = ..., prefill_ms: _Optional[float] = ..., decode_ms: _Optional[float] = ..., server_ms: _Optional[float] = ..., batch_size: _Optional[int] = ...) -> None: ...

class ActResponse(_message.Message):
    __slots__ = ("episode_id", "step", "chunk", "dims", "actions", "discrete_actions", "latency")
    EPISODE_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    DIMS_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    DISCRETE_ACTIONS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    episode_id: str
    step: int
    chunk: int
    dims: int
    actions: _containers.RepeatedScalarFieldContainer[float]
    discrete_actions: _containers.RepeatedScalarFieldContainer[int]
    latency: LatencyBreakdown
    def __init__(self, episode_id: _Optional[str] = ..., step: _Optional[int] = ..., chunk: _Optional[int] = ..., dims: _Optional[int] = ..., actions: _Optional[_Iterable[float]] = ..., discrete_actions: _Optional[_Iterable[int]] = ..., latency: _Optional[_Union[LatencyBreakdown, _Mapping]] = ...) -> None: ...
