"""The FitAvatar RPC: a fit of an avatar code to several observations (fitting/service.py) streamed as progress
events, its result stored like any avatar.

    calls = FitAvatarCalls(service)                  # in FlexAvatarService.__init__
    async for response in calls.stream(request, context):   # the servicer's FitAvatar
        yield response

Where each part runs:
  event loop         request checks (counts, cameras, expressions, initial code), the stream of responses
  photo pool         decoding the observations (header checks first, as CreateAvatar), resizing, float conversion
  creation thread    the feed-forward initial code (engine.encode on the low-priority CUDA stream, as CreateAvatar)
  fit thread         FitService's worker: the fit on the engine's PyTorch model on its own priority-0 CUDA stream
                     (the lowest priority; the live frames run on higher-priority streams), and the preview JPEGs
  default executor   FitService.start (validates the tensors), waiting for the fit's end, the avatar store

Progress goes from the fit thread to the stream through ``loop.call_soon_threadsafe`` into an ``asyncio.Queue``
(at most one message per step, and steps are bounded by ``max_fit_steps``). A client that cancels the call
cancels the fit: it stops after its current step and nothing is stored.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from dataclasses import dataclass

import grpc
import numpy as np
import torch

from flexrt.fitting import FitConfig, FitInputError
from flexrt.fitting.service import FitBusy, FitJob, FitProgress, FitService
from flexrt.proto import flexavatar_pb2 as pb

from . import codec
from .limits import FIT_MIN_RESOLUTION, log_safe
from .session import StreamError, default_camera_arrays, invalid, parse_camera
from .store import check_avatar_name, is_valid_avatar_id, parse_avatar_code_npy

logger = logging.getLogger(__name__)

EXPRESSION_DIM = 135
DEFAULT_FIT_STEPS = 200  # FitAvatarRequest.steps = 0: the official recipe
PREVIEW_JPEG_QUALITY = codec.DEFAULT_JPEG_QUALITY
_DONE = object()  # queue marker: the fit thread has ended


def fitting_model(engine):
    """The engine's PyTorch FlexAvatarModel (TorchEngine.model), or None for engines without one."""
    from flexrt.model.flexavatar import FlexAvatarModel

    model = getattr(engine, "model", None)
    return model if isinstance(model, FlexAvatarModel) else None


@dataclass
class FitRequest:
    """A FitAvatarRequest after the host-side checks (numpy, float32)."""

    images: list  # N photo bytes
    cam2world: np.ndarray  # [N, 4, 4]
    intrinsics: np.ndarray  # [N, 3, 3] normalised
    expression_codes: np.ndarray  # [N, 135]
    name: str
    init: str  # "init_avatar_id" | "init_avatar_code_npy" | "feed-forward"
    init_avatar_id: str
    init_code: np.ndarray | None  # [HT, D] (init_avatar_code_npy)
    steps: int
    resolution: int  # 0 = as sent
    preview_every: int
    optimize_expression: bool
    seed: int


def parse_fit_request(request: pb.FitAvatarRequest, config, code_shape: tuple[int, int]) -> FitRequest:
    """Every check that needs no decoding: counts, limits, cameras, expressions, name, initial code.
    Raises StreamError (INVALID_ARGUMENT) with one line naming the problem."""
    n = len(request.observations)
    if n == 0:
        raise invalid("FitAvatarRequest has no observations; send at least one (image, camera, expression)")
    if n > config.max_fit_observations:
        raise invalid(f"too many observations: {n} (this server fits at most {config.max_fit_observations})")
    steps = request.steps or DEFAULT_FIT_STEPS
    if steps < 0 or steps > config.max_fit_steps:
        raise invalid(f"steps {request.steps} is outside this server's range 1..{config.max_fit_steps} (0 = "
                      f"{DEFAULT_FIT_STEPS})")
    if request.resolution and not FIT_MIN_RESOLUTION <= request.resolution <= config.max_fit_resolution:
        raise invalid(f"resolution {request.resolution} is outside this server's range {FIT_MIN_RESOLUTION}.."
                      f"{config.max_fit_resolution} (0 = as sent)")
    if request.preview_every < 0:
        raise invalid(f"preview_every must be >= 0 (0 = the server's {config.fit_preview_every}), got "
                      f"{request.preview_every}")
    try:
        check_avatar_name(request.name)
    except ValueError as exc:
        raise invalid(str(exc)) from None
    c2w = np.empty((n, 4, 4), np.float32)
    K = np.empty((n, 3, 3), np.float32)
    expr = np.empty((n, EXPRESSION_DIM), np.float32)
    images = []
    for i, obs in enumerate(request.observations):
        what = f"observations[{i}]"
        if not obs.image:
            raise invalid(f"{what}.image is empty; send PNG or JPEG bytes of a square head crop on white")
        images.append(obs.image)
        c2w[i], K[i] = parse_camera(obs.camera, f"{what}.camera") if obs.HasField("camera") else default_camera_arrays()
        e = np.asarray(obs.expression, dtype=np.float32)
        if e.size != EXPRESSION_DIM:
            raise invalid(f"{what}.expression must have {EXPRESSION_DIM} floats, got {e.size}")
        if not np.isfinite(e).all():
            raise invalid(f"{what}.expression contains NaN or Inf")
        expr[i] = e
    init = request.WhichOneof("init") or "feed-forward"
    init_code = None
    if init == "init_avatar_id" and not is_valid_avatar_id(request.init_avatar_id):
        raise invalid(f"init_avatar_id must be 32 lowercase hex characters, got {request.init_avatar_id!r}")
    if init == "init_avatar_code_npy":
        try:
            init_code = parse_avatar_code_npy(request.init_avatar_code_npy)  # [HT, D] float32
        except ValueError as exc:
            raise invalid(f"init_avatar_code_npy: {exc}") from None
        if tuple(init_code.shape) != tuple(code_shape):
            raise invalid(f"init_avatar_code_npy is [HT,D] = {list(init_code.shape)}, this server's model expects "
                          f"{list(code_shape)}")
    return FitRequest(images=images, cam2world=c2w, intrinsics=K, expression_codes=expr, name=request.name,
                      init=init, init_avatar_id=request.init_avatar_id, init_code=init_code, steps=steps,
                      resolution=request.resolution, preview_every=request.preview_every or config.fit_preview_every,
                      optimize_expression=not request.no_expression_offsets, seed=int(request.seed))


def decode_observations(photos: list, max_pixels: int, resolution: int, max_resolution: int,
                        encoder_size: int | None) -> tuple[torch.Tensor, np.ndarray | None]:
    """Photo pool: N PNG/JPEG photos -> (images float32 [N, 3, S, S] in [0, 1], the first photo as uint8
    [encoder_size, encoder_size, 3] for a feed-forward initial code, or None when ``encoder_size`` is None).

    Each photo's header is checked before it is decoded (format, ``max_pixels``, square; codec.decode_image) and
    it is resized to ``resolution`` at once (0: kept; then every photo must have the first one's size, at most
    ``max_resolution``), so at most one full-size photo is in memory. Raises ValueError naming the observation."""
    out, first = None, None
    for i, data in enumerate(photos):
        try:
            rgb = codec.decode_image(data, max_pixels, square=True)  # uint8 [S, S, 3], alpha on white
        except ValueError as exc:
            raise ValueError(f"observations[{i}].image: {exc}") from None
        if i == 0 and encoder_size is not None:
            first = codec.resize_square(rgb, encoder_size)
        side = rgb.shape[0]
        if resolution:
            rgb = codec.resize_square(rgb, resolution)
        elif side > max_resolution:
            raise ValueError(f"observations[{i}].image is {side}x{side}; this server fits at most {max_resolution}x"
                             f"{max_resolution}: send smaller photos or set resolution")
        elif side < FIT_MIN_RESOLUTION:
            raise ValueError(f"observations[{i}].image is {side}x{side}; fitting needs at least "
                             f"{FIT_MIN_RESOLUTION}x{FIT_MIN_RESOLUTION}")
        if out is None:
            out = np.empty((len(photos), *rgb.shape), np.uint8)  # [N, S, S, 3]
        elif rgb.shape != out.shape[1:]:
            raise ValueError(f"observations[{i}].image is {side}x{side} but observations[0] is {out.shape[1]}x"
                             f"{out.shape[2]}; send one size or set resolution")
        out[i] = rgb
    images = torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255.0).contiguous()  # [N, 3, S, S]
    return images, first


def progress_message(p: FitProgress) -> pb.FitAvatarResponse:
    """Fit thread: a FitProgress (0-based step) -> the response (1-based step, preview as JPEG)."""
    jpeg = codec.encode_frame(p.preview, "jpeg", PREVIEW_JPEG_QUALITY) if p.preview is not None else b""
    return pb.FitAvatarResponse(progress=pb.FitAvatarProgress(
        step=p.step + 1, steps=p.steps, loss=p.loss, psnr=p.psnr, view=p.view, preview_jpeg=jpeg))


NO_DINO_TERM = "off: no DINOv2-small weights on this server (serve --fit-dino-loss-weights)"


def result_message(record_proto: pb.Avatar, result, init: str, resolution: int,
                   terms: dict | None = None) -> pb.FitAvatarResponse:
    """The final response; ``terms`` overrides entries of ``result.terms`` (the loss terms' on/off and why)."""
    return pb.FitAvatarResponse(result=pb.FitAvatarResult(
        avatar=record_proto, psnr_before=result.psnr_before, psnr_after=result.psnr_after,
        psnr_before_per_view=result.psnr_before_per_view.tolist(),
        psnr_after_per_view=result.psnr_after_per_view.tolist(), losses=result.losses.tolist(),
        loss_terms={**result.terms, **(terms or {})}, init=init, steps=result.steps_done, resolution=resolution,
        rasterizer=result.rasterizer, fit_seconds=result.seconds))


class FitAvatarCalls:
    """FitAvatar for one FlexAvatarService: a FitService on the engine's PyTorch model, bounded by the server's
    fit limits, with at most ``max_concurrent_fits`` fits running (counted until their thread has ended)."""

    def __init__(self, service, avatar_proto):
        self.service = service
        self.avatar_proto = avatar_proto  # AvatarRecord -> pb.Avatar
        cfg = service.config
        self.model = fitting_model(service.engine)
        self.fit_service: FitService | None = None
        self.dino_loss = None
        self.running = 0  # fits started and whose thread has not ended yet (event-loop thread only)
        self.completed = 0
        self.cancelled = 0
        self.failed = 0
        self.jobs: set[FitJob] = set()
        if self.model is None:
            return
        # The server only runs inference: gradients must reach the avatar code (and offsets), never the weights;
        # FitService freezes them for each fit and restores the flags after, which concurrent fits would undo.
        self.model.requires_grad_(False)
        if cfg.fit_dino_loss_weights:
            from flexrt.fitting import load_dino_feature_loss

            self.dino_loss = load_dino_feature_loss(cfg.fit_dino_loss_weights)
        self.fit_service = FitService(self.model, dino=None, limits=cfg.fit_limits())

    @property
    def available(self) -> bool:
        return self.fit_service is not None

    def stats(self) -> dict:
        return {"running": self.running, "completed": self.completed, "cancelled": self.cancelled,
                "failed": self.failed}

    async def stop(self) -> None:
        """Server shutdown: cancel every fit and wait (bounded) for their threads to end after their step."""
        for job in list(self.jobs):
            job.cancel()
        loop = asyncio.get_running_loop()
        for job in list(self.jobs):
            with contextlib.suppress(Exception):
                await loop.run_in_executor(None, job.thread.join, 30.0)

    async def stream(self, request: pb.FitAvatarRequest, context):
        """The servicer's FitAvatar: responses, or the call aborted with the status of what went wrong."""
        try:
            async for response in self._fit(request, context):
                yield response
        except grpc.aio.AbortError:
            raise
        except FitInputError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except FitBusy as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{exc}; retry later")
        except Exception as exc:  # StreamError, NOT_FOUND, quota; anything else is INTERNAL with an error id
            await self.service.abort_with(context, "FitAvatar", exc)

    async def _fit(self, request: pb.FitAvatarRequest, context):
        svc, cfg = self.service, self.service.config
        engine = svc.engine
        if self.fit_service is None:
            raise StreamError(grpc.StatusCode.UNIMPLEMENTED,
                              f"FitAvatar needs the PyTorch backend (serve --model ... or --backend torch); this "
                              f"server runs the {engine.info.backend} backend, which has no differentiable model")
        if svc.shutting_down:
            raise StreamError(grpc.StatusCode.UNAVAILABLE, "server is shutting down; connect to another server")
        code_shape = (engine.num_head_tokens, engine.hidden_dim)
        req = parse_fit_request(request, cfg, code_shape)
        usage = await svc._in_store(svc.store.usage)
        svc.store.quota.check(*usage, code_shape[0] * code_shape[1] * 4)  # a full store: before any work
        if req.init == "feed-forward" and getattr(engine, "encoder", True) is None:
            raise StreamError(grpc.StatusCode.FAILED_PRECONDITION,
                              "this server has no encoder for a feed-forward initial code; send init_avatar_id or "
                              "init_avatar_code_npy")
        if self.running >= cfg.max_concurrent_fits:
            raise FitBusy(f"the server is already running {self.running} fit(s) (max_concurrent_fits)")
        self.running += 1
        job = ended = None
        loop = asyncio.get_running_loop()
        try:
            # 1. observations: decoded on the photo pool (header checks first), resized, as float [N, 3, S, S]
            try:
                images, first = await loop.run_in_executor(
                    svc.photo_executor, decode_observations, req.images, cfg.max_photo_pixels, req.resolution,
                    cfg.max_fit_resolution, engine.image_size if req.init == "feed-forward" else None)
            except ValueError as exc:
                raise invalid(str(exc)) from None
            # 2. the initial avatar code [HT, D]
            if req.init == "init_avatar_id":
                record = await svc._in_store(svc.store.get, req.init_avatar_id)  # AvatarNotFound -> NOT_FOUND
                if (record.num_head_tokens, record.hidden_dim) != code_shape:
                    raise StreamError(grpc.StatusCode.FAILED_PRECONDITION,
                                      f"avatar {record.avatar_id} has a [{record.num_head_tokens},{record.hidden_dim}]"
                                      f" code, this server's model expects {list(code_shape)}")
                init_code = await loop.run_in_executor(None, svc.store.load_code, req.init_avatar_id)
            elif req.init == "init_avatar_code_npy":
                init_code = req.init_code
            else:  # the feed-forward code of the first observation: CreateAvatar's path (low-priority stream)
                init_code = await svc.batcher.run_creation(svc._encode_photo, first, req.cam2world[0],
                                                           req.intrinsics[0])
            # 3. the fit, in FitService's worker thread; progress comes back through the queue
            queue: asyncio.Queue = asyncio.Queue()

            def on_progress(p: FitProgress) -> None:  # fit thread
                loop.call_soon_threadsafe(queue.put_nowait, progress_message(p))

            config = FitConfig(steps=req.steps, optimize_expression=req.optimize_expression, seed=req.seed,
                               dino_weights=self.dino_loss, preview_every=req.preview_every)
            start = functools.partial(self.fit_service.start, images, torch.from_numpy(req.cam2world),
                                      torch.from_numpy(req.intrinsics), torch.from_numpy(req.expression_codes),
                                      config=config, init_code=torch.from_numpy(np.array(init_code)),
                                      on_progress=on_progress, preview_every=req.preview_every)
            job = await loop.run_in_executor(None, start)  # FitInputError / FitBusy from the checks
            self.jobs.add(job)
            ended = loop.run_in_executor(None, job.thread.join)  # the fit thread has ended (all progress is queued)
            ended.add_done_callback(lambda _f: queue.put_nowait(_DONE))
            context.add_done_callback(lambda _ctx: job.cancel())  # the call ended (client cancel, deadline, ...)
            side = images.shape[-1]
            logger.info("fit started: %d observation(s) at %dx%d, %d steps, init %s (%s)", len(req.images), side,
                        side, req.steps, req.init, log_safe(req.name or "unnamed"))
            while (item := await queue.get()) is not _DONE:
                yield item
            try:
                result = job.wait(0)
            except Exception:
                self.failed += 1
                raise
            if result.cancelled:  # cancelled by the server (shutdown), not by this client
                self.cancelled += 1
                raise StreamError(grpc.StatusCode.UNAVAILABLE, "server is shutting down; the fit was cancelled")
            # 4. the result, stored like any avatar (quota; removed again if the client cancels meanwhile)
            record = await svc._commit_avatar(context, result.avatar_code.numpy(), source="fit", model=svc.model,
                                              name=req.name)
            self.completed += 1
            logger.info("fit stored as avatar %s (%s)", record.avatar_id, log_safe(record.name or "unnamed"))
            terms = {"dino": NO_DINO_TERM} if self.dino_loss is None else None  # the server's flag, not fit's
            yield result_message(self.avatar_proto(record), result, req.init, side, terms)
        except (asyncio.CancelledError, GeneratorExit):  # the client went away (gRPC cancels or closes us)
            if job is not None and not job.done:
                self.cancelled += 1
                logger.info("FitAvatar cancelled by the client: the fit stops after its current step")
            raise
        finally:
            if job is None:
                self.running -= 1
            else:  # the slot is free once the fit thread has ended (a cancelled fit finishes its current step)
                job.cancel()  # no-op when it has ended
                ended.add_done_callback(lambda _f: self._release(job))

    def _release(self, job: FitJob) -> None:
        self.running -= 1
        self.jobs.discard(job)


__all__ = ["FitAvatarCalls", "parse_fit_request", "decode_observations", "fitting_model", "DEFAULT_FIT_STEPS"]
