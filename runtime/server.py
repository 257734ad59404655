"""The flexavatar.v1 gRPC service (grpc.aio): avatars, server info and the Animate bidirectional stream.

    engine = TorchEngine(load_official("tiny"))                  # any flexrt.runtime.engines.Engine
    with start_server(engine, ServerConfig(port=0)) as server:   # in-process, on a background thread
        client = FlexAvatarClient(server.address)

    serve(engine, ServerConfig(port=50051))                      # blocking; SIGINT/SIGTERM shut down gracefully

Besides flexavatar.v1.FlexAvatar the server runs the standard grpc.health.v1 health service ("" and
"flexavatar.v1.FlexAvatar") and server reflection. Every call passes the RequestGuard interceptor (limits.py):
bearer-token auth before the body is parsed, undecodable requests -> INVALID_ARGUMENT.

Shutdown (SIGINT/SIGTERM, or ServerHandle.stop): health NOT_SERVING at once; during the drain every call is still
served (new streams too) so load balancers move clients away; then new calls are refused, live streams end after
the frame they are rendering with UNAVAILABLE "server is shutting down", and calls still running get the grace
period before they are cancelled. A second signal skips what is left of the drain and the grace.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import functools
import logging
import secrets
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import grpc
import numpy as np
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

import flexrt
from flexrt.proto import flexavatar_pb2 as pb
from flexrt.proto import flexavatar_pb2_grpc as pb_grpc

from . import codec
from .batcher import Batcher, low_priority_stream
from .engines.base import Engine
from .fit_rpc import FitAvatarCalls
from .frames import FrameRenderer, resolve_rasterizer
from .limits import (
    RequestGuard,
    ServerConfig,
    TokenBucket,
    UndecodableRequestError,
    log_safe,
    server_credentials,
    server_options,
)
from .gc_pauses import freeze_startup_objects
from .gc_pauses import unfreeze as unfreeze_gc
from .metrics import gpu_memory_summary
from .session import (
    Session,
    StreamError,
    default_camera_arrays,
    invalid,
    parse_camera,
    parse_frame,
    parse_session_config,
)
from .store import (
    MAX_PAGE_SIZE,
    AvatarNotFound,
    AvatarQuota,
    AvatarRecord,
    AvatarStore,
    QuotaExceeded,
    StoreUnavailable,
    check_avatar_name,
    is_valid_avatar_id,
    list_page,
    open_store,
    parse_avatar_code_npy,
)

logger = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["FlexAvatar"].full_name  # "flexavatar.v1.FlexAvatar"


def model_identity(engine: Engine) -> str:
    """A short, stable description of the model behind ``engine`` (stored with each avatar it encodes), from
    the engine's manifest identity (exported engines) and its EngineInfo.detail."""
    identity: dict = {}
    manifest = getattr(engine, "manifest", None)
    if isinstance(manifest, dict) and isinstance(manifest.get("model"), dict):
        identity.update(manifest["model"])
    identity.update(engine.info.detail or {})
    parts = [f"{k}={identity[k]}" for k in ("preset", "config_sha256", "weights", "template_sha256") if identity.get(k)]
    return ", ".join(parts) or f"{engine.info.backend}:{engine.num_head_tokens}x{engine.hidden_dim}"


def _avatar_proto(record: AvatarRecord) -> pb.Avatar:
    return pb.Avatar(
        avatar_id=record.avatar_id, name=record.name, source=record.source, num_head_tokens=record.num_head_tokens,
        hidden_dim=record.hidden_dim, created_unix_s=record.created_unix_s, model=record.model,
    )


class FlexAvatarService(pb_grpc.FlexAvatarServicer):
    """The servicer. Runs on one event loop; GPU work is submitted and collected on the batcher's threads."""

    def __init__(self, engine: Engine, config: ServerConfig, store: AvatarStore, rasterizer: str, metrics=None):
        self.engine = engine
        self.config = config
        self.store = store
        self.rasterizer = rasterizer
        self.model = model_identity(engine)
        self.metrics = metrics
        # Pillow encodes (PNG, JPEG on CPU hosts) and decodes photos here, off the event loop and the GPU threads.
        self.codec_executor = ThreadPoolExecutor(config.encode_workers, thread_name_prefix="flexrt-codec")
        self.renderer = FrameRenderer(engine, rasterizer, jpeg=config.jpeg, slots=config.pipeline_slots,
                                      max_batch=config.max_batch_size, cpu_executor=self.codec_executor)
        self.batcher = Batcher(self.renderer, config.max_batch_size, config.max_batch_wait_ms / 1000.0,
                               lead_s=config.batch_lead_ms / 1000.0, active_streams=lambda: len(self.sessions),
                               metrics=metrics)
        self._create_stream = low_priority_stream(engine.device)  # avatar creation below the live frames
        # Photos of CreateAvatar decode on their own small pool, so uploads never delay frame encoding.
        self.photo_executor = ThreadPoolExecutor(config.photo_workers, thread_name_prefix="flexrt-photo")
        self.creates_in_progress = 0  # CreateAvatar calls from a photo, at most config.max_concurrent_creates
        self.fitting = FitAvatarCalls(self, _avatar_proto)  # FitAvatar: fits on the engine's PyTorch model
        self.sessions: dict[int, Session] = {}
        # Animate streams still waiting for their SessionConfig (no slot taken yet), oldest first; each future is
        # set when the stream is evicted to make room for a newer one
        # streams waiting for their SessionConfig, oldest first: id -> (future set when evicted, loop time opened)
        self.pending: collections.OrderedDict[int, tuple[asyncio.Future, float]] = collections.OrderedDict()
        self.shutting_down = False
        self.streams_total = 0
        self.frames_received = 0
        self.frames_dropped_closed = 0  # drops of sessions that already ended

    # ---- lifecycle ----
    def start(self) -> None:
        self.batcher.start()

    async def stop(self) -> None:
        await self.fitting.stop()
        await self.batcher.stop()
        for executor in (self.codec_executor, self.photo_executor):
            await asyncio.get_running_loop().run_in_executor(None, executor.shutdown, True)

    def end_streams(self, message: str) -> int:
        """Shutdown: every live stream ends with UNAVAILABLE ``message`` after the frame it is rendering."""
        for session in self.sessions.values():
            session.fail(StreamError(grpc.StatusCode.UNAVAILABLE, message))
        return len(self.sessions)

    # ---- stats ----
    def stats(self) -> dict:
        sessions = [s.snapshot() for s in self.sessions.values()]
        return {
            "active_streams": len(self.sessions),
            "streams_total": self.streams_total,
            "frames_received": self.frames_received,
            "frames_rendered": self.batcher.frames_rendered,
            "frames_dropped": self.frames_dropped_closed + sum(s["dropped"] for s in sessions),
            "batches": self.batcher.batches,
            "batch_sizes": dict(self.batcher.batch_sizes),
            "batcher_waiting": self.batcher.waiting,
            "batches_in_flight": self.batcher.in_flight,
            "jpeg_cpu_fallbacks": self.renderer.jpeg_overflows,
            "fits": self.fitting.stats(),
            "sessions": sessions,
        }

    def _check_avatar_id(self, avatar_id: str) -> None:
        if not is_valid_avatar_id(avatar_id):
            raise invalid(f"avatar_id must be 32 lowercase hex characters, got {avatar_id!r}")

    @staticmethod
    async def _in_store(fn, *args):
        """A store call off the event loop. A shared store (redis) is a network round trip, and a database that
        hangs instead of refusing must not stall the loop that carries every live stream (tests/test_store_redis.py
        freezes Redis mid-stream). The directory store's in-memory lookups take the same path (tens of us)."""
        return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))

    async def _run_unary(self, context, fn, *args):
        try:
            return await fn(*args)
        except Exception as exc:
            await self.abort_with(context, fn.__name__, exc)

    async def abort_with(self, context, what: str, exc: Exception) -> None:
        """Ends the call with the status of ``exc`` (raised inside an ``except`` block; never returns)."""
        if isinstance(exc, StreamError):
            await context.abort(exc.code, exc.message)
        if isinstance(exc, AvatarNotFound):
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        if isinstance(exc, QuotaExceeded):
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        if isinstance(exc, StoreUnavailable):  # the shared database is down: retry later (or elsewhere)
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        # engine or disk failure: details (paths, exception text) stay in the server log
        error_id = secrets.token_hex(4)
        logger.error("%s failed (error id %s)", what, error_id, exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL,
                            f"internal server error (error id {error_id}; the server log has the details)")

    # ---- avatars ----
    async def CreateAvatar(self, request: pb.CreateAvatarRequest, context) -> pb.Avatar:
        return await self._run_unary(context, self._create_avatar, request, context)

    async def _create_avatar(self, request: pb.CreateAvatarRequest, context) -> pb.Avatar:
        source = request.WhichOneof("source")
        try:
            check_avatar_name(request.name)
        except ValueError as exc:
            raise invalid(str(exc)) from None
        expected = (self.engine.num_head_tokens, self.engine.hidden_dim)
        if source is None:
            raise invalid("CreateAvatarRequest needs 'image' (PNG/JPEG bytes) or 'avatar_code_npy' (.npy bytes)")
        usage = await self._in_store(self.store.usage)
        self.store.quota.check(*usage, expected[0] * expected[1] * 4)  # a full store: before any work
        if source == "image":
            if self.creates_in_progress >= self.config.max_concurrent_creates:
                raise StreamError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  f"the server is already creating {self.creates_in_progress} avatars from photos "
                                  f"(max_concurrent_creates); retry in a few seconds")
            self.creates_in_progress += 1
            try:
                code = await self._encode_request_photo(request)
            finally:
                self.creates_in_progress -= 1
            model = self.model
        else:
            try:
                code = parse_avatar_code_npy(request.avatar_code_npy)  # [HT,D] float32
            except ValueError as exc:
                raise invalid(str(exc)) from None
            if tuple(code.shape) != expected:
                raise invalid(f"avatar code is [HT,D] = {list(code.shape)}, this server's model expects "
                              f"{list(expected)}")
            model = "imported"
        record = await self._commit_avatar(context, code, source="image" if source == "image" else "npy",
                                           model=model, name=request.name)
        logger.info("created avatar %s from %s (%s)", record.avatar_id, source, log_safe(record.name or "unnamed"))
        return _avatar_proto(record)

    async def _encode_request_photo(self, request: pb.CreateAvatarRequest) -> np.ndarray:
        """Photo bytes -> avatar code float32 [HT,D]: header checks, decode (photo pool), encoder (engine thread)."""
        if request.HasField("camera"):
            c2w, K = parse_camera(request.camera, "CreateAvatarRequest.camera")
        else:
            c2w, K = default_camera_arrays()
        try:
            rgb = await asyncio.get_running_loop().run_in_executor(
                self.photo_executor, _decode_photo, request.image, self.engine.image_size, self.config.max_photo_pixels)
        except ValueError as exc:
            raise invalid(str(exc)) from None
        return await self.batcher.run_creation(self._encode_photo, rgb, c2w, K)  # [HT,D] host

    async def _commit_avatar(self, context, code: np.ndarray, **fields) -> AvatarRecord:
        """Store the avatar unless the client has gone. A client that cancels while the store writes gets its
        avatar removed again: a cancelled CreateAvatar (or FitAvatar) never leaves an avatar behind."""
        if context.cancelled() or context.done():
            raise asyncio.CancelledError()
        add = asyncio.get_running_loop().run_in_executor(None, functools.partial(self.store.add, code, **fields))
        try:
            return await asyncio.shield(add)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):  # the add itself may have failed: nothing to undo then
                record = await add
                await asyncio.get_running_loop().run_in_executor(None, self.store.delete, record.avatar_id)
                logger.info("the call was cancelled by the client while avatar %s was stored: removed it",
                            record.avatar_id)
            raise

    @torch.inference_mode()
    def _encode_photo(self, rgb: np.ndarray, c2w: np.ndarray, K: np.ndarray) -> np.ndarray:
        """Creation thread: uint8 [512,512,3] photo + camera -> avatar code float32 [HT,D] on the host. On a GPU
        it runs on a low-priority CUDA stream, so the live streams' frames are scheduled first."""
        device = self.engine.device
        with torch.cuda.stream(self._create_stream) if self._create_stream is not None else contextlib.nullcontext():
            images = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None].to(device).float().div_(255.0)  # [1,3,512,512]
            cam2world = torch.from_numpy(c2w)[None].to(device)  # [1,4,4]
            intrinsics = torch.from_numpy(K)[None].to(device)  # [1,3,3]
            code = self.engine.encode(images, cam2world, intrinsics)  # [1,HT,D]
            return code[0].float().cpu().numpy()

    async def GetAvatar(self, request: pb.GetAvatarRequest, context) -> pb.Avatar:
        async def get():
            self._check_avatar_id(request.avatar_id)
            return _avatar_proto(await self._in_store(self.store.get, request.avatar_id))

        return await self._run_unary(context, get)

    async def ListAvatars(self, request: pb.ListAvatarsRequest, context) -> pb.ListAvatarsResponse:
        async def page():
            try:
                records, next_token = await self._in_store(list_page, self.store, request.page_size,
                                                           request.page_token)
            except ValueError as exc:
                raise invalid(str(exc)) from None
            return pb.ListAvatarsResponse(avatars=[_avatar_proto(r) for r in records], next_page_token=next_token,
                                          total_size=await self._in_store(len, self.store))

        return await self._run_unary(context, page)

    async def DeleteAvatar(self, request: pb.DeleteAvatarRequest, context) -> pb.DeleteAvatarResponse:
        async def delete():
            self._check_avatar_id(request.avatar_id)
            record = await asyncio.get_running_loop().run_in_executor(None, self.store.delete, request.avatar_id)
            logger.info("deleted avatar %s", record.avatar_id)
            return pb.DeleteAvatarResponse(avatar_id=record.avatar_id)

        return await self._run_unary(context, delete)

    # ---- server info ----
    def server_info(self, avatars: int | None = None) -> pb.ServerInfo:
        """``avatars``: the store's count when the caller already has it (GetServerInfo asks off the loop)."""
        cfg, info, stats = self.config, self.engine.info, self.stats()
        return pb.ServerInfo(
            version=flexrt.__version__,
            engine_backend=info.backend,
            engine_device=info.device,
            engine_precision=info.precision,
            engine_description=info.describe(),
            engine_detail={**{str(k): str(v) for k, v in (info.detail or {}).items()},
                           "frame_renderer": self.renderer.describe()},  # rasterizer, JPEG encoder, slots, graphs
            rasterizer_backend=self.rasterizer,
            model=self.model,
            num_head_tokens=self.engine.num_head_tokens,
            hidden_dim=self.engine.hidden_dim,
            num_gaussians=self.engine.num_gaussians,
            limits=pb.Limits(
                min_size=cfg.min_size, max_width=cfg.max_width, max_height=cfg.max_height,
                max_streams=cfg.max_streams, max_message_bytes=cfg.max_message_bytes,
                max_stream_fps=cfg.max_stream_fps, max_stream_messages_per_s=cfg.max_stream_messages_per_s,
                max_batch_size=cfg.max_batch_size, max_batch_wait_us=int(cfg.max_batch_wait_ms * 1000),
                auth_required=cfg.auth_token is not None, tls=cfg.tls,
                max_pending_streams=cfg.max_pending_streams, config_timeout_s=cfg.config_timeout_s,
                stream_idle_timeout_s=cfg.stream_idle_timeout_s, max_avatars=cfg.max_avatars,
                max_store_bytes=cfg.max_store_bytes, max_photo_pixels=cfg.max_photo_pixels,
                max_concurrent_creates=cfg.max_concurrent_creates, max_list_page_size=MAX_PAGE_SIZE,
                shutdown_drain_s=cfg.shutdown_drain_s, shutdown_grace_s=cfg.shutdown_grace_s,
                fitting_available=self.fitting.available, max_fit_observations=cfg.max_fit_observations,
                max_fit_resolution=cfg.max_fit_resolution, max_fit_steps=cfg.max_fit_steps,
                fit_preview_every=cfg.fit_preview_every, max_concurrent_fits=cfg.max_concurrent_fits,
            ),
            stats=pb.ServerStats(
                active_streams=stats["active_streams"], streams_total=stats["streams_total"],
                frames_received=stats["frames_received"], frames_rendered=stats["frames_rendered"],
                frames_dropped=stats["frames_dropped"], batches=stats["batches"], batch_sizes=stats["batch_sizes"],
                avatars=len(self.store) if avatars is None else avatars, pending_streams=len(self.pending),
                fits_running=self.fitting.running,
            ),
        )

    async def GetServerInfo(self, request: pb.GetServerInfoRequest, context) -> pb.ServerInfo:
        return self.server_info(avatars=await self._in_store(len, self.store))

    # ---- FitAvatar (runtime/fit_rpc.py) ----
    async def FitAvatar(self, request: pb.FitAvatarRequest, context):
        async for response in self.fitting.stream(request, context):
            yield response

    # ---- Animate ----
    async def Animate(self, request_iterator, context) -> None:
        session = None
        reader = None
        try:
            session = await self._open_session(request_iterator)
            self.sessions[session.session_id] = session
            self.streams_total += 1
            logger.info("stream %d: avatar %s, %dx%d %s", session.session_id, session.avatar_id, session.width,
                        session.height, codec.encoding_name(session.encoding))
            reader = asyncio.get_running_loop().create_task(self._read_frames(request_iterator, session))
            await self._render_loop(session, context)
        except StreamError as err:
            await context.abort(err.code, err.message)
        finally:
            if reader is not None:
                reader.cancel()
            if session is not None and self.sessions.pop(session.session_id, None) is not None:
                self.frames_dropped_closed += session.counters.dropped
                logger.info("stream %d closed: %d received, %d rendered, %d dropped", session.session_id,
                            session.counters.received, session.counters.rendered, session.counters.dropped)

    def _trim_pending(self) -> None:
        """Close the longest-waiting config-less streams while more than max_pending_streams wait: those that have
        waited pending_grace_s at once, younger ones when they reach it (if still too many wait then), and any
        beyond max_pending_streams + max_streams at once (a flood)."""
        limits, loop = self.config, asyncio.get_running_loop()
        while len(self.pending) > limits.max_pending_streams:
            evicted, since = next(iter(self.pending.values()))
            age = loop.time() - since
            if age < limits.pending_grace_s and len(self.pending) <= limits.max_pending_streams + limits.max_streams:
                loop.call_later(limits.pending_grace_s - age, self._trim_pending)
                return
            self.pending.popitem(last=False)
            evicted.set_result(None)

    async def _open_session(self, request_iterator) -> Session:
        """The first message -> a Session holding one of the max_streams slots.

        Until its SessionConfig arrives a stream holds no slot: it waits (at most config_timeout_s) among at most
        max_pending_streams such streams, and when one more arrives the one that has waited longest is closed
        with RESOURCE_EXHAUSTED, once it has waited pending_grace_s (``_trim_pending``). So connections that never
        send a config can neither take the slots of real streams nor keep new streams out; slots go to streams
        whose config names a stored avatar (the count is checked after the last await, so it is exact)."""
        limits = self.config
        if self.shutting_down:
            raise StreamError(grpc.StatusCode.UNAVAILABLE, "server is shutting down; connect to another server")
        loop = asyncio.get_running_loop()
        key, evicted = next(_pending_ids), loop.create_future()
        self.pending[key] = (evicted, loop.time())
        self._trim_pending()
        first_message = asyncio.ensure_future(anext(request_iterator))
        try:
            await asyncio.wait((first_message, evicted), timeout=limits.config_timeout_s,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.pending.pop(key, None)
            if not first_message.done():
                first_message.cancel()
        if not first_message.done() or first_message.cancelled():
            if evicted.done():
                raise StreamError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  f"closed before it sent its SessionConfig: {limits.max_pending_streams} newer streams "
                                  "arrived (max_pending_streams); send the config as the first message of a stream")
            raise StreamError(grpc.StatusCode.DEADLINE_EXCEEDED,
                              f"no SessionConfig within {limits.config_timeout_s:g} s (config_timeout_s); send it "
                              "as the first message right after opening the stream")
        try:
            first = first_message.result()
        except StopAsyncIteration:
            raise invalid("the stream ended before its SessionConfig") from None
        except UndecodableRequestError as err:
            raise invalid(str(err)) from None
        if self.shutting_down:
            raise StreamError(grpc.StatusCode.UNAVAILABLE, "server is shutting down; connect to another server")
        cfg, settings = parse_session_config(first, self.config)
        self._check_avatar_id(cfg.avatar_id)
        try:
            record = await self._in_store(self.store.get, cfg.avatar_id)
        except AvatarNotFound as err:
            raise StreamError(grpc.StatusCode.NOT_FOUND, str(err)) from None
        except StoreUnavailable as err:
            raise StreamError(grpc.StatusCode.UNAVAILABLE, str(err)) from None
        expected = (self.engine.num_head_tokens, self.engine.hidden_dim)
        if (record.num_head_tokens, record.hidden_dim) != expected:
            raise StreamError(grpc.StatusCode.FAILED_PRECONDITION,
                              f"avatar {record.avatar_id} has a [{record.num_head_tokens},{record.hidden_dim}] code, "
                              f"this server's model expects {list(expected)}")
        try:  # a shared store (redis) fetches the code when this replica has not seen the avatar yet
            code = await asyncio.get_running_loop().run_in_executor(None, self.store.load_code, cfg.avatar_id)
        except AvatarNotFound as err:  # deleted meanwhile (by another replica)
            raise StreamError(grpc.StatusCode.NOT_FOUND, str(err)) from None
        except StoreUnavailable as err:
            raise StreamError(grpc.StatusCode.UNAVAILABLE, str(err)) from None
        if len(self.sessions) >= limits.max_streams:  # no await from here until Animate registers the session
            raise StreamError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"server is at its limit of {limits.max_streams} concurrent Animate streams")
        avatar_code = torch.tensor(code, device=self.engine.device)  # [HT,D], uploaded once per stream
        return Session(avatar_id=cfg.avatar_id, avatar_code=avatar_code, **settings)

    async def _read_frames(self, request_iterator, session: Session) -> None:
        bucket = TokenBucket(self.config.max_stream_messages_per_s)
        loop = asyncio.get_running_loop()
        idle_s = self.config.stream_idle_timeout_s
        last_message = loop.time()

        async def idle_watchdog():  # one wake-up per idle_s, nothing per message
            while (remaining := last_message + idle_s - loop.time()) > 0:
                await asyncio.sleep(remaining)
            session.fail(StreamError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                     f"no message on this stream for {idle_s:g} s (stream_idle_timeout_s); the "
                                     "stream was closed to free its slot"))

        watchdog = loop.create_task(idle_watchdog())
        try:
            async for request in request_iterator:
                last_message = loop.time()
                if not bucket.take():
                    session.fail(StreamError(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"stream sends more than {self.config.max_stream_messages_per_s:g} messages per second"))
                    return
                session.offer(parse_frame(request, session))
                self.frames_received += 1
                if self.metrics is not None:
                    self.metrics.received.inc()
            session.close_input()
        except StreamError as err:
            session.fail(err)
        except UndecodableRequestError as err:
            session.fail(invalid(str(err)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the transport failed or the client went away: end the stream quietly
            logger.debug("stream %d: reading stopped: %s", session.session_id, log_safe(exc))
            session.close_input()
        finally:
            watchdog.cancel()

    async def _render_loop(self, session: Session, context) -> None:
        """Submit the session's newest frame whenever fewer than ``max_in_flight_per_stream`` of its frames are
        being rendered; a writer task sends the results back in order. A client that stops reading stalls its
        writer (HTTP/2 flow control), so no new frame of it is submitted and its newest one waits (latest wins)."""
        loop = asyncio.get_running_loop()
        min_interval = 1.0 / self.config.max_stream_fps if self.config.max_stream_fps > 0 else 0.0
        next_start = 0.0
        slots = asyncio.Semaphore(self.config.max_in_flight_per_stream)
        results: asyncio.Queue = asyncio.Queue()
        writer = loop.create_task(self._write_results(session, context, results, slots))
        try:
            while True:
                await slots.acquire()
                if writer.done():  # the writer failed (its error is raised below)
                    break
                try:
                    frame = await session.next_frame()
                except StreamError:  # shutdown, a bad message, a failed batch: send what is in flight, then end
                    results.put_nowait(None)
                    with contextlib.suppress(Exception):
                        await writer
                    raise
                if frame is None:
                    break  # the client half-closed; every frame it sent is answered or dropped
                if min_interval:
                    wait = next_start - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                        frame = session.take_newer(frame)
                    next_start = max(next_start, loop.time()) + min_interval  # earliest start of the next frame
                results.put_nowait((frame, self.batcher.submit(session, frame)))
            results.put_nowait(None)
            await writer
        finally:
            if not writer.done():
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await writer
            while not results.empty():  # frames of a stream that ended: their futures are cancelled
                item = results.get_nowait()
                if item is not None:
                    item[1].cancel()

    async def _write_results(self, session: Session, context, results: asyncio.Queue, slots: asyncio.Semaphore):
        while True:
            item = await results.get()
            if item is None:
                return
            frame, future = item
            try:
                rendered = await future
            except RuntimeError as exc:
                err = StreamError(grpc.StatusCode.INTERNAL, str(exc))
                session.fail(err)  # wakes the submitting loop too
                raise err from None
            session.counters.rendered += 1
            server_us = (time.perf_counter_ns() - frame.received_ns) // 1000
            if self.metrics is not None:
                self.metrics.frame(rendered, server_us)
            response = pb.AnimateResponse(
                sequence=frame.sequence,
                client_timestamp_us=frame.client_timestamp_us,
                image=rendered.frame.data,
                width=session.width,
                height=session.height,
                encoding=session.encoding,
                timings=pb.StageTimings(
                    queue_us=_u32(rendered.queue_us), decode_us=_u32(rendered.decode_us),
                    render_us=_u32(rendered.render_us), encode_us=_u32(rendered.encode_us),
                    server_us=_u32(server_us), batch_size=rendered.batch_size,
                ),
                counters=pb.StreamCounters(received=session.counters.received, rendered=session.counters.rendered,
                                           dropped=session.counters.dropped),
            )
            await context.write(response)  # waits while the client does not read (HTTP/2 flow control)
            slots.release()


_pending_ids = itertools.count()


def _u32(value: int) -> int:
    return int(min(max(value, 0), 0xFFFFFFFF))


def _decode_photo(data: bytes, size: int, max_pixels: int) -> np.ndarray:
    """Photo bytes -> uint8 [size,size,3]; the size and squareness are checked from the header before decoding."""
    return codec.resize_square(codec.decode_image(data, max_pixels, square=True), size)


# ---------------------------------------------------------------------------------------------------------
# running a server
# ---------------------------------------------------------------------------------------------------------

class _RunningServer:
    """One started grpc.aio server with its service, health and reflection (lives on one event loop)."""

    def __init__(self, engine: Engine, config: ServerConfig, store: AvatarStore | None = None):
        self.config = config.validate()
        self.engine = engine
        self.store = store if store is not None else open_store(config.store_dir)
        self.store.quota = AvatarQuota(config.max_avatars, config.max_store_bytes)  # the config rules any store
        self.rasterizer = resolve_rasterizer(config.rasterizer, engine.device)
        self.service: FlexAvatarService | None = None
        self.server: grpc.aio.Server | None = None
        self.health: health_aio.HealthServicer | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.web = None  # the browser bridge (runtime/web.py) when config.web_port is set
        self.serving = False  # health SERVING (set after the warm-up, cleared when shutdown begins)
        self._stopped = False
        self._forced: asyncio.Event | None = None  # set by a second signal: skip the rest of drain and grace

    async def start(self) -> None:
        cfg = self.config
        self.metrics = None
        if cfg.metrics_port is not None:
            from .metrics import ServerMetrics

            self.metrics = ServerMetrics(
                active_streams=lambda: len(self.service.sessions),
                dropped_frames=lambda: self.service.frames_dropped_closed + sum(
                    s.counters.dropped for s in list(self.service.sessions.values())),
                jpeg_fallbacks=lambda: self.service.renderer.jpeg_overflows, device=self.engine.device,
                engine_info={"backend": self.engine.info.backend, "device": self.engine.info.device,
                             "precision": self.engine.info.precision, "rasterizer": self.rasterizer,
                             "jpeg": cfg.jpeg})
        self.service = FlexAvatarService(self.engine, cfg, self.store, self.rasterizer, metrics=self.metrics)
        self._forced = asyncio.Event()
        self.server = grpc.aio.server(options=server_options(cfg), interceptors=[RequestGuard(cfg.auth_token)])
        pb_grpc.add_FlexAvatarServicer_to_server(self.service, self.server)
        self.health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.server,
        )
        address = f"{cfg.host}:{cfg.port}"
        credentials = server_credentials(cfg)
        try:
            if credentials is None:
                port = self.server.add_insecure_port(address)
            else:
                port = self.server.add_secure_port(address, credentials)
        except RuntimeError as exc:
            raise RuntimeError(f"cannot listen on {address}: {exc}") from None
        if not port:
            raise RuntimeError(f"cannot listen on {address}")
        self.port = port
        self.service.start()
        # compile / capture every batch size the batcher can form before the first stream arrives (on the GPU
        # thread, which owns the engine's graphs); health stays NOT_SERVING until then
        t0 = time.perf_counter()
        sizes = [(w, h, q) for (w, h) in cfg.warmup_sizes for q in (codec.DEFAULT_JPEG_QUALITY, None)]
        logger.info("warm-up: decoder batch sizes up to %d, render graphs for %s (minutes on a fresh GPU with "
                    "torch.compile; health says NOT_SERVING until it ends)", cfg.max_batch_size,
                    ", ".join(f"{w}x{h}" for (w, h) in cfg.warmup_sizes) or "no frame size")

        def progress(done: int, total: int, what: str) -> None:  # every 8th of the 64 decoder graphs, and the last
            if total <= 16 or done % 8 == 0 or done == total:
                logger.info("warm-up %d/%d: %s (%.0f s)", done, total, what, time.perf_counter() - t0)

        await self.service.batcher.run_on_gpu_thread(self.service.engine.warmup, cfg.max_batch_size, progress)
        await self.service.batcher.run_on_gpu_thread(self.service.renderer.warmup, sizes, cfg.max_batch_size,
                                                     progress)
        logger.info("warm-up for batches up to %d took %.1f s (%s)", cfg.max_batch_size, time.perf_counter() - t0,
                    self.service.renderer.describe())
        memory = gpu_memory_summary(self.service.engine.device)
        if memory:
            logger.info("%s", memory)
        # everything alive now (modules, the model, compiled graphs, warm-up buffers) lives as long as the server:
        # out of the garbage collector's scans, so a full collection walks only what the streams allocate
        logger.info("garbage collector: %d objects alive after warm-up frozen (runtime/gc_pauses.py)",
                    freeze_startup_objects())
        if cfg.web_port is not None:
            from .web import WebBridge  # the websockets package only when the page is served

            self.web = WebBridge(self.service, cfg, serving=lambda: self.serving)
            port_web = await self.web.start(cfg.host, cfg.web_port)
            logger.info("web page on %s://%s:%d/", "https" if cfg.tls else "http", cfg.host, port_web)
        await self.server.start()
        if self.metrics is not None:
            self.metrics_port = self.metrics.serve(cfg.metrics_port, cfg.host)
            logger.info("Prometheus metrics on http://%s:%d/metrics", cfg.host, self.metrics_port)
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.serving = True  # the web page's /healthz mirrors the health service
        logger.info("flexavatar server on %s:%d (%s); engine: %s; rasterizer: %s; model: %s; store: %s "
                    "(%d avatars); auth: %s", cfg.host, port, "TLS" if cfg.tls else "insecure",
                    self.engine.info.describe(), self.rasterizer, self.service.model,
                    self.store.location, len(self.store), "bearer token" if cfg.auth_token else "off")

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING -> drain (everything still served) -> refuse new calls, live streams end after
        their current frame, grace for calls still running -> engine stops."""
        if self._stopped:
            return
        self._stopped = True
        self.serving = False
        loop = asyncio.get_running_loop()
        grace = self.config.shutdown_grace_s if grace is None else grace
        service = self.service
        await self.health.enter_graceful_shutdown()  # load balancers send new clients elsewhere
        logger.info("shutting down: health NOT_SERVING; drain %.1f s (still serving), then %d active streams end "
                    "and calls get %.1f s", self.config.shutdown_drain_s, len(service.sessions), grace)
        await self._unless_forced(self.config.shutdown_drain_s)
        service.shutting_down = True  # new Animate streams -> UNAVAILABLE
        ended = service.end_streams("server is shutting down; reconnect (to another server) to continue")
        deadline = loop.time() + grace
        while service.sessions and loop.time() < deadline and not self._forced.is_set():
            await asyncio.sleep(0.02)
        if ended:
            logger.info("%d streams ended, %d still open", ended, len(service.sessions))
        if self.web is not None:
            await self.web.stop()
        await self.server.stop(0 if self._forced.is_set() else max(0.0, deadline - loop.time()))
        await service.stop()
        if self.metrics is not None:
            self.metrics.stop()
        unfreeze_gc()  # the process may go on (tests, an embedding application)
        logger.info("server stopped")

    def force_stop(self) -> None:
        """Skip what is left of the drain and the grace (a second SIGINT/SIGTERM)."""
        if self._forced is not None:
            self._forced.set()

    async def _unless_forced(self, seconds: float) -> None:
        if seconds > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._forced.wait(), seconds)


class ServerHandle:
    """A server running on its own event-loop thread; for tests and embedding. Use as a context manager."""

    def __init__(self, running: _RunningServer, loop: asyncio.AbstractEventLoop, thread: threading.Thread):
        self._running = running
        self._loop = loop
        self._thread = thread

    @property
    def port(self) -> int:
        return self._running.port

    @property
    def address(self) -> str:
        host = self._running.config.host
        host = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host in ("::", "[::]") else host)
        return f"{host}:{self.port}"

    @property
    def config(self) -> ServerConfig:
        return self._running.config

    @property
    def rasterizer(self) -> str:
        return self._running.rasterizer

    @property
    def metrics_port(self) -> int | None:
        return self._running.metrics_port

    @property
    def web_port(self) -> int | None:
        """Port of the web page and its WebSocket (config.web_port; None when off)."""
        return self._running.web.port if self._running.web is not None else None

    def _call(self, coro_fn, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro_fn(), self._loop).result(timeout)

    def stats(self) -> dict:
        """A snapshot of the service counters (taken on the server's loop)."""

        async def snap():
            return self._running.service.stats()

        return self._call(snap)

    def server_info(self) -> pb.ServerInfo:
        async def info():
            return self._running.service.server_info()

        return self._call(info)

    def stop(self, grace: float | None = None) -> None:
        if not self._thread.is_alive():
            return
        wait = (self._running.config.shutdown_grace_s if grace is None else grace) + self._running.config.shutdown_drain_s
        try:
            self._call(lambda: self._running.stop(grace), timeout=wait + 30.0)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30.0)

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.stop(grace=0.5)


def start_server(engine: Engine, config: ServerConfig | None = None, store: AvatarStore | None = None,
                 **overrides) -> ServerHandle:
    """Start a server on a background thread and return once it listens. ``overrides`` replace config fields
    (e.g. ``port=0`` for an ephemeral port)."""
    config = replace(config or ServerConfig(), **overrides)
    loop = asyncio.new_event_loop()
    running = _RunningServer(engine, config, store)
    started = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def boot():
            try:
                await running.start()
            except BaseException as exc:  # reported to the caller below
                failure.append(exc)
            finally:
                started.set()

        loop.run_until_complete(boot())
        if not failure:
            loop.run_forever()
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    thread = threading.Thread(target=run, name="flexrt-server", daemon=True)
    thread.start()
    started.wait()
    if failure:
        thread.join(timeout=10)
        raise failure[0]
    return ServerHandle(running, loop, thread)


def serve(engine: Engine, config: ServerConfig | None = None, store: AvatarStore | None = None,
          ready=None) -> None:
    """Run a server in the foreground until SIGINT/SIGTERM, then shut down gracefully.
    ``ready(port)`` is called once it listens."""
    config = config or ServerConfig()

    async def main() -> None:
        running = _RunningServer(engine, config, store)
        await running.start()
        if ready is not None:
            ready(running.port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal(sig: signal.Signals) -> None:
            if stop.is_set():
                logger.warning("second %s: stopping now", sig.name)
                running.force_stop()
            else:
                logger.info("%s: shutting down (send it again to stop at once)", sig.name)
                stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, on_signal, sig)
        await stop.wait()
        await running.stop()

    asyncio.run(main())
