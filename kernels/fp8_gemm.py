"""FP8 GEMMs with their epilogues fused: the decoder's q|k|v (with the head RMS norms), feed forward and residual
adds in one kernel each.

    from flexrt.kernels.fp8_gemm import fp8_linear_gelu_quantize, fp8_linear_residual, fp8_qkv_rmsnorm
    h8 = fp8_linear_gelu_quantize(x8, w8, w_scale, bias, x_scale, out_scale)  # [M,K] e4m3 -> [M,N] e4m3
    y = fp8_linear_residual(x8, w8, w_scale, bias, x_scale, residual)          # [M,K] e4m3 -> [M,N] bf16
    qkv = fp8_qkv_rmsnorm(x8, w8, w_scale, bias, x_scale, gains, context, eps) # [B*N,K] -> [3,B,N+M,H,hd] bf16

Operands (``Fp8Linear`` of model/deploy.py holds them): x8 [M,K] float8 e4m3fn with one tensor-wise scale x_scale []
fp32; w8 [N,K] e4m3fn with one scale per output channel w_scale [N] fp32; bias [N] bf16. The functions:

    fp8_linear_gelu_quantize: e4m3( clamp( gelu_tanh(x W^T + b) / out_scale, +-448 ) )   (ff_in, and ff_out's input
                              quantised with ff_out's static scale: the next GEMM reads it as is)
    fp8_linear_residual:      bf16( residual + x W^T + b )                                (to_out, ff_out)
    fp8_qkv_rmsnorm:          bf16 q|k|v of a joint block's sample stream, q and k per-head RMS-normed (spec 5.3),
                              joined with the context stream's rows: what attention reads (to_qkv)

with x = x8 * x_scale and W = w8 * w_scale. Without fusion these are a cuBLAS FP8 GEMM writing bf16, then a
memory-bound kernel reading it back for the scale, bias, GELU and quantisation (or the residual add, or the norms
and joins); the epilogues also compute in fp32 with no bf16 rounding of the product, so they are closer to the fp32
function. H200, 64 frames (docs/BENCHMARKS.md, "2026-12-03, 07:09-07:55 UTC"): q|k|v 0.43 ms against 0.86 for
cuBLAS + the compiled norms and joins; the three epilogue GEMMs 1.3-2x cuBLAS's bare product (their epilogues do
not overlap the MMAs: docs/SERVING.md, "Stream capacity").

Kernels (kernels/_fp8_triton.py): on compute capability >= 9.0 the operands, residual and output go through TMA
descriptors and a persistent grid walks the tiles (``FLEXRT_FP8_GEMM=pointer`` forces the pointer-load kernel, for
A/B measurements); on 8.9 (Ada) the pointer-load kernel runs the GEMMs, and the q|k|v function runs as separate
ops (the decoder then keeps its unfused q|k|v path: ``fused_qkv_available``). Backends (``fused_fp8_status``, one
line that names the kernels): "triton" (a CUDA GPU with FP8 tensor cores and Triton importable; tiles autotuned per
shape class at first use, i.e. during a server's warm-up), "torch" (the reference: the same functions in fp32 with
plain ops, any device; what the tests compare the kernels against, and what a CPU runs). A CUDA tensor never
silently takes the reference: without Triton the functions raise. All are torch custom ops (``torch.ops.flexrt.*``),
so ``torch.compile`` keeps each as one call and inductor fuses what is around them (the LayerNorm + quantisation that
produces x8).
"""
from __future__ import annotations

import functools
import os

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
    kernel = _gemm_kernel_for(device)
    how = ("TMA persistent kernels, q|k|v with the head RMS norms in its epilogue" if kernel == "tma" else
           "pointer-load kernel, q|k|v unfused (cuBLAS, then the norms compiled)" +
           (f" ({GEMM_KERNEL_ENV}=pointer)" if os.environ.get(GEMM_KERNEL_ENV) == "pointer" else
            " (TMA needs compute capability >= 9.0)"))
    return "triton", f"fused FP8 epilogues: Triton {version} {how} on compute capability {cap[0]}.{cap[1]}"


GEMM_KERNEL_ENV = "FLEXRT_FP8_GEMM"  # "pointer": the pointer-load kernels on Hopper too (A/B measurements)


@functools.lru_cache(maxsize=None)
def _gemm_kernel_for(device: torch.device) -> str:
    """"tma" on compute capability >= 9.0 unless FLEXRT_FP8_GEMM=pointer, else "pointer" (read once a device)."""
    choice = os.environ.get(GEMM_KERNEL_ENV, "auto")
    if choice not in ("auto", "tma", "pointer"):
        raise ValueError(f"{GEMM_KERNEL_ENV} must be auto, tma or pointer, got {choice!r}")
    tma = torch.cuda.get_device_capability(device) >= (9, 0)
    if choice == "tma" and not tma:
        raise RuntimeError(f"{GEMM_KERNEL_ENV}=tma: TMA needs compute capability >= 9.0, {device} has "
                           f"{torch.cuda.get_device_capability(device)}")
    return "pointer" if choice == "pointer" or not tma else "tma"


def fused_qkv_available(device) -> bool:
    """Whether fp8_qkv_rmsnorm runs as its one kernel on ``device`` (a CUDA GPU with TMA and the default kernel
    choice), or as the reference ops (a CPU). Elsewhere (compute capability 8.9, FLEXRT_FP8_GEMM=pointer) its
    composed fallback is eager and slow (3.9 ms for 64 frames on the H200 against 0.43 for the kernel), and the
    decoder keeps the unfused q|k|v path instead (DeployedFrameDecoder(fused_qkv=False))."""
    device = torch.device(device)
    if device.type != "cuda":
        return True
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return _status(device)[0] == "triton" and _gemm_kernel_for(device) == "tma"


def _gemm_kernel(x8: torch.Tensor, *others: torch.Tensor) -> str:
    """The device's kernel; "pointer" also where a TMA descriptor cannot describe an operand (rows not 16-byte
    aligned: K or N not a multiple of 16 for e4m3, of 8 for bf16; FLEX-1's are all multiples of 256)."""
    kernel = _gemm_kernel_for(torch.device("cuda", x8.device.index if x8.device.index is not None
                                           else torch.cuda.current_device()))
    aligned = all(t.stride(-1) == 1 and (t.stride(0) * t.element_size()) % 16 == 0 and t.data_ptr() % 16 == 0
                  for t in (x8, *others))
    return kernel if aligned else "pointer"


def _m_class(m: int) -> int:
    """Autotuning key for the row count: its power of two in frames of 1,024 tokens (a server sees a dozen batch
    buckets; tuning per class instead of per bucket keeps the warm-up short)."""
    return 1 << max(0, (max(m, 1) - 1).bit_length() - 10)


@functools.lru_cache(maxsize=None)
def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


# Autotuning candidates (tiles measured on the H200: dev/fused_ffn_probe.py, dev/gemm_tma_probe.py). Each kernel's
# tile is chosen per shape class at first use; dev/triton_compile_check.py compiles every one for sm_90 on a CPU and
# reports its shared memory and registers, which decide how many programs share an SM.
# pointer-load kernel: (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages)
POINTER_TILES = ((128, 128, 128, 8, 3), (128, 256, 128, 8, 3), (128, 128, 64, 4, 4), (256, 128, 128, 8, 3),
                 (128, 256, 64, 8, 4), (64, 128, 128, 4, 4))
# TMA persistent kernel: (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages, programs an SM, flattened tile loop).
# 8 warps: two warp groups split one tile. Two programs an SM would let one's epilogue run while the other's MMAs do
# (the overlap Triton 3.6 does not build inside one program on Hopper); the 8-warp two-program tiles cap registers
# at 128 and spill. 4-warp tiles that do fit two programs an SM (<= 255 registers, <= ~113 KB shared) were measured
# on the H200 (2026-12-03, dev/kernel_ab_probe.py, call 38): they never won the autotuning by more than its noise,
# so they are not candidates (each candidate costs compile time at every server start).
TMA_TILES = tuple((bm, bn, bk, 8, s, c, f)
                  for bm, bn, bk, s, c in ((128, 256, 128, 3, 1), (128, 256, 64, 4, 1), (128, 128, 128, 3, 1),
                                           (128, 128, 128, 3, 2), (128, 128, 64, 3, 2), (256, 128, 128, 3, 1))
                  for f in (True, False))
# q|k|v kernel: (BLOCK_M, BLOCK_K, warps, stages, programs an SM, flattened tile loop); a tile is BLOCK_M x one head
QKV_TILES = tuple((bm, bk, w, s, c, f)
                  for bm, bk, w, s, c in ((128, 128, 8, 3, 1), (128, 64, 8, 4, 1), (128, 128, 8, 4, 1),
                                          (64, 128, 4, 4, 1), (64, 128, 4, 3, 2), (128, 64, 8, 3, 2))
                  for f in (True, False))


def register_cap(warps: int, ctas: int) -> int | None:
    """Registers a thread that let ``ctas`` programs of ``warps`` warps share an SM's 64 K (None: no cap needed)."""
    cap = 65536 // (ctas * 32 * warps)
    return cap if cap < 255 else None


def _tma_blocks(nargs: dict) -> None:
    """Autotuning pre-hook: the TMA descriptors' block shapes follow the config being run."""
    nargs["x_desc"].block_shape = [nargs["BLOCK_M"], nargs["BLOCK_K"]]
    nargs["w_desc"].block_shape = [nargs.get("SUB", nargs.get("BLOCK_N")), nargs["BLOCK_K"]]
    for name in ("out_desc", "res_desc"):
        if name in nargs:
            nargs[name].block_shape = [nargs["BLOCK_M"], nargs["BLOCK_N"]]


@functools.lru_cache(maxsize=None)
def _build(autotune: bool = True):
    """-> (launch, launch_qkv). ``launch(x8, w8, w_scale, bias, x_scale, out, out_scale=None, residual=None,
    kernel="tma"|"pointer")``: the GEMM with one of its two epilogues; ``launch_qkv(x8, w8, w_scale, bias, x_scale,
    gains, out, n_tokens, n_joint, n_heads, eps)``: the q|k|v GEMM with the head RMS norms in its epilogue.
    ``autotune=False``: one small fixed tile (Triton's CPU interpreter, TRITON_INTERPRET=1, has no driver to time
    configs with)."""
    import triton
    from triton.tools.tensor_descriptor import TensorDescriptor

    from flexrt.kernels._fp8_triton import fp8_gemm_epilogue, fp8_gemm_epilogue_tma, fp8_qkv_rmsnorm_tma, quick_bench

    configs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
               for bm, bn, bk, w, s in POINTER_TILES]

    tma_configs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "CTAS": c, "FLATTEN": f},
                                 num_warps=w, num_stages=s, maxnreg=register_cap(w, c), pre_hook=_tma_blocks)
                   for bm, bn, bk, w, s, c, f in TMA_TILES]
    qkv_configs = [triton.Config({"BLOCK_M": bm, "BLOCK_K": bk, "GROUP_M": 8, "CTAS": c, "FLATTEN": f},
                                 num_warps=w, num_stages=s, maxnreg=register_cap(w, c), pre_hook=_tma_blocks)
                   for bm, bk, w, s, c, f in QKV_TILES]
    key = ["M_CLASS", "N", "K", "RESIDUAL"]
    tuned = triton.autotune(configs=configs, key=key, do_bench=quick_bench)(fp8_gemm_epilogue)
    tuned_tma = triton.autotune(configs=tma_configs, key=key, do_bench=quick_bench)(fp8_gemm_epilogue_tma)
    tuned_qkv = triton.autotune(configs=qkv_configs, key=["M_CLASS", "K", "N_HEADS", "SUB"],
                                do_bench=quick_bench)(fp8_qkv_rmsnorm_tma)
    fixed = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8}
    hw_tanh = os.environ.get("TRITON_INTERPRET", "0") != "1"  # the interpreter runs no PTX (inline tanh.approx)

    def launch(x8, w8, w_scale, bias, x_scale, out, out_scale=None, residual=None, kernel="tma"):
        m, k = x8.shape
        n = w8.shape[0]
        o_scale = x_scale if out_scale is None else out_scale  # (unused with a residual: any fp32 pointer)
        res = out if residual is None else residual  # (unused without a residual)
        if kernel == "tma":
            sms = 4 if not autotune else _num_sms(x8.device)
            grid = lambda meta: (min(meta["CTAS"] * sms,  # noqa: E731
                                     triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"])),)
            x_d, w_d, out_d, res_d = (TensorDescriptor.from_tensor(t, [64, 64]) for t in (x8, w8, out, res))
            args = (x_d, w_d, w_scale, bias, out_d, x_scale, o_scale, res_d, m, n, k, _m_class(m))
            if autotune:
                tuned_tma[grid](*args, NUM_SMS=sms, RESIDUAL=residual is not None, HW_TANH=hw_tanh)
            else:
                _tma_blocks({"x_desc": x_d, "w_desc": w_d, "out_desc": out_d, "res_desc": res_d, **fixed})
                fp8_gemm_epilogue_tma[grid](*args, NUM_SMS=sms, CTAS=1, FLATTEN=True, RESIDUAL=residual is not None,
                                            HW_TANH=hw_tanh, **fixed)
            return out
        grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
        args = (x8, w8, w_scale, bias, out, x_scale, o_scale, res, m, n, k, _m_class(m),
                x8.stride(0), x8.stride(1), w8.stride(0), w8.stride(1), out.stride(0), out.stride(1))
        if autotune:
            tuned[grid](*args, RESIDUAL=residual is not None)
        else:
            fp8_gemm_epilogue[grid](*args, RESIDUAL=residual is not None, **fixed)
        return out

    def launch_qkv(x8, w8, w_scale, bias, x_scale, gains, out, n_tokens, n_joint, n_heads, eps):
        m, k = x8.shape
        sub = gains.shape[1] // 3
        sms = 4 if not autotune else _num_sms(x8.device)
        grid = lambda meta: (min(meta["CTAS"] * sms, triton.cdiv(m, meta["BLOCK_M"]) * 3 * n_heads),)  # noqa: E731
        descs = (TensorDescriptor.from_tensor(x8, [64, 64]), TensorDescriptor.from_tensor(w8, [sub, 64]))
        args = (*descs, w_scale, bias, x_scale, gains, out, m, k, _m_class(m), n_tokens, n_joint, n_heads, eps)
        if autotune:
            tuned_qkv[grid](*args, SUB=sub, NUM_SMS=sms)
        else:
            descs[0].block_shape, descs[1].block_shape = [64, 32], [sub, 32]
            fp8_qkv_rmsnorm_tma[grid](*args, SUB=sub, BLOCK_M=64, BLOCK_K=32, GROUP_M=8, NUM_SMS=sms, CTAS=1,
                                      FLATTEN=True)
        return out

    return launch, launch_qkv


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
        return _build()[0](x8, w8, w_scale, bias, x_scale, out, out_scale=out_scale, kernel=_gemm_kernel(x8, w8, out))
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
        return _build()[0](x8, w8, w_scale, bias, x_scale, out, residual=residual,
                           kernel=_gemm_kernel(x8, w8, out, residual))
    return (residual.float() + _product_reference(x8, w8, w_scale, bias, x_scale)).to(torch.bfloat16)


@fp8_linear_residual.register_fake
def _(x8, w8, w_scale, bias, x_scale, residual):
    return torch.empty_like(residual)


RESIDUAL_GEMM_ENV = "FLEXRT_FP8_RESIDUAL_GEMM"  # "rowwise": to_out / ff_out as torch's row-wise FP8 GEMM (A/B)
RESIDUAL_GEMMS = ("epilogue", "rowwise")


def residual_gemm_choice() -> str:
    """How the decoder's residual GEMMs (to_out, ff_out) run with fp8="fused": "epilogue" (default:
    fp8_linear_residual, the residual add in our kernel's epilogue) or "rowwise" (FLEXRT_FP8_RESIDUAL_GEMM=rowwise:
    fp8_linear_rowwise, the residual add left to the LayerNorm kernel that follows; measured slower on the H200:
    64 streams p99 58 vs 22 ms, docs/BENCHMARKS.md "12:01-12:08 UTC")."""
    choice = os.environ.get(RESIDUAL_GEMM_ENV, "epilogue")
    if choice not in RESIDUAL_GEMMS:
        raise ValueError(f"{RESIDUAL_GEMM_ENV} must be one of {RESIDUAL_GEMMS}, got {choice!r}")
    return choice


def fp8_linear_rowwise(x8: torch.Tensor, w8: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor,
                       x_scale: torch.Tensor) -> torch.Tensor:
    """x8 [M,K] e4m3, w8 [N,K] e4m3, w_scale [N] fp32, bias [N] bf16, x_scale [] fp32 -> bf16 [M,N] = x W^T + b.

    On a CUDA GPU: ``torch._scaled_mm`` with a scale per row of x (x_scale repeated) and per column of W^T, the
    bias in its epilogue (torch 2.11 on the H200 runs cuBLASLt's outer-vector-scaled FP8 kernel,
    ``nvjet_sm90_qqtst_..._ovscale_bias``, in call 32's profile); elsewhere the reference ops. A plain aten call,
    so inductor fuses what follows it (the residual add into the next LayerNorm)."""
    _check(x8, w8, w_scale, bias, x_scale)
    if x8.device.type != "cuda":
        return _product_reference(x8, w8, w_scale, bias, x_scale).to(torch.bfloat16)
    scale_a = x_scale.float().reshape(1, 1).expand(x8.shape[0], 1).contiguous()  # [M,1]
    return torch._scaled_mm(x8, w8.t(), scale_a=scale_a, scale_b=w_scale.float().reshape(1, -1), bias=bias,
                            out_dtype=torch.bfloat16, use_fast_accum=True)


def _qkv_kernel_fits(head_dim: int) -> bool:
    """The q|k|v kernel computes a head as three MMAs of head_dim / 3 channels, a power of two >= 16 (FLEX-1: 64)."""
    sub = head_dim // 3
    return head_dim % 3 == 0 and sub >= 16 and sub & (sub - 1) == 0


def _qkv_composed(x8, w8, w_scale, bias, x_scale, gains, context, eps) -> torch.Tensor:
    """fp8_qkv_rmsnorm as separate ops: the product in fp32 (a CPU), or cuBLAS's FP8 GEMM writing bf16 then the
    scale and bias in fp32 (a CUDA GPU without TMA: the unfused path's numbers); the norms in fp32, one rounding."""
    _, b, m, h, hd = context.shape
    if x8.device.type == "cuda" and x8.shape[1] % 16 == 0 and w8.shape[0] % 16 == 0:
        one = torch.ones((), device=x8.device)
        y = torch._scaled_mm(x8, w8.t(), scale_a=x_scale, scale_b=one, out_dtype=torch.bfloat16, use_fast_accum=True)
        y = y.float() * w_scale + bias.float()
    else:
        y = _product_reference(x8, w8, w_scale, bias, x_scale)
    y = y.view(b, -1, 3, h, hd).movedim(2, 0)  # [3,B,N,H,hd] fp32
    rms = torch.rsqrt(y[:2].pow(2).mean(-1, keepdim=True) + eps) * gains.float()[:, None, None, None, :]
    sample = torch.cat([y[:2] * rms, y[2:]]).to(torch.bfloat16)
    return torch.cat([sample, context], 2)


@torch.library.custom_op("flexrt::fp8_qkv_rmsnorm", mutates_args=())
def fp8_qkv_rmsnorm(x8: torch.Tensor, w8: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor,
                    x_scale: torch.Tensor, gains: torch.Tensor, context: torch.Tensor, eps: float) -> torch.Tensor:
    """The joint block's q|k|v projection of the sample stream with the per-head RMS norms of q and k (spec 5.3,
    steps 2-3), written next to the context stream's, ready for joint attention:

    x8 [B*N,K] e4m3 (N sample tokens a frame), w8 [3D,K] e4m3 (q|k|v rows, D = H*hd), w_scale [3D] fp32, bias [3D]
    bf16, x_scale [] fp32, gains [2,hd] fp32 (norm_q's and norm_k's), context [3,B,M,H,hd] bf16 (the context
    stream's normed q, normed k and v) -> [3,B,N+M,H,hd] bf16: planes q, k, v, each [B,S,H,hd] with the sample tokens
    first; q = (x W_q^T + b_q) rsqrt(mean over hd of its square + eps) g_q in fp32, rounded once (k alike, v
    without the norm).

    One Triton kernel (TMA, compute capability >= 9.0, head_dim / 3 a power of two >= 16: FLEX-1's 192); otherwise
    ``_qkv_composed`` (reported by ``fused_fp8_status``)."""
    _check(x8, w8, w_scale, bias, x_scale)
    three, b, m, h, hd = context.shape
    if three != 3 or w8.shape[0] != 3 * h * hd or x8.shape[0] % b or gains.shape != (2, hd) \
            or context.dtype != torch.bfloat16:
        raise ValueError(f"expected context [3,B,M,H,hd] bf16 with 3*H*hd = {w8.shape[0]} rows of w8, B dividing "
                         f"{x8.shape[0]} tokens, gains [2,hd]; got context {context.dtype}{list(context.shape)}, "
                         f"gains {list(gains.shape)}")
    if not _use_triton(x8) or _gemm_kernel(x8, w8) != "tma" or not _qkv_kernel_fits(hd):
        return _qkv_composed(x8, w8, w_scale, bias, x_scale, gains, context, eps)
    n = x8.shape[0] // b
    out = torch.empty(3, b, n + m, h, hd, device=x8.device, dtype=torch.bfloat16)
    _build()[1](x8, w8, w_scale, bias, x_scale, gains.float().contiguous(), out, n, n + m, h, eps)
    out[:, :, n:].copy_(context)
    return out


@fp8_qkv_rmsnorm.register_fake
def _(x8, w8, w_scale, bias, x_scale, gains, context, eps):
    three, b, m, h, hd = context.shape
    return context.new_empty(three, b, x8.shape[0] // b + m, h, hd)


def _steps(out: torch.Tensor, ref: torch.Tensor, size: torch.Tensor, bits: int) -> dict:
    """The largest |out - ref| in steps of the format (``bits`` mantissa bits) at ``size``, and the share differing."""
    step = torch.exp2(torch.floor(torch.log2(size.clamp_min(2.0 ** -6))) - bits)
    return {"max_diff_steps": float(((out - ref).abs() / step).max()),
            "share_differing": float((out != ref).float().mean())}


def interpreter_check(seed: int = 0) -> dict:
    """The Triton kernels' logic on a CPU (call with TRITON_INTERPRET=1 set before Triton is imported): both
    epilogues of the pointer-load and the TMA kernels at a small ragged shape (every mask and zero-filled edge
    exercised), and the q|k|v kernel with its head RMS norms, one fixed tile each, against the reference ops. -> for
    each, the largest difference in units of the output format's step at the reference value and the share of
    elements that differ. ``tests/test_fp8_gemm.py`` runs it in a subprocess."""
    g = torch.Generator().manual_seed(seed)
    m, n, k = 96, 208, 176  # partial tiles in M, N and K of the 64 x 64 x 32 tile; rows 16-byte aligned (TMA)

    def weights(n, k):
        w32 = torch.randn(n, k, generator=g) / k ** 0.5
        w_scale = w32.abs().amax(1) / FP8_MAX
        bias = (0.1 * torch.randn(n, generator=g)).to(torch.bfloat16)
        return (w32 / w_scale[:, None]).to(torch.float8_e4m3fn), w_scale, bias

    w8, w_scale, bias = weights(n, k)
    x_scale, out_scale = torch.tensor(20.0 / FP8_MAX), torch.tensor(12.0 / FP8_MAX)
    x8 = (torch.randn(m, k, generator=g) / x_scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    residual = torch.randn(m, n, generator=g).to(torch.bfloat16)
    launch, launch_qkv = _build(autotune=False)
    result = {}
    for kernel in ("pointer", "tma"):
        for name, kw, dtype, bits, ref in (
                ("gelu_quantize", {"out_scale": out_scale}, torch.float8_e4m3fn, 3,
                 fp8_linear_gelu_quantize(x8, w8, w_scale, bias, x_scale, out_scale)),
                ("residual", {"residual": residual}, torch.bfloat16, 7,
                 fp8_linear_residual(x8, w8, w_scale, bias, x_scale, residual))):
            out = launch(x8, w8, w_scale, bias, x_scale, torch.empty(m, n, dtype=dtype), kernel=kernel, **kw).float()
            ref = ref.float()
            size = ref.abs() if name == "gelu_quantize" else torch.maximum(ref.abs(), residual.float().abs())
            result[f"{kernel}/{name}"] = _steps(out, ref, size, bits)
    # q|k|v: 2 frames of 40 tokens (one partial row tile a frame boundary runs through), 2 heads of 3 x 16
    b, n_tok, m_ctx, h, hd = 2, 40, 3, 2, 48
    w8, w_scale, bias = weights(3 * h * hd, k)
    x8 = x8[:b * n_tok].contiguous()
    gains = 1.0 + 0.1 * torch.randn(2, hd, generator=g)
    context = torch.randn(3, b, m_ctx, h, hd, generator=g).to(torch.bfloat16)
    ref = _qkv_composed(x8, w8, w_scale, bias, x_scale, gains, context, 1e-6).float()
    out = torch.full((3, b, n_tok + m_ctx, h, hd), float("nan"), dtype=torch.bfloat16)
    launch_qkv(x8, w8, w_scale, bias, x_scale, gains, out, n_tok, n_tok + m_ctx, h, 1e-6)
    out[:, :, n_tok:] = context
    result["qkv_rmsnorm"] = _steps(out.float(), ref, ref.abs(), 7)
    return result


__all__ = ["fp8_linear_gelu_quantize", "fp8_linear_residual", "fp8_qkv_rmsnorm", "fused_fp8_status",
           "fused_qkv_available", "interpreter_check", "FP8_MAX"]
