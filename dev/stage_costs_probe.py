"""Development probe (not installed; 2026-12-03): the served frame path's GPU cost per batch size, to see where a
64-stream load spends the H200 and what batches the scheduler should form (issue 10, docs/SERVING.md "Stream
capacity").

With the server's engine (torch-compiled-fp8-fused, CUDA graphs) and its FrameRenderer (2 slots, 512² JPEG q90 on the
GPU), for each batch size n:
  * alone: one batch at a time (submit -> result), the batch's decode-stage and render-stage GPU times (CUDA events)
  * pipelined: batches submitted back to back (2 slots, as the server does when saturated): frames/s on the wall clock
    and the stage times under contention
and at 64 frames a torch.profiler split of the render stage (rasterizer kernels, uint8, JPEG kernels, copies).

    python dev/stage_costs_probe.py --out OUT          (a CUDA GPU; ~120 s with compilation)
Writes OUT/stage_costs.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import deque
from pathlib import Path

import torch


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--backend", default="torch-compiled-fp8-fused")
    ap.add_argument("--batches", default="1,2,4,8,12,16,24,32,48,64")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny preset on the CPU: checks the script runs")
    ap.add_argument("--graphs-for-batches-only", action="store_true",
                    help="capture CUDA graphs for the --batches sizes only, not every size up to the largest (a "
                         "shorter warm-up; each measured size runs in its own graph either way)")
    args = ap.parse_args()
    if args.graphs_for_batches_only:
        from flexrt.runtime.engines import torch_engine
        torch_engine.BATCH_BUCKETS = tuple(sorted(int(b) for b in args.batches.split(",")))
    from flexrt.benchmarks.bench_decoder import BenchContext
    from flexrt.benchmarks.bench_e2e import camera_tensors
    from flexrt.proto import flexavatar_pb2 as pb
    from flexrt.runtime.frames import FrameBatch, FrameRenderer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cpu = args.cpu_smoke
    ctx = BenchContext(preset="tiny" if cpu else "flex1", device="cpu" if cpu else "cuda", work_dir="/tmp/stage_costs")
    sync = (lambda: None) if cpu else torch.cuda.synchronize
    t0 = time.time()
    engine = ctx.make_engine("torch-eager-fp32" if cpu else args.backend)
    batches = [int(b) for b in args.batches.split(",")]
    engine.warmup(max(batches))
    renderer = FrameRenderer(engine, "cpu" if cpu else "cupy", jpeg="cpu" if cpu else "cuda", slots=2, max_batch=64)
    renderer.warmup([(512, 512, 90)], max(batches))
    setup_s = time.time() - t0
    print(f"setup {setup_s:.1f} s: {engine.info}", flush=True)
    codes = list(ctx.avatar_codes(64))
    viewmats, Ks, bg = (t.cpu().numpy() for t in camera_tensors(64, 512, 512, "cpu"))
    pool = [b.numpy() for b in ctx.expression_batches(64)]

    def batch_of(n, i):
        return FrameBatch(avatar_codes=codes[:n], expression_codes=pool[i % len(pool)][:n], viewmats=viewmats[:n, 0],
                          intrinsics=Ks[:n, 0], backgrounds=bg[:n, 0], sizes=[(512, 512)] * n,
                          encodings=[pb.JPEG] * n, qualities=[90] * n)

    rows = []
    for n in batches:
        for i in range(5):
            renderer.render(batch_of(n, i))
        dec, ren = [], []
        for i in range(args.iters):
            r = renderer.render(batch_of(n, i))
            dec.append(r.decode_us / 1e3)
            ren.append(r.render_us / 1e3)
        # pipelined: keep both slots busy (submit k+1 before waiting for k), as the saturated server does
        k = max(8, args.iters)
        sync()
        t = time.perf_counter()
        tickets, pdec, pren = deque(), [], []
        for i in range(k):
            if len(tickets) == 2:
                r = tickets.popleft().result()
                pdec.append(r.decode_us / 1e3)
                pren.append(r.render_us / 1e3)
            tickets.append(renderer.submit(batch_of(n, i)))
        while tickets:
            tickets.popleft().result()
        wall = time.perf_counter() - t
        row = {"n": n, "alone_decode_ms": statistics.median(dec), "alone_render_ms": statistics.median(ren),
               "alone_ms_per_frame": (statistics.median(dec) + statistics.median(ren)) / n,
               "pipelined_frames_per_s": k * n / wall, "pipelined_ms_per_frame": wall * 1e3 / (k * n),
               "pipelined_decode_ms": statistics.median(pdec), "pipelined_render_ms": statistics.median(pren)}
        rows.append(row)
        print(json.dumps({a: round(b, 3) if isinstance(b, float) else b for a, b in row.items()}), flush=True)

    # the render stage at 64 frames, per kernel
    from torch.profiler import ProfilerActivity, profile

    b64 = batch_of(64, 0)
    renderer.render(b64)
    sync()
    with profile(activities=[ProfilerActivity.CPU if cpu else ProfilerActivity.CUDA]) as prof:
        for i in range(10):
            renderer.render(batch_of(64, i))
        sync()
    kernels = []
    for e in prof.key_averages():
        us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0.0)
        if us and us > 0:
            kernels.append({"name": e.key[:110], "calls_per_batch": e.count / 10, "ms_per_batch": us / 10 / 1e3})
    kernels.sort(key=lambda r: -r["ms_per_batch"])
    for r in kernels[:40]:
        print(f"  {r['ms_per_batch']:8.3f} ms  x{r['calls_per_batch']:5.1f}  {r['name']}", flush=True)
    (out / "stage_costs.json").write_text(json.dumps({
        "device": "cpu" if cpu else torch.cuda.get_device_name(0), "torch": torch.__version__, "engine": str(engine.info),
        "setup_s": setup_s, "rows": rows, "profile_batch64": kernels[:60]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
