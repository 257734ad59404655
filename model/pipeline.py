"""The two graphs the runtime deploys, as torch modules (what ``export-engines`` exports and TorchEngine runs).

    AvatarEncoder: images [B,3,512,512] in [0,1], cam2world [B,4,4] OpenCV, intrinsics [B,3,3] normalised
                   -> avatar_code [B,HT,D]          (DINOv2 resize + normalisation + ViT inside; V = 1 view)
    FrameDecoder:  avatar_code [B,HT,D], expression_codes [B,135]
                   -> positions [B,G,3], scales [B,G,3], rotations [B,G,4], colors [B,G,3], opacities [B,G,1]
                   (bias sink fixed to the 3D id; template positions baked in as constants)

``build_pipeline`` assembles them from a config, a FLEX-1 checkpoint, a DINOv2 checkpoint and a template.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .checkpoint import DEFAULT_SEED, file_sha256, load_official
from .config import PRESETS, load_config_dict
from .dinov2 import DinoFeatureExtractor, DinoV2Config, DinoVisionTransformer, load_dinov2
from .flexavatar import FlexAvatarModel
from .gaussians import GAUSSIAN_ATTRIBUTES

ENCODER_INPUTS = ("image", "cam2world", "intrinsics")
ENCODER_OUTPUTS = ("avatar_code",)
DECODER_INPUTS = ("avatar_code", "expression_codes")
DECODER_OUTPUTS = GAUSSIAN_ATTRIBUTES  # positions, scales, rotations, colors, opacities

# DINOv2 sizes: "vitb14_reg" is FlexAvatar's dinov2_vitb14_reg; "tiny" is a small ViT for CPU demos and tests;
# "small<C>" is a 2-block ViT of width C for reduced configs (e.g. the golden fixture's feature_dim 32).
DINO_CONFIGS = {
    "vitb14_reg": DinoV2Config(),
    "tiny": DinoV2Config(embed_dim=64, depth=2, num_heads=4),
}


def dino_config(size: str) -> DinoV2Config:
    if size in DINO_CONFIGS:
        return DINO_CONFIGS[size]
    if size.startswith("small") and size[5:].isdigit():
        return DinoV2Config(embed_dim=int(size[5:]), depth=2, num_heads=4)
    raise ValueError(f"unknown DINOv2 size {size!r}: expected one of {list(DINO_CONFIGS)} or 'small<width>'")


def default_dino_size(feature_dim: int) -> str:
    return "vitb14_reg" if feature_dim == 768 else f"small{feature_dim}"


class AvatarEncoder(nn.Module):
    def __init__(self, model: FlexAvatarModel, dino: DinoFeatureExtractor):
        super().__init__()
        if dino.vit.embed_dim != model.cfg.feature_dim:
            raise ValueError(
                f"DINOv2 width {dino.vit.embed_dim} does not match the model's feature_dim {model.cfg.feature_dim}"
            )
        self.model = model
        self.dino = dino

    def forward(self, image: torch.Tensor, cam2world: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
        features = self.dino(image)  # [B, C, 16, 16]
        return self.model.encode(image[:, None], cam2world[:, None], intrinsics[:, None], features[:, None])


class FrameDecoder(nn.Module):
    """Folds the StyleGAN modulation into static weights on construction (build it after loading weights)."""

    def __init__(self, model: FlexAvatarModel):
        super().__init__()
        self.model = model
        model._gaussian_decoder._stylegan_upsampler.fold()

    def forward(self, avatar_code: torch.Tensor, expression_codes: torch.Tensor):
        g = self.model.decode_frames(avatar_code, expression_codes)
        return tuple(g[k] for k in DECODER_OUTPUTS)


@dataclass
class Pipeline:
    model: FlexAvatarModel
    encoder: AvatarEncoder
    decoder: FrameDecoder
    identity: dict[str, Any] = field(default_factory=dict)


def build_dino(size: str | DinoV2Config, weights: str | Path | Mapping[str, torch.Tensor] | None,
               seed: int = DEFAULT_SEED) -> tuple[DinoFeatureExtractor, str]:
    """DINOv2 feature extractor + a description of its weights ("sha256:..." or "random(seed=..)")."""
    cfg = dino_config(size) if isinstance(size, str) else size
    if weights is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            vit = DinoVisionTransformer(cfg).eval()
        source = f"random(seed={seed + 1})"
    else:
        vit = load_dinov2(weights, cfg)
        source = f"sha256:{file_sha256(weights)}" if isinstance(weights, (str, Path)) else "mapping"
    vit.requires_grad_(False)
    return DinoFeatureExtractor(vit).prepare().eval(), source


def build_pipeline(
    config: str | Path | Mapping[str, Any],
    checkpoint: str | Path | Mapping[str, torch.Tensor] | None = None,
    dinov2: str | Path | Mapping[str, torch.Tensor] | None = None,
    template: str | Path | None = None,
    stylegan_channel_base: int | None = None,
    stylegan_channel_max: int | None = None,
    dinov2_size: str | None = None,
    seed: int = DEFAULT_SEED,
) -> Pipeline:
    """Model + DINOv2 + the two deployable graphs. ``dinov2_size`` defaults to the preset's; for files and dicts
    ViT-B/14-reg when feature_dim is 768, else a small random ViT of that width (DINOv2 weights are 768-wide)."""
    model = load_official(config, checkpoint, template, stylegan_channel_base, stylegan_channel_max, seed)
    if dinov2_size is None:
        _, extras = load_config_dict(config)
        dinov2_size = extras.get("dinov2", default_dino_size(model.cfg.feature_dim))
    dino, dino_source = build_dino(dinov2_size, dinov2, seed)
    identity = dict(model.identity)
    identity.update(dinov2=dino_source, dinov2_size=dinov2_size, preset=str(config) if str(config) in PRESETS else None)
    return Pipeline(model=model, encoder=AvatarEncoder(model, dino).eval(), decoder=FrameDecoder(model).eval(),
                    identity=identity)
