"""StyleGAN2 pixel-shuffle upsampler (``_gaussian_decoder._stylegan_upsampler``), spec section 5.5.

The official code always passes ``ws = 0``, so every style vector is the affine layer's bias and all modulation
and demodulation is input-independent. ``folded_weight`` computes the effective static conv weight from the
checkpoint parameters; :meth:`StyleGANPixelShuffleUpsampler.fold` caches them (the deployed graphs use the cached
constants, so ``affine`` never appears in them); the forward pass uses plain conv / transposed conv / depthwise
FIR ops (ONNX-exportable).

Layout: x [N, C, H, W] float32 throughout (the official code forces fp32 here even under bf16 autocast).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import STYLEGAN_W_DIM

CONV_CLAMP = 256.0
LRELU_GAIN = math.sqrt(2.0)


def _fir_filter() -> torch.Tensor:
    f = torch.tensor([1.0, 3.0, 3.0, 1.0])
    f = torch.outer(f, f)
    return f / f.sum()  # [4, 4], sum 1 (the persistent ``resample_filter`` buffer)


class _Affine(nn.Module):
    """FullyConnectedLayer(w_dim -> c_in); with ws = 0 its output is exactly ``bias``."""

    def __init__(self, c_in: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(c_in, STYLEGAN_W_DIM))
        self.bias = nn.Parameter(torch.ones(c_in))


class SynthesisLayer(nn.Module):
    """Modulated + demodulated 3x3 conv (no weight gain), optional 2x up, bias, lrelu*sqrt(2), clamp 256."""

    def __init__(self, c_in: int, c_out: int, up: int):
        super().__init__()
        self.up = up
        self.weight = nn.Parameter(torch.randn(c_out, c_in, 3, 3))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.register_buffer("resample_filter", _fir_filter())
        self.affine = _Affine(c_in)
        self.register_buffer("folded", None, persistent=False)  # set by fold(): static W'' [c_out, c_in, 3, 3]

    def folded_weight(self) -> torch.Tensor:  # [c_out, c_in, 3, 3]
        styles = self.affine.bias  # [c_in]
        w = self.weight * styles.reshape(1, -1, 1, 1)
        dcoefs = (w.square().sum(dim=[1, 2, 3]) + 1e-8).rsqrt()  # [c_out]
        return w * dcoefs.reshape(-1, 1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.folded_weight() if self.folded is None else self.folded
        if self.up == 1:
            x = F.conv2d(x, w, padding=1)
        else:
            # transposed conv with the (unflipped) kernel, stride 2 -> [2H+1, 2W+1]; pad 1; 4x4 FIR x up^2
            x = F.conv_transpose2d(x, w.transpose(0, 1), stride=2)
            c = w.shape[0]
            fir = (self.resample_filter * (self.up**2)).to(x.dtype)
            fir = fir.flip([0, 1])[None, None].expand(c, 1, 4, 4)
            x = F.conv2d(x, fir, groups=c, padding=1)  # zero-pad 1, depthwise 4x4 FIR
        x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        x = F.leaky_relu(x, 0.2) * LRELU_GAIN
        return x.clamp(-CONV_CLAMP, CONV_CLAMP)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv without demodulation, style scaled by 1/sqrt(c_in); bias; clamp 256."""

    def __init__(self, c_in: int, c_img: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_img, c_in, 1, 1))
        self.bias = nn.Parameter(torch.zeros(c_img))
        self.affine = _Affine(c_in)
        self.register_buffer("folded", None, persistent=False)  # set by fold(): static W' [c_img, c_in, 1, 1]

    def folded_weight(self) -> torch.Tensor:  # [c_img, c_in, 1, 1]
        styles = self.affine.bias * (1.0 / math.sqrt(self.weight.shape[1]))
        return self.weight * styles.reshape(1, -1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.folded_weight() if self.folded is None else self.folded
        x = F.conv2d(x, w) + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return x.clamp(-CONV_CLAMP, CONV_CLAMP)


class SynthesisBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, c_img: int):
        super().__init__()
        self.conv0 = SynthesisLayer(c_in, c_out, up=2)
        self.conv1 = SynthesisLayer(c_out, c_out, up=1)
        self.torgb = ToRGBLayer(c_out, c_img)

    def forward(self, x: torch.Tensor, img: torch.Tensor):
        x = self.conv1(self.conv0(x))
        img = F.pixel_shuffle(img, 2) + self.torgb(x)
        return x, img


class StyleGANPixelShuffleUpsampler(nn.Module):
    """UV feature map [N, D, r, r] -> [N, D / 4^k, r 2^k, r 2^k] through k skip-architecture blocks."""

    def __init__(self, channels: int, input_res: int, num_blocks: int, channel_base: int, channel_max: int):
        super().__init__()
        blocks = []
        c_in, c_img, res = channels, channels, input_res
        for _ in range(num_blocks):
            res *= 2
            c_out = min(channel_base // res, channel_max)
            c_img //= 4
            blocks.append(SynthesisBlock(c_in, c_out, c_img))
            c_in = c_out
        self.blocks = nn.ModuleList(blocks)

    def _layers(self):
        for block in self.blocks:
            yield from (block.conv0, block.conv1, block.torgb)

    @torch.no_grad()
    def fold(self) -> None:
        """Precompute the static modulated weights (call after loading weights; ``unfold`` undoes it)."""
        for layer in self._layers():
            layer.folded = layer.folded_weight().detach().clone()

    def unfold(self) -> None:
        for layer in self._layers():
            layer.folded = None

    def forward(self, uv_map: torch.Tensor, intermediates: dict | None = None) -> torch.Tensor:
        x = img = uv_map
        for k, block in enumerate(self.blocks):
            x, img = block(x, img)
            if intermediates is not None:
                intermediates[f"upsampler_block{k}_x"] = x
                intermediates[f"upsampler_block{k}_img"] = img
        return img
