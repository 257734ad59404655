"""Timers for the benchmarks: CUDA events on a GPU, ``perf_counter`` on the CPU; warm-up, medians, percentiles.

    stats = time_fn(lambda i: engine.decode(code, expressions[i % n]), device, warmup=20, iters=100)
    stats.median_ms, stats.p99_ms, stats.as_dict()

Every timed call gets its iteration index ``i`` so that callers can rotate inputs (a different expression code
per iteration) and nothing is flattered by caching. On CUDA each iteration is timed on its own (the device is
synchronised before the start event, and the end event is waited for), so a median is the latency of one call,
not a throughput figure; the wall-clock time of the same iteration (host ``perf_counter`` around the call and
the wait) is recorded beside it. ``max_seconds`` bounds the time spent (warm-up included): the loop stops early
once at least ``min_iters`` timed iterations ran, and the result says so (``truncated``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

DEFAULT_WARMUP = 20
DEFAULT_ITERS = 100


@dataclass
class Stats:
    """Latency samples of one measurement, in milliseconds."""

    samples_ms: list[float]
    timer: str  # "cuda_events" or "perf_counter"
    warmup: int
    truncated: bool = False  # stopped early by max_seconds
    wall_samples_ms: list[float] = field(default_factory=list)  # host wall clock of the same iterations (CUDA)

    @property
    def n(self) -> int:
        return len(self.samples_ms)

    def percentile(self, q: float, wall: bool = False) -> float:
        values = self.wall_samples_ms if wall else self.samples_ms
        return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else math.nan

    @property
    def median_ms(self) -> float:
        return self.percentile(50)

    @property
    def p99_ms(self) -> float:
        return self.percentile(99)

    def as_dict(self) -> dict:
        a = np.asarray(self.samples_ms, dtype=np.float64)
        d = {
            "median_ms": self.median_ms, "p90_ms": self.percentile(90), "p99_ms": self.p99_ms,
            "mean_ms": float(a.mean()) if a.size else math.nan, "min_ms": float(a.min()) if a.size else math.nan,
            "max_ms": float(a.max()) if a.size else math.nan, "n": self.n, "warmup": self.warmup,
            "timer": self.timer, "truncated": self.truncated,
        }
        if self.wall_samples_ms:
            d["wall_median_ms"] = self.percentile(50, wall=True)
            d["wall_p99_ms"] = self.percentile(99, wall=True)
        return d


def time_fn(fn: Callable[[int], object], device: torch.device | str = "cpu", warmup: int = DEFAULT_WARMUP,
            iters: int = DEFAULT_ITERS, max_seconds: float | None = None, min_iters: int = 3) -> Stats:
    """Time ``fn(i)`` for ``iters`` iterations after ``warmup`` untimed ones; see the module docstring."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    t_start = time.perf_counter()

    def over_budget() -> bool:
        return max_seconds is not None and time.perf_counter() - t_start > max_seconds

    done_warmup = 0
    for i in range(warmup):
        fn(i)
        done_warmup += 1
        if cuda:
            torch.cuda.synchronize(device)
        if over_budget() and i >= 1:  # keep at least two warm-up calls (first-call setup, allocator pools)
            break
    samples: list[float] = []
    wall: list[float] = []
    truncated = False
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for k in range(iters):
        i = done_warmup + k
        if cuda:
            torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            start.record()
            fn(i)
            end.record()
            end.synchronize()
            wall.append((time.perf_counter() - t0) * 1e3)
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn(i)
            samples.append((time.perf_counter() - t0) * 1e3)
        if k + 1 >= min(min_iters, iters) and k + 1 < iters and over_budget():
            truncated = True
            break
    return Stats(samples, "cuda_events" if cuda else "perf_counter", done_warmup, truncated, wall)


class Budget:
    """A time budget shared by the measurements of one phase: each measurement gets an equal share of what is
    left (capped at ``cap`` seconds and at least ``floor``), so a phase ends near its budget however many of its
    backends turn out to be unavailable. ``seconds=None``: no budget, every measurement gets ``cap``."""

    def __init__(self, seconds: float | None, cap: float | None = None, floor: float = 0.5):
        self.seconds = seconds
        self.cap = cap
        self.floor = floor
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def remaining(self) -> float:
        return math.inf if self.seconds is None else self.seconds - self.elapsed()

    def exhausted(self) -> bool:
        return self.remaining() <= 0

    def share(self, items_left: int) -> float | None:
        """Seconds for the next measurement when ``items_left`` measurements (this one included) remain."""
        if self.seconds is None:
            return self.cap
        share = max(self.floor, self.remaining() / max(1, items_left))
        return min(share, self.cap) if self.cap is not None else share


def setup_logging(quiet: bool) -> None:
    """Progress lines of the benchmark (logger flexrt.bench) on stderr; other libraries' loggers are left alone."""
    import logging
    import sys

    logger = logging.getLogger("flexrt.bench")
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    if not any(getattr(h, "_flexrt_bench", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[bench] %(message)s"))
        handler._flexrt_bench = True
        logger.addHandler(handler)
    logger.propagate = False
