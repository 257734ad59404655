"""Training losses: spec §9's photometric loss, and the optional DINO / SAM perceptual terms switched on at a step.

Every loss is owned by ``flexrt.fitting.losses`` (L1, SSIM, PSNR, ``DinoFeatureLoss``, ``SamFeatureLoss``); this
module only combines them the way the trainer uses them:
- ``photometric_loss``: 0.8 L1 + 0.2 (1 - SSIM), with float logs;
- ``psnr``: the fitting PSNR (render clamped to [0, 1]) averaged over the images of a batch;
- ``PerceptualLoss``: w_dino * DINO + w_sam * SAM from ``start_step`` on, each only when its weights are given
  (DINOv2-small weights for DINO; for SAM a TorchScript module, images [B,3,H,W] in [0,1] -> features, exported
  by the user from SAM2.1-hiera-small's image encoder: this project has no SAM2 implementation).
Both perceptual terms are off unless weights are given; ``PerceptualLoss.describe()`` says which are active.
"""
from __future__ import annotations

from pathlib import Path

import torch

from flexrt.fitting import losses as _fit
from flexrt.fitting.losses import (  # noqa: F401  (re-exported for training code)
    SSIM_C1,
    SSIM_C2,
    DinoFeatureLoss,
    SamFeatureLoss,
    gaussian_window,
    load_dino_feature_loss,
    load_sam_feature_loss,
    ssim,
)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) of images [B, C, H, W] (x clamped to [0, 1]), averaged over the images -> scalar."""
    return _fit.psnr(x, y).mean()


def photometric_loss(pred: torch.Tensor, target: torch.Tensor, w_l1: float = 0.8, w_ssim: float = 0.2):
    """0.8 L1 + 0.2 (1 - SSIM) (spec §9's weights) on [B,3,H,W] -> (loss, {"l1": .., "ssim": ..})."""
    loss, l1, s = _fit.photometric_loss(pred, target, w_l1, w_ssim)
    return loss, {"l1": float(l1.detach()), "ssim": float(s.detach())}


class PerceptualLoss(torch.nn.Module):
    """w_dino * DINO + w_sam * SAM, each active from ``start_step`` on and only when its weights were given.
    ``dino_vit``: a ViT to use instead of loading ``dino_weights`` (tests)."""

    def __init__(self, dino_weights: str | Path | None = None, sam_module: str | Path | None = None,
                 start_step: int = 0, w_dino: float = 1.0, w_sam: float = 1.0, dino_vit=None):
        super().__init__()
        self.start_step, self.w_dino, self.w_sam = int(start_step), float(w_dino), float(w_sam)
        self.dino = None
        if dino_vit is not None:
            self.dino = DinoFeatureLoss(dino_vit)
        elif dino_weights is not None:
            self.dino = load_dino_feature_loss(dino_weights)
        self.sam = load_sam_feature_loss(sam_module) if sam_module is not None else None

    @property
    def enabled(self) -> bool:
        return self.dino is not None or self.sam is not None

    def active(self, step: int) -> bool:
        return self.enabled and step >= self.start_step

    def describe(self) -> str:
        parts = [f"DINO {'ON (w=%g)' % self.w_dino if self.dino is not None else 'OFF (no --dino-loss-weights)'}",
                 f"SAM {'ON (w=%g)' % self.w_sam if self.sam is not None else 'OFF (no --sam-module)'}"]
        when = f" from step {self.start_step}" if self.enabled else ""
        return "perceptual losses: " + ", ".join(parts) + when

    def forward(self, pred: torch.Tensor, target: torch.Tensor, step: int) -> tuple[torch.Tensor, dict]:
        zero = pred.new_zeros(())
        if not self.active(step):
            return zero, {}
        total, logs = zero, {}
        if self.dino is not None:
            d = self.dino(pred, target)
            total, logs["dino"] = total + self.w_dino * d, float(d.detach())
        if self.sam is not None:
            s = self.sam(pred, target)
            total, logs["sam"] = total + self.w_sam * s, float(s.detach())
        return total, logs


__all__ = ["ssim", "psnr", "photometric_loss", "gaussian_window", "PerceptualLoss", "DinoFeatureLoss",
           "SamFeatureLoss", "SSIM_C1", "SSIM_C2"]
