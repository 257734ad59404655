"""The per-frame output of the decoder: one 3D Gaussian set per (person, frame).

Tensor layouts (G = number of Gaussians, 58,361 for FLEX-1; leading dims are [B, T] from the model's ``animate``
and [B] from the engines' per-frame ``decode``):

    positions  [..., G, 3]  template position + offset, head-centric FLAME space (metres)
    scales     [..., G, 3]  clamp(exp(z), 0, 0.01)
    rotations  [..., G, 4]  unit quaternion, real part first (w, x, y, z)
    colors     [..., G, 3]  raw SH-DC coefficients; RGB = max(0.5 + C0 * c, 0) (flexrt.kernels.sh_dc_to_rgb)
    opacities  [..., G, 1]  sigmoid

Gaussians are in the row-major order of the valid samples of the template's UV grid.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

GAUSSIAN_ATTRIBUTES = ("positions", "scales", "rotations", "colors", "opacities")
GAUSSIAN_WIDTHS = {"positions": 3, "scales": 3, "rotations": 4, "colors": 3, "opacities": 1}


@dataclass
class Gaussians:
    positions: torch.Tensor  # [..., G, 3]
    scales: torch.Tensor  # [..., G, 3]
    rotations: torch.Tensor  # [..., G, 4]
    colors: torch.Tensor  # [..., G, 3] raw SH-DC
    opacities: torch.Tensor  # [..., G, 1]

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in GAUSSIAN_ATTRIBUTES:
            raise KeyError(f"unknown Gaussian attribute {key!r}; expected one of {GAUSSIAN_ATTRIBUTES}")
        return getattr(self, key)

    def keys(self):
        return GAUSSIAN_ATTRIBUTES

    def items(self):
        return [(k, getattr(self, k)) for k in GAUSSIAN_ATTRIBUTES]

    @property
    def num_gaussians(self) -> int:
        return self.positions.shape[-2]

    def map(self, fn) -> "Gaussians":
        """Apply ``fn`` to every attribute tensor (e.g. ``lambda t: t[0]`` or ``lambda t: t.float()``)."""
        return Gaussians(**{k: fn(v) for k, v in self.items()})
