"""Where a CuPy rasterizer frame spends its GPU time: per-kernel durations from CUPTI (torch.profiler) and the
kernels' registers / shared memory.

    python -m flexrt.benchmarks.profile_rasterizer --G 58361 --res 512 --cams 1

Complements ``bench_rasterizer`` (per-call latency through the public API): this shows the GPU-side split.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch


def kernel_times(fn, iters: int = 20) -> list[dict]:
    """Average device time per call of every GPU kernel / memset that ``fn`` launches (CUPTI)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        dev_us = getattr(e, "device_time_total", None)
        if dev_us is None:
            dev_us = getattr(e, "cuda_time_total", 0.0)
        if dev_us and dev_us > 0:
            rows.append({"kernel": e.key[:90], "calls_per_frame": e.count / iters, "us_per_frame": dev_us / iters})
    rows.sort(key=lambda r: -r["us_per_frame"])
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flexrt.benchmarks.profile_rasterizer", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--G", type=int, default=58361)
    ap.add_argument("--res", type=int, default=512)
    ap.add_argument("--cams", type=int, default=1)
    ap.add_argument("--out", default=None, help="JSON output")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("profile_rasterizer needs a CUDA GPU", file=sys.stderr)
        return 2
    from flexrt.kernels import _cupy_backend, rasterize
    from flexrt.kernels.scenes import head_cameras, head_scene

    dev = torch.device("cuda")
    scene = head_scene(a.G, 0, device=dev)
    view, K = head_cameras(a.cams, a.res, a.res, device=dev)
    bg = torch.ones(3, device=dev)

    def frame():
        return rasterize(**scene, viewmats=view, Ks=K, width=a.res, height=a.res, background=bg, backend="cupy")

    out = {"G": a.G, "res": a.res, "cams": a.cams, "device": torch.cuda.get_device_name()}
    out["kernels"] = kernel_times(frame)
    ops, _ = _cupy_backend._ops_and_ws(dev)
    attrs = {}
    for name in ("fr_project", "fr_emit", "fr_blend_f32"):
        fn = ops.module.get_function(name)
        attrs[name] = {k: getattr(fn, k, None) for k in ("num_regs", "shared_size_bytes", "local_size_bytes",
                                                           "max_threads_per_block")}
    out["attributes"] = attrs
    print(f"# {out['device']}: G={a.G} res={a.res}² cams={a.cams}")
    for r in out["kernels"]:
        print(f"{r['us_per_frame']:9.1f} us  x{r['calls_per_frame']:.0f}  {r['kernel']}")
    print("total kernel time per frame: %.1f us" % sum(r["us_per_frame"] for r in out["kernels"]))
    print("attributes:", json.dumps(attrs))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
