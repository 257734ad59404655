"""flexrt.kernels: inference-only 3D Gaussian rasterizer (gsplat 1.5.3 "classic" semantics).

    from flexrt.kernels import rasterize, sh_dc_to_rgb
    rgb, alpha = rasterize(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                           background=None, backend="cpu" | "cupy", out_dtype=torch.float32)

Differentiable (autograd, for fitting and training; ``differentiable``):

    from flexrt.kernels import rasterize_differentiable
    rgb, alpha = rasterize_differentiable(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                                          background=None, backend="auto" | "torch" | "gsplat")

Backends: ``cpu`` (vectorised PyTorch reference, ``_torch_ref``) and ``cupy`` (NVRTC-compiled CUDA kernels in
``cuda/rasterize.cu``, ``_cupy_backend``). Depends on nothing else in flexrt. See docs/RASTERIZER.md.
"""
from .differentiable import rasterize_differentiable, resolve_differentiable_backend
from .rasterize import SH_C0, rasterize, sh_dc_to_rgb

__all__ = ["rasterize", "rasterize_differentiable", "resolve_differentiable_backend", "sh_dc_to_rgb", "SH_C0"]
