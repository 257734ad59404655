"""Dynamic batching: frames of concurrent streams -> ONE engine.decode call and ONE rasterize call per batch.

The batcher runs on the server's event loop and hands each batch to a single engine thread (engines and CUDA
streams are not shared between threads). A batch starts with the first waiting frame, waits at most
``max_wait_s`` for company (or until ``max_batch`` frames, or one frame of every open stream, are there),
then renders. While a batch renders, the
next frames collect, so under load batches fill up by themselves. Frames of different output resolutions in
one batch share the decode call and get one rasterize call per resolution.

Per batch, on the engine's device (B frames, G Gaussians):

    codes [B,HT,D] (stacked device tensors) + expressions, cameras, backgrounds (one host->device copy)
      -> engine.decode -> Gaussians [B,G,*]
      -> sh_dc_to_rgb(colors) [B,G,3]
      -> rasterize(..., viewmats [B,1,4,4], Ks [B,1,3,3], W, H, background [B,1,3]) -> rgb [B,1,H,W,3]
      -> uint8 on the device -> ONE device->host copy [B,H,W,3]
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from .engines.base import EXPRESSION_DIM as _EXPR
from .engines.base import Engine
from .session import FrameRequest, Session

logger = logging.getLogger(__name__)


def rgb_to_uint8(rgb: torch.Tensor) -> torch.Tensor:
    """float rgb in [0,1] (any shape, any device) -> uint8, round half up, on the same device."""
    return (rgb.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8)


def resolve_rasterizer(requested: str, engine: Engine) -> str:
    """'auto' | 'cpu' | 'cupy' -> the rasterizer backend to use; raises RuntimeError when it cannot run."""
    on_cuda = engine.device.type == "cuda"
    if requested == "auto":
        return "cupy" if on_cuda else "cpu"
    if requested == "cupy":
        if not on_cuda:
            raise RuntimeError(f"rasterizer 'cupy' needs a CUDA engine, but the engine runs on {engine.device}")
        try:
            import cupy  # noqa: F401
        except Exception as exc:
            raise RuntimeError(f"rasterizer 'cupy' requested but CuPy cannot be imported ({exc}); "
                               "install the gpu extra or use rasterizer='cpu'") from None
        return "cupy"
    if requested == "cpu":
        if on_cuda:
            logger.warning("rasterizer 'cpu' with a CUDA engine: every batch's Gaussians are copied to the host")
        return "cpu"
    raise ValueError(f"rasterizer must be 'auto', 'cpu' or 'cupy', got {requested!r}")


@dataclass
class RenderedFrame:
    rgb: np.ndarray  # uint8 [H,W,3] on the host
    queue_us: int  # frame received -> batch start
    decode_us: int  # engine.decode of the batch
    render_us: int  # rasterize + uint8 + device->host copy (all resolutions of the batch)
    batch_size: int


@dataclass
class _Job:
    session: Session
    frame: FrameRequest
    future: asyncio.Future


class _StageClock:
    """Stage timestamps without extra syncs: CUDA events on a GPU (read after the host copy, which syncs
    anyway), perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def intervals_us(self) -> list[int]:
        """Microseconds between consecutive marks (call after a synchronising host copy)."""
        if self.cuda:
            return [int(a.elapsed_time(b) * 1000) for a, b in zip(self.marks, self.marks[1:])]
        return [int((b - a) * 1e6) for a, b in zip(self.marks, self.marks[1:])]


class Batcher:
    def __init__(self, engine: Engine, rasterizer: str, max_batch: int = 8, max_wait_s: float = 0.002,
                 active_streams=None):
        from flexrt.kernels import rasterize, sh_dc_to_rgb  # the rasterizer package (kernels/)

        self.engine = engine
        self.rasterizer = rasterizer
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_s)
        # () -> number of open streams: the window is skipped once every stream has a frame waiting
        self._active_streams = active_streams or (lambda: self.max_batch)
        self._rasterize = rasterize
        self._sh_dc_to_rgb = sh_dc_to_rgb
        self._render_bufs: dict[tuple[int, int, int], tuple[torch.Tensor, ...]] = {}  # see _fixed_render_inputs
        # One thread owns the engine: decode/encode/rasterize calls never run concurrently.
        self.engine_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flexrt-engine")
        self._waiting: deque[_Job] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        # counters (event-loop thread only)
        self.batches = 0
        self.frames_rendered = 0
        self.batch_sizes: Counter[int] = Counter()

    # ---- lifecycle ----
    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="flexrt-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._waiting:
            job = self._waiting.popleft()
            if not job.future.done():
                job.future.cancel()
        await asyncio.get_running_loop().run_in_executor(None, self.engine_executor.shutdown, True)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def run_on_engine(self, fn, *args):
        """Run ``fn(*args)`` on the engine thread (avatar creation uses this too)."""
        return await asyncio.get_running_loop().run_in_executor(self.engine_executor, fn, *args)

    # ---- submission ----
    def submit(self, session: Session, frame: FrameRequest) -> asyncio.Future:
        """-> future of RenderedFrame. A session has at most one frame here at a time (see session.py)."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(_Job(session, frame, future))
        session.in_flight += 1

        def done(_future, session=session):
            session.in_flight -= 1

        future.add_done_callback(done)
        self._wakeup.set()
        return future

    # ---- the loop ----
    async def _take_batch(self) -> list[_Job]:
        loop = asyncio.get_running_loop()
        while not self._waiting:
            self._wakeup.clear()
            await self._wakeup.wait()
        deadline = loop.time() + self.max_wait_s
        while len(self._waiting) < min(self.max_batch, self._active_streams()):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                break
        jobs = []
        while self._waiting and len(jobs) < self.max_batch:
            job = self._waiting.popleft()
            if not job.future.done():  # a stream that ended meanwhile cancelled its future
                jobs.append(job)
        return jobs

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._take_batch()
            if not jobs:
                continue
            start_ns = time.perf_counter_ns()
            try:
                frames = await loop.run_in_executor(self.engine_executor, self._render, jobs)
            except asyncio.CancelledError:
                for job in jobs:
                    if not job.future.done():
                        job.future.cancel()
                raise
            except Exception as exc:
                logger.exception("rendering a batch of %d frames failed", len(jobs))
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(RuntimeError(f"rendering failed: {type(exc).__name__}: {exc}"))
                continue
            self.batches += 1
            self.frames_rendered += len(jobs)
            self.batch_sizes[len(jobs)] += 1
            for job, (rgb, decode_us, render_us) in zip(jobs, frames):
                if job.future.done():
                    continue
                queue_us = max(0, (start_ns - job.frame.received_ns) // 1000)
                job.future.set_result(RenderedFrame(rgb, int(queue_us), decode_us, render_us, len(jobs)))

    # ---- engine thread ----
    @torch.inference_mode()
    def _fixed_render_inputs(self, n: int, width: int, height: int, args: tuple) -> tuple:
        """Copy this batch's render inputs into buffers kept per (batch size, W, H), SH-DC -> RGB on the way.

        The CuPy rasterizer replays a captured CUDA graph when it sees the same shapes at the same addresses
        (kernels/_cupy_backend.py): fixed buffers make every batch of a bucket such a frame, which removes the
        launch cost of the render (~0.3 ms host time per call on an H100) for the price of 8 device copies."""
        key = (n, width, height)
        bufs = self._render_bufs.get(key)
        if bufs is None:
            bufs = self._render_bufs[key] = tuple(torch.empty_like(t, memory_format=torch.contiguous_format)
                                                  for t in args)
        for i, (dst, src) in enumerate(zip(bufs, args)):
            if i == 4:
                self._sh_dc_to_rgb(src, out=dst)  # [n, G, 3] raw SH-DC -> RGB
            else:
                dst.copy_(src)
        return bufs

    def _render(self, jobs: list[_Job]) -> list[tuple[np.ndarray, int, int]]:
        engine = self.engine
        device = engine.device
        b = len(jobs)
        clock = _StageClock(device)
        codes = torch.stack([job.session.avatar_code for job in jobs])  # [B,HT,D], already on the device
        # every per-frame host input in one array -> ONE host->device copy:
        # [B, 135 expression | 16 viewmat | 9 pixel K | 3 background] float32, validated on the host
        host_inputs = np.stack([
            np.concatenate([job.frame.expression, job.frame.viewmat.reshape(16), job.frame.K.reshape(9),
                            job.session.background]) for job in jobs
        ]).astype(np.float32, copy=False)
        inputs = torch.from_numpy(host_inputs).to(device, non_blocking=True)  # [B,163]
        clock.mark()
        gaussians = engine.decode(codes, inputs[:, :_EXPR].contiguous())  # attributes [B,G,*]
        clock.mark()
        if self.rasterizer == "cpu" and device.type != "cpu":
            gaussians = gaussians.map(lambda t: t.cpu())  # resolve_rasterizer warned about this at start
            inputs = torch.from_numpy(host_inputs)
        raster_device = gaussians.positions.device

        groups: dict[tuple[int, int], list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault((job.session.width, job.session.height), []).append(i)
        images_u8 = []  # (indices, uint8 [b,H,W,3] on the device)
        for (width, height), idx in groups.items():
            if len(idx) == b:
                g, cams = gaussians, inputs
            else:
                sel = torch.tensor(idx, device=raster_device)
                g = gaussians.map(lambda t: t.index_select(0, sel))
                cams = inputs.index_select(0, sel)
            n = len(idx)
            viewmats = cams[:, _EXPR:_EXPR + 16].reshape(n, 1, 4, 4).contiguous()  # [b,1,4,4] world-to-camera
            Ks = cams[:, _EXPR + 16:_EXPR + 25].reshape(n, 1, 3, 3).contiguous()  # [b,1,3,3] pixel intrinsics
            background = cams[:, _EXPR + 25:].reshape(n, 1, 3).contiguous()  # [b,1,3]
            args = (g.positions, g.rotations, g.scales, g.opacities[..., 0], g.colors, viewmats, Ks, background)
            if self.rasterizer == "cupy":
                args = self._fixed_render_inputs(n, width, height, args)
            else:
                args = args[:4] + (self._sh_dc_to_rgb(g.colors),) + args[5:]
            rgb, _alpha = self._rasterize(
                *args[:7], width, height, background=args[7], backend=self.rasterizer,
            )  # rgb [b,1,H,W,3]
            images_u8.append((idx, rgb_to_uint8(rgb[:, 0])))  # [b,H,W,3] uint8, still on the device
        host = [(idx, u8.cpu().numpy()) for idx, u8 in images_u8]  # one device->host copy per resolution
        clock.mark()
        decode_us, render_us = clock.intervals_us()
        out: list = [None] * b
        for idx, arr in host:
            for k, i in enumerate(idx):
                out[i] = (arr[k], decode_us, render_us)
        return out
