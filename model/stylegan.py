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
        self.register_buffer("folded_subpixel", None, persistent=False)  # up-convs: [4 c_out, c_in, 3, 3]

    def folded_weight(self) -> torch.Tensor:  # [c_out, c_in, 3, 3]
        styles = self.affine.bias  # [c_in]
        w = self.weight * styles.reshape(1, -1, 1, 1)
        dcoefs = (w.square().sum(dim=[1, 2, 3]) + 1e-8).rsqrt()  # [c_out]
        return w * dcoefs.reshape(-1, 1, 1, 1)

    def subpixel_weight(self, w: torch.Tensor) -> torch.Tensor:
        """The up-conv as a sub-pixel conv: [c_out, c_in, 3, 3] -> [4 c_out, c_in, 3, 3].

        Transposed conv (stride 2, unflipped kernel) followed by zero-pad 1 and the 4x4 FIR (x up^2) is linear:
        it equals one stride-2 transposed conv with the 6x6 composite kernel K = W * FIR, whose four polyphase
        3x3 parts, run as an ordinary 3x3 conv (padding 1) with 4 c_out channels and PixelShuffle(2), give the
        same output. Output channel o*4 + 2*ry + rx holds phase (ry, rx), PixelShuffle's (CRD) order.
        """
        fir = (self.resample_filter * (self.up**2)).to(w.dtype)  # [4, 4], symmetric
        c_out, c_in = w.shape[:2]
        k6 = w.new_zeros(c_out, c_in, 6, 6)  # composite kernel, index m + 2 for m in [-2, 3]
        for ty in range(4):
            for tx in range(4):
                k6[:, :, 3 - ty:6 - ty, 3 - tx:6 - tx] += fir[ty, tx] * w
        idx = torch.tensor([[4, 2, 0], [5, 3, 1]], device=w.device)  # [ry, ky] -> 4 - 2 ky + ry
        q = k6[:, :, idx][:, :, :, :, idx]  # [c_out, c_in, ry, ky, rx, kx]
        return q.permute(0, 2, 4, 1, 3, 5).reshape(4 * c_out, c_in, 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.folded_weight() if self.folded is None else self.folded
        if self.up == 1:
            x = F.conv2d(x, w, padding=1)
        else:
            w_sub = self.subpixel_weight(w) if self.folded is None else self.folded_subpixel
            x = F.pixel_shuffle(F.conv2d(x, w_sub, padding=1), 2)  # = conv_transpose(stride 2) + pad 1 + FIR
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
            if isinstance(layer, SynthesisLayer) and layer.up != 1:
                layer.folded_subpixel = layer.subpixel_weight(layer.folded)

    def unfold(self) -> None:
        for layer in self._layers():
            layer.folded = None
            if isinstance(layer, SynthesisLayer):
                layer.folded_subpixel = None

    def forward(self, uv_map: torch.Tensor, intermediates: dict | None = None) -> torch.Tensor:
        x = img = uv_map
        for k, block in enumerate(self.blocks):
            x, img = block(x, img)
            if intermediates is not None:
                intermediates[f"upsampler_block{k}_x"] = x
                intermediates[f"upsampler_block{k}_img"] = img
        return img
