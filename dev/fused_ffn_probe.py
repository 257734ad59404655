"""Development probe (not installed; run on the H200 2026-12-02, docs/results/h200-fused-ffn-probe.json): the
sample stream's FP8 GEMMs with their epilogues fused, against what the FP8 decoder runs today (docs/SERVING.md,
"Stream capacity").

Today (``model/deploy.py``: ``Fp8Linear`` static scaling, then ``F.gelu`` and the next layer's quantisation, or the
residual add):

    y  = _scaled_mm(q, W8^T, s_x, 1) -> bf16 [M,N]          cuBLAS FP8 GEMM, writes bf16
    y  = (y * w_scale + bias) -> bf16; g = gelu_tanh(y)    } one inductor kernel ("GELU + quantise", 3.1 ms of a
    q2 = clamp(g / s_out, +-448) -> float8 e4m3 [M,N]      }   64-frame decode): reads bf16, writes fp8
    (to_out / ff_out: x = x + (y * w_scale + bias) -> bf16, the residual add in its own kernel)

Fused (``kernels/fp8_gemm.py``, one Triton kernel with two epilogues): the GEMM's fp32 accumulator goes straight through
dequantisation and bias into either gelu_tanh and the e4m3 quantisation (ff_in) or the residual add (to_out,
ff_out): the bf16 product is never written or read again (at batch 64, ff_in: 65,536 x 3,072 x 2 B each way per
layer). gelu_tanh(x) = x * sigmoid(2 z), z = sqrt(2/pi) (x + 0.044715 x^3), the same function as
0.5 x (1 + tanh z).

    python dev/fused_ffn_probe.py --out OUT        (a CUDA GPU with FP8 tensor cores and Triton; ~60 s)

Prints and writes OUT/fused_ffn.json: per GEMM (ff_in, ff_out, to_out at FLEX-1's sizes) and M (32 and 64 frames
of 1,024 tokens): both paths' agreement with the same function in fp32 (max |diff| in steps of the output format,
share of elements that differ) and their times (CUDA events, warm-up, median and p90 of 50 calls; today's path
compiled by inductor as the server compiles it). On a CPU, ``TRITON_INTERPRET=1 python dev/fused_ffn_probe.py
--cpu-check`` runs the kernel in Triton's interpreter at a small ragged shape (masks exercised). Checked so
(2026-12-02, triton 3.9 in a scratch venv): GELU + quantise, fused vs fp32 1.5 % of elements differ (max 4 e4m3
steps), today's path 3.6 % (4 steps); residual, fused max 1 bf16 step, today's 4.25 steps. (The interpreter rounds
fp32 -> bf16 toward zero, which is why half the fused residual outputs sit one step off the round-to-nearest
reference: 99.96 % equal the truncated exact sum; the GPU rounds to nearest.)
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

FP8_MAX = 448.0
K_DIM, N_DIM = 768, 3072  # FLEX-1's feed forward: d_hidden -> 4 d_hidden
TOKENS = 1024  # sample tokens a frame


def build_kernel(autotune: bool = True):
    """-> run(a, w, w_scale, bias, s_x, s_out=None, residual=None): the kernel of ``kernels/fp8_gemm.py`` (where it
    lives since 2026-12-03; this probe wrote it first), with its output allocated here. ``autotune=False``: one small
    fixed tile (Triton's CPU interpreter, TRITON_INTERPRET=1, has no driver to time configs with)."""
    from flexrt.kernels.fp8_gemm import _build

    launch = _build(autotune)

    def run(a, w, w_scale, bias, s_x, s_out=None, residual=None):
        """a [M,K] e4m3, w [N,K] e4m3, w_scale [N] fp32, bias [N] bf16, s_x [] fp32; then either s_out [] fp32
        -> gelu_tanh(a W^T + b) quantised to e4m3 [M,N], or residual [M,N] bf16 -> residual + a W^T + b, bf16."""
        out = torch.empty(a.shape[0], w.shape[0], device=a.device,
                          dtype=torch.bfloat16 if residual is not None else torch.float8_e4m3fn)
        return launch(a, w, w_scale, bias, s_x, out, out_scale=s_out, residual=residual)

    return run


def today(a, w, w_scale_row, bias, s_x, s_out, one):
    """What the FP8 decoder runs (Fp8Linear static, F.gelu tanh, the next layer's quantize_static)."""
    y = torch._scaled_mm(a, w.t(), scale_a=s_x, scale_b=one, out_dtype=torch.bfloat16, use_fast_accum=True)
    y = (y.float() * w_scale_row + bias).to(torch.bfloat16)
    g = F.gelu(y, approximate="tanh")
    return (g.float() / s_out).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


def today_residual(a, w, w_scale_row, bias, s_x, one, residual):
    """What the FP8 decoder runs for to_out / ff_out: Fp8Linear static, then the bf16 residual add."""
    y = torch._scaled_mm(a, w.t(), scale_a=s_x, scale_b=one, out_dtype=torch.bfloat16, use_fast_accum=True)
    return residual + (y.float() * w_scale_row + bias).to(torch.bfloat16)


def reference_fp32(a, w, w_scale, bias, s_x, s_out=None, residual=None):
    """The fused function in fp32 with plain ops (no bf16 intermediate), rounded once to the output's dtype: what
    both paths approximate."""
    y = (a.float() * s_x) @ (w.float() * w_scale[:, None]).t() + bias.float()
    if residual is not None:
        return (residual.float() + y).to(torch.bfloat16).float()
    return (F.gelu(y, approximate="tanh") / s_out).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float()


def agreement(out: torch.Tensor, ref: torch.Tensor, mantissa_bits: int = 3, min_normal: float = 2.0 ** -6,
              magnitude: torch.Tensor | None = None) -> dict:
    """Outputs as floats: max |diff| in steps of the output format at the reference value, or at ``magnitude``
    where given (a residual add: the operands' size, since their sum may cancel) (e4m3: 3 mantissa bits, step 2^-9
    below 2^-6; bf16: 7), and the share of elements that differ at all."""
    size = ref.abs() if magnitude is None else torch.maximum(ref.abs(), magnitude.abs())
    step = torch.exp2(torch.floor(torch.log2(size.clamp_min(min_normal))) - mantissa_bits)
    return {"max_diff_steps": float(((out - ref).abs() / step).max()),
            "share_differing": float((out != ref).float().mean())}


BF16 = {"mantissa_bits": 7, "min_normal": 2.0 ** -126}


def problem(m: int, n: int, k: int, device, seed: int = 0):
    """Random FF-like operands: w [n,k] e4m3 with per-channel scales (as Fp8Linear), a [m,k] e4m3 of a LayerNorm-like
    input (amax ~5, calibration margin 4), bias, output scale."""
    g = torch.Generator(device=device).manual_seed(seed)
    w32 = torch.randn(n, k, device=device, generator=g) / k ** 0.5
    w_scale = w32.abs().amax(1).clamp_min(1e-12) / FP8_MAX
    w = (w32 / w_scale[:, None]).to(torch.float8_e4m3fn)
    bias = (0.1 * torch.randn(n, device=device, generator=g)).to(torch.bfloat16)
    s_x = torch.tensor(4.0 * 5.0 / FP8_MAX, device=device)
    s_out = torch.tensor(4.0 * 3.0 / FP8_MAX, device=device)
    a = (torch.randn(m, k, device=device, generator=g) / s_x).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return a, w, w_scale, bias, s_x, s_out


def cpu_check() -> int:
    """TRITON_INTERPRET=1 on a CPU: the kernel's logic at a small, ragged shape (masks exercised), one fixed tile."""
    fused = build_kernel(autotune=False)
    a, w, w_scale, bias, s_x, s_out = problem(96, 200, 160, "cpu")
    ref = reference_fp32(a, w, w_scale, bias, s_x, s_out)
    out = fused(a, w, w_scale, bias, s_x, s_out).float()
    t = today(a, w, w_scale[None, :], bias, s_x, s_out, torch.ones(())).float()
    print("GELU + quantise epilogue, fused vs fp32 reference:", agreement(out, ref))
    print("                          today vs fp32 reference:", agreement(t, ref))
    x = torch.randn(96, 200, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    ref = reference_fp32(a, w, w_scale, bias, s_x, residual=x)
    out = fused(a, w, w_scale, bias, s_x, residual=x).float()
    t = today_residual(a, w, w_scale[None, :], bias, s_x, torch.ones(()), x).float()
    print("residual epilogue, fused vs fp32 reference:", agreement(out, ref, **BF16, magnitude=x.float()))
    print("                   today vs fp32 reference:", agreement(t, ref, **BF16, magnitude=x.float()))
    return 0


def time_ms(fn, iters: int = 50, warmup: int = 10) -> dict:
    """CUDA-event times of ``fn()`` (benchmarks.timing.time_fn: warm-up, then ``iters`` timed calls)."""
    from flexrt.benchmarks.timing import time_fn

    st = time_fn(lambda _i: fn(), device="cuda", warmup=warmup, iters=iters)
    return {"median_ms": st.median_ms, "p90_ms": st.percentile(90), "timer": st.timer}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="fused_ffn_out")
    p.add_argument("--frames", default="32,64", help="batch sizes in frames (x 1,024 tokens)")
    p.add_argument("--cpu-check", action="store_true",
                   help="run the kernel in Triton's interpreter on the CPU at a small shape (set TRITON_INTERPRET=1)")
    args = p.parse_args()
    if args.cpu_check:
        return cpu_check()
    if not torch.cuda.is_available():
        raise SystemExit("error: needs a CUDA GPU with FP8 tensor cores (this probe measures GPU kernels); "
                         "--cpu-check checks the kernel's logic on a CPU")
    dev = torch.device("cuda")
    fused = build_kernel()
    compiled, compiled_residual = torch.compile(today), torch.compile(today_residual)
    one = torch.ones((), device=dev)
    rows = []
    # FLEX-1's sample-stream GEMMs with an epilogue to fuse: (name, N, K, epilogue)
    gemms = (("ff_in", 4 * K_DIM, K_DIM, "gelu+quantise"), ("ff_out", K_DIM, 4 * K_DIM, "residual"),
             ("to_out", K_DIM, K_DIM, "residual"))
    for frames in (int(f) for f in args.frames.split(",")):
        m = frames * TOKENS
        for name, n, k, epilogue in gemms:
            a, w, w_scale, bias, s_x, s_out = problem(m, n, k, dev)
            if epilogue == "residual":
                x = torch.randn(m, n, device=dev).to(torch.bfloat16)
                ref = reference_fp32(a, w, w_scale, bias, s_x, residual=x)
                out = fused(a, w, w_scale, bias, s_x, residual=x).float()
                t = today_residual(a, w, w_scale[None, :], bias, s_x, one, x).float()
                fmt = {**BF16, "magnitude": x.float()}
                run_today = lambda: compiled_residual(a, w, w_scale[None, :], bias, s_x, one, x)  # noqa: E731
                run_fused = lambda: fused(a, w, w_scale, bias, s_x, residual=x)  # noqa: E731
            else:
                ref = reference_fp32(a, w, w_scale, bias, s_x, s_out)
                out = fused(a, w, w_scale, bias, s_x, s_out).float()
                t = today(a, w, w_scale[None, :], bias, s_x, s_out, one).float()
                fmt = {}
                run_today = lambda: compiled(a, w, w_scale[None, :], bias, s_x, s_out, one)  # noqa: E731
                run_fused = lambda: fused(a, w, w_scale, bias, s_x, s_out)  # noqa: E731
            row = {"gemm": name, "epilogue": epilogue, "frames": frames, "M": m, "N": n, "K": k,
                   "fused_vs_fp32": agreement(out, ref, **fmt), "today_vs_fp32": agreement(t, ref, **fmt),
                   "today_compiled": time_ms(run_today), "fused_triton": time_ms(run_fused)}
            row["speedup"] = row["today_compiled"]["median_ms"] / row["fused_triton"]["median_ms"]
            row["fused_tflops"] = 2.0 * m * n * k / row["fused_triton"]["median_ms"] / 1e9
            print(json.dumps(row), flush=True)
            rows.append(row)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "fused_ffn.json").write_text(json.dumps({"device": torch.cuda.get_device_name(0),
                                                         "torch": torch.__version__, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
