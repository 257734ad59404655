"""FP8 GEMMs with their epilogues fused: the decoder's feed forward and residual adds in one kernel each.

    from flexrt.kernels.fp8_gemm import fp8_linear_gelu_quantize, fp8_linear_residual, fused_fp8_status
    h8 = fp8_linear_gelu_quantize(x8, w8, w_scale, bias, x_scale, out_scale)  # [M,K] e4m3 -> [M,N] e4m3
    y = fp8_linear_residual(x8, w8, w_scale, bias, x_scale, residual)          # [M,K] e4m3 -> [M,N] bf16

Operands (``Fp8Linear`` of model/deploy.py holds them): x8 [M,K] float8 e4m3fn with one tensor-wise scale x_scale []
fp32; w8 [N,K] e4m3fn with one scale per output channel w_scale [N] fp32; bias [N] bf16. The two functions:

    fp8_linear_gelu_quantize: e4m3( clamp( gelu_tanh(x W^T + b) / out_scale, +-448 ) )   (ff_in, and ff_out's input
                              quantised with ff_out's static scale: the next GEMM reads it as is)
    fp8_linear_residual:      bf16( residual + x W^T + b )                                (to_out, ff_out)

with x = x8 * x_scale and W = w8 * w_scale. Without fusion these are a cuBLAS FP8 GEMM writing bf16, then a
memory-bound kernel reading it back for the scale, bias, GELU and quantisation (or the residual add): at batch 32 on
the H200 the fused kernel takes 0.29 instead of 0.38 ms (ff_in), 0.23 vs 0.27 (ff_out), 0.13 vs 0.17 (to_out); the
epilogue also computes in fp32 with no bf16 rounding of the product, so it is closer to the fp32 function
(docs/BENCHMARKS.md, "2026-12-02, 22:56-23:09 UTC").

Backends (``fused_fp8_status``): "triton" (a CUDA GPU with FP8 tensor cores, compute capability >= 8.9, and Triton
importable; tiles autotuned per shape class at first use, i.e. during a server's warm-up), "torch" (the reference:
the same function in fp32 with plain ops, any device; what the tests compare the kernel against, and what a CPU
runs). A CUDA tensor never silently takes the reference: without Triton the functions raise. Both are torch custom
ops (``torch.ops.flexrt.*``), so ``torch.compile`` keeps each as one call and inductor fuses what is around them
(the LayerNorm + quantisation that produces x8).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

FP8_MAX = 448.0  # largest finite float8 e4m3fn value (model/deploy.py's FP8 layers use it too)


@functools.lru_cache(maxsize=None)
def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def fused_fp8_status(device) -> tuple[str | None, str]:
    """-> (backend, why): "triton" on a CUDA device with FP8 tensor cores and Triton importable, "torch" (reference
    ops) on a CPU, None on a CUDA device that cannot run the kernel; ``why`` says which and why, in one line."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    return _status(device)


@functools.lru_cache(maxsize=None)
def _status(device: torch.device) -> tuple[str | None, str]:
    if device.type != "cuda":
        return "torch", f"fused FP8 epilogues as reference torch ops on {device.type} (the Triton kernel is CUDA only)"
    if not torch.cuda.is_available():
        return None, "fused FP8 epilogues: torch sees no CUDA device"
    cap = torch.cuda.get_device_capability(device)
    if cap < (8, 9):
        return None, f"fused FP8 epilogues need FP8 tensor cores (compute capability >= 8.9), {device} has {cap}"
    version = _triton_version()
    if version is None:
        return None, "fused FP8 epilogues need Triton (pip install triton; torch's CUDA wheels ship it)"
    return "triton", f"fused FP8 epilogues: Triton {version} kernel on compute capability {cap[0]}.{cap[1]}"


def _m_class(m: int) -> int:
    """Autotuning key for the row count: its power of two in frames of 1,024 tokens (a server sees a dozen batch
    buckets; tuning per class instead of per bucket keeps the warm-up short)."""
    return 1 << max(0, (max(m, 1) - 1).bit_length() - 10)


@functools.lru_cache(maxsize=None)
def _build(autotune: bool = True):
    """-> launch(x8, w8, w_scale, bias, x_scale, out, out_scale=None, residual=None); ``autotune=False``: one small
    fixed tile (Triton's CPU interpreter, TRITON_INTERPRET=1, has no driver to time configs with)."""
    import triton
    import triton.language as tl
    import triton.testing

    @triton.jit
    def fp8_gemm_epilogue(x_ptr, w_ptr, w_scale_ptr, bias_ptr, out_ptr, x_scale_ptr, out_scale_ptr, res_ptr,
                          M, N, K, M_CLASS, stride_xm, stride_xk, stride_wn, stride_wk, stride_om, stride_on,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                          RESIDUAL: tl.constexpr):
        # 1. the tile this program computes, in grouped order: GROUP_M consecutive programs share rows of x (L2 reuse)
        pid = tl.program_id(0)
        grid_m, grid_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
        group = GROUP_M * grid_n
        first_m = (pid // group) * GROUP_M
        rows = min(grid_m - first_m, GROUP_M)
        pid_m = first_m + (pid % group) % rows
        pid_n = (pid % group) // rows
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        # 2. acc [BM,BN] fp32 = x8 tile @ w8^T tile (w is [N,K], K contiguous: the K-major B operand FP8 MMAs want)
        x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk  # [BM,BK]
        w_ptrs = w_ptr + offs_n[None, :] * stride_wn + offs_k[:, None] * stride_wk  # [BK,BN]
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            k_left = K - k * BLOCK_K
            a = tl.load(x_ptrs, mask=(offs_m[:, None] < M) & (offs_k[None, :] < k_left), other=0.0)
            b = tl.load(w_ptrs, mask=(offs_n[None, :] < N) & (offs_k[:, None] < k_left), other=0.0)
            acc = tl.dot(a, b, acc)
            x_ptrs += BLOCK_K * stride_xk
            w_ptrs += BLOCK_K * stride_wk
        # 3. epilogue in fp32: dequantise (tensor-wise x scale, per-channel w scale), bias, then the residual add
        #    (bf16 out) or tanh GELU and the next GEMM's quantisation (e4m3 out, saturating)
        n_ok = offs_n < N
        out_mask = (offs_m[:, None] < M) & n_ok[None, :]
        w_scale = tl.load(w_scale_ptr + offs_n, mask=n_ok, other=0.0)
        bias = tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
        y = acc * (tl.load(x_scale_ptr) * w_scale)[None, :] + bias[None, :]
        out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
        if RESIDUAL:
            res = tl.load(res_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on, mask=out_mask, other=0.0)
            tl.store(out_ptrs, (res.to(tl.float32) + y).to(out_ptr.dtype.element_ty), mask=out_mask)
        else:
            # tanh GELU (Hendrycks & Gimpel 2016), tanh(z) = 2 sigmoid(2z) - 1, sqrt(2/pi) = 0.79788...
            g = y * tl.sigmoid(2.0 * 0.7978845608028654 * (y + 0.044715 * y * y * y))
            q = tl.minimum(tl.maximum(g / tl.load(out_scale_ptr), -448.0), 448.0)  # FP8_MAX (no globals in jit)
            tl.store(out_ptrs, q.to(out_ptr.dtype.element_ty), mask=out_mask)

    # tiles measured on the H200 (dev/fused_ffn_probe.py): 128-256 x 128-256 with BLOCK_K 64-128 win at FLEX-1's shapes
    configs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
               for bm, bn, bk, w, s in ((128, 128, 128, 8, 3), (128, 256, 128, 8, 3), (128, 128, 64, 4, 4),
                                        (256, 128, 128, 8, 3), (128, 256, 64, 8, 4), (64, 128, 128, 4, 4))]
    bench = lambda kernel_call, quantiles: triton.testing.do_bench(  # noqa: E731 (short timing: 6 configs a shape)
        kernel_call, warmup=5, rep=20, quantiles=quantiles)
    tuned = triton.autotune(configs=configs, key=["M_CLASS", "N", "K", "RESIDUAL"], do_bench=bench)(fp8_gemm_epilogue)
    fixed = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8}

    def launch(x8, w8, w_scale, bias, x_scale, out, out_scale=None, residual=None):
        m, k = x8.shape
        n = w8.shape[0]
        grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
        args = (x8, w8, w_scale, bias, out, x_scale, x_scale if out_scale is None else out_scale,
                out if residual is None else residual, m, n, k, _m_class(m),
                x8.stride(0), x8.stride(1), w8.stride(0), w8.stride(1), out.stride(0), out.stride(1))
        if autotune:
            tuned[grid](*args, RESIDUAL=residual is not None)
        else:
            fp8_gemm_epilogue[grid](*args, RESIDUAL=residual is not None, **fixed)
        return out

    return launch


def _check(x8, w8, w_scale, bias, x_scale, residual=None) -> None:
    m, k = x8.shape
    n = w8.shape[0]
    if x8.dtype != torch.float8_e4m3fn or w8.dtype != torch.float8_e4m3fn or w8.shape[1] != k:
        raise ValueError(f"expected x8 [M,K] and w8 [N,K] float8_e4m3fn, got {x8.dtype}{list(x8.shape)} and "
                         f"{w8.dtype}{list(w8.shape)}")
    if w_scale.shape != (n,) or bias.shape != (n,) or x_scale.numel() != 1:
        raise ValueError(f"expected w_scale [{n}], bias [{n}] and a one-element x_scale, got {list(w_scale.shape)}, "
                         f"{list(bias.shape)} and {list(x_scale.shape)}")
    if residual is not None and (residual.shape != (m, n) or residual.dtype != torch.bfloat16
                                 or not residual.is_contiguous()):
        raise ValueError(f"expected a contiguous bf16 residual [{m},{n}], got {residual.dtype}{list(residual.shape)} "
                         f"with strides {residual.stride()}")


def _product_reference(x8, w8, w_scale, bias, x_scale) -> torch.Tensor:
    """x W^T + b in fp32 with plain ops: [M,N] fp32."""
    return (x8.float() * x_scale.float()) @ (w8.float() * w_scale.float()[:, None]).t() + bias.float()


def _use_triton(x8: torch.Tensor, status=None) -> bool:
    """True: run the Triton kernel (a CUDA tensor); False: the reference ops (a CPU tensor); a CUDA tensor whose
    device cannot run the kernel raises with ``status``'s reason (default ``fused_fp8_status``), never falls back."""
    if x8.device.type != "cuda":
        return False
    backend, why = (status or fused_fp8_status)(x8.device)
    if backend != "triton":
        raise RuntimeError(why)
    return True


@torch.library.custom_op("flexrt::fp8_linear_gelu_quantize", mutates_args=())
def fp8_linear_gelu_quantize(x8: torch.Tensor, w8: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor,
                             x_scale: torch.Tensor, out_scale: torch.Tensor) -> torch.Tensor:
    """x8 [M,K] e4m3, w8 [N,K] e4m3, w_scale [N] fp32, bias [N] bf16, x_scale [] fp32, out_scale [] fp32
    -> e4m3 [M,N] = clamp(gelu_tanh(x W^T + b) / out_scale, +-448)."""
    _check(x8, w8, w_scale, bias, x_scale)
    if _use_triton(x8):
        out = torch.empty(x8.shape[0], w8.shape[0], device=x8.device, dtype=torch.float8_e4m3fn)
        return _build()(x8, w8, w_scale, bias, x_scale, out, out_scale=out_scale)
    y = F.gelu(_product_reference(x8, w8, w_scale, bias, x_scale), approximate="tanh")
    return (y / out_scale.float()).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


@fp8_linear_gelu_quantize.register_fake
def _(x8, w8, w_scale, bias, x_scale, out_scale):
    return x8.new_empty(x8.shape[0], w8.shape[0], dtype=torch.float8_e4m3fn)


@torch.library.custom_op("flexrt::fp8_linear_residual", mutates_args=())
def fp8_linear_residual(x8: torch.Tensor, w8: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor,
                        x_scale: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """x8 [M,K] e4m3, w8 [N,K] e4m3, w_scale [N] fp32, bias [N] bf16, x_scale [] fp32, residual [M,N] bf16
    -> bf16 [M,N] = residual + x W^T + b (one rounding, of the sum)."""
    _check(x8, w8, w_scale, bias, x_scale, residual)
    if _use_triton(x8):
        out = torch.empty_like(residual)
        return _build()(x8, w8, w_scale, bias, x_scale, out, residual=residual)
    return (residual.float() + _product_reference(x8, w8, w_scale, bias, x_scale)).to(torch.bfloat16)


@fp8_linear_residual.register_fake
def _(x8, w8, w_scale, bias, x_scale, residual):
    return torch.empty_like(residual)


def interpreter_check(seed: int = 0) -> dict:
    """The Triton kernel's logic on a CPU (call with TRITON_INTERPRET=1 set before Triton is imported): both
    epilogues at a small ragged shape (every mask exercised), one fixed tile, against the reference ops. -> for each
    epilogue, the largest difference in units of the output format's step at the reference value and the share of
    elements that differ. ``tests/test_fp8_gemm.py`` runs it in a subprocess."""
    g = torch.Generator().manual_seed(seed)
    m, n, k = 96, 200, 160
    w32 = torch.randn(n, k, generator=g) / k ** 0.5
    w_scale = w32.abs().amax(1) / FP8_MAX
    w8 = (w32 / w_scale[:, None]).to(torch.float8_e4m3fn)
    bias = (0.1 * torch.randn(n, generator=g)).to(torch.bfloat16)
    x_scale, out_scale = torch.tensor(20.0 / FP8_MAX), torch.tensor(12.0 / FP8_MAX)
    x8 = (torch.randn(m, k, generator=g) / x_scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    residual = torch.randn(m, n, generator=g).to(torch.bfloat16)
    launch = _build(autotune=False)
    result = {}
    for name, kw, dtype, bits, ref in (
            ("gelu_quantize", {"out_scale": out_scale}, torch.float8_e4m3fn, 3,
             fp8_linear_gelu_quantize(x8, w8, w_scale, bias, x_scale, out_scale)),
            ("residual", {"residual": residual}, torch.bfloat16, 7,
             fp8_linear_residual(x8, w8, w_scale, bias, x_scale, residual))):
        out = launch(x8, w8, w_scale, bias, x_scale, torch.empty(m, n, dtype=dtype), **kw).float()
        ref = ref.float()
        size = ref.abs() if name == "gelu_quantize" else torch.maximum(ref.abs(), residual.float().abs())
        step = torch.exp2(torch.floor(torch.log2(size.clamp_min(2.0 ** -6))) - bits)
        result[name] = {"max_diff_steps": float(((out - ref).abs() / step).max()),
                        "share_differing": float((out != ref).float().mean())}
    return result


__all__ = ["fp8_linear_gelu_quantize", "fp8_linear_residual", "fused_fp8_status", "interpreter_check", "FP8_MAX"]
