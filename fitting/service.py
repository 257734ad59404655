"""What the gRPC ``FitAvatar`` call runs: a fit in a worker thread, with limits, cancellation, progress events and,
on CUDA, a low-priority stream so that live animation streams keep their frame rate.

    service = FitService(model, dino=None, limits=FitLimits(max_images=16, max_resolution=512, max_steps=400))
    job = service.start(images, cam2world, intrinsics, expression_codes, config=FitConfig(steps=200),
                        on_progress=lambda p: send(p.step, p.loss, p.psnr, p.preview))   # preview: uint8 [H,W,3] | None
    ...                        # the RPC's cancellation callback: job.cancel()
    result = job.wait()        # FitResult (result.avatar_code [HT,D] goes into the avatar store)

Everything a client can get wrong (limits, shapes, non-finite values, options) is checked in ``start`` before a
thread exists and raised as ``FitInputError`` (map it to INVALID_ARGUMENT); ``FitBusy`` means every fit slot is
taken (RESOURCE_EXHAUSTED). ``on_progress`` runs in the worker thread after every step; an exception it raises
ends the fit and comes back from ``wait``.

GPU priority: the fit's kernels go to its own ``torch.cuda.Stream(priority=FIT_STREAM_PRIORITY)`` (0, the lowest
CUDA priority; lower numbers are higher priority). The CUDA scheduler prefers pending work of higher-priority
streams when it launches blocks, so the live path must put its frames on streams created with a higher priority
(``torch.cuda.Stream(priority=-1)`` or lower numbers); work on the default stream (priority 0) competes with the
fit as an equal.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .fit import FitConfig, FitInputError, FitResult, check_observations, run_fit, to_uint8
from .losses import psnr

logger = logging.getLogger("flexrt.fitting.service")

FIT_STREAM_PRIORITY = 0  # lowest CUDA stream priority; live streams use higher priority (negative numbers)


class FitBusy(RuntimeError):
    """Every fit slot is in use; try again later."""


@dataclass(frozen=True)
class FitLimits:
    """What one FitAvatar request may ask for."""

    max_images: int = 16  # observations per fit
    max_resolution: int = 1024  # largest image side, pixels
    max_steps: int = 1000
    preview_every: int = 10  # a preview render in the progress events every this many steps (and at the last)
    max_concurrent: int = 1  # fits running at once (each holds a model replica's decoder for its whole run)

    def validate(self) -> "FitLimits":
        for name in ("max_images", "max_resolution", "max_steps", "preview_every", "max_concurrent"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"FitLimits.{name} must be a positive int, got {v!r}")
        return self

    def check(self, n_images: int, height: int, width: int, steps: int) -> None:
        if n_images > self.max_images:
            raise FitInputError(f"too many images: {n_images} (this server fits at most {self.max_images})")
        if max(height, width) > self.max_resolution:
            raise FitInputError(f"images are {width}x{height}; this server fits at most "
                                f"{self.max_resolution}x{self.max_resolution}")
        if steps > self.max_steps:
            raise FitInputError(f"steps {steps} is over this server's limit of {self.max_steps}")


@dataclass
class FitProgress:
    step: int  # 0-based index of the step just done
    steps: int  # steps requested
    loss: float
    psnr: float  # dB, this step's render (clamped to [0, 1]) against its target view
    view: int  # the input view this step fitted
    preview: np.ndarray | None  # uint8 [H, W, 3] render of that view every `preview_every` steps, else None


class FitJob:
    """One fit running in a worker thread. ``cancel()`` stops it after the current step; ``wait()`` returns the
    FitResult (``cancelled=True`` with the code reached so far when it was cancelled) or raises its error."""

    def __init__(self, target: Callable[["FitJob"], FitResult], name: str = "flexavatar-fit"):
        self.cancel_event = threading.Event()
        self.result: FitResult | None = None
        self.error: BaseException | None = None
        self.stream = None  # the CUDA stream the fit ran on (None on the CPU)
        self._done = threading.Event()
        self._target = target
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        try:
            self.result = self._target(self)
        except BaseException as exc:  # handed to wait(); the thread itself must not die loudly
            self.error = exc
            logger.warning("fit failed: %s: %s", type(exc).__name__, exc)
        finally:
            self._done.set()

    def cancel(self) -> None:
        self.cancel_event.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> FitResult:
        if not self._done.wait(timeout):
            raise TimeoutError(f"the fit did not finish within {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result


class FitService:
    """Runs fits for one model (frozen; shared with nothing that trains it) with bounded concurrency."""

    def __init__(self, model, dino=None, limits: FitLimits = FitLimits()):
        self.model, self.dino, self.limits = model, dino, limits.validate()
        self._slots = threading.BoundedSemaphore(limits.max_concurrent)

    def start(self, images, cam2world, intrinsics, expression_codes, *, config: FitConfig = FitConfig(),
              init_code=None, on_progress: Callable[[FitProgress], object] | None = None,
              preview_every: int | None = None) -> FitJob:
        """Validate (raises FitInputError / FitBusy here, in the caller's thread), then start the fit.
        ``preview_every``: this request's preview cadence (None = ``limits.preview_every``)."""
        config = FitConfig(**vars(config)).validate()
        if config.sam_module is not None:  # a TorchScript file runs its own code: never one chosen by a client
            raise FitInputError("the fit service does not load SAM feature modules; use `flexavatar fit --sam-module` "
                                "locally")
        obs = check_observations(images, cam2world, intrinsics, expression_codes)  # CPU copy: checks only
        h, w = obs.size
        self.limits.check(obs.n, h, w, config.steps)
        if init_code is None and self.dino is None:
            raise FitInputError("this server has no DINOv2 encoder for a feed-forward initial code; send an "
                                "initial avatar code")
        if not self._slots.acquire(blocking=False):
            raise FitBusy(f"all {self.limits.max_concurrent} fit slot(s) are busy")
        every = self.limits.preview_every if preview_every is None else preview_every
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise FitInputError(f"preview_every must be a positive int, got {every!r}")
        model, dino = self.model, self.dino

        def target(job: FitJob) -> FitResult:
            try:
                def on_step(step, loss, view, rgb, target_img):
                    if on_progress is None:
                        return None
                    last = step + 1 == config.steps
                    preview = to_uint8(rgb) if (step + 1) % every == 0 or last else None
                    value = float(psnr(rgb, target_img))
                    on_progress(FitProgress(step, config.steps, float(loss), value, view, preview))
                    return None

                device = next(model.parameters()).device
                args = (model, obs.images, obs.cam2world, obs.intrinsics, obs.expression_codes, init_code, config,
                        dino, on_step, job.cancel_event)
                if device.type != "cuda":
                    return run_fit(*args)
                job.stream = torch.cuda.Stream(device=device, priority=FIT_STREAM_PRIORITY)
                job.stream.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(job.stream):
                    result = run_fit(*args)
                job.stream.synchronize()
                return result
            finally:
                self._slots.release()

        job = FitJob(target)
        job.thread.start()
        return job


__all__ = ["FitService", "FitJob", "FitLimits", "FitProgress", "FitBusy", "FIT_STREAM_PRIORITY"]
