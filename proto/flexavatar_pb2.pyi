from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Encoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENCODING_UNSPECIFIED: _ClassVar[Encoding]
    RAW_RGB8: _ClassVar[Encoding]
    JPEG: _ClassVar[Encoding]
    PNG: _ClassVar[Encoding]
ENCODING_UNSPECIFIED: Encoding
RAW_RGB8: Encoding
JPEG: Encoding
PNG: Encoding

class Camera(_message.Message):
    __slots__ = ("cam2world", "intrinsics")
    CAM2WORLD_FIELD_NUMBER: _ClassVar[int]
    INTRINSICS_FIELD_NUMBER: _ClassVar[int]
    cam2world: _containers.RepeatedScalarFieldContainer[float]
    intrinsics: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, cam2world: _Optional[_Iterable[float]] = ..., intrinsics: _Optional[_Iterable[float]] = ...) -> None: ...

class CreateAvatarRequest(_message.Message):
    __slots__ = ("image", "avatar_code_npy", "camera", "name")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    AVATAR_CODE_NPY_FIELD_NUMBER: _ClassVar[int]
    CAMERA_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    avatar_code_npy: bytes
    camera: Camera
    name: str
    def __init__(self, image: _Optional[bytes] = ..., avatar_code_npy: _Optional[bytes] = ..., camera: _Optional[_Union[Camera, _Mapping]] = ..., name: _Optional[str] = ...) -> None: ...

class Avatar(_message.Message):
    __slots__ = ("avatar_id", "name", "source", "num_head_tokens", "hidden_dim", "created_unix_s", "model")
    AVATAR_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    NUM_HEAD_TOKENS_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_DIM_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    avatar_id: str
    name: str
    source: str
    num_head_tokens: int
    hidden_dim: int
    created_unix_s: float
    model: str
    def __init__(self, avatar_id: _Optional[str] = ..., name: _Optional[str] = ..., source: _Optional[str] = ..., num_head_tokens: _Optional[int] = ..., hidden_dim: _Optional[int] = ..., created_unix_s: _Optional[float] = ..., model: _Optional[str] = ...) -> None: ...

class GetAvatarRequest(_message.Message):
    __slots__ = ("avatar_id",)
    AVATAR_ID_FIELD_NUMBER: _ClassVar[int]
    avatar_id: str
    def __init__(self, avatar_id: _Optional[str] = ...) -> None: ...

class ListAvatarsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAvatarsResponse(_message.Message):
    __slots__ = ("avatars", "next_page_token", "total_size")
    AVATARS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    avatars: _containers.RepeatedCompositeFieldContainer[Avatar]
    next_page_token: str
    total_size: int
    def __init__(self, avatars: _Optional[_Iterable[_Union[Avatar, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total_size: _Optional[int] = ...) -> None: ...

class DeleteAvatarRequest(_message.Message):
    __slots__ = ("avatar_id",)
    AVATAR_ID_FIELD_NUMBER: _ClassVar[int]
    avatar_id: str
    def __init__(self, avatar_id: _Optional[str] = ...) -> None: ...

class DeleteAvatarResponse(_message.Message):
    __slots__ = ("avatar_id",)
    AVATAR_ID_FIELD_NUMBER: _ClassVar[int]
    avatar_id: str
    def __init__(self, avatar_id: _Optional[str] = ...) -> None: ...

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Limits(_message.Message):
    __slots__ = ("min_size", "max_width", "max_height", "max_streams", "max_message_bytes", "max_stream_fps", "max_stream_messages_per_s", "max_batch_size", "max_batch_wait_us", "auth_required", "tls", "max_pending_streams", "config_timeout_s", "stream_idle_timeout_s", "max_avatars", "max_store_bytes", "max_photo_pixels", "max_concurrent_creates", "max_list_page_size", "shutdown_drain_s", "shutdown_grace_s", "fitting_available", "max_fit_observations", "max_fit_resolution", "max_fit_steps", "fit_preview_every", "max_concurrent_fits")
    MIN_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_WIDTH_FIELD_NUMBER: _ClassVar[int]
    MAX_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    MAX_STREAMS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_STREAM_FPS_FIELD_NUMBER: _ClassVar[int]
    MAX_STREAM_MESSAGES_PER_S_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_WAIT_US_FIELD_NUMBER: _ClassVar[int]
    AUTH_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    MAX_PENDING_STREAMS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    STREAM_IDLE_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    MAX_AVATARS_FIELD_NUMBER: _ClassVar[int]
    MAX_STORE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_PHOTO_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_CREATES_FIELD_NUMBER: _ClassVar[int]
    MAX_LIST_PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHUTDOWN_DRAIN_S_FIELD_NUMBER: _ClassVar[int]
    SHUTDOWN_GRACE_S_FIELD_NUMBER: _ClassVar[int]
    FITTING_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    MAX_FIT_OBSERVATIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_FIT_RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    MAX_FIT_STEPS_FIELD_NUMBER: _ClassVar[int]
    FIT_PREVIEW_EVERY_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_FITS_FIELD_NUMBER: _ClassVar[int]
    min_size: int
    max_width: int
    max_height: int
    max_streams: int
    max_message_bytes: int
    max_stream_fps: float
    max_stream_messages_per_s: float
    max_batch_size: int
    max_batch_wait_us: int
    auth_required: bool
    tls: bool
    max_pending_streams: int
    config_timeout_s: float
    stream_idle_timeout_s: float
    max_avatars: int
    max_store_bytes: int
    max_photo_pixels: int
    max_concurrent_creates: int
    max_list_page_size: int
    shutdown_drain_s: float
    shutdown_grace_s: float
    fitting_available: bool
    max_fit_observations: int
    max_fit_resolution: int
    max_fit_steps: int
    fit_preview_every: int
    max_concurrent_fits: int
    def __init__(self, min_size: _Optional[int] = ..., max_width: _Optional[int] = ..., max_height: _Optional[int] = ..., max_streams: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., max_stream_fps: _Optional[float] = ..., max_stream_messages_per_s: _Optional[float] = ..., max_batch_size: _Optional[int] = ..., max_batch_wait_us: _Optional[int] = ..., auth_required: _Optional[bool] = ..., tls: _Optional[bool] = ..., max_pending_streams: _Optional[int] = ..., config_timeout_s: _Optional[float] = ..., stream_idle_timeout_s: _Optional[float] = ..., max_avatars: _Optional[int] = ..., max_store_bytes: _Optional[int] = ..., max_photo_pixels: _Optional[int] = ..., max_concurrent_creates: _Optional[int] = ..., max_list_page_size: _Optional[int] = ..., shutdown_drain_s: _Optional[float] = ..., shutdown_grace_s: _Optional[float] = ..., fitting_available: _Optional[bool] = ..., max_fit_observations: _Optional[int] = ..., max_fit_resolution: _Optional[int] = ..., max_fit_steps: _Optional[int] = ..., fit_preview_every: _Optional[int] = ..., max_concurrent_fits: _Optional[int] = ...) -> None: ...

class ServerStats(_message.Message):
    __slots__ = ("active_streams", "streams_total", "frames_received", "frames_rendered", "frames_dropped", "batches", "batch_sizes", "avatars", "pending_streams", "fits_running")
    class BatchSizesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    ACTIVE_STREAMS_FIELD_NUMBER: _ClassVar[int]
    STREAMS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    FRAMES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    FRAMES_RENDERED_FIELD_NUMBER: _ClassVar[int]
    FRAMES_DROPPED_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZES_FIELD_NUMBER: _ClassVar[int]
    AVATARS_FIELD_NUMBER: _ClassVar[int]
    PENDING_STREAMS_FIELD_NUMBER: _ClassVar[int]
    FITS_RUNNING_FIELD_NUMBER: _ClassVar[int]
    active_streams: int
    streams_total: int
    frames_received: int
    frames_rendered: int
    frames_dropped: int
    batches: int
    batch_sizes: _containers.ScalarMap[int, int]
    avatars: int
    pending_streams: int
    fits_running: int
    def __init__(self, active_streams: _Optional[int] = ..., streams_total: _Optional[int] = ..., frames_received: _Optional[int] = ..., frames_rendered: _Optional[int] = ..., frames_dropped: _Optional[int] = ..., batches: _Optional[int] = ..., batch_sizes: _Optional[_Mapping[int, int]] = ..., avatars: _Optional[int] = ..., pending_streams: _Optional[int] = ..., fits_running: _Optional[int] = ...) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("version", "engine_backend", "engine_device", "engine_precision", "engine_description", "engine_detail", "rasterizer_backend", "model", "num_head_tokens", "hidden_dim", "num_gaussians", "limits", "stats")
    class EngineDetailEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ENGINE_BACKEND_FIELD_NUMBER: _ClassVar[int]
    ENGINE_DEVICE_FIELD_NUMBER: _ClassVar[int]
    ENGINE_PRECISION_FIELD_NUMBER: _ClassVar[int]
    ENGINE_DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ENGINE_DETAIL_FIELD_NUMBER: _ClassVar[int]
    RASTERIZER_BACKEND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NUM_HEAD_TOKENS_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_DIM_FIELD_NUMBER: _ClassVar[int]
    NUM_GAUSSIANS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    version: str
    engine_backend: str
    engine_device: str
    engine_precision: str
    engine_description: str
    engine_detail: _containers.ScalarMap[str, str]
    rasterizer_backend: str
    model: str
    num_head_tokens: int
    hidden_dim: int
    num_gaussians: int
    limits: Limits
    stats: ServerStats
    def __init__(self, version: _Optional[str] = ..., engine_backend: _Optional[str] = ..., engine_device: _Optional[str] = ..., engine_precision: _Optional[str] = ..., engine_description: _Optional[str] = ..., engine_detail: _Optional[_Mapping[str, str]] = ..., rasterizer_backend: _Optional[str] = ..., model: _Optional[str] = ..., num_head_tokens: _Optional[int] = ..., hidden_dim: _Optional[int] = ..., num_gaussians: _Optional[int] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., stats: _Optional[_Union[ServerStats, _Mapping]] = ...) -> None: ...

class AnimateRequest(_message.Message):
    __slots__ = ("config", "frame")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    config: SessionConfig
    frame: Frame
    def __init__(self, config: _Optional[_Union[SessionConfig, _Mapping]] = ..., frame: _Optional[_Union[Frame, _Mapping]] = ...) -> None: ...

class SessionConfig(_message.Message):
    __slots__ = ("avatar_id", "width", "height", "encoding", "quality", "background", "camera")
    AVATAR_ID_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_FIELD_NUMBER: _ClassVar[int]
    CAMERA_FIELD_NUMBER: _ClassVar[int]
    avatar_id: str
    width: int
    height: int
    encoding: Encoding
    quality: int
    background: _containers.RepeatedScalarFieldContainer[float]
    camera: Camera
    def __init__(self, avatar_id: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., encoding: _Optional[_Union[Encoding, str]] = ..., quality: _Optional[int] = ..., background: _Optional[_Iterable[float]] = ..., camera: _Optional[_Union[Camera, _Mapping]] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("sequence", "client_timestamp_us", "expression", "camera")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_TIMESTAMP_US_FIELD_NUMBER: _ClassVar[int]
    EXPRESSION_FIELD_NUMBER: _ClassVar[int]
    CAMERA_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    client_timestamp_us: int
    expression: _containers.RepeatedScalarFieldContainer[float]
    camera: Camera
    def __init__(self, sequence: _Optional[int] = ..., client_timestamp_us: _Optional[int] = ..., expression: _Optional[_Iterable[float]] = ..., camera: _Optional[_Union[Camera, _Mapping]] = ...) -> None: ...

class StageTimings(_message.Message):
    __slots__ = ("queue_us", "decode_us", "render_us", "encode_us", "server_us", "batch_size")
    QUEUE_US_FIELD_NUMBER: _ClassVar[int]
    DECODE_US_FIELD_NUMBER: _ClassVar[int]
    RENDER_US_FIELD_NUMBER: _ClassVar[int]
    ENCODE_US_FIELD_NUMBER: _ClassVar[int]
    SERVER_US_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    queue_us: int
    decode_us: int
    render_us: int
    encode_us: int
    server_us: int
    batch_size: int
    def __init__(self, queue_us: _Optional[int] = ..., decode_us: _Optional[int] = ..., render_us: _Optional[int] = ..., encode_us: _Optional[int] = ..., server_us: _Optional[int] = ..., batch_size: _Optional[int] = ...) -> None: ...

class StreamCounters(_message.Message):
    __slots__ = ("received", "rendered", "dropped")
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    RENDERED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    received: int
    rendered: int
    dropped: int
    def __init__(self, received: _Optional[int] = ..., rendered: _Optional[int] = ..., dropped: _Optional[int] = ...) -> None: ...

class AnimateResponse(_message.Message):
    __slots__ = ("sequence", "client_timestamp_us", "image", "width", "height", "encoding", "timings", "counters")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_TIMESTAMP_US_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    client_timestamp_us: int
    image: bytes
    width: int
    height: int
    encoding: Encoding
    timings: StageTimings
    counters: StreamCounters
    def __init__(self, sequence: _Optional[int] = ..., client_timestamp_us: _Optional[int] = ..., image: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., encoding: _Optional[_Union[Encoding, str]] = ..., timings: _Optional[_Union[StageTimings, _Mapping]] = ..., counters: _Optional[_Union[StreamCounters, _Mapping]] = ...) -> None: ...

class FitObservation(_message.Message):
    __slots__ = ("image", "camera", "expression")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CAMERA_FIELD_NUMBER: _ClassVar[int]
    EXPRESSION_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    camera: Camera
    expression: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, image: _Optional[bytes] = ..., camera: _Optional[_Union[Camera, _Mapping]] = ..., expression: _Optional[_Iterable[float]] = ...) -> None: ...

class FitAvatarRequest(_message.Message):
    __slots__ = ("observations", "name", "init_avatar_id", "init_avatar_code_npy", "steps", "no_expression_offsets", "seed", "preview_every", "resolution")
    OBSERVATIONS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    INIT_AVATAR_ID_FIELD_NUMBER: _ClassVar[int]
    INIT_AVATAR_CODE_NPY_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    NO_EXPRESSION_OFFSETS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_EVERY_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    observations: _containers.RepeatedCompositeFieldContainer[FitObservation]
    name: str
    init_avatar_id: str
    init_avatar_code_npy: bytes
    steps: int
    no_expression_offsets: bool
    seed: int
    preview_every: int
    resolution: int
    def __init__(self, observations: _Optional[_Iterable[_Union[FitObservation, _Mapping]]] = ..., name: _Optional[str] = ..., init_avatar_id: _Optional[str] = ..., init_avatar_code_npy: _Optional[bytes] = ..., steps: _Optional[int] = ..., no_expression_offsets: _Optional[bool] = ..., seed: _Optional[int] = ..., preview_every: _Optional[int] = ..., resolution: _Optional[int] = ...) -> None: ...

class FitAvatarProgress(_message.Message):
    __slots__ = ("step", "steps", "loss", "psnr", "view", "preview_jpeg")
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    PSNR_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_JPEG_FIELD_NUMBER: _ClassVar[int]
    step: int
    steps: int
    loss: float
    psnr: float
    view: int
    preview_jpeg: bytes
    def __init__(self, step: _Optional[int] = ..., steps: _Optional[int] = ..., loss: _Optional[float] = ..., psnr: _Optional[float] = ..., view: _Optional[int] = ..., preview_jpeg: _Optional[bytes] = ...) -> None: ...

class FitAvatarResult(_message.Message):
    __slots__ = ("avatar", "psnr_before", "psnr_after", "psnr_before_per_view", "psnr_after_per_view", "losses", "loss_terms", "init", "steps", "resolution", "rasterizer", "fit_seconds")
    class LossTermsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AVATAR_FIELD_NUMBER: _ClassVar[int]
    PSNR_BEFORE_FIELD_NUMBER: _ClassVar[int]
    PSNR_AFTER_FIELD_NUMBER: _ClassVar[int]
    PSNR_BEFORE_PER_VIEW_FIELD_NUMBER: _ClassVar[int]
    PSNR_AFTER_PER_VIEW_FIELD_NUMBER: _ClassVar[int]
    LOSSES_FIELD_NUMBER: _ClassVar[int]
    LOSS_TERMS_FIELD_NUMBER: _ClassVar[int]
    INIT_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    RASTERIZER_FIELD_NUMBER: _ClassVar[int]
    FIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    avatar: Avatar
    psnr_before: float
    psnr_after: float
    psnr_before_per_view: _containers.RepeatedScalarFieldContainer[float]
    psnr_after_per_view: _containers.RepeatedScalarFieldContainer[float]
    losses: _containers.RepeatedScalarFieldContainer[float]
    loss_terms: _containers.ScalarMap[str, str]
    init: str
    steps: int
    resolution: int
    rasterizer: str
    fit_seconds: float
    def __init__(self, avatar: _Optional[_Union[Avatar, _Mapping]] = ..., psnr_before: _Optional[float] = ..., psnr_after: _Optional[float] = ..., psnr_before_per_view: _Optional[_Iterable[float]] = ..., psnr_after_per_view: _Optional[_Iterable[float]] = ..., losses: _Optional[_Iterable[float]] = ..., loss_terms: _Optional[_Mapping[str, str]] = ..., init: _Optional[str] = ..., steps: _Optional[int] = ..., resolution: _Optional[int] = ..., rasterizer: _Optional[str] = ..., fit_seconds: _Optional[float] = ...) -> None: ...

class FitAvatarResponse(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: FitAvatarProgress
    result: FitAvatarResult
    def __init__(self, progress: _Optional[_Union[FitAvatarProgress, _Mapping]] = ..., result: _Optional[_Union[FitAvatarResult, _Mapping]] = ...) -> None: ...
