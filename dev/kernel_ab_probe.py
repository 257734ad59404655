"""Development probe (not installed; 2026-12-03, session 17, issue 10's 0.35 ms decoder goal): the decoder's FP8
kernels, the previous commit's against this tree's, in one process (CUDA events, median of 50 after autotuning;
each variant's output compared with the first variant's, and its chosen tile printed):

  * the three epilogue GEMMs (to_out, ff_in, ff_out): the previous tree's TMA kernel (its GELU as exp2 + an
    approximate division) against this one (the GELU with one tanh.approx.f32); to_out and ff_out did not change,
    so their two rows measure the noise of autotuning and timing. ``--four-warp-tiles`` adds a variant autotuned
    over TMA_TILES plus 4-warp tiles that let two programs share an SM (device call 38: never a win beyond noise)
  * the four upsampler convolutions: the previous kernel (a loop over taps around a loop over channel blocks) against
    this one (one flattened loop: the pipeline does not restart at every tap); for the two up-convs also this
    kernel writing bf16 followed by the pixel shuffle + e4m3 quantisation the decoder compiled after it before
    (torch.compile of the same ops), against this kernel's shuffle-and-quantise epilogue
  * cuBLAS's bare FP8 product (torch._scaled_mm, no epilogue) at the GEMMs' shapes, for scale

    python dev/kernel_ab_probe.py --old OLD_TREE --out OUT [--frames 32,64] [--four-warp-tiles]   (TMA GPU; ~120 s)
Writes OUT/kernel_ab.json.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import torch

# tried on top of the committed tiles in device call 38 (2026-12-03): (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages,
# programs an SM, flattened); each fits two programs an SM for at least the GELU GEMM (dev/triton_compile_check.py)
FOUR_WARP_TMA_TILES = ((128, 128, 128, 4, 2, 2, False), (128, 128, 64, 4, 3, 2, True), (128, 128, 64, 4, 3, 2, False),
                       (128, 128, 128, 4, 3, 2, True), (64, 256, 128, 4, 2, 2, True), (128, 64, 128, 4, 3, 2, False))


def timed(fn) -> float:
    from flexrt.benchmarks.timing import time_fn
    return time_fn(lambda i: fn(), "cuda", warmup=10, iters=50).median_ms


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", required=True, help="the previous tree (its kernels/_fp8_triton.py)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--frames", default="32,64")
    ap.add_argument("--four-warp-tiles", action="store_true")
    args = ap.parse_args()
    import triton
    from triton.tools.tensor_descriptor import TensorDescriptor

    from flexrt.kernels import _fp8_triton as K
    from flexrt.kernels.fp8_conv import CONV_TILES, _b_class, quantize_weight, to_phase_major
    from flexrt.kernels.fp8_gemm import FP8_MAX, TMA_TILES, _m_class, _num_sms, _tma_blocks, register_cap

    spec = importlib.util.spec_from_file_location("old_fp8_triton", Path(args.old) / "kernels" / "_fp8_triton.py")
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    dev = torch.device("cuda")
    sms = _num_sms(dev)
    g = torch.Generator(device=dev).manual_seed(0)
    one = torch.ones((), device=dev)

    def gemm_tuner(fn, tiles):
        return triton.autotune(
            configs=[triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "CTAS": c,
                                    "FLATTEN": f}, num_warps=w, num_stages=s, maxnreg=register_cap(w, c),
                                   pre_hook=_tma_blocks) for bm, bn, bk, w, s, c, f in tiles],
            key=["M_CLASS", "N", "K", "RESIDUAL"], do_bench=K.quick_bench)(fn)

    def conv_tuner(fn):
        return triton.autotune(
            configs=[triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w,
                                   num_stages=s) for bm, bn, bk, w, s in CONV_TILES],
            key=["B_CLASS", "H", "W", "C", "N"], do_bench=K.quick_bench)(fn)

    gemms = {"previous kernel": (gemm_tuner(old.fp8_gemm_epilogue_tma, TMA_TILES), {}),
             "this kernel": (gemm_tuner(K.fp8_gemm_epilogue_tma, TMA_TILES), {"HW_TANH": True})}
    if args.four_warp_tiles:
        gemms["this kernel, with 4-warp tiles"] = (gemm_tuner(K.fp8_gemm_epilogue_tma,
                                                              TMA_TILES + FOUR_WARP_TMA_TILES), {"HW_TANH": True})
    old_conv, new_conv, shuffle_conv = (conv_tuner(fn) for fn in (old.fp8_conv3x3_kernel, K.fp8_conv3x3_kernel,
                                                                   K.fp8_conv3x3_kernel))

    @torch.compile
    def shuffle_quantize(y, scale):  # what the decoder compiled after an up-conv before: shuffle, quantise
        y = torch.nn.functional.pixel_shuffle(y.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
        return (y.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)

    def steps(out, ref, bits):
        out, ref = out.float(), ref.float()
        step = torch.exp2(torch.floor(torch.log2(ref.abs().clamp_min(2.0 ** -6))) - bits)
        d = (out - ref).abs() / step
        return {"max": float(d.max()), "share_over_1": float((d > 1.0).float().mean())}

    rows = []
    for frames in (int(f) for f in args.frames.split(",")):
        m = frames * 1024
        for name, n, k, residual in (("to_out", 768, 768, True), ("ff_in", 3072, 768, False),
                                     ("ff_out", 768, 3072, True)):
            w = torch.randn(n, k, device=dev, generator=g) / k ** 0.5
            ws = w.abs().amax(1) / FP8_MAX
            w8 = (w / ws[:, None]).to(torch.float8_e4m3fn)
            xs = torch.tensor(8.0 / FP8_MAX, device=dev)
            x8 = (torch.randn(m, k, device=dev, generator=g) / xs).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
            bias = (0.1 * torch.randn(n, device=dev, generator=g)).to(torch.bfloat16)
            res = torch.randn(m, n, device=dev, dtype=torch.bfloat16, generator=g)
            row = {"kernel": name, "frames": frames, "m": m, "n": n, "k": k}
            first = None
            for variant, (tuner, extra) in gemms.items():
                out = torch.empty(m, n, device=dev, dtype=torch.bfloat16 if residual else torch.float8_e4m3fn)
                descs = [TensorDescriptor.from_tensor(t, [64, 64]) for t in (x8, w8, out, res)]
                grid = lambda meta: (min(meta["CTAS"] * sms, triton.cdiv(m, meta["BLOCK_M"])  # noqa: E731
                                         * triton.cdiv(n, meta["BLOCK_N"])),)
                call = lambda: tuner[grid](descs[0], descs[1], ws, bias, descs[2], xs, xs, descs[3],  # noqa: E731
                                           m, n, k, _m_class(m), NUM_SMS=sms, RESIDUAL=residual, **extra)
                row[variant] = {"ms": timed(call), "tile": str(tuner.best_config)}
                first = out if first is None else first
                row[variant]["steps_vs_first"] = steps(out, first, 7 if residual else 3)
            row["cublas_no_epilogue_ms"] = timed(lambda: torch._scaled_mm(
                x8, w8.t(), scale_a=xs, scale_b=one, out_dtype=torch.bfloat16, use_fast_accum=True))
            rows.append(row)
            print(json.dumps(row), flush=True)
        # the upsampler's convolutions (the up-convs in their sub-pixel form)
        for name, r, c, n in (("block0.conv0 (up)", 32, 768, 2048), ("block0.conv1", 64, 512, 512),
                              ("block1.conv0 (up)", 64, 512, 1024), ("block1.conv1", 128, 256, 256)):
            x = torch.randn(frames, r, r, c, device=dev, generator=g)
            x_scale = (x.abs().amax() / FP8_MAX).reshape(())
            x8 = (x / x_scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).contiguous()
            w8, w_scale = quantize_weight(torch.randn(n, c, 3, 3, device=dev, generator=g) / (9 * c) ** 0.5)
            bias = 0.1 * torch.randn(n, device=dev, generator=g)
            b_class = _b_class(frames)
            grid = lambda meta: (triton.cdiv(frames * r * r, meta["BLOCK_M"])  # noqa: E731
                                 * triton.cdiv(n, meta["BLOCK_N"]),)
            y_old = torch.empty(frames, r, r, n, device=dev, dtype=torch.bfloat16)
            y_new = torch.empty_like(y_old)
            row = {"kernel": name, "frames": frames, "gflop": 2 * frames * r * r * 9 * c * n / 1e9,
                   "previous kernel": {"ms": timed(lambda: old_conv[grid](
                       x8, w8, w_scale, bias, y_old, x_scale, frames, r, r, c, n, b_class))},
                   "flattened loop": {"ms": timed(lambda: new_conv[grid](
                       x8, w8, w_scale, bias, y_new, x_scale, x_scale, frames, r, r, c, n, n, b_class, SHUFFLE=0))}}
            row["previous kernel"]["tile"] = str(old_conv.best_config)
            row["flattened loop"]["tile"] = str(new_conv.best_config)
            row["flattened loop"]["steps_vs_previous"] = steps(y_new, y_old, 7)
            if "up" in name:
                out_scale = (y_new.float().abs().amax() / FP8_MAX).reshape(())
                q = torch.empty(frames, 2 * r, 2 * r, n // 4, device=dev, dtype=torch.float8_e4m3fn)
                def unfused():
                    new_conv[grid](x8, w8, w_scale, bias, y_new, x_scale, x_scale, frames, r, r, c, n, n, b_class,
                                   SHUFFLE=0)
                    return shuffle_quantize(y_new, out_scale)

                w8_p, w_scale_p, bias_p = (to_phase_major(t) for t in (w8, w_scale, bias))  # the epilogue's order
                fused = lambda: shuffle_conv[grid](  # noqa: E731
                    x8, w8_p, w_scale_p, bias_p, q, x_scale, out_scale, frames, r, r, c, n, n // 4, b_class,
                    SHUFFLE=2)
                row["flattened loop + compiled shuffle, quantise"] = {"ms": timed(unfused)}
                row["shuffle-and-quantise epilogue"] = {"ms": timed(fused), "tile": str(shuffle_conv.best_config),
                                                        "steps_vs_unfused": steps(q, unfused(), 3)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "kernel_ab.json").write_text(json.dumps({
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "triton": triton.__version__,
        "rows": rows, "command": f"python dev/kernel_ab_probe.py --old OLD --frames {args.frames}"
                                 + (" --four-warp-tiles" if args.four_warp_tiles else "")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
