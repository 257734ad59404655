"""Development probe (not installed; run on the H200 2026-12-03 05:09 UTC, dev/probe21.sh,
docs/results/h200-fp8-conv-probe.json: 1.25-1.59x per convolution, since then the decoder's ``upsampler="fp8"``,
kernel in kernels/fp8_conv.py): the StyleGAN upsampler's 3x3 convolutions as FP8 implicit GEMMs with their epilogue
fused, against what the decoder runs today (cuDNN bf16,
channels-last, then inductor's bias + leaky ReLU + clamp kernel). docs/SERVING.md, "Stream capacity":
the four convolutions take 0.131 ms of a frame's 0.455 at ~80 % of the H200's bf16 peak, so only FP8 (twice the
tensor-core rate) can make them much faster.

The function (model/stylegan.py, SynthesisLayer with folded weights; the up-convs in their sub-pixel form, before
the pixel shuffle, which stays outside):

    y = clamp(leaky_relu(conv3x3(x, W, padding 1) + b, 0.2) * sqrt(2), +-256)      x [B,H,W,C] (NHWC), y [B,H,W,N]

FP8 form: x = x8 * x_scale (one static scale, calibrated as for the FP8 GEMMs), W = w8 * w_scale (one scale per
output channel, w8 [N,3,3,C]). The kernel is an implicit GEMM: M = B*H*W output pixels, N output channels,
K = 9*C, each K step one tap (dy, dx) of one block of input channels, read from the shifted pixels (zero outside
the image); the epilogue dequantises in fp32 and applies bias, leaky ReLU, gain and clamp, writing bf16.

    python dev/fp8_conv_probe.py --out OUT        (a CUDA GPU with FP8 tensor cores and Triton; ~90 s)
    TRITON_INTERPRET=1 python dev/fp8_conv_probe.py --cpu-check     (the kernel's logic on a CPU, small shapes)

Per convolution of FLEX-1's upsampler, at 32 and 64 frames: CUDA-event times of today's path (compiled, as served)
and of the kernel (autotuned), and both paths' error against the same function in fp32 on the unquantised input
(max and RMS of |diff| over the RMS of the output). Writes OUT/fp8_conv.json. Checked on a CPU (2026-12-03, Triton
3.9's interpreter, 2x5x5x40 -> 24 channels): the kernel is the quantised function within one bf16 step; e4m3 operands
put it 4.2 % RMS off the fp32 function on these random operands (bf16 ~0.3 %), so whether FP8 convolutions keep the
rendered PSNR >= 45 dB needs the whole upsampler run with them (the next step if they are fast).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

FP8_MAX = 448.0
LRELU_GAIN = math.sqrt(2.0)
CONV_CLAMP = 256.0
# FLEX-1's upsampler (768 channels at 32², two blocks): (name, resolution, C in, N out) of each 3x3 conv; the
# up-convs in sub-pixel form have 4x the output channels and run at the input's resolution
CONVS = (("block0.conv0 (up)", 32, 768, 2048), ("block0.conv1", 64, 512, 512),
         ("block1.conv0 (up)", 64, 512, 1024), ("block1.conv1", 128, 256, 256))


def build_kernel(autotune: bool = True):
    """-> run(x8, w8, w_scale, bias, x_scale) -> bf16 [B,H,W,N]: the kernel, since 2026-12-03 in kernels/fp8_conv.py
    (``autotune=False``: one small fixed tile, for Triton's CPU interpreter)."""
    from flexrt.kernels.fp8_conv import _build

    def run(x8, w8, w_scale, bias, x_scale):
        out = torch.empty(*x8.shape[:3], w8.shape[0], device=x8.device, dtype=torch.bfloat16)
        return _build(autotune)(x8, w8, w_scale, bias.float(), x_scale, out)

    return run


def epilogue(y: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """bias, leaky ReLU x gain, clamp (SynthesisLayer.forward after the conv); y [B,N,H,W] or [B,H,W,N] (bias last)."""
    return (F.leaky_relu(y + bias, 0.2) * LRELU_GAIN).clamp(-CONV_CLAMP, CONV_CLAMP)


def reference_fp32(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The function in fp32: x [B,H,W,C], w [N,C,3,3] -> [B,H,W,N]."""
    y = F.conv2d(x.permute(0, 3, 1, 2).float(), w.float(), padding=1).permute(0, 2, 3, 1)
    return epilogue(y, bias.float())


def quantize(x: torch.Tensor, w: torch.Tensor, margin: float = 4.0):
    """x [B,H,W,C], w [N,C,3,3] -> (x8 [B,H,W,C], x_scale [], w8 [N,3,3,C], w_scale [N]): static tensor-wise x
    scale (margin x amax, as Fp8Linear.calibrate), per-output-channel w scale."""
    x_scale = (x.abs().amax().float() * margin / FP8_MAX).reshape(())
    x8 = (x.float() / x_scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).contiguous()
    w_scale = w.float().abs().amax(dim=(1, 2, 3)).clamp_min(1e-12) / FP8_MAX
    w8 = (w.float() / w_scale[:, None, None, None]).permute(0, 2, 3, 1).contiguous().to(torch.float8_e4m3fn)
    return x8, x_scale, w8, w_scale


def problem(b: int, res: int, c: int, n: int, device, seed: int = 0):
    """x [B,res,res,C] (post-activation-like: leaky ReLU of a unit normal, x gain), w [N,C,3,3] demodulated (unit
    norm per output channel, as SynthesisLayer.folded_weight), bias [N]."""
    g = torch.Generator(device=device).manual_seed(seed)
    x = epilogue(torch.randn(b, res, res, c, device=device, generator=g), torch.zeros(c, device=device))
    w = torch.randn(n, c, 3, 3, device=device, generator=g)
    w = w / w.square().sum(dim=(1, 2, 3), keepdim=True).sqrt()
    bias = 0.1 * torch.randn(n, device=device, generator=g)
    return x, w, bias


def errors(out: torch.Tensor, ref: torch.Tensor) -> dict:
    rms = ref.float().square().mean().sqrt()
    d = (out.float() - ref.float()).abs()
    return {"max_over_rms": float(d.max() / rms), "rms_over_rms": float(d.square().mean().sqrt() / rms)}


def cpu_check() -> int:
    """TRITON_INTERPRET=1 on a CPU: the kernel against the same quantised function with plain ops (the test of its
    indexing: taps, borders, channel blocks, ragged tiles) and the error both have against fp32."""
    run = build_kernel(autotune=False)
    x, w, bias = problem(2, 5, 40, 24, "cpu")  # odd sizes: partial tiles in M, N and K
    x8, x_scale, w8, w_scale = quantize(x, w)
    out = run(x8, w8, w_scale, bias, x_scale).float()
    xq = x8.float() * x_scale
    wq = w8.float().permute(0, 3, 1, 2) * w_scale[:, None, None, None]
    same = reference_fp32(xq, wq, bias)  # the quantised operands, fp32 arithmetic
    print("kernel vs the quantised function (fp32 ops):", errors(out, same))
    print("kernel vs fp32 on the unquantised input:    ", errors(out, reference_fp32(x, w, bias)))
    # the same function up to the bf16 output: within one bf16 step of the fp32 result (the interpreter truncates)
    step = torch.exp2(torch.floor(torch.log2(same.abs().clamp_min(2.0 ** -100))) - 7)
    steps = float(((out - same).abs() / step).max())
    print(f"largest difference: {steps:.2f} bf16 steps of the result")
    ok = steps <= 1.0 + 1e-3
    print("ok" if ok else "MISMATCH")
    return 0 if ok else 1


def time_ms(fn, iters: int = 50, warmup: int = 10) -> dict:
    from flexrt.benchmarks.timing import time_fn

    st = time_fn(lambda _i: fn(), device="cuda", warmup=warmup, iters=iters)
    return {"median_ms": st.median_ms, "p90_ms": st.percentile(90), "timer": st.timer}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="fp8_conv_out")
    p.add_argument("--frames", default="32,64")
    p.add_argument("--cpu-check", action="store_true", help="run the kernel in Triton's interpreter on the CPU "
                                                            "(set TRITON_INTERPRET=1)")
    args = p.parse_args()
    if args.cpu_check:
        return cpu_check()
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
        raise SystemExit("error: needs a CUDA GPU with FP8 tensor cores (compute capability >= 8.9); "
                         "--cpu-check checks the kernel's logic on a CPU")
    run = build_kernel()
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": []}
    for frames in (int(f) for f in args.frames.split(",")):
        for name, res, c, n in CONVS:
            x, w, bias = problem(frames, res, c, n, "cuda")
            ref = reference_fp32(x, w, bias)
            # today: bf16 channels-last cuDNN conv + the epilogue, compiled as the server compiles it
            xb = x.to(torch.bfloat16).permute(0, 3, 1, 2)  # [B,C,H,W] view of channels-last memory
            wb = w.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
            bb = bias.to(torch.bfloat16)
            today = torch.compile(lambda t: epilogue(F.conv2d(t, wb, padding=1).permute(0, 2, 3, 1), bb))
            x8, x_scale, w8, w_scale = quantize(x, w)
            with torch.no_grad():
                y_today, y_fp8 = today(xb), run(x8, w8, w_scale, bias, x_scale)
                row = {"conv": name, "frames": frames, "res": res, "C": c, "N": n,
                       "gflop": 2.0 * frames * res * res * 9 * c * n / 1e9,
                       "today_bf16_vs_fp32": errors(y_today, ref), "fp8_vs_fp32": errors(y_fp8, ref),
                       "today_bf16": time_ms(lambda: today(xb)),
                       "fp8_triton": time_ms(lambda: run(x8, w8, w_scale, bias, x_scale))}
            row["speedup"] = row["today_bf16"]["median_ms"] / row["fp8_triton"]["median_ms"]
            row["fp8_tflops"] = row["gflop"] / row["fp8_triton"]["median_ms"]
            result["rows"].append(row)
            print(f"{frames:3d} frames {name:18s} today {row['today_bf16']['median_ms']:.3f} ms, fp8 "
                  f"{row['fp8_triton']['median_ms']:.3f} ms ({row['speedup']:.2f}x, {row['fp8_tflops']:.0f} TFLOP/s); "
                  f"err rms bf16 {row['today_bf16_vs_fp32']['rms_over_rms']:.1e} fp8 "
                  f"{row['fp8_vs_fp32']['rms_over_rms']:.1e}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fp8_conv.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
