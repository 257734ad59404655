"""The scheduler: frames of concurrent streams -> batches for the FrameRenderer (runtime/frames.py), formed by each
frame's age and the GPU's predicted free time, with the GPU work pipelined.

Where things run:
  event loop        ``submit`` (one job per frame), batch formation (``_run``), result delivery
  "flexrt-gpu"      one thread: ``FrameRenderer.submit`` of each batch (enqueues GPU work, returns at once)
  "flexrt-done"     one thread: ``Ticket.result`` of each batch in submission order (waits for the GPU, cuts bytes)
  "flexrt-create"   one thread: avatar creation (``run_creation``), on its own low-priority CUDA stream

When a batch starts (the waiting frames are in arrival order; each session has at most ``max_in_flight`` frames
here, so no stream can crowd out the others):
  * at once when ``max_batch`` frames wait, or when the pipeline is empty and every open stream has a frame here
    (nobody else can join), or when the pipeline is empty and the oldest frame has waited ``max_wait_s``;
  * while batches are in flight: when the decode stage is predicted to be free within ``lead_s`` (the cost model
    below), so frames keep joining the next batch while the GPU is busy, and the batch's decode is enqueued just
    before the previous one ends (it then overlaps that batch's render); never more than ``slots`` batches in
    flight (the renderer's pipeline depth).
Cost model: a batch of n frames takes ``overhead + per_frame * n`` of decode-stage GPU time, both learnt from the
measured times of finished batches (exponential moving averages).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from .frames import BatchResult, EncodedFrame, FrameBatch, FrameRenderer
from .session import FrameRequest, Session

logger = logging.getLogger(__name__)


@dataclass
class RenderedFrame:
    """One frame's outcome, handed back to its stream."""

    frame: EncodedFrame
    queue_us: int  # frame received -> its batch was handed to the GPU thread
    decode_us: int  # the batch's decode stage (GPU time)
    render_us: int  # the batch's render + encode + copy stage (GPU time)
    encode_us: int  # host-side encoding of the batch (PNG, CPU JPEG)
    batch_size: int


@dataclass
class _Job:
    session: Session
    frame: FrameRequest
    future: asyncio.Future


class Batcher:
    def __init__(self, renderer: FrameRenderer, max_batch: int = 64, max_wait_s: float = 0.001,
                 lead_s: float = 0.0015, active_streams=None, metrics=None):
        self.renderer = renderer
        self.max_batch = min(int(max_batch), renderer.max_batch)
        self.max_wait_s = float(max_wait_s)
        self.lead_s = float(lead_s)
        self.slots = len(renderer._slots) if renderer.on_gpu else 1
        self._active_streams = active_streams or (lambda: self.max_batch)  # () -> open streams
        self.metrics = metrics
        self.gpu_executor = ThreadPoolExecutor(1, thread_name_prefix="flexrt-gpu")
        self.done_executor = ThreadPoolExecutor(1, thread_name_prefix="flexrt-done")
        self.create_executor = ThreadPoolExecutor(1, thread_name_prefix="flexrt-create")
        self._waiting: deque[_Job] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._in_flight = 0  # batches handed to the GPU thread and not finished
        self._busy_until = 0.0  # loop time at which the GPU is predicted to be free
        self.overhead_s = 0.0005  # cost model, learnt from finished batches
        self.per_frame_s = 0.001
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
        loop = asyncio.get_running_loop()
        for ex in (self.gpu_executor, self.done_executor, self.create_executor):
            await loop.run_in_executor(None, ex.shutdown, True)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def run_on_gpu_thread(self, fn, *args):
        """Run ``fn(*args)`` on the thread that submits GPU work (warm-up and captures use this)."""
        return await asyncio.get_running_loop().run_in_executor(self.gpu_executor, fn, *args)

    async def run_creation(self, fn, *args):
        """Run ``fn(*args)`` (avatar creation, fitting) on its own thread; it puts its GPU work on a low-priority
        stream itself, so live frames go first."""
        return await asyncio.get_running_loop().run_in_executor(self.create_executor, fn, *args)

    # ---- submission ----
    def submit(self, session: Session, frame: FrameRequest) -> asyncio.Future:
        """-> future of RenderedFrame."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(_Job(session, frame, future))
        session.in_flight += 1

        def done(_future, session=session):
            session.in_flight -= 1

        future.add_done_callback(done)
        self._wakeup.set()
        return future

    # ---- batch formation ----
    def _ready_in(self, now: float) -> float:
        """0 when a batch should start now, else the seconds to wait before looking again (inf: until woken)."""
        n = len(self._waiting)
        if n == 0 or self._in_flight >= self.slots:
            return float("inf")
        if n >= self.max_batch:
            return 0.0
        if self._in_flight == 0:
            if len({id(j.session) for j in self._waiting}) >= self._active_streams():
                return 0.0  # every open stream has a frame here: nobody else can join
            age = (time.perf_counter_ns() - self._waiting[0].frame.received_ns) / 1e9
            return max(0.0, self.max_wait_s - age)
        return max(0.0, self._busy_until - self.lead_s - now)

    async def _take_batch(self) -> list[_Job]:
        loop = asyncio.get_running_loop()
        while True:
            wait = self._ready_in(loop.time())
            if wait == 0.0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), None if wait == float("inf") else wait)
            except asyncio.TimeoutError:
                pass
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
            now = loop.time()
            self._busy_until = max(now, self._busy_until) + self.overhead_s + self.per_frame_s * len(jobs)
            self._in_flight += 1
            start_ns = time.perf_counter_ns()
            batch = FrameBatch(
                avatar_codes=[j.session.avatar_code for j in jobs],
                expression_codes=_stack([j.frame.expression for j in jobs]),
                viewmats=_stack([j.frame.viewmat for j in jobs]),
                intrinsics=_stack([j.frame.K for j in jobs]),
                backgrounds=_stack([j.session.background for j in jobs]),
                sizes=[(j.session.width, j.session.height) for j in jobs],
                encodings=[j.session.encoding for j in jobs],
                qualities=[j.session.quality for j in jobs])
            try:
                ticket = await loop.run_in_executor(self.gpu_executor, self.renderer.submit, batch)
            except Exception as exc:
                self._in_flight -= 1
                self._fail(jobs, exc)
                continue
            done = loop.run_in_executor(self.done_executor, ticket.result)
            done.add_done_callback(lambda f, jobs=jobs, start_ns=start_ns: self._deliver(jobs, start_ns, f))

    def _deliver(self, jobs: list[_Job], start_ns: int, f: asyncio.Future) -> None:
        self._in_flight -= 1
        loop = asyncio.get_running_loop()
        if self._in_flight == 0:
            self._busy_until = loop.time()
        self._wakeup.set()
        if f.cancelled():
            for job in jobs:
                if not job.future.done():
                    job.future.cancel()
            return
        if f.exception() is not None:
            self._fail(jobs, f.exception())
            return
        result: BatchResult = f.result()
        self._learn(result)
        self.batches += 1
        self.frames_rendered += len(jobs)
        self.batch_sizes[len(jobs)] += 1
        if self.metrics is not None:
            self.metrics.batch(result)
        for job, frame in zip(jobs, result.frames):
            if job.future.done():
                continue
            queue_us = max(0, (start_ns - job.frame.received_ns) // 1000)
            job.future.set_result(RenderedFrame(frame, int(queue_us), result.decode_us, result.render_us,
                                                result.cpu_encode_us, result.batch_size))

    def _learn(self, result: BatchResult) -> None:
        gpu_s = result.decode_us / 1e6
        n = result.batch_size
        a = 0.2
        if n >= 4:
            self.per_frame_s = (1 - a) * self.per_frame_s + a * max(1e-5, (gpu_s - self.overhead_s) / n)
        else:
            self.overhead_s = (1 - a) * self.overhead_s + a * max(1e-5, gpu_s - self.per_frame_s * n)

    def _fail(self, jobs: list[_Job], exc: BaseException) -> None:
        logger.error("rendering a batch of %d frames failed: %s: %s", len(jobs), type(exc).__name__, exc)
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(RuntimeError(f"rendering failed: {type(exc).__name__}"))


def _stack(arrays):
    import numpy as np

    return np.stack(arrays).astype(np.float32, copy=False)


def low_priority_stream(device: torch.device):
    """A CUDA stream below the live frames' priority (avatar creation, fitting); None on the CPU."""
    if device.type != "cuda":
        return None
    lo, _hi = torch.cuda.Stream.priority_range()
    return torch.cuda.Stream(device, priority=lo)
