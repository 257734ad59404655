"""Differentiable rasterization: ``rasterize_differentiable`` (autograd through means, quats, scales, opacities,
colours and the background), for avatar fitting and training.

    from flexrt.kernels import rasterize_differentiable, resolve_differentiable_backend
    rgb, alpha = rasterize_differentiable(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                                          background=None, backend="auto" | "torch" | "gsplat")

Same semantics as ``flexrt.kernels.rasterize`` (gsplat 1.5.3 ``rasterization`` with RGB colours, ``packed=False``,
``rasterize_mode="classic"``, near 0.01, far 1e10, eps2d 0.3, tile 16). Backends:

* ``"torch"``: the project's pure-PyTorch reference (``_torch_ref``) run with autograd on, on the tensors' own
  device (CPU or CUDA), in the inputs' dtype (float32, or float64 for gradient checks). Each blend round is
  checkpointed, so the autograd graph keeps only [A, 256] transmittances and [A, K] Gaussian attributes per round
  and the backward recomputes one round at a time: peak memory is bounded per round (about 0.5 GB of temporaries)
  plus roughly ``rounds x H x W x 6`` floats of saved round inputs (hundreds of MB at 512² with ~58k Gaussians).
* ``"gsplat"``: ``gsplat.rasterization`` (CUDA kernels with analytic backward; the ``gpu`` extra pins 1.5.3).
  Needs CUDA tensors and float32. Not differentiable w.r.t. ``Ks`` (gsplat's limitation); nor is the torch path
  meant to be (only the Gaussians and the background are optimised here).
* ``"auto"``: gsplat when the tensors are on CUDA and gsplat imports, else torch. The choice is logged once per
  (device type, choice) and returned by ``resolve_differentiable_backend``. An explicit ``"gsplat"`` never falls
  back: a missing package or CPU tensors are an error naming what is missing.
"""
from __future__ import annotations

import logging
import math

import torch

from .rasterize import EPS2D, FAR_PLANE, NEAR_PLANE, _validate

logger = logging.getLogger("flexrt.kernels")

DIFFERENTIABLE_BACKENDS = ("auto", "torch", "gsplat")
_logged: set[tuple[str, str]] = set()
_gsplat_import_error: str | None = None


def _gsplat_rasterization():
    """gsplat.rasterization, or None with the import error remembered (for the error messages)."""
    global _gsplat_import_error
    try:
        from gsplat import rasterization
    except Exception as exc:  # ImportError, or a CUDA-extension load failure inside gsplat
        _gsplat_import_error = f"{type(exc).__name__}: {exc}"
        return None
    return rasterization


def resolve_differentiable_backend(device: torch.device | str, backend: str = "auto") -> str:
    """``backend`` ("auto" | "torch" | "gsplat") for tensors on ``device`` -> "torch" or "gsplat".

    "auto" logs its choice once (and why); "gsplat" raises RuntimeError when gsplat cannot be imported and
    ValueError when the device is not CUDA."""
    if backend not in DIFFERENTIABLE_BACKENDS:
        raise ValueError(f"unknown differentiable rasterizer backend {backend!r}; expected one of "
                         f"{DIFFERENTIABLE_BACKENDS}")
    dev = torch.device(device)
    if backend == "torch":
        return "torch"
    if backend == "gsplat":
        if dev.type != "cuda":
            raise ValueError(f"backend='gsplat' needs CUDA tensors, got tensors on {dev}; use backend='torch' on the "
                             "CPU")
        if _gsplat_rasterization() is None:
            raise RuntimeError(f"backend='gsplat' requested but gsplat cannot be imported ({_gsplat_import_error}); "
                               "install it with `pip install gsplat==1.5.3` (the `gpu` extra) or use backend='torch'")
        return "gsplat"
    if dev.type == "cuda" and _gsplat_rasterization() is not None:
        picked, why = "gsplat", "CUDA tensors and gsplat importable"
    elif dev.type == "cuda":
        picked, why = "torch", f"gsplat not importable: {_gsplat_import_error}"
    else:
        picked, why = "torch", f"tensors on {dev.type}"
    if (dev.type, picked) not in _logged:
        _logged.add((dev.type, picked))
        logger.info("differentiable rasterizer: backend auto picked %s (%s)", picked, why)
    return picked


def rasterize_differentiable(
    means: torch.Tensor,  # [B, N, 3]
    quats: torch.Tensor,  # [B, N, 4] wxyz, normalised here
    scales: torch.Tensor,  # [B, N, 3]
    opacities: torch.Tensor,  # [B, N]
    colors: torch.Tensor,  # [B, N, 3] RGB, already activated (flexrt.kernels.sh_dc_to_rgb)
    viewmats: torch.Tensor,  # [B, C, 4, 4] world-to-camera, OpenCV axes
    Ks: torch.Tensor,  # [B, C, 3, 3] pixel intrinsics
    width: int,
    height: int,
    background: torch.Tensor | None = None,  # [3] or [B, C, 3]; None = black
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render with autograd -> (rgb [B, C, H, W, 3], alpha [B, C, H, W, 1]).

    Leading batch dims may be any shape (``[..., N, 3]`` as in ``rasterize``); [B] is the common case. The
    output is not clamped to [0, 1] (gsplat does not clamp either)."""
    batch, N, C = _validate(means, quats, scales, opacities, colors, viewmats, Ks, width, height, background)
    picked = resolve_differentiable_backend(means.device, backend)
    B = math.prod(batch)
    bg = None
    if background is not None:
        bg = background.expand(batch + (C, 3)).reshape(B, C, 3)

    if picked == "gsplat":
        dtypes = {t.dtype for t in (means, quats, scales, opacities, colors, viewmats, Ks)}
        if dtypes != {torch.float32} or (bg is not None and bg.dtype != torch.float32):
            raise ValueError(f"backend='gsplat' needs float32 tensors, got {sorted(str(d) for d in dtypes)}")
        rasterization = _gsplat_rasterization()
        rgb, alpha, _ = rasterization(
            means.reshape(B, N, 3), quats.reshape(B, N, 4), scales.reshape(B, N, 3), opacities.reshape(B, N),
            colors.reshape(B, N, 3), viewmats.reshape(B, C, 4, 4), Ks.reshape(B, C, 3, 3), width, height,
            near_plane=NEAR_PLANE, far_plane=FAR_PLANE, radius_clip=0.0, eps2d=EPS2D, sh_degree=None,
            packed=False, tile_size=16, backgrounds=bg, render_mode="RGB", rasterize_mode="classic",
        )
    else:
        from ._torch_ref import rasterize_torch

        dtype = means.dtype
        if any(t.dtype != dtype for t in (quats, scales, opacities, colors, viewmats, Ks)) or (
                bg is not None and bg.dtype != dtype):
            raise ValueError("backend='torch': all tensors must share one float dtype, got "
                             f"{sorted({str(t.dtype) for t in (means, quats, scales, opacities, colors, viewmats, Ks)})}")
        rgb, alpha = rasterize_torch(
            means.reshape(B, N, 3), quats.reshape(B, N, 4), scales.reshape(B, N, 3), opacities.reshape(B, N),
            colors.reshape(B, N, 3), viewmats.reshape(B, C, 4, 4), Ks.reshape(B, C, 3, 3), width, height, bg,
            near_plane=NEAR_PLANE, far_plane=FAR_PLANE, eps2d=EPS2D, recompute=True,
        )
    return rgb.reshape(batch + (C, height, width, 3)), alpha.reshape(batch + (C, height, width, 1))


__all__ = ["rasterize_differentiable", "resolve_differentiable_backend", "DIFFERENTIABLE_BACKENDS"]
