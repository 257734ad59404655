"""Development probe (not installed; 2026-12-03, issue 10): the decoder's FP8 GEMMs at a 64-frame batch, each
kernel alone (CUDA events, median of 50 after warm-up and autotuning):

  * to_out (768 <- 768, + residual), ff_in (3072 <- 768, GELU + quantise), ff_out (768 <- 3072, + residual):
    the pointer-load Triton kernel (the previous default), the TMA persistent kernel (the new one), and cuBLAS's
    FP8 GEMM writing bf16 with no epilogue at all (torch._scaled_mm: the speed of light for the product alone)
  * q|k|v (2304 <- 768): the fused kernel with the head RMS norms (kernels.fp8_gemm.fp8_qkv_rmsnorm) against what
    it replaces (cuBLAS FP8 GEMM, then scale, bias, norms and joins: _qkv_composed, compiled with torch.compile as
    the decoder compiles it)

    python dev/gemm_tma_probe.py --out OUT [--frames 64]      (a CUDA GPU with TMA; ~60 s)
Writes OUT/gemm_tma_probe.json.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def timed(fn, iters=50, warmup=10) -> float:
    """Median ms of ``fn()`` by CUDA events (benchmarks.timing; as run on 2026-12-03 the probe had its own loop with
    the same warm-up, events and median)."""
    from flexrt.benchmarks.timing import time_fn
    return time_fn(lambda i: fn(), "cuda", warmup=warmup, iters=iters).median_ms


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--frames", type=int, default=64)
    args = ap.parse_args()
    from flexrt.kernels.fp8_gemm import FP8_MAX, _build, _qkv_composed, fp8_qkv_rmsnorm
    launch = _build()[0]
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    m = args.frames * 1024
    one = torch.ones((), device=dev)
    rows = []

    def operands(n, k):
        w = torch.randn(n, k, device=dev, generator=g) / k ** 0.5
        ws = w.abs().amax(1) / FP8_MAX
        x_scale = torch.tensor(8.0 / FP8_MAX, device=dev)
        x8 = (torch.randn(m, k, device=dev, generator=g) / x_scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        bias = torch.zeros(n, device=dev, dtype=torch.bfloat16)
        return x8, (w / ws[:, None]).to(torch.float8_e4m3fn), ws, bias, x_scale

    for name, n, k, residual in (("to_out", 768, 768, True), ("ff_in", 3072, 768, False), ("ff_out", 768, 3072, True)):
        x8, w8, ws, bias, xs = operands(n, k)
        res = torch.randn(m, n, device=dev, dtype=torch.bfloat16)
        out = torch.empty(m, n, device=dev, dtype=torch.bfloat16 if residual else torch.float8_e4m3fn)
        kw = {"residual": res} if residual else {"out_scale": xs}
        row = {"gemm": name, "m": m, "n": n, "k": k}
        for kernel in ("pointer", "tma"):
            row[f"{kernel}_ms"] = timed(lambda: launch(x8, w8, ws, bias, xs, out, kernel=kernel, **kw))
        row["cublas_no_epilogue_ms"] = timed(lambda: torch._scaled_mm(x8, w8.t(), scale_a=xs, scale_b=one,
                                                                      out_dtype=torch.bfloat16, use_fast_accum=True))
        for key in ("pointer", "tma", "cublas_no_epilogue"):
            row[f"{key}_tflops"] = 2 * m * n * k / row[f"{key}_ms"] / 1e9
        rows.append(row)
        print(json.dumps({a: round(b, 4) if isinstance(b, float) else b for a, b in row.items()}), flush=True)
    x8, w8, ws, bias, xs = operands(2304, 768)
    gains = torch.ones(2, 192, device=dev)
    ctx = torch.randn(3, args.frames, 5, 4, 192, device=dev, dtype=torch.bfloat16)
    composed = torch.compile(_qkv_composed)
    row = {"gemm": "qkv", "m": m, "n": 2304, "k": 768,
           "fused_ms": timed(lambda: fp8_qkv_rmsnorm(x8, w8, ws, bias, xs, gains, ctx, 1e-6)),
           "composed_compiled_ms": timed(lambda: composed(x8, w8, ws, bias, xs, gains, ctx, 1e-6)),
           "cublas_no_epilogue_ms": timed(lambda: torch._scaled_mm(x8, w8.t(), scale_a=xs, scale_b=one,
                                                                   out_dtype=torch.bfloat16, use_fast_accum=True))}
    rows.append(row)
    print(json.dumps({a: round(b, 4) if isinstance(b, float) else b for a, b in row.items()}), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gemm_tma_probe.json").write_text(json.dumps({
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "frames": args.frames, "rows": rows,
        "command": f"python dev/gemm_tma_probe.py --frames {args.frames}"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
