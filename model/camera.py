"""Camera conventions: the one place that defines them.

Model inputs (avatar creation), as in the official FlexAvatar code:
- ``cam2world`` [..., 4, 4]: camera-to-world, **OpenCV axes** (x right, y down, z forward), in head-centric
  canonical FLAME space (metres). A typical camera sits about 1 m away on +z looking toward -z.
- ``intrinsics`` [..., 3, 3]: **normalised** pinhole intrinsics, i.e. the pixel intrinsics of the 512x512 input
  divided by 512 (fx ~ 3.3, cx ~ cy ~ 0.5).

Renderer inputs (flexrt.kernels.rasterize, gsplat conventions):
- ``viewmats`` [..., C, 4, 4]: world-to-camera (the inverse of cam2world), OpenCV axes.
- ``Ks`` [..., C, 3, 3]: pixel intrinsics; pixel centres at +0.5.

The helpers below convert between the two. Rendering at W x H from normalised intrinsics scales fx, cx by W and
fy, cy by H (the official renderer uses the image height for both at square sizes).
"""
from __future__ import annotations

import math

import torch


def viewmat_from_cam2world(cam2world: torch.Tensor) -> torch.Tensor:
    """cam2world [..., 4, 4] (OpenCV) -> world-to-camera viewmat [..., 4, 4]."""
    if cam2world.shape[-2:] != (4, 4):
        raise ValueError(f"cam2world must be [..., 4, 4], got {tuple(cam2world.shape)}")
    rot = cam2world[..., :3, :3]
    trans = cam2world[..., :3, 3:]
    rot_t = rot.transpose(-1, -2)
    view = torch.zeros_like(cam2world)
    view[..., :3, :3] = rot_t
    view[..., :3, 3:] = -rot_t @ trans
    view[..., 3, 3] = 1.0
    return view


def pixel_intrinsics(intrinsics_normalized: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Normalised intrinsics [..., 3, 3] -> pixel intrinsics for a width x height image."""
    if intrinsics_normalized.shape[-2:] != (3, 3):
        raise ValueError(f"intrinsics must be [..., 3, 3], got {tuple(intrinsics_normalized.shape)}")
    K = intrinsics_normalized.clone()
    K[..., 0, :] = K[..., 0, :] * width
    K[..., 1, :] = K[..., 1, :] * height
    K[..., 2, :] = torch.tensor([0.0, 0.0, 1.0], dtype=K.dtype, device=K.device)
    return K


def look_at_cam2world(eye, target=(0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0), dtype=torch.float32) -> torch.Tensor:
    """OpenCV cam2world [4, 4] of a camera at ``eye`` looking at ``target``.

    ``up`` is the world direction that should appear *up* in the image (OpenCV's camera y axis points down, so
    the camera's y axis becomes -up). The default (0, 1, 0) puts FLAME's +y (top of the head) at the top.
    """
    eye_t = torch.tensor(eye, dtype=torch.float64)
    forward = torch.tensor(target, dtype=torch.float64) - eye_t
    forward = forward / forward.norm()
    down = -torch.tensor(up, dtype=torch.float64)
    right = torch.linalg.cross(down, forward)
    right = right / right.norm()
    down = torch.linalg.cross(forward, right)
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, 0] = right
    c2w[:3, 1] = down
    c2w[:3, 2] = forward
    c2w[:3, 3] = eye_t
    return c2w.to(dtype)


DEFAULT_FOCAL_NORMALIZED = 1500.0 / 512.0  # the official example trajectory: fx = fy = 1500 px at 512 x 512


def default_camera(distance: float = 1.0, yaw_deg: float = 0.0, focal: float = DEFAULT_FOCAL_NORMALIZED,
                   dtype=torch.float32):
    """A frontal head camera: (cam2world [4,4] OpenCV, normalised intrinsics [3,3]).

    The official example trajectory: camera at ``distance`` from the head origin on +z (rotated by ``yaw_deg``
    about the vertical axis), looking at the origin, fx = fy = 1500 px and cx = cy = 256 at 512 x 512.
    """
    yaw = math.radians(yaw_deg)
    eye = (distance * math.sin(yaw), 0.0, distance * math.cos(yaw))
    c2w = look_at_cam2world(eye, dtype=dtype)
    f = focal
    K = torch.tensor([[f, 0.0, 0.5], [0.0, f, 0.5], [0.0, 0.0, 1.0]], dtype=dtype)
    return c2w, K
