"""Shared pieces of the fitting tests: a tiny-preset model whose renders depend visibly on the avatar code and on
the expression code, a known avatar code, and targets rendered from it.

The tiny preset has seeded random weights; with them the avatar code and the expression code barely change a
render (initial PSNRs of 40-70 dB between different codes). Two scalings make the known-answer tests
discriminative without touching the code under test: the colour head's weights x20 (colours follow the decoded
features), and in every block of the expression transformer the context keys' RMS-norm gain and the context
values x8 (the expression tokens get attended to and move the features).
"""
from __future__ import annotations

import functools

import torch

from flexrt.model import load_official
from flexrt.model.camera import default_camera

SIZE = 48  # render/target resolution of the CPU tests


def neutral_expressions(n: int) -> torch.Tensor:
    """[n, 135]: zeros with the identity 6D rotation in the eyes, neck, jaw and head-rotation slots."""
    code = torch.zeros(n, 135)
    for start in (100, 106, 114, 120, 126):
        code[:, start: start + 6] = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    return code


@functools.lru_cache(maxsize=1)
def sensitive_tiny_model():
    return make_sensitive(load_official("tiny"))


def make_sensitive(model):
    """The two scalings above, in place, on a tiny-preset model (also used on a server's engine model)."""
    from flexrt.model.layers import JointAttention

    with torch.no_grad():
        model._gaussian_decoder._mlp_decoder.out_layers["shs"].weight.mul_(20.0)
        for m in model._head_transformer._expression_transformer.modules():
            if isinstance(m, JointAttention):
                m.norm_added_k.weight.mul_(8.0)
                m.add_v_proj.weight.mul_(8.0)
    return model


def cameras(yaws_deg) -> tuple[torch.Tensor, torch.Tensor]:
    """Frontal-arc cameras 1 m from the head: (cam2world [n, 4, 4] OpenCV, normalised intrinsics [n, 3, 3])."""
    cams = [default_camera(yaw_deg=float(y)) for y in yaws_deg]
    return torch.stack([c for c, _ in cams]), torch.stack([k for _, k in cams])


def random_codes(model, seed: int, n: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(model.num_head_tokens, model.hidden_dim, generator=g) for _ in range(n)]


def random_expressions(n: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    """Neutral codes with N(0, scale²) on the first 10 FLAME expression coefficients: [n, 135]."""
    e = neutral_expressions(n)
    e[:, :10] += scale * torch.randn(n, 10, generator=torch.Generator().manual_seed(seed))
    return e


def write_feature_module(path, seed: int = 0) -> torch.nn.Module:
    """A real small TorchScript feature module at ``path`` (a stand-in for a user's SAM2.1-hiera-small image-encoder
    export: images [B,3,H,W] -> features [B,8,H/4,W/4]); returns the eager module it was scripted from, the
    reference for its features."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.GELU(),
                              torch.nn.Conv2d(8, 8, 3, stride=2, padding=1)).eval()
    torch.jit.save(torch.jit.script(net), str(path))
    return net
