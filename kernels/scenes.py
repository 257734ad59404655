"""Synthetic head-like Gaussian scenes and cameras for tests and benchmarks (no model needed).

The statistics follow the FLEX-1 output (spec §5.7, §13): G Gaussians near an ellipsoid head surface inside
x in [-0.105, 0.105], y in [-0.19, 0.13], z in [-0.14, 0.076] (metres), scales clamp(exp(.), max=0.01) with about a
third at the 0.01 clip, opacities sigmoid(.), colours from SH-DC coefficients; cameras about 1 m away on +z,
fx = fy = 1500 at 512x512 (scaled with the image size).
"""
from __future__ import annotations

import math

import torch

from .rasterize import sh_dc_to_rgb

HEAD_CENTER = (0.0, -0.03, -0.032)
HEAD_AXES = (0.105, 0.16, 0.108)


def head_scene(G: int, seed: int = 0, device: str | torch.device = "cpu", batch: tuple[int, ...] = ()) -> dict:
    """Head-like scene: dict of means [*batch, G, 3], quats [*batch, G, 4] (wxyz, NOT normalised),
    scales [*batch, G, 3], opacities [*batch, G], colors [*batch, G, 3] (RGB), all float32 on ``device``."""
    gen = torch.Generator().manual_seed(seed)
    shape = tuple(batch) + (G,)

    def randn(*tail):
        return torch.randn(shape + tail, generator=gen)

    d = randn(3)
    d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    shell = 0.85 + 0.15 * torch.rand(shape + (1,), generator=gen)  # points on and just under the surface
    axes = torch.tensor(HEAD_AXES)
    center = torch.tensor(HEAD_CENTER)
    means = center + d * axes * shell
    scales = torch.exp(math.log(0.006) + 0.9 * randn(3)).clamp(1e-4, 0.01)
    quats = randn(4)
    opacities = torch.sigmoid(0.5 + 1.5 * randn())
    colors = sh_dc_to_rgb(randn(3))
    out = dict(means=means, quats=quats, scales=scales, opacities=opacities, colors=colors)
    return {k: v.to(torch.float32).to(device) for k, v in out.items()}


def look_at_viewmat(cam_pos: torch.Tensor, target: torch.Tensor, up=(0.0, 1.0, 0.0)) -> torch.Tensor:
    """World-to-camera [..., 4, 4] (OpenCV: x right, y down, z forward) for cameras at cam_pos [..., 3]."""
    up_t = torch.tensor(up, dtype=cam_pos.dtype, device=cam_pos.device).expand_as(cam_pos)
    fwd = torch.nn.functional.normalize(target - cam_pos, dim=-1)
    right = torch.nn.functional.normalize(torch.cross(fwd, up_t, dim=-1), dim=-1)
    down = torch.cross(fwd, right, dim=-1)
    rot = torch.stack([right, down, fwd], dim=-2)  # rows
    view = torch.zeros(cam_pos.shape[:-1] + (4, 4), dtype=cam_pos.dtype, device=cam_pos.device)
    view[..., :3, :3] = rot
    view[..., :3, 3] = -(rot @ cam_pos[..., None])[..., 0]
    view[..., 3, 3] = 1.0
    return view


def head_cameras(
    n: int,
    width: int = 512,
    height: int = 512,
    distance: float = 1.0,
    fx512: float = 1500.0,
    max_yaw_deg: float = 30.0,
    device: str | torch.device = "cpu",
    batch: tuple[int, ...] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """n cameras on a horizontal arc (yaw in [-max_yaw, max_yaw], camera 0 frontal when n == 1) looking at the
    head centre from ``distance`` -> (viewmats [*batch, n, 4, 4], Ks [*batch, n, 3, 3]); fx = fx512 * width / 512."""
    if n == 1:
        yaws = torch.zeros(1, dtype=torch.float64)
    else:
        yaws = torch.linspace(-max_yaw_deg, max_yaw_deg, n, dtype=torch.float64) * (math.pi / 180.0)
    target = torch.tensor([0.0, -0.03, 0.0], dtype=torch.float64)
    pos = torch.stack([distance * torch.sin(yaws), torch.full_like(yaws, -0.03), distance * torch.cos(yaws)], -1)
    view = look_at_viewmat(pos, target.expand_as(pos))
    fx = fx512 * width / 512.0
    fy = fx512 * height / 512.0
    K = torch.tensor([[fx, 0.0, width / 2.0], [0.0, fy, height / 2.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    Ks = K.expand(n, 3, 3)
    view = view.expand(tuple(batch) + (n, 4, 4))
    Ks = Ks.expand(tuple(batch) + (n, 3, 3))
    return view.to(torch.float32).to(device).contiguous(), Ks.to(torch.float32).to(device).contiguous()


__all__ = ["head_scene", "head_cameras", "look_at_viewmat"]
