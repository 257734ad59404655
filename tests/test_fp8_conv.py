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

from flexrt.kernels.fp8_conv import CONV_CLAMP, conv_reference, fp8_conv3x3_lrelu, fp8_conv_status, quantize_weight
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
    y = conv_reference(x8, fp8.weight_fp8, fp8.weight_scale, fp8.bias, fp8.input_scale).permute(0, 3, 1, 2)
    y = F.pixel_shuffle(y, up) if up != 1 else y
    torch.testing.assert_close(out.float(), y.to(torch.bfloat16).float(), rtol=0, atol=0)


def test_triton_kernel_in_the_interpreter():
    """The kernel's taps, borders, masks and epilogue, run by Triton's CPU interpreter at a ragged shape, within one
    bf16 step of the reference op (the interpreter truncates to bf16 where a GPU rounds)."""
    result = interpreter_check_of("flexrt.kernels.fp8_conv")
    assert result["max_diff_steps"] <= 1.01, result


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
               for b in eng.decoder.upsampler.blocks)
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
