"""Reduced-precision decoders vs fp32, measured where it matters: the rendered frame.

Decodes a driving sequence (EMO-1-shout+laugh, 121 frames) with an fp32 decoder and a reduced-precision one,
renders both with the same rasterizer (CuPy when it runs, else the PyTorch reference) at 512² from the default camera
on white, and reports per-frame PSNR (min / median / mean) against the bar (>= 45 dB).

Pairs (reference -> test):
    ort-fp16 vs ort-fp32             ONNX Runtime fp16 graph vs the fp32 graph (CUDA EP on a GPU, CPU EP on the CPU)
    torch-bf16 vs torch-fp32         TorchEngine bf16 autocast vs fp32 (eager)
    served-bf16 vs torch-fp32        the serving default on a GPU (bf16, bf16 upsampler, torch.compile, CUDA graphs)
    tensorrt-fp16 vs torch-fp32      TensorRT FP16 engines vs the PyTorch fp32 model (when TensorRT is there)

    python -m flexrt.benchmarks.fp16_render_psnr --preset flex1 --engines ENGINES --out psnr_out
    (also a phase of `flexavatar bench --phases psnr`)
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .bench_decoder import SEQUENCE_NAME, BenchContext, Unavailable, release_memory
from .bench_e2e import camera_tensors, make_renderer

log = logging.getLogger("flexrt.bench")

PAIRS = {
    "ort-fp16 vs ort-fp32": ("ort-fp32", "ort-fp16"),
    "torch-bf16 vs torch-fp32": ("torch-eager-fp32", "torch-eager-bf16"),
    "served-bf16 vs torch-fp32": ("torch-eager-fp32", "torch-compiled-bf16"),
    "served-fp8 vs torch-fp32": ("torch-eager-fp32", "torch-compiled-fp8"),  # the default on FP8 GPUs
    "served-fp8-fused vs torch-fp32": ("torch-eager-fp32", "torch-compiled-fp8-fused"),  # + fused GEMM epilogues
    "served-fp8-up8 vs torch-fp32": ("torch-eager-fp32", "torch-compiled-fp8-up8"),  # + FP8 convolutions
    "tensorrt-fp16 vs torch-fp32": ("torch-eager-fp32", "tensorrt-fp16"),
}
BAR_DB = 45.0
PHOTO = "marble_sculpture"


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of rgb [T,H,W,3] pairs clamped to [0,1]; +inf where identical."""
    mse = ((a.clamp(0, 1) - b.clamp(0, 1)) ** 2).flatten(1).mean(1).double()
    return torch.where(mse > 0, -10.0 * torch.log10(mse), torch.full_like(mse, math.inf))


def avatar_code(ctx: BenchContext) -> tuple[torch.Tensor, str]:
    """[1,HT,D]: the fp32 PyTorch encoder's code of the example photo when the reference data is there, else a
    seeded random code with the statistics of an encoded one."""
    from flexrt.runtime import codec
    from flexrt.runtime.cli import find_shared_dir
    from flexrt.runtime.engines import TorchEngine

    shared = find_shared_dir()
    images = shared / "reference" / "assets" / "images" if shared else None
    if images is not None and (images / f"{PHOTO}.png").is_file():
        engine = TorchEngine(ctx.pipeline(), device=ctx.device, precision="fp32")
        rgb = codec.resize_square(codec.decode_image((images / f"{PHOTO}.png").read_bytes()), engine.image_size)
        with np.load(images / f"{PHOTO}_input.npz") as z:
            c2w, K = z["input_cam2world"].astype(np.float32), z["input_intrinsics_normalized"].astype(np.float32)
        img = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None].float().div(255.0).to(ctx.device)
        code = engine.encode(img, torch.from_numpy(c2w)[None].to(ctx.device), torch.from_numpy(K)[None].to(ctx.device))
        return code, f"fp32 PyTorch encoding of {PHOTO}.png (with its input camera)"
    return ctx.avatar_codes(1), "seeded random code (reference photo not found)"


@torch.inference_mode()
def render_sequence(ctx: BenchContext, backend: str, code: torch.Tensor, expressions: np.ndarray, render, rdev,
                    resolution: int) -> torch.Tensor:
    """Decode every frame (batch 1) with ``backend`` and render it -> rgb float32 [T,H,W,3] on the render device."""
    engine = ctx.make_engine(backend)
    viewmats, Ks, bg = camera_tensors(1, resolution, resolution, rdev)
    out = []
    for t in range(len(expressions)):
        g = engine.decode(code, torch.from_numpy(expressions[t:t + 1]).to(ctx.device))
        g = g.map(lambda x: x.to(rdev, torch.float32))
        out.append(render(g, viewmats, Ks, resolution, resolution, bg)[0, 0].clone())
    del engine
    release_memory(ctx.device)
    return torch.stack(out)


def run(ctx: BenchContext, pairs=tuple(PAIRS), frames: int | None = None, resolution: int = 512,
        rasterizer: str = "auto", bar_db: float = BAR_DB) -> dict:
    t_start = time.perf_counter()
    expressions = ctx.expression_pool()
    if frames:
        expressions = expressions[:frames]
    if rasterizer == "auto":
        rasterizer = "cupy" if ctx.device.type == "cuda" else "cpu"
    result = {"bar_db": bar_db, "resolution": resolution, "frames": int(len(expressions)),
              "sequence": ctx.info.get("expressions", SEQUENCE_NAME), "rasterizer": rasterizer, "pairs": []}
    try:
        render, rdev = make_renderer(rasterizer, ctx.device)
    except Unavailable as e:
        if rasterizer != "cupy":
            raise
        # the PyTorch reference rasterizer runs on the tensors' device: on a GPU it stays there
        rasterizer = result["rasterizer"] = f"PyTorch reference on {ctx.device} (cupy unavailable: {e})"
        log.warning("psnr: %s", rasterizer)
        render, _ = make_renderer("cpu", ctx.device)
        rdev = ctx.device
    code, code_source = avatar_code(ctx)
    result["avatar_code"] = code_source
    result["weights"] = ctx.info.get("weights")
    renders: dict[str, torch.Tensor | Exception] = {}

    def get(backend):
        if backend not in renders:
            try:
                renders[backend] = render_sequence(ctx, backend, code, expressions, render, rdev, resolution)
            except Unavailable as e:
                renders[backend] = e
        return renders[backend]

    for name in pairs:
        ref_name, test_name = PAIRS[name]
        row = {"name": name, "reference": ref_name, "test": test_name}
        ref, test = get(ref_name), get(test_name)
        bad = [x for x in (ref, test) if isinstance(x, Exception)]
        if bad:
            row.update(status="unavailable", reason="; ".join(str(e) for e in bad))
        else:
            p = psnr(test, ref).cpu().numpy()
            finite = p[np.isfinite(p)]
            u8 = lambda x: (x.clamp(0, 1) * 255 + 0.5).to(torch.uint8).int()  # noqa: E731
            row.update(status="ok", psnr_per_frame=[float(v) for v in p], psnr_min=float(p.min()),
                       psnr_median=float(np.median(p)), psnr_mean=float(finite.mean()) if finite.size else math.inf,
                       worst_frame=int(p.argmin()), pass_min=bool(p.min() >= bar_db),
                       pass_median=bool(np.median(p) >= bar_db),
                       max_abs_uint8=int((u8(test) - u8(ref)).abs().max()),
                       coverage=float((ref < 0.99).any(-1).float().mean()))
            log.info("psnr %-28s min %.2f dB, median %.2f dB", name, row["psnr_min"], row["psnr_median"])
        result["pairs"].append(row)
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    return result


def write(result: dict, out_dir: str | Path) -> None:
    from .report import _clean, psnr_markdown

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "psnr.json").write_text(json.dumps(_clean(result), indent=1, allow_nan=False) + "\n")
    (out / "psnr.md").write_text(psnr_markdown(result) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m flexrt.benchmarks.fp16_render_psnr", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="flex1", choices=("flex1", "tiny"), help="model preset (default flex1)")
    p.add_argument("--engines", help="engine directory (export-engines); exported into OUT/engines-PRESET if absent")
    p.add_argument("--checkpoint", help="FLEX-1 weights for the export (default: seeded random weights)")
    p.add_argument("--template", help="template for the export (default: the official OBJ for flex1 if found)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--out", default="psnr_out", help="output folder for psnr.json and psnr.md (default psnr_out)")
    p.add_argument("--frames", type=int, default=None, help="first N frames only (default: the whole sequence)")
    p.add_argument("--resolution", type=int, default=512, help="render size (default 512)")
    p.add_argument("--rasterizer", default="auto", choices=("auto", "cupy", "cpu"),
                   help="auto: cupy on a GPU, else the CPU reference (default auto)")
    p.add_argument("--pairs", default=",".join(PAIRS), help=f"comma-separated subset of: {', '.join(PAIRS)}")
    args = p.parse_args(argv)
    from .timing import setup_logging

    setup_logging(quiet=False)
    pairs = [s.strip() for s in args.pairs.split(",") if s.strip()]
    for name in pairs:
        if name not in PAIRS:
            p.error(f"unknown pair {name!r}; expected some of {list(PAIRS)}")
    ctx = BenchContext(preset=args.preset, device=args.device, engine_dir=args.engines, work_dir=args.out,
                       checkpoint=args.checkpoint, template=args.template)
    result = run(ctx, pairs, args.frames, args.resolution, args.rasterizer)
    result["model"] = dict(ctx.info)
    write(result, args.out)
    print(Path(args.out, "psnr.md").read_text())
    return 0 if all(r.get("pass_min", True) for r in result["pairs"] if r["status"] == "ok") else 1


if __name__ == "__main__":
    sys.exit(main())
