"""Development probe (not installed): serving-pipeline variants measured by the stream sweep of
``flexavatar bench --phases grpc``, one variant per process, the product code unchanged until a variant wins.

    python dev/serving_variants.py VARIANT -- BENCH_ARGS...     (e.g. dev/probe12.sh)

VARIANT: "default", or "-"-separated parts:
  prio   the render stream one priority level above the decode stream (both are at the highest level in
         ``runtime/frames.py``): when a batch's render and the next batch's decode share the GPU, the later stage
         (whose frames are nearly done) is dispatched first
  b4     CUDA-graph capture buckets every 4 frames above 24 (``torch_engine.BATCH_BUCKETS``) instead of every 8:
         less padding (~10 % of the frames the GPU decodes and renders at 32-40 streams, from the sweep's batch
         histograms), more graphs to capture at start-up (measured 2026-12-02 with aligned phases: no change;
         every batch size has its own graph since 2026-12-03)
  coarse the capture buckets before 2026-12-03 (1, 2, 4, 8, 12, 16, 20, 24, 32, 40, 48, 56, 64: a batch is padded
         up to its bucket), for an A/B against every batch size having its own graph (the default since then)
Prints the variant's settings first, so the log says what ran.
"""
from __future__ import annotations

import sys

FINE_BUCKETS = (1, 2, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60, 64)
COARSE_BUCKETS = (1, 2, 4, 8, 12, 16, 20, 24, 32, 40, 48, 56, 64)


def apply(variant: str) -> list[str]:
    """Patch the runtime for ``variant``; returns what was changed (one line each)."""
    parts = set(variant.split("-")) - {"default"}
    unknown = parts - {"prio", "b4", "coarse"}
    if unknown or {"b4", "coarse"} <= parts:
        raise SystemExit(f"error: unknown or conflicting variant part(s) {sorted(parts)}; expected prio, b4 or coarse "
                         "(not both), or default")
    said = []
    for part, buckets in (("b4", FINE_BUCKETS), ("coarse", COARSE_BUCKETS)):
        if part in parts:
            from flexrt.runtime.engines import torch_engine

            torch_engine.BATCH_BUCKETS = buckets  # batch_bucket() and the warm-ups read it when called
            said.append(f"capture buckets {buckets}")
    if "prio" in parts:
        import torch

        from flexrt.runtime import frames

        original = frames.FrameRenderer.__init__

        def init(self, *args, **kwargs):
            original(self, *args, **kwargs)
            if self.on_gpu:  # before any capture: the slots' graphs are captured at warm-up, on these streams
                lo, hi = torch.cuda.Stream.priority_range()  # e.g. (0, -5): numerically lower = served first
                step = 1 if lo > hi else -1
                self.decode_stream = torch.cuda.Stream(self.device, priority=hi + step)
                print(f"[variant] stream priorities: render {self.render_stream.priority}, "
                      f"decode {self.decode_stream.priority} (range {lo}..{hi})", flush=True)

        frames.FrameRenderer.__init__ = init
        said.append("render stream one priority level above decode")
    return said or ["the runtime as committed"]


def main(argv: list[str]) -> int:
    if len(argv) < 2 or "--" not in argv:
        raise SystemExit("usage: python dev/serving_variants.py VARIANT -- BENCH_ARGS...")
    variant, rest = argv[0], argv[argv.index("--") + 1:]
    for line in apply(variant):
        print(f"[variant {variant}] {line}", flush=True)
    from flexrt.cli import main as cli_main

    return cli_main(["bench", *rest])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
