"""Per-stream Animate sessions: configuration, host-side validation and the latest-wins frame slot.

A session holds at most ONE frame waiting to be rendered (``pending``) and at most ``max_in_flight_per_stream`` in
the scheduler (runtime/batcher.py). A frame
that arrives while another is still waiting replaces it; the replaced one is counted as dropped. So a client that
sends faster than frames are produced, or stops reading, never makes the server queue more than that.

Everything here runs on the host with numpy (validation before anything is uploaded to the engine's device).
"""
from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field

import grpc
import numpy as np
import torch

from flexrt.model.camera import default_camera, pixel_intrinsics, viewmat_from_cam2world
from flexrt.proto import flexavatar_pb2 as pb

from . import codec
from .engines.base import EXPRESSION_DIM
from .limits import ServerConfig


class StreamError(Exception):
    """Ends an Animate stream (or a unary call) with a gRPC status code and a message saying what was wrong."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> StreamError:
    return StreamError(grpc.StatusCode.INVALID_ARGUMENT, message)


# ---------------------------------------------------------------------------------------------------------
# cameras (host)
# ---------------------------------------------------------------------------------------------------------

def parse_camera(camera: pb.Camera, what: str) -> tuple[np.ndarray, np.ndarray]:
    """proto Camera -> (cam2world float32 [4,4] OpenCV, normalised intrinsics float32 [3,3])."""
    c2w = np.asarray(camera.cam2world, dtype=np.float32)
    K = np.asarray(camera.intrinsics, dtype=np.float32)
    if c2w.size != 16 or K.size != 9:
        raise invalid(f"{what}: cam2world needs 16 floats and intrinsics 9 floats, got {c2w.size} and {K.size}")
    if not (np.isfinite(c2w).all() and np.isfinite(K).all()):
        raise invalid(f"{what}: camera contains NaN or Inf")
    c2w, K = c2w.reshape(4, 4), K.reshape(3, 3)
    if abs(float(np.linalg.det(c2w[:3, :3].astype(np.float64)))) < 1e-6:
        raise invalid(f"{what}: cam2world rotation is singular")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise invalid(f"{what}: intrinsics need positive focal lengths (normalised fx, fy), got {K[0, 0]}, {K[1, 1]}")
    return c2w, K


def default_camera_arrays() -> tuple[np.ndarray, np.ndarray]:
    """flexrt.model.camera.default_camera() as float32 numpy (cam2world [4,4], normalised K [3,3])."""
    c2w, K = default_camera()
    return c2w.numpy().astype(np.float32), K.numpy().astype(np.float32)


def render_camera(cam2world: np.ndarray, intrinsics: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(cam2world [4,4], normalised K [3,3]) -> (viewmat float32 [4,4], pixel K float32 [3,3]) for W x H.

    Uses flexrt.model.camera on CPU tensors, so a direct in-process render with the same helpers matches exactly.
    """
    view = viewmat_from_cam2world(torch.from_numpy(np.array(cam2world, dtype=np.float32)))
    Kp = pixel_intrinsics(torch.from_numpy(np.array(intrinsics, dtype=np.float32)), width, height)
    return view.numpy(), Kp.numpy()


# ---------------------------------------------------------------------------------------------------------
# session
# ---------------------------------------------------------------------------------------------------------

@dataclass
class FrameRequest:
    sequence: int
    client_timestamp_us: int
    expression: np.ndarray  # [135] float32, finite
    viewmat: np.ndarray  # [4,4] float32 world-to-camera
    K: np.ndarray  # [3,3] float32 pixel intrinsics
    received_ns: int  # time.perf_counter_ns() when the message was parsed


@dataclass
class SessionCounters:
    received: int = 0
    rendered: int = 0
    dropped: int = 0


_session_ids = itertools.count(1)


@dataclass
class Session:
    avatar_id: str
    avatar_code: torch.Tensor  # [HT,D] on the engine's device
    width: int
    height: int
    encoding: int  # pb.Encoding value
    quality: int
    background: np.ndarray  # [3] float32 in [0,1]
    default_viewmat: np.ndarray  # [4,4]
    default_K: np.ndarray  # [3,3] pixel intrinsics
    session_id: int = field(default_factory=lambda: next(_session_ids))
    counters: SessionCounters = field(default_factory=SessionCounters)
    in_flight: int = 0  # frames of this session inside the batcher (at most max_in_flight_per_stream)

    def __post_init__(self):
        self._pending: FrameRequest | None = None
        self._wakeup = asyncio.Event()
        self._input_closed = False
        self._error: StreamError | None = None

    # ---- producer side (the stream reader) ----
    def offer(self, frame: FrameRequest) -> bool:
        """Latest wins: replaces a frame that is still waiting (returns True when one was dropped)."""
        self.counters.received += 1
        dropped = self._pending is not None
        if dropped:
            self.counters.dropped += 1
        self._pending = frame
        self._wakeup.set()
        return dropped

    def close_input(self) -> None:
        self._input_closed = True
        self._wakeup.set()

    def fail(self, error: StreamError) -> None:
        if self._error is None:
            self._error = error
        self._wakeup.set()

    # ---- consumer side (the stream's render loop) ----
    @property
    def pending_count(self) -> int:
        return int(self._pending is not None)

    async def next_frame(self) -> FrameRequest | None:
        """The newest waiting frame; None once the client half-closed and nothing waits. Raises StreamError."""
        while True:
            if self._error is not None:
                raise self._error
            if self._pending is not None:
                frame, self._pending = self._pending, None
                return frame
            if self._input_closed:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()

    def take_newer(self, frame: FrameRequest) -> FrameRequest:
        """After a pause (rate limit): a newer waiting frame replaces ``frame`` (which counts as dropped)."""
        if self._pending is not None:
            self.counters.dropped += 1
            frame, self._pending = self._pending, None
        return frame

    def snapshot(self) -> dict:
        return {
            "session_id": self.session_id, "avatar_id": self.avatar_id, "width": self.width, "height": self.height,
            "pending": self.pending_count, "in_flight": self.in_flight, "received": self.counters.received,
            "rendered": self.counters.rendered, "dropped": self.counters.dropped,
        }


def parse_session_config(request: pb.AnimateRequest, config: ServerConfig) -> tuple[pb.SessionConfig, dict]:
    """Validate the first Animate message -> (SessionConfig, render settings). Avatar lookup is the caller's."""
    kind = request.WhichOneof("payload")
    if kind != "config":
        raise invalid(f"the first Animate message must carry 'config' (SessionConfig), got {kind or 'nothing'!r}")
    cfg = request.config
    if not cfg.avatar_id:
        raise invalid("SessionConfig.avatar_id is required")
    w, h = int(cfg.width), int(cfg.height)
    if w == 0 or h == 0:
        raise invalid("SessionConfig.width and height are required")
    if not (config.min_size <= w <= config.max_width and config.min_size <= h <= config.max_height):
        raise invalid(
            f"resolution {w}x{h} is outside the server limits: width in [{config.min_size}, {config.max_width}], "
            f"height in [{config.min_size}, {config.max_height}]"
        )
    try:
        encoding = codec.encoding_value(cfg.encoding)
    except ValueError as exc:
        raise invalid(f"SessionConfig.encoding: {exc}") from None
    quality = int(cfg.quality) or codec.DEFAULT_JPEG_QUALITY
    if not 1 <= quality <= 100:
        raise invalid(f"SessionConfig.quality must be in [1, 100] (0 = {codec.DEFAULT_JPEG_QUALITY}), got {quality}")
    if len(cfg.background) == 0:
        background = np.ones(3, dtype=np.float32)  # white, like the official renders
    else:
        background = np.asarray(cfg.background, dtype=np.float32)
        if background.shape != (3,) or not np.isfinite(background).all() or background.min() < 0 or background.max() > 1:
            raise invalid(f"SessionConfig.background must be 3 floats in [0, 1], got {list(cfg.background)}")
    if cfg.HasField("camera"):
        c2w, K = parse_camera(cfg.camera, "SessionConfig.camera")
    else:
        c2w, K = default_camera_arrays()
    viewmat, K_pixels = render_camera(c2w, K, w, h)
    settings = dict(width=w, height=h, encoding=encoding, quality=quality, background=background,
                    default_viewmat=viewmat, default_K=K_pixels)
    return cfg, settings


def parse_frame(request: pb.AnimateRequest, session: Session) -> FrameRequest:
    """Validate one Frame message on the host: 135 finite floats, optional camera."""
    kind = request.WhichOneof("payload")
    if kind != "frame":
        raise invalid(f"only the first Animate message may carry {kind or 'nothing'!r}; later messages carry 'frame'")
    frame = request.frame
    expression = np.asarray(frame.expression, dtype=np.float32)  # [135]
    if expression.shape != (EXPRESSION_DIM,):
        raise invalid(f"frame {frame.sequence}: expression must have {EXPRESSION_DIM} floats, got {expression.size}")
    if not np.isfinite(expression).all():
        raise invalid(f"frame {frame.sequence}: expression contains NaN or Inf")
    if frame.HasField("camera"):
        c2w, K = parse_camera(frame.camera, f"frame {frame.sequence}")
        viewmat, K_pixels = render_camera(c2w, K, session.width, session.height)
    else:
        viewmat, K_pixels = session.default_viewmat, session.default_K
    return FrameRequest(
        sequence=int(frame.sequence), client_timestamp_us=int(frame.client_timestamp_us), expression=expression,
        viewmat=viewmat, K=K_pixels, received_ns=time.perf_counter_ns(),
    )
