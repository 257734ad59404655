"""Functional API: ``rasterize`` (validation + backend dispatch) and ``sh_dc_to_rgb``.

Inference only (no autograd). Semantics: gsplat 1.5.3 ``rasterization(colors RGB, sh_degree=None, packed=False,
rasterize_mode="classic", near_plane=0.01, far_plane=1e10, eps2d=0.3, radius_clip=0, tile_size=16)``; see
``_torch_ref`` for the exact per-pixel rules and docs/RASTERIZER.md for the design and measured speed.
"""
from __future__ import annotations

import math

import torch

SH_C0 = 0.28209479177387814
NEAR_PLANE = 0.01
FAR_PLANE = 1e10
EPS2D = 0.3
BACKENDS = ("cpu", "cupy")
OUT_DTYPES = (torch.float32, torch.float16, torch.uint8)


def rgb_to_uint8(rgb: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """float rgb in [0,1] (any shape, any device) -> uint8, round half up: uint8(clamp(x, 0, 1) * 255 + 0.5), the
    product and the sum rounded separately (the blend kernel's uint8 output computes the same)."""
    x = (rgb.clamp(0.0, 1.0) * 255.0 + 0.5)
    return x.to(torch.uint8) if out is None else out.copy_(x)


def sh_dc_to_rgb(c: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Raw SH-DC coefficients [..., 3] -> RGB [..., 3]: ``clamp_min(0.5 + C0 * c, 0)`` (gsplat, sh_degree=0).

    ``out``: write into this tensor (same shape) instead of a new one; the same two roundings either way."""
    if not isinstance(c, torch.Tensor):
        raise ValueError(f"sh_dc_to_rgb: expected a torch.Tensor, got {type(c).__name__}")
    if c.ndim < 1 or c.shape[-1] != 3:
        raise ValueError(f"sh_dc_to_rgb: expected [..., 3], got {tuple(c.shape)}")
    if out is None:
        return torch.clamp_min(0.5 + SH_C0 * c, 0.0)
    if out.shape != c.shape:
        raise ValueError(f"sh_dc_to_rgb: out has shape {tuple(out.shape)}, expected {tuple(c.shape)}")
    torch.mul(c, SH_C0, out=out)
    return out.add_(0.5).clamp_min_(0.0)


def _check_tensor(name: str, t, ndim_min: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if t.ndim < ndim_min:
        raise ValueError(f"{name} must have at least {ndim_min} dims, got shape {tuple(t.shape)}")


def _validate(means, quats, scales, opacities, colors, viewmats, Ks, width, height, background):
    """Shape checks with explicit messages. Returns (batch_dims, N, C)."""
    _check_tensor("means", means, 2)
    if means.shape[-1] != 3:
        raise ValueError(f"means must be [..., N, 3], got {tuple(means.shape)}")
    batch = tuple(means.shape[:-2])
    N = means.shape[-2]
    expect = {
        "quats": (quats, (4,)),
        "scales": (scales, (3,)),
        "opacities": (opacities, ()),
        "colors": (colors, (3,)),
    }
    for name, (t, tail) in expect.items():
        _check_tensor(name, t, 1 + len(tail))
        if tuple(t.shape[t.ndim - len(tail):]) != tail:
            raise ValueError(f"{name} must be [..., N{', ' + ', '.join(map(str, tail)) if tail else ''}], "
                             f"got {tuple(t.shape)}")
        n_here = t.shape[t.ndim - len(tail) - 1]
        if n_here != N:
            raise ValueError(f"mismatched number of Gaussians: means has N={N}, {name} has N={n_here} "
                             f"(shape {tuple(t.shape)})")
        b_here = tuple(t.shape[: t.ndim - len(tail) - 1])
        if b_here != batch:
            raise ValueError(f"mismatched batch dims: means has {batch}, {name} has {b_here}")
    _check_tensor("viewmats", viewmats, 3)
    if tuple(viewmats.shape[-2:]) != (4, 4):
        raise ValueError(f"viewmats must be [..., C, 4, 4], got {tuple(viewmats.shape)}")
    _check_tensor("Ks", Ks, 3)
    if tuple(Ks.shape[-2:]) != (3, 3):
        raise ValueError(f"Ks must be [..., C, 3, 3], got {tuple(Ks.shape)}")
    C = viewmats.shape[-3]
    if tuple(viewmats.shape[:-3]) != batch:
        raise ValueError(f"mismatched batch dims: means has {batch}, viewmats has {tuple(viewmats.shape[:-3])}")
    if tuple(Ks.shape[:-3]) != batch:
        raise ValueError(f"mismatched batch dims: means has {batch}, Ks has {tuple(Ks.shape[:-3])}")
    if Ks.shape[-3] != C:
        raise ValueError(f"mismatched number of cameras: viewmats has C={C}, Ks has C={Ks.shape[-3]}")
    for name, v in (("width", width), ("height", height)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{name} must be an int, got {type(v).__name__}")
        if v <= 0:
            raise ValueError(f"{name} must be positive, got {v}")
    if background is not None:
        _check_tensor("background", background, 1)
        if tuple(background.shape) != (3,) and tuple(background.shape) != batch + (C, 3):
            raise ValueError(f"background must be [3] or [..., C, 3] = {batch + (C, 3)}, "
                             f"got {tuple(background.shape)}")
    devices = {t.device for t in (means, quats, scales, opacities, colors, viewmats, Ks)}
    if background is not None:
        devices.add(background.device)
    if len(devices) != 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(str(d) for d in devices)}")
    return batch, N, C


def rasterize(
    means: torch.Tensor,  # [..., N, 3]
    quats: torch.Tensor,  # [..., N, 4] wxyz, normalised here
    scales: torch.Tensor,  # [..., N, 3]
    opacities: torch.Tensor,  # [..., N]
    colors: torch.Tensor,  # [..., N, 3] RGB, already activated
    viewmats: torch.Tensor,  # [..., C, 4, 4] world-to-camera, OpenCV axes
    Ks: torch.Tensor,  # [..., C, 3, 3] pixel intrinsics
    width: int,
    height: int,
    background: torch.Tensor | None = None,  # [..., C, 3] or [3]; None = black
    backend: str = "cpu",
    out_dtype: torch.dtype = torch.float32,
    workspace=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render 3D Gaussians -> (rgb [..., C, H, W, 3], alpha [..., C, H, W, 1]) in ``out_dtype``.

    ``out_dtype=torch.uint8``: 0..255, :func:`rgb_to_uint8` of the fp32 result (round half up), computed in the
    blend kernel (no fp32 image is written: what a server encoding frames wants).

    ``backend="cpu"``: the pure-PyTorch reference (runs on the tensors' device). ``backend="cupy"``: the
    CUDA kernels (needs CUDA tensors, CuPy and a GPU; raises RuntimeError when CuPy/CUDA is missing).
    Inputs of other float dtypes are cast to float32. No autograd. ``workspace`` (cupy): caller-owned work
    buffers (``Workspace()``), for frames captured in a CUDA graph with :func:`capture_graph`.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be torch.float32, torch.float16 or torch.uint8, got {out_dtype}")
    batch, N, C = _validate(means, quats, scales, opacities, colors, viewmats, Ks, width, height, background)
    B = math.prod(batch)
    dev = means.device

    def flat(t, tail):
        return t.reshape((B,) + tail).to(torch.float32).contiguous()

    args = (
        flat(means, (N, 3)), flat(quats, (N, 4)), flat(scales, (N, 3)), flat(opacities, (N,)),
        flat(colors, (N, 3)), flat(viewmats, (C, 4, 4)), flat(Ks, (C, 3, 3)),
    )
    bg = None
    if background is not None:
        bg = background.to(torch.float32).contiguous()
        if backend == "cpu" or bg.ndim > 1:
            bg = bg.expand(batch + (C, 3)).reshape(B, C, 3).contiguous()

    with torch.no_grad():
        if backend == "cupy":
            from . import _cupy_backend

            _cupy_backend.require_cupy()
            if dev.type != "cuda":
                raise ValueError(f"backend='cupy' needs CUDA tensors, got tensors on {dev}")
            rgb, alpha = _cupy_backend.rasterize_cupy(
                *args, width, height, bg, near_plane=NEAR_PLANE, far_plane=FAR_PLANE, eps2d=EPS2D,
                out_dtype=out_dtype, workspace=workspace,
            )
        else:
            from ._torch_ref import rasterize_torch

            rgb, alpha = rasterize_torch(*args, width, height, bg, near_plane=NEAR_PLANE, far_plane=FAR_PLANE,
                                         eps2d=EPS2D)
            if out_dtype == torch.uint8:
                rgb, alpha = rgb_to_uint8(rgb), rgb_to_uint8(alpha)
            else:
                rgb, alpha = rgb.to(out_dtype), alpha.to(out_dtype)
    return rgb.reshape(batch + (C, height, width, 3)), alpha.reshape(batch + (C, height, width, 1))


def capture_graph(fn, device: torch.device | int | None = None, pool=None):
    """Capture ``fn()`` in a CUDA graph -> (graph, what the captured call returned).

    ``fn`` runs once eagerly on a side stream first (kernel compilation, work-buffer sizing), then once under
    capture. ``graph.replay()`` re-runs the captured kernels on whatever the input tensors hold then, writing the
    same output tensors. Everything ``fn`` touches must stay alive (and at the same addresses) while the graph is
    used: the caller owns it -- pass ``rasterize`` a ``Workspace()`` of the caller's for that reason. ``pool``: a
    ``torch.cuda.graph_pool_handle()`` shared with other graphs that are never replayed concurrently with this one.
    """
    cur = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(cur)
    with torch.cuda.stream(side):
        fn()
        graph = torch.cuda.CUDAGraph()
        graph.capture_begin(pool=pool, capture_error_mode="thread_local")
        try:
            result = fn()
        finally:
            graph.capture_end()
    cur.wait_stream(side)
    return graph, result


__all__ = ["rasterize", "rgb_to_uint8", "sh_dc_to_rgb", "SH_C0", "capture_graph"]
