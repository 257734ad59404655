"""Server configuration and protection: limits, gRPC server options, the request guard (bearer-token auth before
any request body is parsed, undecodable requests -> INVALID_ARGUMENT), TLS, rate limiting, log-safe text."""
from __future__ import annotations

import hmac
import inspect
import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc

from .codec import DEFAULT_MAX_PHOTO_PIXELS

logger = logging.getLogger(__name__)

MiB = 1 << 20
FIT_MIN_RESOLUTION = 16  # fitting.fit.MIN_IMAGE_SIDE: the SSIM window and the rasterizer tiles need this much
HEALTH_METHOD_PREFIX = "/grpc.health.v1.Health/"


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"  # "0.0.0.0" / "[::]" to listen on every interface
    port: int = 50051  # 0 = an ephemeral port (see ServerHandle.port)
    store_dir: str | None = None  # avatar store directory; None = in memory only

    # ---- limits ----
    min_size: int = 16  # smallest frame width / height
    max_width: int = 1024
    max_height: int = 1024
    max_streams: int = 64  # concurrent Animate streams; one more -> RESOURCE_EXHAUSTED
    max_message_bytes: int = 16 * MiB  # largest request (photo upload); bigger -> RESOURCE_EXHAUSTED
    max_stream_fps: float = 0.0  # rendered frames per second per stream; 0 = as fast as the engine goes
    max_stream_messages_per_s: float = 2000.0  # request messages per second per stream (burst = 1 s worth)
    # A stream takes one of the max_streams slots only once its SessionConfig has arrived and names a stored
    # avatar. Until then it waits for at most config_timeout_s among at most max_pending_streams such streams;
    # when one more arrives, the one waiting longest is closed (RESOURCE_EXHAUSTED) once it has waited
    # pending_grace_s: a burst of real clients (a whole server's worth reconnecting at once, their configs a few ms
    # behind their streams on a busy event loop) is not cut, while more than max_pending_streams + max_streams
    # waiting streams close the longest-waiting one at once. So connections that never send a config can neither
    # hold slots nor keep new streams out.
    max_pending_streams: int = 16
    pending_grace_s: float = 0.5
    config_timeout_s: float = 5.0
    stream_idle_timeout_s: float = 30.0  # a stream that sends no message this long ends (DEADLINE_EXCEEDED)

    # ---- avatars ----
    max_avatars: int = 1000  # stored avatars; one more -> RESOURCE_EXHAUSTED (0 = no limit)
    max_store_bytes: int = 4096 * MiB  # bytes of stored avatar codes (FLEX-1: 3 MiB each; 0 = no limit)
    max_photo_pixels: int = DEFAULT_MAX_PHOTO_PIXELS  # larger photos are refused from their header, undecoded
    photo_workers: int = 1  # threads decoding photos (their own pool: never the one encoding frames)
    max_concurrent_creates: int = 4  # CreateAvatar calls decoding/encoding at once; more -> RESOURCE_EXHAUSTED

    # ---- avatar fitting (FitAvatar; fitting/service.py runs it on the engine's PyTorch model) ----
    max_fit_observations: int = 16  # observations (photos / video frames) per FitAvatar request
    max_fit_resolution: int = 512  # largest side the observations are fitted at (the official fit: 512)
    max_fit_steps: int = 1000  # largest FitAvatarRequest.steps (the official recipe: 200)
    fit_preview_every: int = 10  # a preview JPEG every this many steps when the request says 0
    max_concurrent_fits: int = 1  # fits at once; more -> RESOURCE_EXHAUSTED (each holds the GPU for seconds)
    # DINOv2-small weights for the fit's perceptual DINO loss (dinov2_vits14_pretrain.pth or facebook/dinov2-small
    # model.safetensors); None: the term is off and every FitAvatarResult says so
    fit_dino_loss_weights: str | None = None

    # ---- batching and the GPU pipeline (runtime/batcher.py, runtime/frames.py) ----
    max_batch_size: int = 64  # frames in one batch (an exported engine's max_batch bounds it)
    max_batch_wait_ms: float = 1.0  # with the GPU idle, how long the oldest frame waits for company at most
    batch_lead_ms: float = 1.5  # with batches in flight, the next one starts this long before the GPU is free
    pipeline_slots: int = 2  # batches in flight at once (batch k+1 decodes while batch k renders and copies)
    max_in_flight_per_stream: int = 2  # frames of one stream being rendered at once (the newest waits, latest wins)
    encode_workers: int = 2  # threads for Pillow encoding (PNG; JPEG on CPU hosts) and photo decoding
    warmup_sizes: tuple = ((512, 512),)  # frame sizes whose render graphs are captured before SERVING

    # ---- backends ----
    rasterizer: str = "auto"  # "auto" | "cpu" | "cupy"; auto = cupy when the engine runs on CUDA
    jpeg: str = "auto"  # "auto" | "cuda" | "cpu": JPEG on the GPU (kernels.jpeg) or with Pillow; auto: GPU on a GPU

    # ---- observability ----
    metrics_port: int | None = None  # Prometheus /metrics on this port (0 = any free port); None = off

    # ---- browser client (runtime/web.py) ----
    # the web page and its WebSocket bridge on this port (0 = any free port); None = off. Same sessions, limits,
    # token and TLS certificate as gRPC.
    web_port: int | None = None

    # ---- security ----
    auth_token: str | None = None  # bearer token; None = no auth. Health checks stay open for load balancers.
    tls_cert: str | None = None  # PEM certificate chain file; with tls_key enables TLS
    tls_key: str | None = None  # PEM private key file

    # ---- shutdown ----
    # Health turns NOT_SERVING at once; for shutdown_drain_s every call (new streams too) is still served, so load
    # balancers move clients away first. Then new calls are refused, live streams end after the frame they are
    # rendering (UNAVAILABLE "server is shutting down"), and calls still running get shutdown_grace_s to finish.
    shutdown_drain_s: float = 0.0
    shutdown_grace_s: float = 5.0

    def validate(self) -> "ServerConfig":
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.web_port is not None and not 0 <= self.web_port < 65536:
            raise ValueError(f"web_port must be in [0, 65535] or None (off), got {self.web_port}")
        if not 1 <= self.min_size <= min(self.max_width, self.max_height):
            raise ValueError(f"need 1 <= min_size <= max_width/max_height, got {self.min_size}, "
                             f"{self.max_width}x{self.max_height}")
        for name in ("max_streams", "max_pending_streams", "max_batch_size", "encode_workers", "photo_workers",
                     "max_concurrent_creates", "max_photo_pixels", "pipeline_slots", "max_in_flight_per_stream",
                     "max_fit_observations", "max_fit_steps", "fit_preview_every", "max_concurrent_fits"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_fit_resolution < FIT_MIN_RESOLUTION:
            raise ValueError(f"max_fit_resolution must be >= {FIT_MIN_RESOLUTION}, got {self.max_fit_resolution}")
        if self.batch_lead_ms < 0:
            raise ValueError(f"batch_lead_ms must be >= 0, got {self.batch_lead_ms}")
        if self.jpeg not in ("auto", "cuda", "cpu"):
            raise ValueError(f"jpeg must be 'auto', 'cuda' or 'cpu', got {self.jpeg!r}")
        if self.max_batch_wait_ms < 0 or self.max_stream_fps < 0 or self.max_stream_messages_per_s <= 0:
            raise ValueError("max_batch_wait_ms and max_stream_fps must be >= 0, max_stream_messages_per_s > 0")
        if self.pending_grace_s < 0:
            raise ValueError(f"pending_grace_s must be >= 0, got {self.pending_grace_s}")
        if self.config_timeout_s <= 0 or self.stream_idle_timeout_s <= 0:
            raise ValueError(f"config_timeout_s and stream_idle_timeout_s must be > 0, got {self.config_timeout_s} "
                             f"and {self.stream_idle_timeout_s}")
        if self.max_avatars < 0 or self.max_store_bytes < 0:
            raise ValueError("max_avatars and max_store_bytes must be >= 0 (0 = no limit)")
        if self.shutdown_drain_s < 0 or self.shutdown_grace_s < 0:
            raise ValueError("shutdown_drain_s and shutdown_grace_s must be >= 0")
        if not 1024 <= self.max_message_bytes < 2**31:
            raise ValueError(f"max_message_bytes must be in [1024, 2**31), got {self.max_message_bytes}")
        if self.rasterizer not in ("auto", "cpu", "cupy"):
            raise ValueError(f"rasterizer must be 'auto', 'cpu' or 'cupy', got {self.rasterizer!r}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both tls_cert and tls_key")
        if self.auth_token is not None and len(self.auth_token) < 8:
            raise ValueError("auth_token must have at least 8 characters")
        return self

    def fit_limits(self):
        """The fitting.service.FitLimits of this configuration."""
        from flexrt.fitting.service import FitLimits

        return FitLimits(max_images=self.max_fit_observations, max_resolution=self.max_fit_resolution,
                         max_steps=self.max_fit_steps, preview_every=self.fit_preview_every,
                         max_concurrent=self.max_concurrent_fits).validate()

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def max_frame_bytes(self) -> int:
        return self.max_width * self.max_height * 3  # one RAW_RGB8 frame at the largest size

    def public_dict(self) -> dict:
        d = asdict(self)
        d["auth_token"] = "***" if self.auth_token else None
        return d


def server_options(config: ServerConfig) -> list[tuple[str, int]]:
    """Channel arguments of the gRPC server, each explained."""
    return [
        # Requests larger than this (photos, .npy codes, frames) fail with RESOURCE_EXHAUSTED before parsing.
        ("grpc.max_receive_message_length", config.max_message_bytes),
        # Responses: one RAW_RGB8 frame at the largest allowed size plus room for the other fields.
        ("grpc.max_send_message_length", config.max_frame_bytes + MiB),
        # Ping an idle connection every 60 s so a vanished client (and its stream session) is noticed.
        ("grpc.keepalive_time_ms", 60_000),
        # A ping unanswered for 20 s closes the connection and cancels its calls.
        ("grpc.keepalive_timeout_ms", 20_000),
        # Clients may ping every 10 s (FlexAvatarClient pings every 30 s); faster pingers get GOAWAY.
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        # Allow those client pings while no call is active (a client idling between streams).
        ("grpc.keepalive_permit_without_calls", 1),
        # Refuse to open more HTTP/2 streams per connection than the service could ever hold at once (+16 for
        # unary calls, health and reflection).
        ("grpc.max_concurrent_streams", config.max_streams + config.max_pending_streams + 16),
        # Do not share the port with another process (SO_REUSEPORT): a second server must fail to bind.
        ("grpc.so_reuseport", 0),
    ]


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    if not config.tls:
        return None
    cert = Path(config.tls_cert).read_bytes()
    key = Path(config.tls_key).read_bytes()
    return grpc.ssl_server_credentials([(key, cert)])


# ---------------------------------------------------------------------------------------------------------
# the request guard: auth before the body is parsed, undecodable requests -> INVALID_ARGUMENT
# ---------------------------------------------------------------------------------------------------------
#
# grpc.aio runs server interceptors when a call arrives, with its method and metadata, BEFORE the request body is
# read and deserialised; the handler an interceptor returns decides how the body is parsed. So:
# - a call without a valid token gets a handler whose deserializer is None (the bytes are never parsed) and
#   whose behaviour aborts with UNAUTHENTICATED;
# - an authorised call gets the servicer's handler with a deserializer that never raises: bytes that are not
#   the expected protobuf become an UndecodableRequest value, which the wrapped behaviour turns into
#   INVALID_ARGUMENT (unary) or raises as UndecodableRequestError from the request iterator (streams), instead
#   of grpc's UNKNOWN status and 7-line traceback per request. The log gets one rate-limited line.


class UndecodableRequest:
    """What the guarded deserializer returns for bytes that are not the expected message."""

    __slots__ = ("message",)

    def __init__(self, message: str):
        self.message = message


class UndecodableRequestError(Exception):
    """Raised by a guarded request iterator when a streamed message is not the expected protobuf."""


def log_safe(text, limit: int = 120) -> str:
    """Client-supplied text for a log line: control and other non-printable characters escaped (so a name
    with a newline cannot forge a log line), at most ``limit`` characters."""
    text = str(text)
    clipped = text[:limit]
    safe = clipped if clipped.isprintable() else clipped.encode("unicode_escape").decode("ascii")
    return safe + ("..." if len(text) > limit else "")


class RateLimitedLog:
    """At most one log line per ``interval_s`` per key; the next line says how many were suppressed."""

    def __init__(self, log: logging.Logger, interval_s: float = 10.0, clock=time.monotonic):
        self._log, self._interval, self._clock = log, interval_s, clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def warning(self, key: str, message: str, *args) -> bool:
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            message += f" ({suppressed} more like it in the last {self._interval:g} s not logged)"
        self._log.warning(message, *args)
        return True


def _method_handler(handler: grpc.RpcMethodHandler, behavior, request_deserializer):
    """A handler of the same streaming kind as ``handler`` with another behaviour and request deserializer."""
    kwargs = dict(request_deserializer=request_deserializer, response_serializer=handler.response_serializer)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(behavior, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(behavior, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(behavior, **kwargs)
    return grpc.unary_unary_rpc_method_handler(behavior, **kwargs)


def _behavior(handler: grpc.RpcMethodHandler):
    if handler.request_streaming and handler.response_streaming:
        return handler.stream_stream
    if handler.request_streaming:
        return handler.stream_unary
    if handler.response_streaming:
        return handler.unary_stream
    return handler.unary_unary


class RequestGuard(grpc.aio.ServerInterceptor):
    """Bearer-token auth (when ``token`` is set) checked before any request body is parsed, and requests that
    are not the expected protobuf answered with INVALID_ARGUMENT and one rate-limited log line.

    Auth: ``authorization: Bearer <token>`` metadata on every call except the exempt method prefixes (the health
    service by default); compared in constant time (hmac.compare_digest)."""

    def __init__(self, token: str | None = None, exempt_prefixes: tuple[str, ...] = (HEALTH_METHOD_PREFIX,)):
        self._expected = f"Bearer {token}".encode() if token else None
        self._exempt = exempt_prefixes
        self._log = RateLimitedLog(logger)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if self._expected is not None and not method.startswith(self._exempt):
            presented = b""
            for key, value in handler_call_details.invocation_metadata or ():
                if key == "authorization":
                    presented = value.encode() if isinstance(value, str) else bytes(value)
                    break
            if not (presented and hmac.compare_digest(presented, self._expected)):
                reason = "missing" if not presented else "invalid"
                return self._refuse(handler, grpc.StatusCode.UNAUTHENTICATED,
                                    f"{reason} bearer token: send metadata 'authorization: Bearer <token>'")
        if handler.request_deserializer is None:
            return handler
        return self._guarded(handler, method)

    @staticmethod
    def _refuse(handler, code: grpc.StatusCode, details: str):
        """Fails every call with (code, details) without parsing its request (deserializer None: raw bytes)."""
        if handler.response_streaming:
            async def refuse(request_or_iterator, context):
                await context.abort(code, details)
                yield  # pragma: no cover - makes this an async generator, like a response-streaming servicer
        else:
            async def refuse(request_or_iterator, context):
                await context.abort(code, details)
        return _method_handler(handler, refuse, None)

    def _guarded(self, handler, method: str):
        parse = handler.request_deserializer

        def deserialize(data: bytes):
            try:
                return parse(data)
            except Exception as exc:  # protobuf DecodeError, or whatever a custom deserializer raises
                return UndecodableRequest(f"request to {method} is not a valid protobuf message of the expected "
                                          f"type ({type(exc).__name__}); check the client's .proto matches the "
                                          "server's")

        behavior = _behavior(handler)
        log = self._log

        def refused(context, message: str):
            log.warning(method, "refused an undecodable request to %s from %s", method, log_safe(context.peer()))
            return context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)

        if not handler.request_streaming:
            if inspect.isasyncgenfunction(behavior):
                async def guarded(request, context):
                    if isinstance(request, UndecodableRequest):
                        await refused(context, request.message)
                    async for response in behavior(request, context):
                        yield response
            else:
                async def guarded(request, context):
                    if isinstance(request, UndecodableRequest):
                        await refused(context, request.message)
                    return await behavior(request, context)
            return _method_handler(handler, guarded, deserialize)

        async def checked(request_iterator, context):
            async for request in request_iterator:
                if isinstance(request, UndecodableRequest):
                    log.warning(method, "refused an undecodable message on a %s stream from %s", method,
                                log_safe(context.peer()))
                    raise UndecodableRequestError(request.message)
                yield request

        # a servicer that lets UndecodableRequestError escape (e.g. reflection) still answers INVALID_ARGUMENT
        if inspect.isasyncgenfunction(behavior):
            async def guarded_stream(request_iterator, context):
                try:
                    async for response in behavior(checked(request_iterator, context), context):
                        yield response
                except UndecodableRequestError as err:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        else:
            async def guarded_stream(request_iterator, context):
                try:
                    return await behavior(checked(request_iterator, context), context)
                except UndecodableRequestError as err:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        return _method_handler(handler, guarded_stream, deserialize)


# ---------------------------------------------------------------------------------------------------------
# per-stream message rate
# ---------------------------------------------------------------------------------------------------------

class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up. ``take()`` -> False when empty."""

    def __init__(self, rate: float, burst: float | None = None, clock=time.monotonic):
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(rate, 1.0))
        self._clock = clock
        self._tokens = self.burst
        self._last = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
