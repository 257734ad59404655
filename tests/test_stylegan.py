"""StyleGAN upsampler building blocks: the sub-pixel form of the up-conv equals the official transposed conv + FIR."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from flexrt.model.stylegan import StyleGANPixelShuffleUpsampler, SynthesisLayer


def _official_up_conv(layer: SynthesisLayer, x: torch.Tensor) -> torch.Tensor:
    """The reference formulation (spec 5.5): transposed conv (unflipped), zero-pad 1, depthwise 4x4 FIR x 4."""
    w = layer.folded_weight()
    y = F.conv_transpose2d(x, w.transpose(0, 1), stride=2)  # [N, C, 2H+1, 2W+1]
    c = w.shape[0]
    fir = (layer.resample_filter * 4)[None, None].expand(c, 1, 4, 4)
    return F.conv2d(F.pad(y, [1, 1, 1, 1]), fir.flip([2, 3]), groups=c)  # [N, C, 2H, 2W]


def test_subpixel_up_conv_equals_transposed_conv_and_fir():
    torch.manual_seed(0)
    layer = SynthesisLayer(6, 5, up=2).double()
    with torch.no_grad():
        layer.affine.bias.uniform_(0.5, 1.5)
        layer.weight.normal_()
    x = torch.randn(3, 6, 7, 9, dtype=torch.float64)  # non-square on purpose
    ref = _official_up_conv(layer, x)
    got = F.pixel_shuffle(F.conv2d(x, layer.subpixel_weight(layer.folded_weight()), padding=1), 2)
    assert got.shape == ref.shape == (3, 5, 14, 18)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)


def test_fold_caches_the_same_numbers():
    torch.manual_seed(1)
    ups = StyleGANPixelShuffleUpsampler(16, input_res=4, num_blocks=2, channel_base=256, channel_max=16).double()
    for p in ups.parameters():
        torch.nn.init.normal_(p, std=0.5)
    x = torch.randn(2, 16, 4, 4, dtype=torch.float64)
    unfolded = ups(x)
    ups.fold()
    assert ups.blocks[0].conv0.folded_subpixel.shape == (4 * 16, 16, 3, 3)
    torch.testing.assert_close(ups(x), unfolded, rtol=0, atol=1e-12)
    ups.unfold()
    assert ups.blocks[0].conv0.folded is None and ups.blocks[0].conv0.folded_subpixel is None
