"""Differentiable rendering for training: one adapter, so the trainer codes against the shared signature.

``render_differentiable`` has the signature of ``flexrt.kernels.rasterize_differentiable`` (issue 11, being
written in the fitting branch):

    (means [B,N,3], quats [B,N,4], scales [B,N,3], opacities [B,N], colors [B,N,3] RGB, viewmats [B,C,4,4],
     Ks [B,C,3,3], width, height, background=None, backend="auto"|"torch"|"gsplat")
        -> (rgb [B,C,H,W,3], alpha [B,C,H,W,1]) with autograd

When ``flexrt.kernels`` exports ``rasterize_differentiable`` it is used as is. Until then this adapter runs the
pure-PyTorch reference ``flexrt.kernels._torch_ref.rasterize_torch`` outside ``no_grad`` (every operation in it
is differentiable w.r.t. means, quats, scales, opacities and colours; tests/test_training.py checks a gradient
against finite differences), or gsplat 1.5.3 when asked for and installed. TODO(lead, at merge): delete the
fallback and import the shared function.
"""
from __future__ import annotations

import torch

from flexrt.kernels.rasterize import EPS2D, FAR_PLANE, NEAR_PLANE

try:  # the shared implementation, once merged
    from flexrt.kernels import rasterize_differentiable as _shared
except ImportError:  # pragma: no cover - depends on the merge state
    _shared = None

BACKENDS = ("auto", "torch", "gsplat")


def _gsplat_available() -> bool:
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return False
    return True


def render_differentiable(means, quats, scales, opacities, colors, viewmats, Ks, width: int, height: int,
                          background: torch.Tensor | None = None, backend: str = "auto"):
    """See the module docstring. ``background`` [3] or [B,C,3]; None = black."""
    if _shared is not None:
        return _shared(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                       background=background, backend=backend)
    if backend not in BACKENDS:
        raise ValueError(f"unknown differentiable backend {backend!r}; expected one of {BACKENDS}")
    B, N = means.shape[:2]
    C = viewmats.shape[1]
    if backend == "gsplat" or (backend == "auto" and means.is_cuda and _gsplat_available()):
        if not _gsplat_available():
            raise RuntimeError("backend='gsplat' needs gsplat (pip install gsplat==1.5.3)")
        from gsplat import rasterization

        rgbs, alphas = [], []
        for b in range(B):  # gsplat 1.5.3 takes one scene per call
            bg = None if background is None else background.expand(B, C, 3)[b]
            r, a, _ = rasterization(means[b], quats[b], scales[b], opacities[b], colors[b], viewmats[b], Ks[b],
                                    width, height, near_plane=NEAR_PLANE, far_plane=FAR_PLANE, eps2d=EPS2D,
                                    backgrounds=bg, packed=False, rasterize_mode="classic")
            rgbs.append(r)
            alphas.append(a)
        return torch.stack(rgbs), torch.stack(alphas)
    from flexrt.kernels._torch_ref import rasterize_torch

    bg = None if background is None else background.to(means.dtype).expand(B, C, 3).contiguous()
    return rasterize_torch(means, quats, scales, opacities, colors, viewmats, Ks, width, height, bg,
                           near_plane=NEAR_PLANE, far_plane=FAR_PLANE, eps2d=EPS2D)


__all__ = ["render_differentiable", "BACKENDS"]
