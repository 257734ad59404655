"""Keep Python's cyclic garbage collector off the per-frame path.

A full (generation 2) collection walks every tracked object of the process and holds the GIL while it does: the
event loop, the gRPC threads and the GPU thread all stop. A warmed-up server holds ~300,000 such objects (torch,
grpc, the model, compiled graphs), and a full collection of them takes ~170 ms on the CI machine's CPU
(`python -m flexrt.benchmarks.bench_gc`). Full collections are rare on the frame path (~5 tracked objects are
allocated a frame; docs/SERVING.md §7), but when one comes it stalls every stream. Almost all of those objects live
as long as the server, so after warm-up ``freeze_startup_objects`` moves them out of the collector's scans
(``gc.freeze``, Python >= 3.7): later collections walk only what was allocated since.

``GcPauseRecorder`` times every collection (``gc.callbacks``) so the metrics endpoint can show the pauses
(``flexrt_gc_pause_seconds{generation}``).
"""
from __future__ import annotations

import gc
import time


def freeze_startup_objects() -> int:
    """Collect once, then freeze everything still alive -> the number of objects frozen (``gc.get_freeze_count``)."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def unfreeze() -> None:
    """Undo ``freeze_startup_objects`` (a stopped server in a process that goes on, e.g. the tests): frozen objects
    that die in a reference cycle would otherwise never be freed."""
    gc.unfreeze()


class GcPauseRecorder:
    """Times every collection while installed: per generation, a cumulative histogram over ``buckets`` (seconds),
    the count and the sum. The callback only does arithmetic on its own lists (no locks: it runs inside the
    collector, on whichever thread allocated); readers (the metrics endpoint) copy them at scrape time."""

    def __init__(self, buckets: tuple[float, ...] = (0.0001, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)):
        self.buckets = tuple(buckets)
        self.counts = [[0] * (len(self.buckets) + 1) for _ in range(3)]  # [generation][bucket], last = +Inf
        self.sums = [0.0, 0.0, 0.0]
        self._t0 = 0.0

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
            return
        dt, gen = time.perf_counter() - self._t0, int(info["generation"])
        i = 0
        while i < len(self.buckets) and dt > self.buckets[i]:
            i += 1
        self.counts[gen][i] += 1
        self.sums[gen] += dt

    def snapshot(self, generation: int) -> tuple[list[tuple[str, int]], float]:
        """(cumulative [(upper bound, count)] ending with "+Inf", sum of seconds) for one generation."""
        counts, total, out = list(self.counts[generation]), 0, []
        for bound, n in zip([str(b) for b in self.buckets] + ["+Inf"], counts):
            total += n
            out.append((bound, total))
        return out, self.sums[generation]

    def install(self) -> "GcPauseRecorder":
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)
        return self

    def remove(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)


__all__ = ["freeze_startup_objects", "unfreeze", "GcPauseRecorder"]
