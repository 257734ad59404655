"""Development probe (not installed; prepared 2026-12-02, NOT YET RUN on a GPU): the sample stream's FP8 GEMMs with
their epilogues fused, against what the FP8 decoder runs today (docs/SERVING.md, "What holds 64 streams back").

Today (``model/deploy.py``: ``Fp8Linear`` static scaling, then ``F.gelu`` and the next layer's quantisation, or the
residual add):

    y  = _scaled_mm(q, W8^T, s_x, 1) -> bf16 [M,N]          cuBLAS FP8 GEMM, writes bf16
    y  = (y * w_scale + bias) -> bf16; g = gelu_tanh(y)    } one inductor kernel ("GELU + quantise", 3.1 ms of a
    q2 = clamp(g / s_out, +-448) -> float8 e4m3 [M,N]      }   64-frame decode): reads bf16, writes fp8
    (to_out / ff_out: x = x + (y * w_scale + bias) -> bf16, the residual add in its own kernel)

Fused (this file, one Triton kernel with two epilogues): the GEMM's fp32 accumulator goes straight through
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
    """-> run(a, w, w_scale, bias, s_x, s_out). ``autotune=False``: one small fixed tile (Triton's CPU interpreter,
    TRITON_INTERPRET=1, has no driver to time configs with)."""
    import triton
    import triton.language as tl

    configs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
               for bm, bn, bk, w, s in ((128, 128, 128, 8, 3), (128, 256, 128, 8, 3), (128, 128, 64, 4, 4),
                                        (256, 128, 128, 8, 3), (128, 256, 64, 8, 4), (64, 128, 128, 4, 4))]

    @triton.jit
    def fp8_gemm_fused(a_ptr, w_ptr, w_scale_ptr, bias_ptr, c_ptr, s_x_ptr, s_out_ptr, res_ptr, M, N, K,
                       stride_am, stride_ak, stride_wn, stride_wk, stride_cm, stride_cn,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                       RESIDUAL: tl.constexpr):
        # a [M,K] e4m3, w [N,K] e4m3 (K contiguous: B = w^T is K-major, as Hopper's FP8 MMA wants); c [M,N]: e4m3
        # (RESIDUAL False: GELU + quantise) or bf16 = res [M,N] bf16 + the product (RESIDUAL True; res like c)
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
        # epilogue: dequantise (tensor-wise x scale, per-channel weight scale), bias, then either tanh GELU and
        # the next GEMM's quantisation, or the residual add
        n_ok = offs_n < N
        c_mask = (offs_m[:, None] < M) & n_ok[None, :]
        w_scale = tl.load(w_scale_ptr + offs_n, mask=n_ok, other=0.0)
        bias = tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
        s_x = tl.load(s_x_ptr)
        y = acc * (s_x * w_scale)[None, :] + bias[None, :]
        c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
        if RESIDUAL:
            res = tl.load(res_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn, mask=c_mask, other=0.0)
            tl.store(c_ptrs, (res.to(tl.float32) + y).to(c_ptr.dtype.element_ty), mask=c_mask)
        else:
            z = 0.7978845608028654 * (y + 0.044715 * y * y * y)
            g = y * tl.sigmoid(2.0 * z)
            q = tl.minimum(tl.maximum(g / tl.load(s_out_ptr), -448.0), 448.0)  # FP8_MAX (no Python globals in jit)
            tl.store(c_ptrs, q.to(c_ptr.dtype.element_ty), mask=c_mask)

    tuned = triton.autotune(configs=configs, key=["M", "N", "K", "RESIDUAL"])(fp8_gemm_fused)
    fixed = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8}

    def run(a, w, w_scale, bias, s_x, s_out=None, residual=None):
        """a [M,K] e4m3, w [N,K] e4m3, w_scale [N] fp32, bias [N] bf16, s_x [] fp32; then either s_out [] fp32
        -> gelu_tanh(a W^T + b) quantised to e4m3 [M,N], or residual [M,N] bf16 -> residual + a W^T + b, bf16."""
        m, k = a.shape
        n = w.shape[0]
        fuse_residual = residual is not None
        c = torch.empty(m, n, device=a.device, dtype=torch.bfloat16 if fuse_residual else torch.float8_e4m3fn)
        if fuse_residual and residual.stride() != c.stride():
            raise ValueError(f"residual must be a contiguous [{m},{n}] tensor, got strides {residual.stride()}")
        grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
        args = (a, w, w_scale, bias, c, s_x, s_x if s_out is None else s_out, c if residual is None else residual,
                m, n, k, a.stride(0), a.stride(1), w.stride(0), w.stride(1), c.stride(0), c.stride(1))
        if autotune:
            tuned[grid](*args, RESIDUAL=fuse_residual)
        else:
            fp8_gemm_fused[grid](*args, RESIDUAL=fuse_residual, **fixed)
        return c

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
