"""Development probe (not installed; prepared 2026-12-02, NOT YET RUN): the feed forward's first GEMM with its
epilogue fused, against what the FP8 decoder runs today (docs/SERVING.md, "What holds 64 streams back").

Today (``model/deploy.py``, ``Fp8Linear`` static scaling, then ``F.gelu`` and the next layer's quantisation):

    y  = _scaled_mm(q, W8^T, s_x, 1) -> bf16 [M,N]          cuBLAS FP8 GEMM, writes bf16
    y  = (y * w_scale + bias) -> bf16; g = gelu_tanh(y)    } one inductor kernel ("GELU + quantise", 3.1 ms of a
    q2 = clamp(g / s_out, +-448) -> float8 e4m3 [M,N]      }   64-frame decode): reads bf16, writes fp8

Fused (this file, Triton): one kernel, q2 = fp8(clamp(gelu_tanh((q @ W8^T) * s_x * w_scale + bias) / s_out)),
the GEMM's fp32 accumulator going straight through the epilogue: the bf16 [M,N] intermediate is never written or
read (at batch 64: 65,536 x 3,072 x 2 B written and read again per layer). gelu_tanh(x) = x * sigmoid(2 z),
z = sqrt(2/pi) (x + 0.044715 x^3), the same function as 0.5 x (1 + tanh z).

    python dev/fused_ffn_probe.py --out OUT        (a CUDA GPU with FP8 tensor cores and Triton; ~60 s)

Prints and writes OUT/fused_ffn.json: per M (32 and 64 frames of 1,024 tokens): both paths' agreement with the
same function in fp32 (dequantised outputs: max |diff| in e4m3 steps, share of elements that differ) and their
times (CUDA events, warm-up, median and p90 of 50 calls; today's path compiled by inductor as the server compiles
it). On a CPU: ``TRITON_INTERPRET=1 python dev/fused_ffn_probe.py --cpu-check`` runs the kernel in Triton's
interpreter at a small ragged shape (2026-12-02, triton 3.9 in a scratch venv: fused vs fp32 max 4 e4m3 steps,
1.5 % of elements differ; today's path 4 steps, 3.6 %: the fused kernel skips the bf16 intermediate).
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
    """-> run(a, w, w_scale, bias, s_x, s_out). ``autotune=False``: one small fixed tile (Triton's CPU interpreter,
    TRITON_INTERPRET=1, has no driver to time configs with)."""
    import triton
    import triton.language as tl

    configs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
               for bm, bn, bk, w, s in ((128, 128, 128, 8, 3), (128, 256, 128, 8, 3), (128, 128, 64, 4, 4),
                                        (256, 128, 128, 8, 3), (128, 256, 64, 8, 4), (64, 128, 128, 4, 4))]

    @triton.jit
    def fp8_gemm_gelu_quant(a_ptr, w_ptr, w_scale_ptr, bias_ptr, c_ptr, s_x_ptr, s_out_ptr, M, N, K,
                            stride_am, stride_ak, stride_wn, stride_wk, stride_cm, stride_cn,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                            GROUP_M: tl.constexpr):
        # a [M,K] e4m3, w [N,K] e4m3 (K contiguous: B = w^T is K-major, as Hopper's FP8 MMA wants), c [M,N] e4m3
        pid = tl.program_id(0)
        grid_m, grid_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
        group = GROUP_M * grid_n  # grouped tile order: consecutive programs share rows of a (L2 reuse)
        first_m = (pid // group) * GROUP_M
        rows = min(grid_m - first_m, GROUP_M)
        pid_m = first_m + (pid % group) % rows
        pid_n = (pid % group) // rows
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak  # [BM,BK]
        w_ptrs = w_ptr + offs_n[None, :] * stride_wn + offs_k[:, None] * stride_wk  # [BK,BN] = w^T tile
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            k_left = K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=(offs_m[:, None] < M) & (offs_k[None, :] < k_left), other=0.0)
            b = tl.load(w_ptrs, mask=(offs_n[None, :] < N) & (offs_k[:, None] < k_left), other=0.0)
            acc = tl.dot(a, b, acc)
            a_ptrs += BLOCK_K * stride_ak
            w_ptrs += BLOCK_K * stride_wk
        # epilogue: dequantise (tensor-wise x scale, per-channel weight scale), bias, tanh GELU, quantise
        n_ok = offs_n < N
        w_scale = tl.load(w_scale_ptr + offs_n, mask=n_ok, other=0.0)
        bias = tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
        s_x = tl.load(s_x_ptr)
        inv_out = 1.0 / tl.load(s_out_ptr)
        y = acc * (s_x * w_scale)[None, :] + bias[None, :]
        z = 0.7978845608028654 * (y + 0.044715 * y * y * y)
        g = y * tl.sigmoid(2.0 * z)
        q = tl.minimum(tl.maximum(g * inv_out, -448.0), 448.0)  # FP8_MAX (a jit kernel reads no Python globals)
        c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
        tl.store(c_ptrs, q.to(c_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & n_ok[None, :])

    tuned = triton.autotune(configs=configs, key=["M", "N", "K"])(fp8_gemm_gelu_quant)
    fixed = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8}

    def run(a, w, w_scale, bias, s_x, s_out):
        """a [M,K] e4m3, w [N,K] e4m3, w_scale [N] fp32, bias [N] bf16, s_x, s_out [] fp32 -> [M,N] e4m3."""
        m, k = a.shape
        n = w.shape[0]
        c = torch.empty(m, n, device=a.device, dtype=torch.float8_e4m3fn)
        grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
        args = (a, w, w_scale, bias, c, s_x, s_out, m, n, k, a.stride(0), a.stride(1), w.stride(0), w.stride(1),
                c.stride(0), c.stride(1))
        if autotune:
            tuned[grid](*args)
        else:
            fp8_gemm_gelu_quant[grid](*args, **fixed)
        return c

    return run


def today(a, w, w_scale_row, bias, s_x, s_out, one):
    """What the FP8 decoder runs (Fp8Linear static, F.gelu tanh, the next layer's quantize_static)."""
    y = torch._scaled_mm(a, w.t(), scale_a=s_x, scale_b=one, out_dtype=torch.bfloat16, use_fast_accum=True)
    y = (y.float() * w_scale_row + bias).to(torch.bfloat16)
    g = F.gelu(y, approximate="tanh")
    return (g.float() / s_out).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


def reference_fp32(a, w, w_scale, bias, s_x, s_out):
    """The fused function in fp32 with plain ops (no bf16 intermediate): what both paths approximate."""
    y = (a.float() * s_x) @ (w.float() * w_scale[:, None]).t() + bias.float()
    return (F.gelu(y, approximate="tanh") / s_out).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float()


def agreement(out: torch.Tensor, ref: torch.Tensor) -> dict:
    """Dequantised e4m3 outputs: max |diff| in e4m3 steps of the reference value (3 mantissa bits; subnormals below
    2^-6 step 2^-9) and the share of elements that differ at all."""
    step = torch.exp2(torch.floor(torch.log2(ref.abs().clamp_min(2.0 ** -6))) - 3)
    return {"max_diff_e4m3_steps": float(((out - ref).abs() / step).max()),
            "share_differing": float((out != ref).float().mean())}


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
    print("fused vs fp32 reference:", agreement(out, ref))
    print("today vs fp32 reference:", agreement(t, ref))
    return 0


def time_ms(fn, iters: int = 50, warmup: int = 10) -> dict:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    t = torch.tensor(times)
    return {"median_ms": float(t.median()), "p90_ms": float(t.quantile(0.9))}


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
    compiled = torch.compile(today)
    one = torch.ones((), device=dev)
    rows = []
    for frames in (int(f) for f in args.frames.split(",")):
        m = frames * TOKENS
        a, w, w_scale, bias, s_x, s_out = problem(m, N_DIM, K_DIM, dev)
        ref = reference_fp32(a, w, w_scale, bias, s_x, s_out)
        out = fused(a, w, w_scale, bias, s_x, s_out).float()
        t = today(a, w, w_scale[None, :], bias, s_x, s_out, one).float()
        row = {"frames": frames, "M": m, "N": N_DIM, "K": K_DIM,
               "fused_vs_fp32": agreement(out, ref), "today_vs_fp32": agreement(t, ref),
               "today_compiled": time_ms(lambda: compiled(a, w, w_scale[None, :], bias, s_x, s_out, one)),
               "fused_triton": time_ms(lambda: fused(a, w, w_scale, bias, s_x, s_out))}
        row["speedup"] = row["today_compiled"]["median_ms"] / row["fused_triton"]["median_ms"]
        flops = 2.0 * m * N_DIM * K_DIM
        row["fused_tflops"] = flops / row["fused_triton"]["median_ms"] / 1e9
        print(json.dumps(row), flush=True)
        rows.append(row)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "fused_ffn.json").write_text(json.dumps({"device": torch.cuda.get_device_name(0),
                                                         "torch": torch.__version__, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
