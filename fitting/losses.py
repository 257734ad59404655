"""The project's image losses (spec §9): L1, SSIM, PSNR, the DINOv2 feature loss and the SAM feature loss hook.
This module owns them; training (``flexrt.training.losses``) imports them from here.

    loss = 0.8 * l1_loss(render, target) + 0.2 * (1 - ssim(render, target))     # photometric_loss
           + 1.0 * sam(render, target) + 1.0 * dino(render, target)            # each off without its weights

* ``ssim``: the 3D Gaussian Splatting SSIM (Kerbl et al. 2023, ``utils/loss_utils.ssim``; Wang et al. 2004):
  11x11 Gaussian window with sigma 1.5 applied per channel with **zero padding** (a "same"-size convolution),
  C1 = 0.01², C2 = 0.03² (data range 1), mean over every pixel and channel. The window is separable, so it is
  applied as two 1-D passes (identical to the 2-D zero-padded convolution up to rounding).
* ``DinoFeatureLoss``: L1 (mean) between the hidden states after blocks 5, 8 and 11 of DINOv2 ViT-S/14
  (``facebook/dinov2-small`` through Hugging Face, i.e. ``hidden_states[5, 8, 11]``: CLS + patch tokens, before
  the final LayerNorm, concatenated along the tokens), with the official preprocessing: torchvision
  ``Resize(512, bicubic)`` (shorter side to 512, antialiased, as the tensor default), a crop of
  ``(512 - 504) / 2`` pixels per side and a 504 centre crop, ImageNet normalisation. The target's features carry
  no gradient. It runs the project's own ViT (``flexrt.model.dinov2``) and needs the official weights: random
  weights would make it noise, so without weights the term is off (``load_dino_feature_loss``).
* ``SamFeatureLoss``: L1 (mean) between the features a user-supplied TorchScript module computes for the render
  and the target (images [B, 3, H, W] in [0, 1] -> features). The spec's term uses SAM2.1-hiera-small's
  ``image_embed``; this project has no SAM2 implementation, so the user exports that image encoder (with its own
  preprocessing) to TorchScript and passes the file (``load_sam_feature_loss``). Only stand-in modules have been
  run through this hook here; no SAM2.1 export was tested. Without a module the term is off.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from flexrt.model.dinov2 import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DinoV2Config,
    DinoVisionTransformer,
    load_dinov2,
    load_dinov2_state_dict,
    resize_matrix,
)

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2

# DINOv2 ViT-S/14 as facebook/dinov2-small (no register tokens). Hugging Face resizes the 37x37 position table
# with plain bicubic interpolation to the requested size (no antialias, no +0.1 offset).
DINOV2_SMALL = DinoV2Config(embed_dim=384, depth=12, num_heads=6, num_register_tokens=0, interpolate_antialias=False)
DINO_LOSS_LAYERS = (5, 8, 11)  # hidden_states indices: output of that many blocks
DINO_LOSS_RESIZE = 512
DINO_LOSS_CROP = 504  # largest multiple of 14 <= 512


# ----------------------------------------------------------------------------------------------- pixel losses
def l1_loss(render: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference over every element -> scalar."""
    return (render - target).abs().mean()


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, dtype=torch.float32, device=None) -> torch.Tensor:
    """Normalised 1-D Gaussian [size], centred on the middle tap (exp(-(x - size//2)² / (2 sigma²)))."""
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-x * x / (2.0 * sigma * sigma))
    return (g / g.sum()).to(dtype=dtype, device=device)


def _blur(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Per-channel zero-padded "same" Gaussian filter of x [B, C, H, W] with the separable window [k]."""
    c, k = x.shape[1], window.numel()
    wx = window.reshape(1, 1, 1, k).expand(c, 1, 1, k)
    wy = window.reshape(1, 1, k, 1).expand(c, 1, k, 1)
    x = F.conv2d(x, wx, padding=(0, k // 2), groups=c)
    return F.conv2d(x, wy, padding=(k // 2, 0), groups=c)


def ssim_map(img1: torch.Tensor, img2: torch.Tensor, window_size: int = SSIM_WINDOW) -> torch.Tensor:
    """Per-pixel SSIM [B, C, H, W] of two image batches [B, C, H, W] (data range 1)."""
    if img1.shape != img2.shape or img1.dim() != 4:
        raise ValueError(f"ssim: expected two [B,C,H,W] tensors of one shape, got {tuple(img1.shape)} and "
                         f"{tuple(img2.shape)}")
    c = img1.shape[1]
    window = gaussian_window(window_size, SSIM_SIGMA, img1.dtype, img1.device)
    stats = _blur(torch.cat([img1, img2, img1 * img1, img2 * img2, img1 * img2], dim=1), window)  # [B, 5C, H, W]
    mu1, mu2, e11, e22, e12 = stats.split(c, dim=1)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    sigma1_sq, sigma2_sq, sigma12 = e11 - mu1_sq, e22 - mu2_sq, e12 - mu12
    num = (2.0 * mu12 + SSIM_C1) * (2.0 * sigma12 + SSIM_C2)
    den = (mu1_sq + mu2_sq + SSIM_C1) * (sigma1_sq + sigma2_sq + SSIM_C2)
    return num / den


def ssim(img1: torch.Tensor, img2: torch.Tensor, window_size: int = SSIM_WINDOW) -> torch.Tensor:
    """Mean SSIM over pixels, channels and batch -> scalar (the 3DGS ``ssim`` used by the official fitting)."""
    return ssim_map(img1, img2, window_size).mean()


def psnr(render: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of images in [0, 1] (render clamped to [0, 1] first, as a displayed frame would be):
    [..., C, H, W] pairs -> [...] (one value per image)."""
    mse = (render.clamp(0.0, 1.0) - target).square().flatten(-3).mean(-1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-12))


def photometric_loss(render: torch.Tensor, target: torch.Tensor, w_l1: float = 0.8, w_ssim: float = 0.2):
    """w_l1 L1 + w_ssim (1 - SSIM) (spec §9's 0.8 / 0.2) of render, target [B, C, H, W] ->
    (loss, l1, ssim), three 0-dim tensors (l1 and ssim still attached, for logging)."""
    l1, s = l1_loss(render, target), ssim(render, target)
    return w_l1 * l1 + w_ssim * (1.0 - s), l1, s


# ----------------------------------------------------------------------------------------------- DINOv2 loss
# Hugging Face Dinov2Layer names -> hub Block names. Two spellings exist: the released checkpoint files (and
# transformers < 5) use attention.attention.{query,key,value} + attention.output.dense; transformers >= 5 modules
# are attention.{q,k,v}_proj + attention.o_proj. q, k, v are concatenated into the hub's qkv.
_HF_ATTENTION_NAMES = {
    "file": (("attention.attention.query", "attention.attention.key", "attention.attention.value"),
             "attention.output.dense"),
    "transformers5": (("attention.q_proj", "attention.k_proj", "attention.v_proj"), "attention.o_proj"),
}
_HF_BLOCK_KEYS = {
    "norm1": "norm1", "layer_scale1.lambda1": "ls1.gamma", "norm2": "norm2", "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2", "layer_scale2.lambda1": "ls2.gamma",
}
_HF_TOP_KEYS = {
    "embeddings.cls_token": "cls_token", "embeddings.mask_token": "mask_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias",
}


def convert_hf_dinov2_state_dict(hf: Mapping[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """A Hugging Face ``Dinov2Model`` state dict (``facebook/dinov2-small`` model.safetensors, or a transformers
    >= 5 module's ``state_dict()``) -> the hub / ``flexrt.model.dinov2`` layout. Every Hugging Face key must be
    consumed; a missing or leftover key is an error."""
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    spelling = "transformers5" if "encoder.layer.0.attention.q_proj.weight" in hf else "file"
    (q, k, v), proj = _HF_ATTENTION_NAMES[spelling]

    def take(key: str) -> torch.Tensor:
        if key not in hf:
            raise ValueError(f"Hugging Face DINOv2 state dict lacks {key!r}")
        used.add(key)
        return hf[key]

    for hf_key, key in _HF_TOP_KEYS.items():
        out[key] = take(hf_key)
    for i in range(depth):
        pre = f"encoder.layer.{i}."
        for part in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{part}"] = torch.cat([take(f"{pre}{n}.{part}") for n in (q, k, v)], dim=0)
            out[f"blocks.{i}.attn.proj.{part}"] = take(f"{pre}{proj}.{part}")
        for hf_name, name in _HF_BLOCK_KEYS.items():
            if hf_name.endswith("lambda1"):
                out[f"blocks.{i}.{name}"] = take(pre + hf_name)
            else:
                for part in ("weight", "bias"):
                    out[f"blocks.{i}.{name}.{part}"] = take(f"{pre}{hf_name}.{part}")
    leftover = sorted(set(hf) - used)
    if leftover:
        raise ValueError(f"Hugging Face DINOv2 state dict has {len(leftover)} keys this ViT-S/14 does not use: "
                         f"{leftover[:8]}")
    return out


def _dino_resize_crop(images: torch.Tensor, resize: int, crop: int) -> torch.Tensor:
    """torchvision Resize(resize, BICUBIC, antialias) + Pad(-(resize - crop)/2 per side) + CenterCrop(crop), as
    constant matmuls: images [B, 3, H, W] -> [B, 3, crop, crop]."""
    h, w = images.shape[-2:]
    if h <= w:  # torchvision: the shorter side becomes `resize`, the longer int(resize * long / short)
        new_h, new_w = resize, int(resize * w / h)
    else:
        new_h, new_w = int(resize * h / w), resize
    x = images
    if (new_h, new_w) != (h, w):
        wh = resize_matrix(h, new_h, "bicubic", antialias=True).to(images.device, images.dtype)  # [new_h, h]
        ww = resize_matrix(w, new_w, "bicubic", antialias=True).to(images.device, images.dtype)  # [new_w, w]
        x = wh @ x @ ww.t()  # [B, 3, new_h, new_w]
    lead = math.ceil((resize - crop) / 2)  # Pad([-lead, -lead, -trail, -trail]): crop from every side
    trail = (resize - crop) // 2
    x = x[..., lead: new_h - trail, lead: new_w - trail]
    hh, ww_ = x.shape[-2:]
    top, left = int(round((hh - crop) / 2.0)), int(round((ww_ - crop) / 2.0))  # CenterCrop
    return x[..., top: top + crop, left: left + crop]


class FeatureL1Loss(nn.Module):
    """L1 (mean) between ``features(render)`` and the target's features (no gradient through the target)."""

    def features(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, render: torch.Tensor, target: torch.Tensor | None = None,
                target_features: torch.Tensor | None = None) -> torch.Tensor:
        """render [B, 3, H, W]; target [B, 3, H, W] or its precomputed ``features`` -> scalar."""
        if target_features is None:
            if target is None:
                raise ValueError(f"{type(self).__name__} needs target images or target_features")
            with torch.no_grad():
                target_features = self.features(target)
        return (self.features(render) - target_features.detach()).abs().mean()


class DinoFeatureLoss(FeatureL1Loss):
    """L1 between DINOv2 hidden states of renders and targets (spec §9). Frozen; gradients flow to the render."""

    def __init__(self, vit: DinoVisionTransformer, layers: tuple[int, ...] = DINO_LOSS_LAYERS,
                 resize: int = DINO_LOSS_RESIZE, crop: int = DINO_LOSS_CROP, source: str = "given"):
        super().__init__()
        if max(layers) > len(vit.blocks) or min(layers) < 0:
            raise ValueError(f"layers {layers} out of range for a {len(vit.blocks)}-block ViT")
        self.vit = vit.eval().requires_grad_(False)
        self.layers = tuple(int(i) for i in layers)
        self.resize, self.crop = int(resize), int(crop)
        self.source = source
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        with torch.no_grad():
            self.vit.prepare_pos_embed(self.crop)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [0, 1] -> hidden states [B, len(layers) * (1 + n_patches), D]."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"DinoFeatureLoss: images must be [B,3,H,W], got {tuple(images.shape)}")
        x = _dino_resize_crop(images, self.resize, self.crop)
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        tokens = self.vit.prepare_tokens(x)  # [B, 1 + R + n, D]
        states = []
        for i, blk in enumerate(self.vit.blocks[: max(self.layers)], start=1):
            tokens = blk(tokens)
            if i in self.layers:
                states.append(tokens)
        return torch.cat(states, dim=1)


def load_dino_feature_loss(weights: str | os.PathLike | Mapping[str, torch.Tensor],
                           config: DinoV2Config = DINOV2_SMALL) -> DinoFeatureLoss:
    """Official DINOv2-small weights -> DinoFeatureLoss, loaded strictly (every key, every shape).

    Accepted: the torch-hub checkpoint ``dinov2_vits14_pretrain.pth`` (keys as ``flexrt.model.dinov2``), or the
    Hugging Face ``facebook/dinov2-small`` ``model.safetensors`` / ``pytorch_model.bin`` (converted key by key)."""
    if isinstance(weights, Mapping):
        sd, source = dict(weights), "mapping"
    else:
        path = Path(weights)
        sd, source = load_dinov2_state_dict(path), f"file:{path.name}"
    if any(k.startswith("embeddings.") for k in sd):
        sd = convert_hf_dinov2_state_dict(sd, config.depth)
    try:
        vit = load_dinov2(sd, config)
    except ValueError as exc:
        raise ValueError(f"DINOv2-small weights for the DINO loss do not fit ViT-S/14: {exc}") from None
    return DinoFeatureLoss(vit, source=source)


# ----------------------------------------------------------------------------------------------- SAM loss
SAM_MODULE_EXPECTED = ("a TorchScript file (torch.jit.save) mapping images [B,3,H,W] in [0,1] to SAM2.1-hiera-small "
                       "image_embed features")


class SamFeatureLoss(FeatureL1Loss):
    """L1 (mean) between the features of a frozen TorchScript module for render and target (spec §9's SAM term
    when the module is SAM2.1-hiera-small's image encoder -> ``image_embed``). Gradients flow to the render."""

    def __init__(self, net: nn.Module, source: str = "given"):
        super().__init__()
        self.net = net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.source = source

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [0, 1] -> the module's features [B, ...]."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"SamFeatureLoss: images must be [B,3,H,W], got {tuple(images.shape)}")
        out = self.net(images)
        if not isinstance(out, torch.Tensor) or out.dim() < 1 or out.shape[0] != images.shape[0]:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"SAM feature module {self.source}: expected one tensor [B, ...] for {images.shape[0]} "
                             f"image(s), got {got}")
        return out


def load_sam_feature_loss(path: str | os.PathLike) -> SamFeatureLoss:
    """A TorchScript feature module file -> SamFeatureLoss (on the CPU; ``.to(device)`` it). One-line errors for
    a missing file or a file that is not TorchScript."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SAM feature module not found: {path} (expected {SAM_MODULE_EXPECTED})")
    try:
        net = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # torch.jit.load raises RuntimeError / ValueError with multi-line text
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"SAM feature module {path} is not a TorchScript file ({first}); expected "
                         f"{SAM_MODULE_EXPECTED}") from None
    return SamFeatureLoss(net, source=str(path))


__all__ = [
    "l1_loss", "ssim", "ssim_map", "gaussian_window", "psnr", "photometric_loss", "FeatureL1Loss", "DinoFeatureLoss",
    "load_dino_feature_loss", "convert_hf_dinov2_state_dict", "SamFeatureLoss", "load_sam_feature_loss",
    "SSIM_C1", "SSIM_C2", "DINOV2_SMALL", "DINO_LOSS_LAYERS",
]
