"""Server configuration and protection: limits, gRPC server options, bearer-token auth, TLS, rate limiting."""
from __future__ import annotations

import hmac
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc

MiB = 1 << 20
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
    config_timeout_s: float = 10.0  # how long a new stream may take to send its SessionConfig

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

    # ---- security ----
    auth_token: str | None = None  # bearer token; None = no auth. Health checks stay open for load balancers.
    tls_cert: str | None = None  # PEM certificate chain file; with tls_key enables TLS
    tls_key: str | None = None  # PEM private key file

    # ---- shutdown ----
    shutdown_drain_s: float = 0.0  # NOT_SERVING is reported this long before new calls are refused
    shutdown_grace_s: float = 5.0  # then in-flight calls get this long to finish before they are cancelled

    def validate(self) -> "ServerConfig":
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if not 1 <= self.min_size <= min(self.max_width, self.max_height):
            raise ValueError(f"need 1 <= min_size <= max_width/max_height, got {self.min_size}, "
                             f"{self.max_width}x{self.max_height}")
        if self.max_streams < 1 or self.max_batch_size < 1 or self.encode_workers < 1:
            raise ValueError("max_streams, max_batch_size and encode_workers must be >= 1")
        if self.pipeline_slots < 1 or self.max_in_flight_per_stream < 1 or self.batch_lead_ms < 0:
            raise ValueError("pipeline_slots and max_in_flight_per_stream must be >= 1, batch_lead_ms >= 0")
        if self.jpeg not in ("auto", "cuda", "cpu"):
            raise ValueError(f"jpeg must be 'auto', 'cuda' or 'cpu', got {self.jpeg!r}")
        if self.max_batch_wait_ms < 0 or self.max_stream_fps < 0 or self.max_stream_messages_per_s <= 0:
            raise ValueError("max_batch_wait_ms and max_stream_fps must be >= 0, max_stream_messages_per_s > 0")
        if not 1024 <= self.max_message_bytes < 2**31:
            raise ValueError(f"max_message_bytes must be in [1024, 2**31), got {self.max_message_bytes}")
        if self.rasterizer not in ("auto", "cpu", "cupy"):
            raise ValueError(f"rasterizer must be 'auto', 'cpu' or 'cupy', got {self.rasterizer!r}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both tls_cert and tls_key")
        if self.auth_token is not None and len(self.auth_token) < 8:
            raise ValueError("auth_token must have at least 8 characters")
        return self

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
        # Refuse to open more HTTP/2 streams per connection than the service could ever serve at once.
        ("grpc.max_concurrent_streams", config.max_streams + 16),
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
# bearer-token authentication
# ---------------------------------------------------------------------------------------------------------

def _aborting_handler(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, details: str):
    """A handler of the same streaming kind as ``handler`` that fails every call with (code, details)."""

    async def abort(request_or_iterator, context):
        await context.abort(code, details)

    kwargs = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort, **kwargs)
    return grpc.unary_unary_rpc_method_handler(abort, **kwargs)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` metadata on every call except the exempt method prefixes
    (the health service by default). Tokens are compared in constant time (hmac.compare_digest)."""

    def __init__(self, token: str, exempt_prefixes: tuple[str, ...] = (HEALTH_METHOD_PREFIX,)):
        self._expected = f"Bearer {token}".encode()
        self._exempt = exempt_prefixes

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(self._exempt):
            return handler
        presented = b""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                presented = value.encode() if isinstance(value, str) else bytes(value)
                break
        if presented and hmac.compare_digest(presented, self._expected):
            return handler
        reason = "missing" if not presented else "invalid"
        return _aborting_handler(
            handler, grpc.StatusCode.UNAUTHENTICATED,
            f"{reason} bearer token: send metadata 'authorization: Bearer <token>'",
        )


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
