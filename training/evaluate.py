"""Evaluation on held-out identities: PSNR / SSIM on the front view and on the back / side views, inference on the
3D bias sink (the paper's protocol: z3D at inference)."""
from __future__ import annotations

import torch

from flexrt.corpus.cameras import EVAL_VIEWS
from flexrt.corpus.dataset import Sample
from flexrt.model.flexavatar import DATASET_ID_3D

from .losses import psnr, ssim
from .trainer import collate, forward_batch

FRONT = ("front",)
SIDE_BACK = ("left", "right", "back")


@torch.no_grad()
def evaluate(model, dino, samples: list[Sample], size: int, device="cpu", backend: str = "auto",
             batch_size: int = 4) -> dict:
    """Held-out samples (views in ``EVAL_VIEWS`` order) -> {"front": {"psnr", "ssim"}, "side_back": {...},
    "per_view": {view: {...}}, "count": n}. Every sample is decoded with the 3D sink."""
    import numpy as np

    names = list(EVAL_VIEWS)
    preds, targets = [], []
    was_training = model.training
    model.eval()
    for i in range(0, len(samples), batch_size):
        chunk = samples[i:i + batch_size]
        v = chunk[0].target_images.shape[0]
        batch = collate(chunk, v, np.random.default_rng(0)).to(device)
        batch.dataset_ids = torch.full_like(batch.dataset_ids, DATASET_ID_3D)
        preds.append(forward_batch(model, dino, batch, size, backend).clamp(0, 1).cpu())
        targets.append(batch.target_images.cpu())
    model.train(was_training)
    pred, target = torch.cat(preds), torch.cat(targets)  # [N,V,3,H,W]

    def metrics(view_names):
        idx = [names.index(n) for n in view_names]
        p, t = pred[:, idx].flatten(0, 1), target[:, idx].flatten(0, 1)
        return {"psnr": float(psnr(p, t)), "ssim": float(ssim(p, t))}

    return {"front": metrics(FRONT), "side_back": metrics(SIDE_BACK),
            "per_view": {n: metrics((n,)) for n in names}, "count": len(samples)}


__all__ = ["evaluate", "FRONT", "SIDE_BACK"]
