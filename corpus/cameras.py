"""Camera distributions of the corpus, in the conventions of ``model/camera.py`` (OpenCV cam2world in the
head-centric frame, normalised intrinsics). Cameras look at the head from ``distance`` metres with the focal length
of the official example trajectory (``DEFAULT_FOCAL_NORMALIZED``, fx = 1500 px at 512).

- ``frontal_cone``: monocular ("2D") data: directions uniform on the spherical cap within ``max_angle`` of +z.
- ``sphere``: multi-view ("3D") studio data: directions uniform on the sphere between two elevations (back and
  sides included; no camera below the chin).
- ``eval_views``: the fixed held-out views: front, left and right profile, back.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from flexrt.model.camera import DEFAULT_FOCAL_NORMALIZED, look_at_cam2world

LOOK_AT = (0.0, -0.02, 0.0)  # the middle of the template head (its box spans y in [-0.19, 0.13])
EVAL_VIEWS = {"front": (0.0, 5.0), "left": (90.0, 5.0), "right": (-90.0, 5.0), "back": (180.0, 5.0)}  # yaw, elev


def direction(yaw_deg, elev_deg) -> np.ndarray:
    """Unit vector from the head toward a camera at (yaw, elevation) degrees; yaw 0 = +z (frontal), 90 = +x."""
    y, e = np.radians(yaw_deg), np.radians(elev_deg)
    return np.stack([np.cos(e) * np.sin(y), np.sin(e), np.cos(e) * np.cos(y)], -1)


def cameras_from_directions(dirs: np.ndarray, distance: np.ndarray, target_jitter: np.ndarray | None = None,
                            focal: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """dirs [n,3] unit, distance [n] -> (cam2world [n,4,4], intrinsics [n,3,3] normalised)."""
    n = dirs.shape[0]
    c2w = torch.empty(n, 4, 4)
    K = torch.zeros(n, 3, 3)
    for i in range(n):  # a handful of cameras per sample
        target = np.asarray(LOOK_AT) + (target_jitter[i] if target_jitter is not None else 0.0)
        up = (0.0, 1.0, 0.0) if abs(dirs[i, 1]) < 0.98 else (0.0, 0.0, -1.0)
        c2w[i] = look_at_cam2world(tuple(target + distance[i] * dirs[i]), tuple(target), up=up)
        f = DEFAULT_FOCAL_NORMALIZED * (focal[i] if focal is not None else 1.0)
        K[i] = torch.tensor([[f, 0.0, 0.5], [0.0, f, 0.5], [0.0, 0.0, 1.0]])
    return c2w, K


def _jitter(rng: np.random.Generator, n: int):
    return rng.uniform(0.95, 1.1, n), rng.normal(0, 0.008, (n, 3)), rng.uniform(0.97, 1.03, n)


def frontal_cone(rng: np.random.Generator, n: int, max_angle_deg: float = 25.0):
    """n cameras in the frontal cone -> (cam2world [n,4,4], intrinsics [n,3,3])."""
    cos_min = math.cos(math.radians(max_angle_deg))
    cos_t = rng.uniform(cos_min, 1.0, n)  # uniform on the cap
    phi = rng.uniform(0, 2 * np.pi, n)
    sin_t = np.sqrt(1 - cos_t**2)
    dirs = np.stack([sin_t * np.cos(phi), sin_t * np.sin(phi), cos_t], -1)
    dist, jit, f = _jitter(rng, n)
    return cameras_from_directions(dirs, dist, jit, f)


def sphere(rng: np.random.Generator, n: int, min_elev_deg: float = -30.0, max_elev_deg: float = 65.0):
    """n cameras all around the head -> (cam2world [n,4,4], intrinsics [n,3,3])."""
    s = rng.uniform(math.sin(math.radians(min_elev_deg)), math.sin(math.radians(max_elev_deg)), n)
    yaw = rng.uniform(-180.0, 180.0, n)
    dirs = direction(yaw, np.degrees(np.arcsin(s)))
    dist, jit, f = _jitter(rng, n)
    return cameras_from_directions(dirs, dist, jit, f)


def eval_views(names=tuple(EVAL_VIEWS)) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed evaluation cameras (distance 1.0, no jitter) -> (cam2world [V,4,4], intrinsics [V,3,3])."""
    dirs = np.stack([direction(*EVAL_VIEWS[k]) for k in names])
    return cameras_from_directions(dirs, np.ones(len(names)))


def camera_angle_from_front(cam2world: torch.Tensor) -> torch.Tensor:
    """Angle (degrees) between the head->camera direction and +z, [..., 4, 4] -> [...]."""
    pos = cam2world[..., :3, 3] - torch.tensor(LOOK_AT, dtype=cam2world.dtype)
    return torch.rad2deg(torch.acos(torch.clamp(pos[..., 2] / pos.norm(dim=-1), -1, 1)))


__all__ = ["frontal_cone", "sphere", "eval_views", "direction", "cameras_from_directions", "EVAL_VIEWS",
           "LOOK_AT", "camera_angle_from_front"]
