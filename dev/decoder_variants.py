"""Decoder variants on the GPU: where the time goes, and what each option buys and costs in accuracy.

    python -m flexrt.benchmarks.decoder_variants --out DIR [--budget 480]

For the FLEX-1-size model (random weights; official template when FLEXRT_SHARED has it): a torch.profiler kernel
table of the bf16 eager decoder at batch 8, then TorchEngine variants (precision x upsampler dtype x
torch.compile, all with CUDA graphs) timed with CUDA events after warm-up at batch 1 and 8 (rotating inputs),
and their accuracy against the fp32 eager decoder: max|diff|/max|ref| per output and the PSNR of frames rendered
with the CuPy rasterizer at 512² (white background, default camera). Writes variants.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch


def _template():
    from flexrt.runtime.cli import find_shared_dir

    shared = find_shared_dir()
    obj = shared / "reference" / "assets" / "gghead_template.obj" if shared else None
    return obj if obj is not None and obj.is_file() else None


def _time(engine, codes, exprs, batch: int, warmup: int = 10, iters: int = 50) -> dict:
    n = exprs.shape[0]
    for i in range(warmup):
        engine.decode(codes[:batch], exprs[(i * batch) % (n - batch):][:batch])
    torch.cuda.synchronize()
    times = []
    for i in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e = exprs[(i * batch) % (n - batch):][:batch]
        start.record()
        engine.decode(codes[:batch], e)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return {"median_ms": times[len(times) // 2], "p99_ms": times[min(len(times) - 1, int(0.99 * len(times)))],
            "n": iters}


def _render(g, width=512):
    from flexrt.kernels import rasterize, sh_dc_to_rgb
    from flexrt.model.camera import default_camera, pixel_intrinsics, viewmat_from_cam2world

    c2w, K = default_camera()
    b = g.positions.shape[0]
    view = viewmat_from_cam2world(c2w).cuda().expand(b, 1, 4, 4)
    Ks = pixel_intrinsics(K, width, width).cuda().expand(b, 1, 3, 3)
    rgb, _ = rasterize(g.positions, g.rotations, g.scales, g.opacities[..., 0], sh_dc_to_rgb(g.colors), view, Ks,
                       width, width, background=torch.ones(3, device="cuda"), backend="cupy")
    return rgb.clamp(0, 1)


def _accuracy(engine, ref, codes, exprs) -> dict:
    out = engine.decode(codes[:4], exprs[:4])
    rel = {k: float((out[k] - ref[k]).abs().max() / ref[k].abs().max()) for k in ref.keys()}
    try:
        a, b = _render(out), _render(ref)
        mse = ((a - b) ** 2).flatten(1).mean(1)
        psnr = [float(10 * math.log10(1.0 / max(m, 1e-20))) for m in mse.tolist()]
        rel["render_psnr_min_db"] = min(psnr)
    except Exception as e:  # noqa: BLE001 - reported, not hidden
        rel["render_psnr_min_db"] = f"unavailable: {e}"
    return rel


def _profile(engine, codes, exprs, batch: int, top: int = 25) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        engine.decode(codes[:batch], exprs[:batch])
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            engine.decode(codes[:batch], exprs[:batch])
        torch.cuda.synchronize()
    rows = []
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
        if t > 0:
            rows.append({"name": ev.key[:90], "count": ev.count // 5, "ms_per_call": t / 1000 / 5})
    rows.sort(key=lambda r: -r["ms_per_call"])
    return rows[:top]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "variants_out"))
    ap.add_argument("--budget", type=float, default=480.0, help="seconds; later variants are skipped when spent")
    args = ap.parse_args(argv)
    from flexrt.model.pipeline import build_pipeline
    from flexrt.runtime.engines import TorchEngine

    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmpl = _template()
    pipe = build_pipeline("flex1", template=tmpl)
    g = torch.Generator().manual_seed(0)
    codes = torch.randn(8, 1024, 768, generator=g).cuda()
    exprs = (torch.randn(64, 135, generator=g) * 0.5).cuda()
    result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "template": str(tmpl) if tmpl else "default", "variants": []}
    ref_engine = TorchEngine(pipe, device="cuda", precision="fp32", graphs="none")
    ref = ref_engine.decode(codes[:4], exprs[:4])
    ref = ref.map(lambda t: t.clone())
    bf16_eager = TorchEngine(pipe, device="cuda", precision="bf16", graphs="none")
    result["profile_bf16_eager_batch8"] = _profile(bf16_eager, codes, exprs, 8)
    del bf16_eager
    print("top kernels, bf16 eager decoder, batch 8 (ms per decode call):")
    for r in result["profile_bf16_eager_batch8"]:
        print(f"  {r['ms_per_call']:8.3f}  x{r['count']:<4d} {r['name']}")
    variants = [("fp32", "fp32", False), ("bf16", "fp32", False), ("bf16", "bf16", False),
                ("bf16", "bf16", True), ("bf16", "fp32", True)]
    for precision, upsampler, comp in variants:
        name = f"{precision}/ups-{upsampler}{'/compile' if comp else ''}/graphs"
        if time.perf_counter() - t0 > args.budget:
            result["variants"].append({"variant": name, "status": "skipped: budget spent"})
            continue
        row = {"variant": name}
        try:
            ts = time.perf_counter()
            eng = TorchEngine(pipe, device="cuda", precision=precision, graphs="cuda", upsampler=upsampler,
                              compile=comp)
            row["batch1"] = _time(eng, codes, exprs, 1)
            row["batch8"] = _time(eng, codes, exprs, 8)
            row["accuracy_vs_fp32_eager"] = _accuracy(eng, ref, codes, exprs)
            row["setup_and_timing_s"] = round(time.perf_counter() - ts, 1)
            row["status"] = "ok"
            del eng
            torch.cuda.empty_cache()
        except Exception as e:  # noqa: BLE001 - reported in the output
            row["status"] = f"error: {type(e).__name__}: {e}"[:300]
        result["variants"].append(row)
        (out / "variants.json").write_text(json.dumps(result, indent=1))
        print(json.dumps(row))
    (out / "variants.json").write_text(json.dumps(result, indent=1))
    print("\n| variant | batch 1 median ms | batch 8 median ms (per frame) | positions rel | colors rel | render PSNR min |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in result["variants"]:
        if r.get("status") != "ok":
            print(f"| {r['variant']} | {r['status']} | | | | |")
            continue
        a = r["accuracy_vs_fp32_eager"]
        ps = a["render_psnr_min_db"]
        print(f"| {r['variant']} | {r['batch1']['median_ms']:.3f} | {r['batch8']['median_ms']:.3f} "
              f"({r['batch8']['median_ms'] / 8:.3f}) | {a['positions']:.2e} | {a['colors']:.2e} | "
              f"{ps if isinstance(ps, str) else f'{ps:.1f} dB'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
