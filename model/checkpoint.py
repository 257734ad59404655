"""Checkpoint and avatar-code I/O, and ``load_official`` (the model factory).

- The official FLEX-1 checkpoint (``ckpt-900k.pt``) is a plain ``state_dict`` of ``FlexAvatarModel``; it loads
  with ``strict=True``: missing, unexpected or mis-shaped keys are an error that names them, never a partial load.
- ``.pt`` / ``.pth`` load through ``torch.load(map_location="cpu", weights_only=True)``; ``.safetensors`` through
  safetensors.
- Official avatar codes are ``.npy`` arrays of shape (HT, 1, D) float32, sequence-first (``AvatarCodeManager``);
  the runtime uses [1, HT, D] batch-first tensors.
- Template: an OBJ (sampled as the official code does), an official ``template_samples.npz``, or None for the
  project's own default head.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .config import FlexConfig, parse_config
from .flexavatar import DATASET_ID_3D, FlexAvatarModel
from .template import default_template_path, load_template, template_sha256

DEFAULT_SEED = 0


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.pt``/``.pth`` (weights_only) or ``.safetensors`` state dict onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    if path.suffix not in (".pt", ".pth", ".bin", ".ckpt"):
        raise ValueError(f"unknown checkpoint format {path.suffix!r}: expected .pt, .pth or .safetensors")
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"{path} is not a plain state_dict (a mapping of names to tensors); the official checkpoint is one"
        )
    return dict(obj)


def check_state_dict(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], what: str = "checkpoint") -> None:
    """Raise ValueError naming every missing, unexpected and mis-shaped key (strict loading, no partial loads)."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [
        f"{k}: {tuple(state_dict[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", misshaped)):
        if items:
            shown = ", ".join(items[:8]) + (f", ... ({len(items) - 8} more)" if len(items) > 8 else "")
            problems.append(f"{len(items)} {label}: {shown}")
    if problems:
        raise ValueError(f"{what} does not match the model ({'; '.join(problems)})")
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"{what} has non-finite values in {', '.join(bad[:8])}")


def save_state_dict(model: torch.nn.Module, path: str | Path) -> None:
    """Write the model's state_dict as ``.safetensors`` or ``.pt``."""
    path = Path(path)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        torch.save(sd, str(path))


# ------------------------------------------------------------------------------------------------ avatar codes
def load_avatar_code(path: str | Path) -> torch.Tensor:
    """Official avatar-code ``.npy`` (HT, 1, D) sequence-first -> [1, HT, D] float32."""
    arr = np.load(str(path), allow_pickle=False)
    return avatar_code_from_numpy(arr)


def avatar_code_from_numpy(arr: np.ndarray) -> torch.Tensor:
    if arr.ndim == 3 and arr.shape[1] == 1:
        code = torch.from_numpy(np.ascontiguousarray(arr[:, 0, :])).float()  # [HT, D]
    elif arr.ndim == 2:
        code = torch.from_numpy(np.ascontiguousarray(arr)).float()
    else:
        raise ValueError(f"avatar code must have shape (HT, 1, D) as saved by the official code, got {arr.shape}")
    if not bool(torch.isfinite(code).all()):
        raise ValueError("avatar code contains NaN or Inf")
    return code.unsqueeze(0)  # [1, HT, D]


def save_avatar_code(code: torch.Tensor, path: str | Path) -> None:
    """[1, HT, D] or [HT, D] -> official ``.npy`` layout (HT, 1, D) float32."""
    if code.dim() == 3:
        if code.shape[0] != 1:
            raise ValueError(f"save one avatar code at a time, got batch {code.shape[0]}")
        code = code[0]
    if code.dim() != 2:
        raise ValueError(f"avatar code must be [1,HT,D] or [HT,D], got {tuple(code.shape)}")
    np.save(str(path), code.detach().cpu().float().numpy()[:, None, :])


# ------------------------------------------------------------------------------------------------ templates
def template_buffers(template: str | Path | None, cfg: FlexConfig) -> tuple[dict[str, torch.Tensor], str]:
    """Template buffers {initial_head_xyz, initial_gaussian_positions, uv_samples} and the template's sha256."""
    if template is not None and Path(template).suffix == ".npz":
        path = Path(template)
        with np.load(str(path)) as z:
            missing = {"initial_head_xyz", "initial_gaussian_positions", "uv_samples"} - set(z.files)
            if missing:
                raise ValueError(f"template samples file {path} lacks {sorted(missing)}")
            bufs = {k: torch.from_numpy(z[k]).float() for k in ("initial_head_xyz", "initial_gaussian_positions", "uv_samples")}
        return bufs, template_sha256(path)
    path = Path(template) if template is not None else default_template_path()
    s = load_template(path, cfg.res_head_tokens, cfg.res_gaussian_grid)
    bufs = {"initial_head_xyz": s.initial_head_xyz, "initial_gaussian_positions": s.initial_gaussian_positions,
            "uv_samples": s.uv_samples}
    return bufs, template_sha256(path)


# ------------------------------------------------------------------------------------------------ factory
def init_random_weights(model: FlexAvatarModel, seed: int = DEFAULT_SEED) -> None:
    """Deterministic random weights (PyTorch default inits under ``seed``), with the Gaussian heads set up so
    an untrained model renders a head-shaped cloud: small offsets, mid-size scales, fairly opaque, identity
    rotations, random colours. Used when no checkpoint is given (and reported loudly by the callers)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in model.modules():
            if hasattr(m, "reset_parameters") and m is not model:
                m.reset_parameters()
        htm = model._head_transformer
        torch.nn.init.normal_(htm._head_token_embeddings, std=0.02)
        for layer in model._gaussian_decoder._stylegan_upsampler.modules():
            if hasattr(layer, "affine"):
                torch.nn.init.normal_(layer.weight)
                torch.nn.init.zeros_(layer.bias)
                torch.nn.init.normal_(layer.affine.weight)
                torch.nn.init.ones_(layer.affine.bias)
        heads = model._gaussian_decoder._mlp_decoder.out_layers
        with torch.no_grad():
            heads["xyz"].weight.mul_(0.02)
            heads["xyz"].bias.zero_()
            heads["scaling"].weight.mul_(0.02)
            heads["scaling"].bias.fill_(float(np.log(0.004)))
            heads["opacity"].weight.mul_(0.05)
            heads["opacity"].bias.fill_(1.5)
            heads["rotation"].weight.mul_(0.02)
            heads["rotation"].bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
            heads["shs"].weight.mul_(0.05)


def load_official(
    config: str | Path | Mapping[str, Any],
    state_dict: str | Path | Mapping[str, torch.Tensor] | None = None,
    template: str | Path | None = None,
    stylegan_channel_base: int | None = None,
    stylegan_channel_max: int | None = None,
    seed: int = DEFAULT_SEED,
) -> FlexAvatarModel:
    """Build a FlexAvatarModel in eval mode on the CPU.

    config: preset name ("flex1", "tiny"), path to an official ``model_config.json``, or a dict in that schema.
    state_dict: ``.pt``/``.pth``/``.safetensors`` path or a mapping, loaded strictly; None = seeded random weights.
    template: OBJ path, official ``template_samples.npz``, or None = the project's own default template.
    """
    cfg = parse_config(config, stylegan_channel_base, stylegan_channel_max)
    bufs, tmpl_hash = template_buffers(template, cfg)
    model = FlexAvatarModel(cfg, num_gaussians=bufs["uv_samples"].shape[1])
    if state_dict is None:
        init_random_weights(model, seed)
        source = f"random(seed={seed})"
    else:
        if isinstance(state_dict, (str, Path)):
            source = f"sha256:{file_sha256(state_dict)}"
            sd = load_state_dict_file(state_dict)
        else:
            source = "mapping"
            sd = dict(state_dict)
        check_state_dict(model, sd)
        model.load_state_dict(sd, strict=True)
    model.set_template(bufs["initial_head_xyz"], bufs["initial_gaussian_positions"], bufs["uv_samples"])
    model.identity = {"config_sha256": cfg.config_hash(), "weights": source, "template_sha256": tmpl_hash,
                      "template": str(template) if template is not None else "default"}
    model.eval()
    model.requires_grad_(False)
    return model


__all__ = [
    "DATASET_ID_3D", "load_official", "load_state_dict_file", "check_state_dict", "save_state_dict",
    "load_avatar_code", "save_avatar_code", "avatar_code_from_numpy", "file_sha256", "init_random_weights",
]
