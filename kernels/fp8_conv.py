"""FP8 3x3 convolutions with the StyleGAN layer's epilogue fused: the decoder's upsampler at twice bf16's rate.

    from flexrt.kernels.fp8_conv import fp8_conv3x3_lrelu, fp8_conv3x3_lrelu_shuffle, fp8_conv_status
    y = fp8_conv3x3_lrelu(x8, w8, w_scale, bias, x_scale)    # [B,H,W,C] e4m3 -> [B,H,W,N] bf16 (NHWC)
    x8_next = fp8_conv3x3_lrelu_shuffle(x8, w8p, w_scale_p, bias_p, x_scale, next_scale)
                                                             # up-conv: -> [B,2H,2W,N/4] e4m3, the next conv's input

The function (model/stylegan.py ``SynthesisLayer`` with its folded weight; the up-convs in their sub-pixel form,
before the pixel shuffle, which the caller applies):

    y = bf16( clamp( leaky_relu(conv3x3(x, W, padding 1) + b, 0.2) * sqrt(2), +-256 ) )

with x = x8 * x_scale (x8 [B,H,W,C] float8 e4m3fn, one tensor-wise scale x_scale [] fp32, calibrated once as for the
FP8 GEMMs), W = w8 * w_scale (w8 [N,3,3,C] e4m3fn, one scale per output channel w_scale [N] fp32) and bias [N] fp32.

Backends (``fp8_conv_status``): "triton" on a CUDA GPU with FP8 tensor cores (compute capability >= 8.9) and
Triton: an implicit GEMM (M = B*H*W output pixels, N output channels, K = 9 taps x C, each K step one tap of one
block of input channels read from the shifted pixels, zero outside the image) whose epilogue dequantises in fp32
and applies bias, leaky ReLU, gain and clamp; tiles autotuned per shape class at first use (a server's warm-up).
"torch": the same function in fp32 with plain ops (any device; what the tests compare the kernel against, and what a
CPU runs). A CUDA tensor never silently takes the reference: without Triton the op raises. The op is a torch custom
op (``torch.ops.flexrt.fp8_conv3x3_lrelu``): ``torch.compile`` keeps it as one call and fuses the quantisation of
its input into the kernel that produces it.

Measured on the H200 (dev/fp8_conv_probe.py, 2026-12-03, docs/BENCHMARKS.md): against cuDNN's bf16 channels-last
convolution + inductor's epilogue kernel, 1.25-1.59x per convolution of FLEX-1's upsampler, 10.4 -> 7.0 ms for the
four at 64 frames (~1,000 TFLOP/s); the e4m3 operands put one convolution ~3.7 % RMS off the fp32 function on random
operands (bf16: 0.33 %), so the decoder's rendered PSNR against fp32 is what decides (tests/test_fp8_conv.py).
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from .fp8_gemm import FP8_MAX, _triton_version, _use_triton, fused_fp8_status

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)  # model/stylegan.py's constants, repeated in the kernel's epilogue
CONV_CLAMP = 256.0


def fp8_conv_status(device) -> tuple[str | None, str]:
    """-> (backend, why): "triton" on a CUDA device with FP8 tensor cores and Triton, "torch" (reference ops) on a
    CPU, None on a CUDA device that cannot run the kernel; ``why`` says which and why, in one line."""
    backend, why = fused_fp8_status(device)  # same requirements as the FP8 GEMMs; the kernel is this module's
    if backend == "triton":
        cap = torch.cuda.get_device_capability(torch.device(device))
        return backend, f"FP8 convolutions: Triton {_triton_version()} implicit-GEMM kernel on compute capability " \
                        f"{cap[0]}.{cap[1]}"
    return backend, why.replace("fused FP8 epilogues", "FP8 convolutions")


def _b_class(b: int) -> int:
    """Autotuning key for the batch: its power of two (a server sees a dozen batch buckets)."""
    return 1 << max(0, (max(b, 1) - 1).bit_length())


# Autotuning candidates: (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages), measured on the H200 at FLEX-1's four
# convolutions (dev/fp8_conv_probe.py; 4-warp tiles that let two programs share an SM, tried 2026-12-03 in
# dev/kernel_ab_probe.py, never won).
CONV_TILES = ((128, 128, 128, 8, 3), (128, 256, 128, 8, 3), (128, 128, 64, 4, 4), (256, 128, 128, 8, 3),
              (128, 256, 64, 8, 4), (64, 128, 128, 4, 4))


@functools.lru_cache(maxsize=None)
def _build(autotune: bool = True):
    """-> launch(x8, w8, w_scale, bias, x_scale, out, out_scale=None): ``out`` [B,H,W,N] bf16, or with ``out_scale``
    [B,2H,2W,N/4] e4m3 (w8's rows phase-major; pixel-shuffled, quantised); ``autotune=False``: one small fixed tile
    (Triton's CPU interpreter, TRITON_INTERPRET=1, has no driver to time configs with)."""
    import triton

    from flexrt.kernels._fp8_triton import fp8_conv3x3_kernel, quick_bench

    configs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=wp, num_stages=st)
               for bm, bn, bk, wp, st in CONV_TILES]
    tuned = triton.autotune(configs=configs, key=["B_CLASS", "H", "W", "C", "N", "SHUFFLE"], do_bench=quick_bench)(
        fp8_conv3x3_kernel)
    fixed = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4}

    def launch(x8, w8, w_scale, bias, x_scale, out, out_scale=None):
        b, h, w, c = x8.shape
        n = w8.shape[0]
        grid = lambda meta: (triton.cdiv(b * h * w, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
        o_scale = x_scale if out_scale is None else out_scale  # (unused without the shuffle: any fp32 pointer)
        # the shuffle: 2 = one phase a tile (N' a multiple of every tile's BLOCK_N <= 256: FLEX-1's 512 and 256)
        shuffle = 0 if out_scale is None else 2 if (n // 4) % 256 == 0 else 1
        n_out = n // 4 if shuffle else n
        args = (x8, w8, w_scale, bias, out, x_scale, o_scale, b, h, w, c, n, n_out, _b_class(b))
        if autotune:
            tuned[grid](*args, SHUFFLE=shuffle)
        else:
            fp8_conv3x3_kernel[grid](*args, SHUFFLE=shuffle, **fixed)
        return out

    return launch


def _check(x8, w8, w_scale, bias, x_scale) -> None:
    if x8.dtype != torch.float8_e4m3fn or w8.dtype != torch.float8_e4m3fn or x8.dim() != 4 or w8.dim() != 4:
        raise ValueError(f"expected x8 [B,H,W,C] and w8 [N,3,3,C] float8_e4m3fn, got {x8.dtype}{list(x8.shape)} and "
                         f"{w8.dtype}{list(w8.shape)}")
    n, c = w8.shape[0], x8.shape[3]
    if tuple(w8.shape[1:]) != (3, 3, c) or not x8.is_contiguous() or not w8.is_contiguous():
        raise ValueError(f"expected contiguous x8 [B,H,W,C] and w8 [N,3,3,C] with the same C, got {list(x8.shape)} "
                         f"and {list(w8.shape)}")
    if w_scale.shape != (n,) or bias.shape != (n,) or x_scale.numel() != 1:
        raise ValueError(f"expected w_scale [{n}], bias [{n}] and a one-element x_scale, got {list(w_scale.shape)}, "
                         f"{list(bias.shape)} and {list(x_scale.shape)}")


def conv_reference(x8, w8, w_scale, bias, x_scale) -> torch.Tensor:
    """The function in fp32 with plain ops (any device) -> fp32 [B,H,W,N] (before the bf16 rounding)."""
    x = (x8.float() * x_scale.float()).permute(0, 3, 1, 2)  # [B,C,H,W]
    w = (w8.float() * w_scale.float()[:, None, None, None]).permute(0, 3, 1, 2)  # [N,C,3,3]
    y = F.conv2d(x, w, padding=1).permute(0, 2, 3, 1) + bias.float()
    return (F.leaky_relu(y, LRELU_SLOPE) * LRELU_GAIN).clamp(-CONV_CLAMP, CONV_CLAMP)


@torch.library.custom_op("flexrt::fp8_conv3x3_lrelu", mutates_args=())
def fp8_conv3x3_lrelu(x8: torch.Tensor, w8: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor,
                      x_scale: torch.Tensor) -> torch.Tensor:
    """x8 [B,H,W,C] e4m3, w8 [N,3,3,C] e4m3, w_scale [N] fp32, bias [N] fp32, x_scale [] fp32
    -> bf16 [B,H,W,N] = clamp(leaky_relu(conv3x3(x, W) + b, 0.2) * sqrt(2), +-256)."""
    _check(x8, w8, w_scale, bias, x_scale)
    if _use_triton(x8, fp8_conv_status):
        out = torch.empty(*x8.shape[:3], w8.shape[0], device=x8.device, dtype=torch.bfloat16)
        return _build()(x8, w8, w_scale, bias, x_scale, out)
    return conv_reference(x8, w8, w_scale, bias, x_scale).to(torch.bfloat16)


@fp8_conv3x3_lrelu.register_fake
def _(x8, w8, w_scale, bias, x_scale):
    return x8.new_empty(*x8.shape[:3], w8.shape[0], dtype=torch.bfloat16)


def to_phase_major(t: torch.Tensor) -> torch.Tensor:
    """A sub-pixel conv's per-output-channel tensor (weight rows, scales, bias: [4N', ...]) from PixelShuffle's order
    (channel 4o + p) to phase-major (channel p N' + o), p = 2i + j the sub-pixel (i, j)."""
    return t.reshape(-1, 4, *t.shape[1:]).transpose(0, 1).reshape(t.shape).contiguous()


def shuffle_phase_major(y: torch.Tensor) -> torch.Tensor:
    """PixelShuffle(2) on NHWC with phase-major channels: [B,H,W,4N'] (channel p N' + o, p = 2i + j) ->
    [B,2H,2W,N'] (channel o of pixel (2h + i, 2w + j))."""
    b, h, w, n = y.shape
    return y.reshape(b, h, w, 2, 2, n // 4).permute(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, n // 4)


@torch.library.custom_op("flexrt::fp8_conv3x3_lrelu_shuffle", mutates_args=())
def fp8_conv3x3_lrelu_shuffle(x8: torch.Tensor, w8: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor,
                              x_scale: torch.Tensor, out_scale: torch.Tensor) -> torch.Tensor:
    """An up-conv in its sub-pixel form feeding another FP8 convolution: x8 [B,H,W,C] e4m3, w8 [4N',3,3,C] e4m3 with
    its output channels phase-major (``to_phase_major``: channel p N' + o is sub-pixel p = 2i + j of output channel
    o), w_scale [4N'] and bias [4N'] fp32 in the same order, x_scale [] fp32, out_scale [] fp32 (the next
    convolution's input scale) -> e4m3 [B,2H,2W,N'] = clamp(shuffle(clamp(leaky_relu(conv3x3(x, W) + b, 0.2) *
    sqrt(2), +-256)) / out_scale, +-448) (``shuffle_phase_major``: PixelShuffle by 2): the next layer's quantised
    input, written by the convolution's epilogue (one rounding, from fp32) instead of a bf16 image, a shuffle and a
    quantisation kernel. Phase-major channels make a tile's output rows contiguous runs of channels (PixelShuffle's
    order would scatter every byte: measured 1.7x slower on the H200, device call 39)."""
    _check(x8, w8, w_scale, bias, x_scale)
    b, h, w, _ = x8.shape
    n = w8.shape[0]
    if n % 4 or out_scale.numel() != 1:
        raise ValueError(f"expected N divisible by 4 (PixelShuffle by 2) and a one-element out_scale, got N = {n} and "
                         f"out_scale {list(out_scale.shape)}")
    if _use_triton(x8, fp8_conv_status):
        out = torch.empty(b, 2 * h, 2 * w, n // 4, device=x8.device, dtype=torch.float8_e4m3fn)
        return _build()(x8, w8, w_scale, bias, x_scale, out, out_scale=out_scale)
    y = shuffle_phase_major(conv_reference(x8, w8, w_scale, bias, x_scale)) / out_scale.float()
    return y.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).contiguous()


@fp8_conv3x3_lrelu_shuffle.register_fake
def _(x8, w8, w_scale, bias, x_scale, out_scale):
    b, h, w, _ = x8.shape
    return x8.new_empty(b, 2 * h, 2 * w, w8.shape[0] // 4, dtype=torch.float8_e4m3fn)


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N,C,3,3] (any float dtype) -> (w8 [N,3,3,C] e4m3fn contiguous, w_scale [N] fp32): one scale per output
    channel, the channel's largest magnitude at FP8_MAX."""
    w = w.detach().float()
    scale = w.abs().amax(dim=(1, 2, 3)).clamp_min(1e-12) / FP8_MAX
    return (w / scale[:, None, None, None]).permute(0, 2, 3, 1).contiguous().to(torch.float8_e4m3fn), scale


def interpreter_check(seed: int = 0) -> dict:
    """The Triton kernel's logic on a CPU (call with TRITON_INTERPRET=1 set before Triton is imported): a small ragged
    problem (partial tiles in M, N and K, every border tap) with one fixed tile, against the reference op. -> the
    largest difference in bf16 steps of the reference value and the share of elements that differ.
    ``tests/test_fp8_conv.py`` runs it in a subprocess."""
    g = torch.Generator().manual_seed(seed)
    b, h, w, c, n = 2, 5, 7, 40, 24
    x = torch.randn(b, h, w, c, generator=g)
    x_scale = (x.abs().amax() / FP8_MAX).reshape(())
    x8 = (x / x_scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).contiguous()
    w8, w_scale = quantize_weight(torch.randn(n, c, 3, 3, generator=g) / (9 * c) ** 0.5)
    bias = 0.1 * torch.randn(n, generator=g)
    launch = _build(autotune=False)
    out = launch(x8, w8, w_scale, bias, x_scale, torch.empty(b, h, w, n, dtype=torch.bfloat16)).float()
    ref = conv_reference(x8, w8, w_scale, bias, x_scale)
    step = torch.exp2(torch.floor(torch.log2(ref.abs().clamp_min(2.0 ** -20))) - 7)
    result = {"max_diff_steps": float(((out - ref).abs() / step).max()),
              "share_differing": float((out != ref.to(torch.bfloat16).float()).float().mean())}
    # the shuffle + e4m3 epilogue, in e4m3 steps (3 mantissa bits): N' = 6 (a phase changes inside a tile) and, with
    # 8 input channels, N' = 256 (one phase a tile, the path FLEX-1's up-convs take)
    for name, (c2, n2) in (("shuffle", (c, n)), ("shuffle_one_phase_a_tile", (8, 1024))):
        x8_2 = x8[..., :c2].contiguous() if c2 <= c else x8
        w8_2, w_scale_2 = quantize_weight(torch.randn(n2, c2, 3, 3, generator=g) / (9 * c2) ** 0.5)
        bias_2 = 0.1 * torch.randn(n2, generator=g)
        ref2 = conv_reference(x8_2, w8_2, w_scale_2, bias_2, x_scale)
        out_scale = (ref2.abs().amax() / FP8_MAX).reshape(())
        out8 = launch(x8_2, w8_2, w_scale_2, bias_2, x_scale,
                      torch.empty(b, 2 * h, 2 * w, n2 // 4, dtype=torch.float8_e4m3fn), out_scale=out_scale).float()
        ref8 = (shuffle_phase_major(ref2) / out_scale).clamp(-FP8_MAX, FP8_MAX)
        step8 = torch.exp2(torch.floor(torch.log2(ref8.abs().clamp_min(2.0 ** -6))) - 3)
        # Triton's interpreter (3.9) drops the carry when e4m3 rounding goes up to the next power of two (124 -> 64,
        # where a GPU and torch give 128): those elements are counted, not compared (the GPU test covers them)
        up = ref8.to(torch.float8_e4m3fn).float().abs()
        carry = (up > ref8.abs()) & (torch.frexp(up).mantissa == 0.5)
        result[f"{name}_max_diff_steps"] = float(((out8 - ref8).abs() / step8)[~carry].max())
        result[f"{name}_carry_elements_left_out"] = int(carry.sum())
    return result


__all__ = ["fp8_conv3x3_lrelu", "fp8_conv3x3_lrelu_shuffle", "shuffle_phase_major", "to_phase_major",
           "fp8_conv_status", "conv_reference", "quantize_weight", "interpreter_check"]
