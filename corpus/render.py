"""Render corpus heads with the project's rasterizer (``flexrt.kernels.rasterize``: the CPU reference, or on a CUDA
``device`` the CuPy kernels, about 100x faster per sample) on a white background (spec §3.1: the model sees heads on
white). Surface Gaussians that face away from a camera are culled first (an exact shortcut for the closed corpus
heads: tests/test_corpus.py checks the PSNR against the full render)."""
from __future__ import annotations

import torch

from flexrt.kernels import rasterize, sh_dc_to_rgb
from flexrt.model.camera import pixel_intrinsics, viewmat_from_cam2world
from flexrt.model.gaussians import Gaussians

CULL_COS = -0.3  # keep surface Gaussians whose normal is within acos(-0.3) = 107 deg of the view direction


def render(g: Gaussians, cam2world: torch.Tensor, intrinsics: torch.Tensor, size: int,
           normals: torch.Tensor | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
    """One frame's Gaussians [N,*] seen by C cameras (cam2world [C,4,4], intrinsics [C,3,3] normalised) ->
    images [C,size,size,3] float32 in [0,1], on the CPU. ``normals`` [N,3] (zero rows never culled) enables
    culling. ``device``: where to rasterize ("cpu": the reference; "cuda": the CuPy kernels; the two agree to
    rounding, tests/test_corpus.py checks > 45 dB)."""
    device = torch.device(device)
    backend = "cpu" if device.type == "cpu" else "cupy"
    if device.type != "cpu":
        g = g.map(lambda x: x.to(device))
        cam2world, intrinsics = cam2world.to(device), intrinsics.to(device)
        normals = None if normals is None else normals.to(device)
    C = cam2world.shape[0]
    rgb_all = sh_dc_to_rgb(g.colors)  # [N,3]
    view = viewmat_from_cam2world(cam2world)  # [C,4,4]
    K = pixel_intrinsics(intrinsics, size, size)  # [C,3,3]
    white = torch.ones(3, device=device)
    out = torch.empty(C, size, size, 3, device=device)
    for c in range(C):  # per camera: the culled set differs
        keep = slice(None)
        if normals is not None:
            to_cam = cam2world[c, :3, 3] - g.positions  # [N,3]
            cos = (normals * to_cam).sum(-1) / to_cam.norm(dim=-1)
            keep = (normals.abs().sum(-1) == 0) | (cos > CULL_COS)
        img, _ = rasterize(g.positions[keep][None], g.rotations[keep][None], g.scales[keep][None],
                           g.opacities[keep][None, :, 0], rgb_all[keep][None], view[c][None, None], K[c][None, None],
                           size, size, background=white, backend=backend)
        out[c] = img[0, 0].clamp(0, 1)
    return out.cpu()


__all__ = ["render", "CULL_COS"]
