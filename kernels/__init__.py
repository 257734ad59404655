"""flexrt.kernels: inference-only 3D Gaussian rasterizer (gsplat 1.5.3 "classic" semantics).

    from flexrt.kernels import rasterize, sh_dc_to_rgb
    rgb, alpha = rasterize(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                           background=None, backend="cpu" | "cupy", out_dtype=torch.float32)

    from flexrt.kernels.jpeg import JpegEncoder    # batched baseline JPEG of uint8 frames [B,H,W,3], GPU or CPU
    data, lengths = JpegEncoder(512, 512, quality=90, device="cuda").encode(frames)

Differentiable (autograd, for fitting and training; ``differentiable``):

    from flexrt.kernels import rasterize_differentiable
    rgb, alpha = rasterize_differentiable(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                                          background=None, backend="auto" | "torch" | "gsplat")

FP8 GEMMs with fused epilogues (the decoder's q|k|v with its head norms, feed forward and residual adds; Triton on
FP8 GPUs, TMA on Hopper, reference ops on a CPU; ``fp8_gemm``):

    from flexrt.kernels.fp8_gemm import (fp8_linear_gelu_quantize, fp8_linear_residual, fp8_qkv_rmsnorm,
                                         fused_fp8_status)

FP8 3x3 convolutions with the StyleGAN layer's epilogue (the decoder's upsampler; same backends; ``fp8_conv``):

    from flexrt.kernels.fp8_conv import fp8_conv3x3_lrelu, fp8_conv_status

Backends: ``cpu`` (vectorised PyTorch reference, ``_torch_ref``) and ``cupy`` (NVRTC-compiled CUDA kernels in
``cuda/rasterize.cu``, ``_cupy_backend``). Depends on nothing else in flexrt. See docs/RASTERIZER.md.
"""
from ._cupy_backend import Workspace
from .differentiable import rasterize_differentiable, resolve_differentiable_backend
from .jpeg import JpegEncoder
from .rasterize import SH_C0, capture_graph, rasterize, rgb_to_uint8, sh_dc_to_rgb

__all__ = ["rasterize", "rasterize_differentiable", "resolve_differentiable_backend", "rgb_to_uint8", "sh_dc_to_rgb",
           "SH_C0", "JpegEncoder", "capture_graph", "Workspace"]
