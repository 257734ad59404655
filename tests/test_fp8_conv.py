"""FP8 3x3 convolutions with the StyleGAN epilogue (kernels/fp8_conv.py) and the decoder's upsampler="fp8" mode.

CPU: the reference op against fp64 math; ``Fp8ConvLayer`` against the ``SynthesisLayer`` it replaces (plain and
sub-pixel up-conv, non-zero biases so their channel order matters); the Triton kernel's logic in Triton's
interpreter (a subprocess with TRITON_INTERPRET=1; skipped without Triton); the engine against fp32 by rendered PSNR.
GPU (gpu marker): the compiled kernel against the reference op at FLEX-1's shapes (the compiled engine with FP8
convolutions: tests/test_fp8_gemm.py)."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from flexrt.kernels.fp8_conv import (CONV_CLAMP, conv_reference, fp8_conv3x3_lrelu, fp8_conv3x3_lrelu_shuffle,
                                     fp8_conv_status, quantize_weight, shuffle_phase_major, to_phase_major)
from flexrt.kernels.fp8_gemm import FP8_MAX
from flexrt.model.deploy import Fp8ConvLayer
from flexrt.model.pipeline import build_pipeline
from flexrt.model.stylegan import SynthesisLayer
from flexrt.runtime.engines import TorchEngine

from test_fp8_gemm import _render_psnr, interpreter_check_of


def _operands(b=2, h=6, w=5, c=24, n=16, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, h, w, c, generator=g)
    x_scale = (x.abs().amax() * 2 / FP8_MAX).reshape(())
    x8 = (x / x_scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    w8, w_scale = quantize_weight(torch.randn(n, c, 3, 3, generator=g) / (9 * c) ** 0.5)
    bias = 0.5 * torch.randn(n, generator=g)
    return [t.to(device) for t in (x8, w8, w_scale, bias, x_scale)]


def test_reference_op_is_the_stated_function():
    x8, w8, w_scale, bias, x_scale = _operands()
    x = x8.double() * float(x_scale)  # [B,H,W,C]
    w = w8.double() * w_scale.double()[:, None, None, None]  # [N,3,3,C]
    y = torch.zeros(2, 6, 5, 16, dtype=torch.float64)  # the convolution written out: taps over a zero-padded x
    xp = F.pad(x, (0, 0, 1, 1, 1, 1))
    for dy in range(3):
        for dx in range(3):
            y += xp[:, dy:dy + 6, dx:dx + 5, :] @ w[:, dy, dx, :].t()
    y = y + bias.double()
    truth = torch.where(y >= 0, y, 0.2 * y) * 2 ** 0.5
    out = fp8_conv3x3_lrelu(x8, w8, w_scale, bias, x_scale)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 6, 5, 16)
    assert float(((out.double() - truth).abs() / truth.abs().clamp_min(1e-3)).max()) <= 2.0 ** -8 + 1e-6  # one bf16 rounding
    big = fp8_conv3x3_lrelu(x8, w8, w_scale, bias + 1000.0, x_scale)
    assert float(big.float().max()) == CONV_CLAMP  # the clamp


def test_shuffle_op_is_the_stated_function():
    """fp8_conv3x3_lrelu_shuffle = e4m3(shuffle(the conv op in fp32) / out_scale) with phase-major channels: channel
    p N' + o (p = 2i + j) of pixel (h, w) lands on channel o of pixel (2h + i, 2w + j), which is PixelShuffle(2) of
    the same weights in PixelShuffle's order (channel 4o + p); within one e4m3 step of quantising the bf16 op's
    output (which rounds twice)."""
    x8, w8, w_scale, bias, x_scale = _operands(n=16)  # N' = 4
    y = conv_reference(x8, w8, w_scale, bias, x_scale)  # [2,6,5,16] fp32, phase-major channels
    out_scale = (y.abs().amax() * 1.5 / FP8_MAX).reshape(())
    out = fp8_conv3x3_lrelu_shuffle(x8, w8, w_scale, bias, x_scale, out_scale)
    assert out.dtype == torch.float8_e4m3fn and out.shape == (2, 12, 10, 4) and out.is_contiguous()
    for o, i, j in ((0, 0, 0), (1, 0, 1), (2, 1, 0), (3, 1, 1)):  # the channel order, written out
        want = (y[..., (2 * i + j) * 4 + o] / out_scale).to(torch.float8_e4m3fn).float()
        assert torch.equal(out[:, i::2, j::2, o].float(), want), (o, i, j)
    # PixelShuffle of the same convolution with its channels in PixelShuffle's order (what to_phase_major undoes)
    ps_order = [t.reshape(4, 4, *t.shape[1:]).transpose(0, 1).reshape(t.shape) for t in (w8, w_scale, bias)]
    assert all(torch.equal(to_phase_major(t).float(), u.float()) for t, u in zip(ps_order, (w8, w_scale, bias)))
    y_ps = conv_reference(x8, ps_order[0], ps_order[1], ps_order[2], x_scale).permute(0, 3, 1, 2)
    torch.testing.assert_close(shuffle_phase_major(y), F.pixel_shuffle(y_ps, 2).permute(0, 2, 3, 1), rtol=0, atol=0)
    twice = shuffle_phase_major(fp8_conv3x3_lrelu(x8, w8, w_scale, bias, x_scale)).float() / out_scale
    step = torch.exp2(torch.floor(torch.log2(twice.abs().clamp_min(2.0 ** -6))) - 3)
    assert float(((out.float() - twice.clamp(-FP8_MAX, FP8_MAX)).abs() / step).max()) <= 1.0
    with pytest.raises(ValueError, match="divisible by 4"):
        fp8_conv3x3_lrelu_shuffle(*_operands(n=18), out_scale)


def test_inputs_are_checked_with_one_line_each():
    x8, w8, w_scale, bias, x_scale = _operands()
    with pytest.raises(ValueError, match="float8_e4m3fn"):
        fp8_conv3x3_lrelu(x8.float(), w8, w_scale, bias, x_scale)
    with pytest.raises(ValueError, match="same C"):
        fp8_conv3x3_lrelu(x8[..., :8].contiguous(), w8, w_scale, bias, x_scale)
    with pytest.raises(ValueError, match=r"w_scale \[16\]"):
        fp8_conv3x3_lrelu(x8, w8, w_scale[:3], bias, x_scale)
    assert fp8_conv_status("cpu")[0] == "torch"


@pytest.mark.parametrize("up", [1, 2])
def test_fp8_conv_layer_replaces_the_synthesis_layer(up):
    """The FP8 layer computes the SynthesisLayer's function (bias per output channel after the pixel shuffle for the
    up-conv) within e4m3's error, and exactly the quantised function."""
    torch.manual_seed(up)
    layer = SynthesisLayer(32, 24, up=up).requires_grad_(False)
    layer.bias.normal_(0.0, 2.0)  # large, distinct biases: a wrong channel order would show at once
    layer.folded = layer.folded_weight()
    layer.folded_subpixel = layer.subpixel_weight(layer.folded) if up != 1 else None
    x = torch.randn(2, 32, 8, 8)
    ref = layer(x)  # fp32 [2,24,8*up,8*up]
    fp8 = Fp8ConvLayer(layer)
    xb = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    fp8(xb)  # calibration pass
    fp8.calibrate()
    out = fp8(xb)
    assert out.shape == ref.shape and out.dtype == torch.bfloat16
    rms = float(ref.square().mean().sqrt())
    err = float((out.float() - ref).square().mean().sqrt()) / rms
    assert err < 0.06, err  # e4m3 operands: a few % RMS
    # exactly the quantised function: the op on the layer's own operands, pixel-shuffled
    x8 = (xb.permute(0, 2, 3, 1).float() / fp8.input_scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    y = conv_reference(x8, fp8.weight_fp8, fp8.weight_scale, fp8.bias, fp8.input_scale)  # up: phase-major
    y = (shuffle_phase_major(y) if up != 1 else y).permute(0, 3, 1, 2)
    torch.testing.assert_close(out.float(), y.to(torch.bfloat16).float(), rtol=0, atol=0)


def test_triton_kernel_in_the_interpreter():
    """The kernel's taps, borders, masks and both epilogues, run by Triton's CPU interpreter at a ragged shape: bf16
    out within one bf16 step of the reference op (the interpreter truncates to bf16 where a GPU rounds), the
    shuffled e4m3 out within one e4m3 step of the shuffled reference (every sub-pixel's address), both with a
    phase changing inside a tile and with one phase a tile (FLEX-1's up-convs)."""
    result = interpreter_check_of("flexrt.kernels.fp8_conv")
    assert result["max_diff_steps"] <= 1.01, result
    assert result["shuffle_max_diff_steps"] <= 1.01 and result["shuffle_one_phase_a_tile_max_diff_steps"] <= 1.01, \
        result


def test_up_conv_quantises_for_the_next_fp8_conv():
    """A synthesis block's conv0 -> conv1 as Fp8ConvLayers: once linked (conv0.output_scale = conv1.input_scale, as
    DeployedFrameDecoder.calibrate_fp8 does), conv0 hands conv1 its e4m3 NHWC input and the block's output stays
    within e4m3's error of the unlinked path (bf16 image, shuffle, quantise)."""
    torch.manual_seed(0)
    conv0 = SynthesisLayer(32, 24, up=2).requires_grad_(False)
    conv1 = SynthesisLayer(24, 24, up=1).requires_grad_(False)
    for layer in (conv0, conv1):
        layer.bias.normal_(0.0, 1.0)
        layer.folded = layer.folded_weight()
    conv0.folded_subpixel = conv0.subpixel_weight(conv0.folded)
    f0, f1 = Fp8ConvLayer(conv0), Fp8ConvLayer(conv1)
    xb = torch.randn(2, 32, 8, 8).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    f1(f0(xb))  # calibration pass
    f0.calibrate(), f1.calibrate()
    unlinked = f1(f0(xb)).float()
    f0.output_scale = f1.input_scale
    mid = f0(xb)
    assert mid.dtype == torch.float8_e4m3fn and mid.shape == (2, 16, 16, 24)
    linked = f1(mid).float()
    assert linked.shape == unlinked.shape == (2, 24, 16, 16)
    rms = float(unlinked.square().mean().sqrt())
    assert 0 < float((linked - unlinked).square().mean().sqrt()) / rms < 0.03  # another rounding, same function


def test_engine_fp8_upsampler_close_to_fp32():
    p = build_pipeline("tiny")
    code, expr = torch.randn(3, 64, 64), torch.randn(3, 135) * 0.5
    ref = TorchEngine(p, precision="fp32").decode(code, expr)
    gemms = TorchEngine(p, precision="bf16", fp8="fused", residual="bf16").decode(code, expr)
    eng = TorchEngine(p, precision="bf16", fp8="fused", residual="bf16", upsampler="fp8")
    assert eng.info.precision.endswith("+fp8-upsampler") and "FP8 convolutions as reference" in \
        eng.info.detail["fp8_kernels"]
    assert not eng.decoder.needs_calibration
    assert all(isinstance(b.conv0, Fp8ConvLayer) and isinstance(b.conv1, Fp8ConvLayer)
               and b.conv0.output_scale is b.conv1.input_scale for b in eng.decoder.upsampler.blocks)
    out = eng.decode(code, expr)
    assert float((out.colors - gemms.colors).abs().max()) > 0  # really another path
    assert float(_render_psnr(out, ref).min()) >= 45.0
    with pytest.raises(ValueError, match="needs precision='bf16'"):
        p.model.deploy_decoder("fp32", upsampler="fp8")


@pytest.mark.gpu
def test_gpu_triton_kernel_matches_the_reference_op():
    """The compiled kernel against the reference op (fp32 on the CPU) at FLEX-1's four convolutions (2 frames) and a
    ragged shape: Hopper's FP8 MMAs accumulate with fewer bits than fp32, so the bar is relative to the output's RMS:
    RMS difference <= 0.5 % (bf16 rounding is ~0.2 %), largest <= 5 %."""
    backend, why = fp8_conv_status("cuda")
    if backend != "triton":
        pytest.skip(why)
    for b, res, c, n in ((2, 32, 768, 2048), (2, 64, 512, 512), (2, 64, 512, 1024), (2, 128, 256, 256),
                         (3, 7, 40, 24)):
        ops = _operands(b, res, res, c, n, device="cuda")
        out = fp8_conv3x3_lrelu(*ops).float().cpu()
        ref = conv_reference(*[t.cpu() for t in ops])
        rms = float(ref.square().mean().sqrt())
        d = (out - ref).abs()
        assert float(d.square().mean().sqrt()) / rms <= 5e-3 and float(d.max()) / rms <= 5e-2, (b, res, c, n)
        if n % 4 == 0:  # the up-conv epilogue: shuffled e4m3, within one e4m3 step (6.25 %) of the reference
            # value plus the bf16 path's own bar (the MMAs' accumulation), and no further off on average
            out_scale = (ref.abs().amax() / FP8_MAX).reshape(())
            out8 = fp8_conv3x3_lrelu_shuffle(*ops, out_scale.cuda()).float().cpu() * out_scale
            ref8 = shuffle_phase_major(ref)
            d8 = (out8 - ref8).abs()
            assert bool((d8 <= 0.0625 * ref8.abs() + 5e-2 * rms + 2.0 ** -9 * out_scale).all()), (b, res, c, n)
            assert float(d8.square().mean().sqrt()) / rms <= 0.05, (b, res, c, n)


def test_serve_flags_reach_the_engine():
    """`flexavatar serve --upsampler ...` on a CPU: auto builds the bf16 upsampler and says nothing of FP8
    convolutions; fp8 (no FP8 tensor cores here) and fp8 with the fp32 decoder are refused in one line each."""
    import argparse

    from flexrt.runtime.cli import build_engine

    base = dict(engines=None, model="tiny", checkpoint=None, dinov2=None, template=None, device="cpu",
                backend="auto", precision="bf16", fp8="auto", residual="auto")
    eng = build_engine(argparse.Namespace(**base, upsampler="auto"))
    assert eng.info.detail["upsampler"] == "bf16" and "fp8_kernels" not in eng.info.detail
    with pytest.raises(SystemExit, match="--upsampler fp8 needs a CUDA GPU with FP8 tensor cores"):
        build_engine(argparse.Namespace(**base, upsampler="fp8"))
    with pytest.raises(SystemExit, match="need the bf16 decoder"):
        build_engine(argparse.Namespace(**{**base, "precision": "fp32"}, upsampler="fp8"))
