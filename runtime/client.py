"""Python client of the flexavatar.v1 service.

    with FlexAvatarClient("127.0.0.1:50051") as client:
        avatar = client.create_avatar(image=open("photo.png", "rb").read())
        for result in client.animate(avatar.avatar_id, expression_codes, width=256, height=256, fps=30):
            result.image          # uint8 [H,W,3]
            result.latency_us     # send -> receive, this client's clock
        avatar, result = client.fit_avatar(images, cam2world, intrinsics, expression_codes,   # [N,...] views
                                           on_progress=lambda p: print(p.step, p.loss, p.psnr))

Errors are ``grpc.RpcError`` with the server's status code and message (``err.code()``, ``err.details()``).
"""
from __future__ import annotations

import collections
import io
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flexrt.proto import flexavatar_pb2 as pb
from flexrt.proto import flexavatar_pb2_grpc as pb_grpc

from . import codec

MiB = 1 << 20


@dataclass
class FrameInput:
    """One driving frame: the 135-float expression code and, optionally, a camera for this frame."""

    expression: np.ndarray  # [135]
    cam2world: np.ndarray | None = None  # [4,4] OpenCV, head-centric
    intrinsics: np.ndarray | None = None  # [3,3] normalised (pixel intrinsics / image size)


@dataclass
class AnimateResult:
    sequence: int
    data: bytes  # the encoded frame as received
    image: np.ndarray | None  # uint8 [H,W,3] when animate(decode=True)
    width: int
    height: int
    encoding: str  # "raw_rgb8" | "jpeg" | "png"
    latency_us: int  # end to end: frame handed to gRPC -> response received (this client's clock)
    queue_us: int
    decode_us: int
    render_us: int
    encode_us: int
    server_us: int
    batch_size: int
    received: int  # stream counters on the server when this frame was sent back (of the current stream)
    rendered: int
    dropped: int
    resumes: int = 0  # times animate(resume_s=...) reopened the stream before this frame (replica failover)


def camera_proto(cam2world, intrinsics) -> pb.Camera:
    c2w = np.asarray(cam2world, dtype=np.float32).reshape(-1)
    K = np.asarray(intrinsics, dtype=np.float32).reshape(-1)
    return pb.Camera(cam2world=c2w.tolist(), intrinsics=K.tolist())


class FitCancelled(Exception):
    """FlexAvatarClient.fit_avatar was cancelled by its on_progress callback (the server stored nothing)."""


def _photo_bytes(image: bytes | str | Path | np.ndarray) -> bytes:
    """PNG/JPEG bytes, a file path, or uint8 [H,W,3] (sent as PNG) -> bytes."""
    if isinstance(image, np.ndarray):
        return codec.encode_frame(np.ascontiguousarray(image, dtype=np.uint8), "png")
    if isinstance(image, (str, Path)):
        return Path(image).read_bytes()
    return bytes(image)


def _photo_bytes_list(images) -> list[bytes]:
    """A list of photos (as _photo_bytes), or an array uint8 [N,H,W,3] / float [N,3,H,W] in [0,1] -> N PNG/JPEG."""
    if isinstance(images, (list, tuple)):
        return [_photo_bytes(x) for x in images]
    a = np.asarray(images.detach().cpu() if hasattr(images, "detach") else images)  # numpy or torch
    if a.ndim != 4:
        raise ValueError(f"images must be [N,H,W,3] uint8 or [N,3,H,W] float, got shape {list(a.shape)}")
    if a.dtype != np.uint8:
        if a.shape[1] != 3:
            raise ValueError(f"float images must be [N,3,H,W] in [0,1], got shape {list(a.shape)}")
        a = (np.clip(a.transpose(0, 2, 3, 1), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return [_photo_bytes(x) for x in a]


def _npy_bytes(code: bytes | str | Path | np.ndarray) -> bytes:
    """An avatar code: .npy bytes, a .npy path, or an array -> .npy bytes (float32)."""
    if isinstance(code, (bytes, bytearray)):
        return bytes(code)
    if isinstance(code, (str, Path)):
        return Path(code).read_bytes()
    buf = io.BytesIO()  # numpy or torch (CPU)
    np.save(buf, np.ascontiguousarray(np.asarray(code), dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def _now_us() -> int:
    return time.perf_counter_ns() // 1000


class _InFlight:
    """Bounds the frames sent but not yet answered (a response for sequence s answers every frame <= s)."""

    def __init__(self, limit: int | None):
        self.limit = limit
        self.sent = -1
        self.answered = -1
        self.finished = False
        self._cond = threading.Condition()

    def wait_for_slot(self) -> bool:
        with self._cond:
            while self.limit and not self.finished and self.sent - self.answered >= self.limit:
                self._cond.wait(0.5)
            return not self.finished

    def mark_sent(self, sequence: int) -> None:
        with self._cond:
            self.sent = sequence

    def mark_answered(self, sequence: int) -> None:
        with self._cond:
            self.answered = max(self.answered, sequence)
            self._cond.notify_all()

    def finish(self) -> None:
        with self._cond:
            self.finished = True
            self._cond.notify_all()


class FlexAvatarClient:
    """Synchronous client. ``target``: "host:port". ``token``: bearer token when the server requires one.
    ``tls_root_cert``: PEM file/bytes of the CA that signed the server's certificate (enables TLS)."""

    def __init__(self, target: str, token: str | None = None, tls_root_cert: str | bytes | None = None,
                 tls_server_name: str | None = None, timeout: float = 60.0, max_message_bytes: int = 64 * MiB):
        self.target = target
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        options = [
            # Largest response accepted: RAW_RGB8 frames at the server's largest size fit easily.
            ("grpc.max_receive_message_length", max_message_bytes),
            # Largest request sent: photos and .npy avatar codes (the server has its own, usually lower, limit).
            ("grpc.max_send_message_length", max_message_bytes),
            # Ping every 30 s on an idle connection so a dead server is detected during long pauses ...
            ("grpc.keepalive_time_ms", 30_000),
            # ... and give up on it when a ping is unanswered for 10 s.
            ("grpc.keepalive_timeout_ms", 10_000),
            # Animate streams carry their own state; a transparent retry would restart a stream mid-way.
            ("grpc.enable_retries", 0),
        ]
        if tls_root_cert is not None:
            root = Path(tls_root_cert).read_bytes() if isinstance(tls_root_cert, (str, Path)) else tls_root_cert
            if tls_server_name:
                # Check the certificate against this name instead of the host in `target` (e.g. an IP address).
                options.append(("grpc.ssl_target_name_override", tls_server_name))
            self.channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=root), options)
        else:
            self.channel = grpc.insecure_channel(target, options)
        self.stub = pb_grpc.FlexAvatarStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)

    # ---- lifecycle ----
    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "FlexAvatarClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the channel is connected (raises grpc.FutureTimeoutError)."""
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    # ---- health / info ----
    def health(self, service: str = "") -> str:
        """'SERVING', 'NOT_SERVING', ... of ``service`` ("" = the whole server), via grpc.health.v1."""
        response = self.health_stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def server_info(self) -> pb.ServerInfo:
        return self.stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=self.timeout, metadata=self._metadata)

    # ---- avatars ----
    def create_avatar(self, image: bytes | str | Path | np.ndarray | None = None,
                      npy: bytes | str | Path | np.ndarray | None = None,
                      cam2world=None, intrinsics=None, name: str = "") -> pb.Avatar:
        """From a photo (PNG/JPEG bytes, a file path, or uint8 [H,W,3]) with an optional input camera
        (cam2world [4,4], normalised intrinsics [3,3]), or from an avatar code (.npy bytes/path, or an array
        [HT,1,D] / [HT,D])."""
        if (image is None) == (npy is None):
            raise ValueError("pass exactly one of image= or npy=")
        request = pb.CreateAvatarRequest(name=name)
        if image is not None:
            request.image = _photo_bytes(image)
            if (cam2world is None) != (intrinsics is None):
                raise ValueError("pass both cam2world and intrinsics, or neither")
            if cam2world is not None:
                request.camera.CopyFrom(camera_proto(cam2world, intrinsics))
        else:
            request.avatar_code_npy = _npy_bytes(npy)
        return self.stub.CreateAvatar(request, timeout=self.timeout, metadata=self._metadata)

    def get_avatar(self, avatar_id: str) -> pb.Avatar:
        return self.stub.GetAvatar(pb.GetAvatarRequest(avatar_id=avatar_id), timeout=self.timeout,
                                   metadata=self._metadata + ((AFFINITY_HEADER, avatar_id),))

    def list_avatars(self, page_size: int = 0) -> list[pb.Avatar]:
        """Every avatar, oldest first: follows ListAvatars' pages (``page_size`` each; 0 = the server's default)."""
        avatars: list[pb.Avatar] = []
        token = ""
        while True:
            page = self.stub.ListAvatars(pb.ListAvatarsRequest(page_size=page_size, page_token=token),
                                         timeout=self.timeout, metadata=self._metadata)
            avatars.extend(page.avatars)
            token = page.next_page_token
            if not token:
                return avatars

    def delete_avatar(self, avatar_id: str) -> None:
        self.stub.DeleteAvatar(pb.DeleteAvatarRequest(avatar_id=avatar_id), timeout=self.timeout,
                               metadata=self._metadata + ((AFFINITY_HEADER, avatar_id),))

    # ---- fitting ----
    def fit_avatar(self, images, cam2world=None, intrinsics=None, expression_codes=None, *, name: str = "",
                   init_avatar_id: str | None = None, init_code: bytes | str | Path | np.ndarray | None = None,
                   steps: int = 0, expression_offsets: bool = True, seed: int = 0, preview_every: int = 0,
                   resolution: int = 0, on_progress=None,
                   timeout: float | None = None) -> tuple[pb.Avatar, pb.FitAvatarResult]:
        """Fit an avatar code to N observations on the server (FitAvatar) -> (the stored Avatar, the result).

        images: N square head crops on white: a list of PNG/JPEG bytes, file paths or uint8 [H,W,3] arrays, or
            one array uint8 [N,H,W,3] / float [N,3,H,W] in [0,1] (as ``flexrt.fitting.fit_avatar``; sent as PNG).
        cam2world [N,4,4] OpenCV head-centric and intrinsics [N,3,3] normalised (None: the server's default
            camera for every view); expression_codes [N,135]: the tracked expression code of every image.
        init_avatar_id / init_code (.npy bytes, path, or array [HT,D] / [HT,1,D]): where the fit starts; neither:
            the server's feed-forward code of the first image.
        steps (0 = 200), expression_offsets (False: keep the tracked expression codes as they are), seed,
        preview_every (0 = the server's default), resolution (0 = as sent): as in FitAvatarRequest.
        on_progress(progress: pb.FitAvatarProgress) after every step (``progress.preview_jpeg`` holds a JPEG every
            preview_every steps); returning False cancels the fit (the server stores nothing) and raises
            FitCancelled. Errors are grpc.RpcError with the server's status and message."""
        if expression_codes is None:
            raise ValueError("expression_codes [N,135] are required (the tracked expression of every image)")
        if (cam2world is None) != (intrinsics is None):
            raise ValueError("pass both cam2world and intrinsics, or neither")
        if init_avatar_id is not None and init_code is not None:
            raise ValueError("pass at most one of init_avatar_id= and init_code=")
        photos = _photo_bytes_list(images)
        expr = np.asarray(expression_codes, dtype=np.float32)
        n = len(photos)
        if expr.ndim != 2 or expr.shape[0] != n:
            raise ValueError(f"expression_codes must be [N,135] with N = {n} images, got shape {list(expr.shape)}")
        request = pb.FitAvatarRequest(name=name, steps=steps, no_expression_offsets=not expression_offsets,
                                      seed=seed, preview_every=preview_every, resolution=resolution)
        c2w = None if cam2world is None else np.asarray(cam2world, dtype=np.float32).reshape(n, 4, 4)
        K = None if intrinsics is None else np.asarray(intrinsics, dtype=np.float32).reshape(n, 3, 3)
        for i, photo in enumerate(photos):
            obs = request.observations.add(image=photo, expression=expr[i].tolist())
            if c2w is not None:
                obs.camera.CopyFrom(camera_proto(c2w[i], K[i]))
        if init_avatar_id is not None:
            request.init_avatar_id = init_avatar_id
        elif init_code is not None:
            request.init_avatar_code_npy = _npy_bytes(init_code)
        call = self.stub.FitAvatar(request, timeout=timeout, metadata=self._metadata)
        try:
            for response in call:
                if response.WhichOneof("event") == "result":
                    return response.result.avatar, response.result
                if on_progress is not None and on_progress(response.progress) is False:
                    call.cancel()
                    raise FitCancelled(f"fit cancelled after step {response.progress.step} of "
                                       f"{response.progress.steps}; nothing was stored")
        finally:
            call.cancel()  # no-op when the call has ended; frees it when the caller stops early
        raise RuntimeError("FitAvatar ended without a result")  # the server always sends one or fails the call

    # ---- streaming ----
    def animate(self, avatar_id: str, frames: Iterable[FrameInput | np.ndarray], width: int, height: int,
                encoding: str = "raw_rgb8", quality: int = 0, background=None, cam2world=None, intrinsics=None,
                fps: float | None = None, max_in_flight: int | None = 2, decode: bool = True,
                timeout: float | None = None, resume_s: float = 0.0) -> Iterator[AnimateResult]:
        """Stream ``frames`` (FrameInput, or a [135] expression array) and yield one AnimateResult per rendered
        frame, in order.

        fps: send at most this many frames per second (None = as fast as allowed).
        max_in_flight: frames sent but not yet answered (2 keeps the server busy without drops; None = no limit,
            the server then drops stale frames: latest wins). cam2world/intrinsics: the session camera.
        resume_s: when the stream fails because its server went away (``resumable``: UNAVAILABLE, or a proxy's
            RST_STREAM after the replica behind it died), open it again with the same SessionConfig (avatar, size,
            encoding, camera) and re-send the frames that were sent but not answered, retrying for up to this many
            seconds after the failure; behind a load balancer (docs/SCALEOUT.md) the new stream reaches a live
            replica. 0 = no resume: the error is raised. AnimateResult.resumes counts the reopenings.

        Every call carries the avatar id as ``x-avatar-id`` metadata, the header the load balancer hashes on.
        """
        config = pb.SessionConfig(avatar_id=avatar_id, width=width, height=height,
                                  encoding=codec.encoding_value(encoding), quality=quality)
        if background is not None:
            config.background.extend([float(v) for v in background])
        if (cam2world is None) != (intrinsics is None):
            raise ValueError("pass both cam2world and intrinsics, or neither")
        if cam2world is not None:
            config.camera.CopyFrom(camera_proto(cam2world, intrinsics))
        metadata = self._metadata + ((AFFINITY_HEADER, avatar_id),)
        stream = _ResumableInput(iter(frames), max_in_flight, fps)
        resumes, failing_since = 0, None
        while True:
            in_flight = stream.new_attempt()
            call = self.stub.Animate(stream.requests(config, in_flight), timeout=timeout, metadata=metadata)
            try:
                for response in call:
                    received_us = _now_us()
                    failing_since = None
                    in_flight.mark_answered(response.sequence)
                    stream.answered(response.sequence)
                    image = (codec.decode_frame(response.image, response.encoding, response.width, response.height)
                             if decode else None)
                    t, c = response.timings, response.counters
                    yield AnimateResult(
                        sequence=response.sequence, data=response.image, image=image, width=response.width,
                        height=response.height, encoding=codec.encoding_name(response.encoding),
                        latency_us=received_us - response.client_timestamp_us, queue_us=t.queue_us,
                        decode_us=t.decode_us, render_us=t.render_us, encode_us=t.encode_us, server_us=t.server_us,
                        batch_size=t.batch_size, received=c.received, rendered=c.rendered, dropped=c.dropped,
                        resumes=resumes,
                    )
                return
            except grpc.RpcError as err:
                now = time.monotonic()
                failing_since = now if failing_since is None else failing_since
                if not resumable(err) or now - failing_since >= resume_s:
                    raise
                time.sleep(min(0.05 * 2 ** min(resumes, 3), 0.4))  # a short back-off: 50, 100, 200, 400 ms
                resumes += 1
            finally:
                in_flight.finish()
                call.cancel()  # no-op when the stream already ended; frees the stream when the caller stops early
                stream.stop_attempt()


AFFINITY_HEADER = "x-avatar-id"  # metadata the load balancer hashes on (deploy/haproxy/haproxy.cfg)


def resumable(err: grpc.RpcError) -> bool:
    """Did the stream fail because its server went away (so that another replica can continue it)? UNAVAILABLE:
    the server is shutting down or cannot be reached. CANCELLED or INTERNAL by an RST_STREAM frame (gRPC's details
    say "Received RST_STREAM with error code N"): a proxy reset the stream because the replica behind it died
    (HAProxy sends CANCEL = 8, nginx INTERNAL_ERROR = 2). A server's own INTERNAL status is not resumable."""
    code, details = err.code(), err.details() or ""
    return code == grpc.StatusCode.UNAVAILABLE or (
        code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL) and "RST_STREAM" in details)


class _ResumableInput:
    """The frames of one animate() call across its attempts (streams): every attempt first re-sends the frames
    sent but not answered on the previous one, then goes on with ``frames``. An epoch number makes sure that the
    request thread of a failed attempt never takes another frame from the shared iterator."""

    def __init__(self, frames: Iterator, max_in_flight: int | None, fps: float | None):
        self.frames = frames
        self.max_in_flight = max_in_flight
        self.interval = 1.0 / fps if fps else 0.0
        self.lock = threading.Lock()  # held while a frame is taken from ``frames`` (and by new_attempt)
        self.epoch = 0
        self.next_sequence = 0
        self.unanswered: collections.deque[tuple[int, FrameInput]] = collections.deque()  # sent, not answered
        self.unanswered_lock = threading.Lock()  # the response thread takes only this one, never waits on ``frames``
        self.last_answered = -1

    def new_attempt(self) -> _InFlight:
        with self.lock, self.unanswered_lock:
            self.epoch += 1
            in_flight = _InFlight(self.max_in_flight)
            in_flight.sent, in_flight.answered = self.next_sequence - 1, self.last_answered
            return in_flight

    def stop_attempt(self) -> None:
        with self.lock:
            self.epoch += 1

    def answered(self, sequence: int) -> None:  # a response for sequence s answers every frame <= s
        with self.unanswered_lock:
            self.last_answered = max(self.last_answered, sequence)
            while self.unanswered and self.unanswered[0][0] <= sequence:
                self.unanswered.popleft()

    def requests(self, config: pb.SessionConfig, in_flight: _InFlight):
        with self.lock, self.unanswered_lock:
            epoch, resend = self.epoch, list(self.unanswered)
        yield pb.AnimateRequest(config=config)
        for sequence, frame in resend:
            yield pb.AnimateRequest(frame=_frame_message(sequence, frame))
        next_t = time.perf_counter()
        while True:
            if self.interval:
                delay = next_t - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                next_t = max(next_t + self.interval, time.perf_counter() - self.interval)
            if not in_flight.wait_for_slot():
                return
            with self.lock:
                if self.epoch != epoch:  # this attempt has ended: its frames are the next attempt's
                    return
                item = next(self.frames, None)
                if item is None:
                    return
                sequence = self.next_sequence
                self.next_sequence += 1
                frame = item if isinstance(item, FrameInput) else FrameInput(expression=item)
                with self.unanswered_lock:
                    self.unanswered.append((sequence, frame))
            in_flight.mark_sent(sequence)
            yield pb.AnimateRequest(frame=_frame_message(sequence, frame))


def _frame_message(sequence: int, frame: FrameInput) -> pb.Frame:
    message = pb.Frame(sequence=sequence, expression=np.asarray(frame.expression, dtype=np.float32).reshape(-1).tolist())
    if frame.cam2world is not None:
        message.camera.CopyFrom(camera_proto(frame.cam2world, frame.intrinsics))
    message.client_timestamp_us = _now_us()
    return message


def latency_summary(results: list[AnimateResult]) -> dict:
    """Percentiles (p50/p90/p99, mean, max) in milliseconds of the end-to-end latency and of each server stage."""
    keys = ("latency_us", "queue_us", "decode_us", "render_us", "encode_us", "server_us")
    names = {"latency_us": "end_to_end", "queue_us": "queue", "decode_us": "decode", "render_us": "render",
             "encode_us": "encode", "server_us": "server"}
    summary: dict = {"frames": len(results)}
    if not results:
        return summary
    for key in keys:
        values = np.array([getattr(r, key) for r in results], dtype=np.float64) / 1000.0
        summary[names[key]] = {
            "p50_ms": float(np.percentile(values, 50)), "p90_ms": float(np.percentile(values, 90)),
            "p99_ms": float(np.percentile(values, 99)), "mean_ms": float(values.mean()), "max_ms": float(values.max()),
        }
    summary["batch_size_mean"] = float(np.mean([r.batch_size for r in results]))
    summary["dropped"] = int(results[-1].dropped)
    return summary


def format_latency_table(summary: dict) -> str:
    rows = ["stage         p50 ms   p90 ms   p99 ms  mean ms"]
    for name in ("end_to_end", "server", "queue", "decode", "render", "encode"):
        if name in summary:
            s = summary[name]
            rows.append(f"{name:<12} {s['p50_ms']:8.2f} {s['p90_ms']:8.2f} {s['p99_ms']:8.2f} {s['mean_ms']:8.2f}")
    rows.append(f"frames: {summary.get('frames', 0)}, dropped by the server: {summary.get('dropped', 0)}, "
                f"mean batch size: {summary.get('batch_size_mean', 0):.2f}")
    return "\n".join(rows)
