"""Development probe (not installed; 2026-12-03): the served render stage's two changes of commits 92c9ff5 / cee05ba,
each against what it replaced, in one process on the GPU (issue 10).

  1. uint8 frames: rasterize(out_dtype=torch.uint8) (the blend kernel rounds) vs the fp32 image + rgb_to_uint8
     (clamp, x 255, + 0.5, cast: four elementwise passes), 58,361-Gaussian head scenes at 512², one CUDA graph each
  2. JPEG byte stuffing's scan over [B, capacity]: one batch-wide 1-D cumsum vs the per-row cumsum it replaced
  3. the whole JPEG encode of B frames (kernels.jpeg, CUDA backend), for scale

CUDA events, warm-up, median / p99 (benchmarks.timing.time_fn).

    python dev/render_u8_probe.py --out OUT [--batch 32]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from flexrt.benchmarks.timing import time_fn
from flexrt.kernels import rasterize
from flexrt.kernels._cupy_backend import Workspace
from flexrt.kernels.jpeg import JpegEncoder
from flexrt.kernels.rasterize import capture_graph
from flexrt.kernels.scenes import head_cameras, head_scene
from flexrt.kernels import rgb_to_uint8


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iters", type=int, default=50)
    args = ap.parse_args()
    b, dev = args.batch, torch.device("cuda")
    s = head_scene(58361, 0, device=dev, batch=(b,))
    view, K = head_cameras(1, 512, 512, device=dev, batch=(b,))
    bg = torch.ones(b, 1, 3, device=dev)
    u8_out = torch.empty(b, 512, 512, 3, dtype=torch.uint8, device=dev)
    ws_a, ws_b = Workspace(), Workspace()

    def via_fp32():
        img, _ = rasterize(**s, viewmats=view, Ks=K, width=512, height=512, background=bg, backend="cupy",
                           workspace=ws_a)
        return rgb_to_uint8(img[:, 0], out=u8_out)

    def direct_u8():
        img, _ = rasterize(**s, viewmats=view, Ks=K, width=512, height=512, background=bg, backend="cupy",
                           out_dtype=torch.uint8, workspace=ws_b)
        return img[:, 0]

    graph_a, out_a = capture_graph(via_fp32)
    graph_b, out_b = capture_graph(direct_u8)
    graph_a.replay(), graph_b.replay()
    torch.cuda.synchronize()
    same = bool(torch.equal(out_a, out_b))
    rows = {"batch": b, "uint8_outputs_equal": same}
    for name, g in (("fp32_then_rgb_to_uint8", graph_a), ("uint8_from_the_blend", graph_b)):
        st = time_fn(lambda i: g.replay(), dev, warmup=10, iters=args.iters)
        rows[name] = {"median_ms": st.median_ms, "p99_ms": st.p99_ms}
    cap = JpegEncoder(512, 512, 90, device=dev).capacity
    ff = (torch.rand(b, cap, device=dev) < 0.01).to(torch.int32)
    for name, fn in (("per_row_cumsum", lambda i: torch.cumsum(ff, dim=1, dtype=torch.int32)),
                     ("batch_wide_cumsum", lambda i: torch.cumsum(ff.view(-1), dim=0, dtype=torch.int32))):
        st = time_fn(fn, dev, warmup=10, iters=args.iters)
        rows[name] = {"median_ms": st.median_ms, "p99_ms": st.p99_ms}
    enc = JpegEncoder(512, 512, 90, device=dev)
    st = time_fn(lambda i: enc.encode(out_b), dev, warmup=5, iters=args.iters)
    rows["jpeg_encode_batch"] = {"median_ms": st.median_ms, "p99_ms": st.p99_ms, "backend": enc.backend}
    rows["device"] = torch.cuda.get_device_name(0)
    print(json.dumps(rows), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "render_u8.json").write_text(json.dumps(rows, indent=1))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
