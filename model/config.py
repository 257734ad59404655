"""Model configuration: reads the official ``model_config.json`` schema as it is.

Only the fields that shape the FLEX-1 computation are interpreted; the fields the official code ignores on this
path (see the spec, section 5.7) are accepted and kept. Flags with values other than FLEX-1's select code paths
this runtime does not implement, so they are refused with a clear error instead of being silently ignored.

Two numbers are not part of the official schema: the StyleGAN upsampler's ``channel_base`` / ``channel_max``
(dataclass defaults 32768 / 512 in the official code). They are passed separately.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

DEFAULT_STYLEGAN_CHANNEL_BASE = 32768
DEFAULT_STYLEGAN_CHANNEL_MAX = 512
IMAGE_RESOLUTION = 512  # input image size of avatar creation (dataset_config.input_resolution)
EXPRESSION_MLP_HIDDEN = 256  # width of the two hidden layers of the expression MLP (fixed in the official code)
STYLEGAN_W_DIM = 512  # w_dim of the StyleGAN affine layers (ws is always zero; only affine.bias matters)

# The official FLEX-1 model_config.json, unmodified (models/FLEX-1/model_config.json).
FLEX1_CONFIG: dict[str, Any] = {
    "head_transformer": {
        "transformer": {
            "n_layers": 4, "d_hidden": 768, "n_heads": 4, "use_custom_attention": False, "use_qk_norm": False,
            "use_layer_norm_keys": False, "use_alternating_self_attention": False, "use_causal_attention": True,
        },
        "res_head_tokens": 32, "head_transformer_type": "UV_TEXTURE", "cross_attention_type": "Q2K",
        "use_lam_transformer": True, "use_lam_point_embedder": True, "res_image_tokens": 32, "n_input_views": 1,
        "block_size_estimate_version": 3, "d_expression_codes": 135, "n_expression_tokens": 4,
        "use_head_tokens": True, "n_layers_expression_transformer": 8, "use_dataset_ids": True,
        "head_template": "gghead_template",
    },
    "gaussian_decoder": {
        "n_gaussians_per_token": 1, "res_head_tokens": 32, "d_hidden": 768, "n_mlp_layers": 2, "scale_offset": -5,
        "scale_max": -3, "scale_min": -10, "position_range": 0.4, "res_uv_texture": 256, "res_image_tokens": 32,
        "upscale_uv_texture": 4, "head_transformer_type": "UV_TEXTURE", "use_stylegan_pixelshuffle_upsampler": True,
        "use_norm_before_mlp": False, "initialize_with_image": True, "n_channels_color": 3, "fix_mlp_order": True,
        "use_head_tokens": True, "oversampling_factor": 2, "use_lam_gs_decoder": True, "sh_degree": 0,
        "head_template": "gghead_template", "d_expression_codes": None,
    },
    "patch_size": 16, "in_channels": 3, "n_layers_encoder": 1, "n_input_views": 1, "use_feature_projection": True,
    "feature_dim": 768, "use_bfloat16": True, "use_plucker": True, "compile": True, "use_gsplat": True,
}


def _tiny_config() -> dict[str, Any]:
    cfg = copy.deepcopy(FLEX1_CONFIG)
    ht, gd = cfg["head_transformer"], cfg["gaussian_decoder"]
    ht["transformer"].update(n_layers=2, d_hidden=64, n_heads=4)
    ht.update(res_head_tokens=8, res_image_tokens=8, n_layers_expression_transformer=2)
    gd.update(res_head_tokens=8, d_hidden=64, res_image_tokens=8, res_uv_texture=64)
    cfg.update(feature_dim=64, use_bfloat16=False, compile=False)
    return cfg


def _small_config() -> dict[str, Any]:
    """``tiny`` at twice the token resolution and 1.5x the width: 16x16 head and image tokens, a 64x64 UV map and
    a 128x128 Gaussian grid (~16k Gaussians), 96 channels. Tried for the corpus model (docs/TRAINING.md, section
    3), since ``tiny``'s 32x32 UV map is coarser than a 64x64 frame of the face: from seeded weights, ~6,100 H200
    steps did not teach it the jaw, so the shipped model is ``tiny``. Kept so that those runs can be repeated."""
    cfg = _tiny_config()
    ht, gd = cfg["head_transformer"], cfg["gaussian_decoder"]
    ht["transformer"].update(d_hidden=96)
    ht.update(res_head_tokens=16, res_image_tokens=16)
    gd.update(res_head_tokens=16, d_hidden=96, res_image_tokens=16, res_uv_texture=128)
    return cfg


# name -> (official-schema config, stylegan channel_base, channel_max, DINOv2 size for the encoder engine)
PRESETS: dict[str, dict[str, Any]] = {
    "flex1": {"config": FLEX1_CONFIG, "channel_base": 32768, "channel_max": 512, "dinov2": "vitb14_reg"},
    # small model for CPU demos and tests: same code paths, 64-wide, 8x8 head tokens, 64x64 Gaussian grid
    "tiny": {"config": _tiny_config(), "channel_base": 1024, "channel_max": 48, "dinov2": "tiny"},
    # tiny at 16x16 tokens, 96 wide, 128x128 Gaussian grid (6.9 MB in fp32); same seeded random tiny DINOv2
    "small": {"config": _small_config(), "channel_base": 2048, "channel_max": 64, "dinov2": "tiny"},
}

# values this runtime implements; anything else is refused (the official code has other, unused paths)
_REQUIRED_FLAGS = {
    ("head_transformer", "head_transformer_type"): "UV_TEXTURE",
    ("head_transformer", "use_lam_transformer"): True,
    ("head_transformer", "use_lam_point_embedder"): True,
    ("head_transformer", "use_head_tokens"): True,
    ("gaussian_decoder", "use_stylegan_pixelshuffle_upsampler"): True,
    ("gaussian_decoder", "use_lam_gs_decoder"): True,
    ("gaussian_decoder", "use_norm_before_mlp"): False,
    ("gaussian_decoder", "initialize_with_image"): True,
    ("gaussian_decoder", "sh_degree"): 0,
    ("gaussian_decoder", "n_gaussians_per_token"): 1,
    ("use_plucker",): True,
    ("use_feature_projection",): True,
    ("in_channels",): 3,
}


@dataclass(frozen=True)
class FlexConfig:
    """The numbers that define the computation, derived from an official-schema config."""

    d_hidden: int  # D
    n_heads: int
    n_layers_head_transformer: int
    n_layers_expression_transformer: int
    n_layers_encoder: int
    use_causal_attention: bool
    res_head_tokens: int  # r; HT = r * r
    n_input_views: int  # V
    d_expression_codes: int  # 135
    n_expression_tokens: int  # 4
    use_dataset_ids: bool
    patch_size: int  # 16
    feature_dim: int  # C of the DINOv2 features
    upscale_uv_texture: int  # 4: UV map r -> 4r through the upsampler
    oversampling_factor: int  # 2: Gaussian grid = 4r * 2
    stylegan_channel_base: int = DEFAULT_STYLEGAN_CHANNEL_BASE
    stylegan_channel_max: int = DEFAULT_STYLEGAN_CHANNEL_MAX
    image_resolution: int = IMAGE_RESOLUTION
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def num_head_tokens(self) -> int:
        return self.res_head_tokens**2

    @property
    def res_uv_map(self) -> int:
        return self.res_head_tokens * self.upscale_uv_texture

    @property
    def res_gaussian_grid(self) -> int:
        return self.res_uv_map * self.oversampling_factor

    @property
    def res_image_tokens(self) -> int:
        return self.image_resolution // self.patch_size

    @property
    def num_image_tokens(self) -> int:
        return self.n_input_views * self.res_image_tokens**2

    @property
    def gaussian_channels(self) -> int:
        """Channels of the upsampled UV map (the Gaussian heads' input): D / 4 per doubling."""
        return self.d_hidden // (4 ** self.num_upsampler_blocks)

    @property
    def num_upsampler_blocks(self) -> int:
        return self.upscale_uv_texture.bit_length() - 1

    def config_hash(self) -> str:
        """sha256 of the canonical JSON of the official config plus the StyleGAN overrides."""
        payload = {"config": self.raw, "channel_base": self.stylegan_channel_base,
                   "channel_max": self.stylegan_channel_max}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _get(cfg: Mapping[str, Any], path: tuple[str, ...]):
    node: Any = cfg
    for p in path:
        if not isinstance(node, Mapping) or p not in node:
            raise ValueError(f"model config is missing field {'.'.join(path)!r}")
        node = node[p]
    return node


def load_config_dict(config: str | Path | Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Resolve a preset name, a JSON path or a dict -> (official-schema dict, preset extras)."""
    if isinstance(config, Mapping):
        return copy.deepcopy(dict(config)), {}
    if isinstance(config, (str, Path)) and str(config) in PRESETS:
        preset = PRESETS[str(config)]
        return copy.deepcopy(preset["config"]), {k: v for k, v in preset.items() if k != "config"}
    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(
            f"model config {str(config)!r} is neither a preset ({', '.join(PRESETS)}) nor an existing JSON file"
        )
    with open(path) as f:
        return json.load(f), {}


def parse_config(
    config: str | Path | Mapping[str, Any],
    stylegan_channel_base: int | None = None,
    stylegan_channel_max: int | None = None,
) -> FlexConfig:
    """Build a :class:`FlexConfig` from a preset name, a ``model_config.json`` path or a dict in that schema.

    ``stylegan_channel_base`` / ``stylegan_channel_max`` override the upsampler widths (None = the preset's
    values, or the official defaults 32768 / 512 for a file or dict).
    """
    raw, extras = load_config_dict(config)
    for path, expected in _REQUIRED_FLAGS.items():
        value = _get(raw, path)
        if value != expected:
            raise ValueError(
                f"model config field {'.'.join(path)} = {value!r} is not supported "
                f"(this runtime implements the FLEX-1 path, which needs {expected!r})"
            )
    ht = _get(raw, ("head_transformer",))
    gd = _get(raw, ("gaussian_decoder",))
    tr = _get(ht, ("transformer",))
    d_hidden = int(_get(tr, ("d_hidden",)))
    if int(_get(gd, ("d_hidden",))) != d_hidden:
        raise ValueError("head_transformer.transformer.d_hidden and gaussian_decoder.d_hidden differ")
    if int(_get(gd, ("res_head_tokens",))) != int(_get(ht, ("res_head_tokens",))):
        raise ValueError("head_transformer.res_head_tokens and gaussian_decoder.res_head_tokens differ")
    n_heads = int(_get(tr, ("n_heads",)))
    if d_hidden % n_heads:
        raise ValueError(f"d_hidden {d_hidden} is not divisible by n_heads {n_heads}")
    upscale = int(_get(gd, ("upscale_uv_texture",)))
    if upscale < 2 or upscale & (upscale - 1):
        raise ValueError(f"gaussian_decoder.upscale_uv_texture must be a power of two >= 2, got {upscale}")
    n_views = int(_get(raw, ("n_input_views",)))
    if n_views != int(_get(ht, ("n_input_views",))):
        raise ValueError("n_input_views differs between the top level and head_transformer")
    base = stylegan_channel_base if stylegan_channel_base is not None else extras.get(
        "channel_base", DEFAULT_STYLEGAN_CHANNEL_BASE)
    cmax = stylegan_channel_max if stylegan_channel_max is not None else extras.get(
        "channel_max", DEFAULT_STYLEGAN_CHANNEL_MAX)
    cfg = FlexConfig(
        d_hidden=d_hidden,
        n_heads=n_heads,
        n_layers_head_transformer=int(_get(tr, ("n_layers",))),
        n_layers_expression_transformer=int(_get(ht, ("n_layers_expression_transformer",))),
        n_layers_encoder=int(_get(raw, ("n_layers_encoder",))),
        use_causal_attention=bool(_get(tr, ("use_causal_attention",))),
        res_head_tokens=int(_get(ht, ("res_head_tokens",))),
        n_input_views=n_views,
        d_expression_codes=int(_get(ht, ("d_expression_codes",))),
        n_expression_tokens=int(_get(ht, ("n_expression_tokens",))),
        use_dataset_ids=bool(_get(ht, ("use_dataset_ids",))),
        patch_size=int(_get(raw, ("patch_size",))),
        feature_dim=int(_get(raw, ("feature_dim",))),
        upscale_uv_texture=upscale,
        oversampling_factor=int(_get(gd, ("oversampling_factor",))),
        stylegan_channel_base=int(base),
        stylegan_channel_max=int(cmax),
        raw=raw,
    )
    if cfg.d_hidden % (4**cfg.num_upsampler_blocks):
        raise ValueError(f"d_hidden {d_hidden} must be divisible by 4^{cfg.num_upsampler_blocks} (image skip path)")
    return cfg
