"""FP8 GEMMs with fused epilogues (kernels/fp8_gemm.py) and the decoder's fp8="fused" mode.

CPU: the reference ops against plain fp32 math and against the unfused static path; the Triton kernel's logic in
Triton's interpreter (a subprocess with TRITON_INTERPRET=1; skipped without Triton). GPU (gpu marker): the compiled
kernel against the reference ops, and the fused decoder compiled under CUDA graphs against fp32."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flexrt.kernels.fp8_gemm import (FP8_MAX, RESIDUAL_GEMM_ENV, _build, fp8_linear_gelu_quantize, fp8_linear_residual,
                                     fp8_linear_rowwise, fp8_qkv_rmsnorm, fused_fp8_status)
from flexrt.model.deploy import Fp8Linear
from flexrt.model.pipeline import build_pipeline
from flexrt.runtime.engines import TorchEngine


def _operands(m=48, n=80, k=64, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    w32 = torch.randn(n, k, generator=g) / k ** 0.5
    w_scale = w32.abs().amax(1) / FP8_MAX
    w8 = (w32 / w_scale[:, None]).to(torch.float8_e4m3fn)
    bias = (0.1 * torch.randn(n, generator=g)).to(torch.bfloat16)
    x_scale = torch.tensor(16.0 / FP8_MAX)
    x8 = (torch.randn(m, k, generator=g) / x_scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    residual = torch.randn(m, n, generator=g).to(torch.bfloat16)
    return [t.to(device) for t in (x8, w8, w_scale, bias, x_scale, residual)]


def test_reference_ops_are_the_stated_functions():
    x8, w8, w_scale, bias, x_scale, residual = _operands()
    y = (x8.double() * float(x_scale)) @ (w8.double() * w_scale.double()[:, None]).t() + bias.double()  # fp64 truth
    out_scale = torch.tensor(0.005)
    q = fp8_linear_gelu_quantize(x8, w8, w_scale, bias, x_scale, out_scale)
    assert q.dtype == torch.float8_e4m3fn and q.shape == (48, 80)
    truth = (F.gelu(y, approximate="tanh") / 0.005).clamp(-FP8_MAX, FP8_MAX)
    assert float(q.float().abs().max()) == FP8_MAX  # saturates (0.005 is a small scale): clamped, not inf / nan
    inside = truth.abs() < 200  # away from the clamp: within e4m3's rounding (half a step, 2^-4 relative)
    assert float(((q.double() - truth).abs() / truth.abs().clamp_min(2.0 ** -6))[inside].max()) <= 2.0 ** -4 + 1e-6
    r = fp8_linear_residual(x8, w8, w_scale, bias, x_scale, residual)
    assert r.dtype == torch.bfloat16
    truth = residual.double() + y
    rel = (r.double() - truth).abs() / truth.abs().clamp_min(1e-3)
    assert float(rel.max()) <= 2.0 ** -8 + 1e-6  # one bf16 rounding


def test_inputs_are_checked_with_one_line_each():
    x8, w8, w_scale, bias, x_scale, residual = _operands()
    with pytest.raises(ValueError, match="float8_e4m3fn"):
        fp8_linear_residual(x8.float(), w8, w_scale, bias, x_scale, residual)
    with pytest.raises(ValueError, match=r"w_scale \[80\]"):
        fp8_linear_residual(x8, w8, w_scale[:10], bias, x_scale, residual)
    with pytest.raises(ValueError, match="contiguous bf16 residual"):
        fp8_linear_residual(x8, w8, w_scale, bias, x_scale, residual.float())
    assert fused_fp8_status("cpu")[0] == "torch"


def test_fused_linear_matches_the_unfused_static_path():
    """Fp8Linear's fused entry points compute what its static forward + torch's GELU / quantisation / add compute,
    up to the one bf16 rounding of the product that the fused epilogue skips."""
    torch.manual_seed(0)
    lin_in, lin_out = nn.Linear(64, 128).requires_grad_(False), nn.Linear(128, 64).requires_grad_(False)
    f_in, f_out = Fp8Linear(lin_in, "static"), Fp8Linear(lin_out, "static")
    x = torch.randn(2, 24, 64).to(torch.bfloat16)
    f_out(F.gelu(f_in(x), approximate="tanh"))  # calibration pass
    f_in.calibrate(), f_out.calibrate()
    h8 = f_in.forward_gelu_quantized(x, f_out.input_scale)
    h8_ref = f_out.quantize_static(F.gelu(f_in(x), approximate="tanh").reshape(-1, 128)).reshape(2, 24, 128)
    agree = (h8.float() == h8_ref.float()).float().mean()
    assert h8.shape == (2, 24, 128) and float(agree) > 0.9  # differ by a rounding step on a few elements
    torch.testing.assert_close(h8.float(), h8_ref.float(), rtol=0.13, atol=2e-3 / float(f_out.input_scale))
    res = torch.randn(2, 24, 64).to(torch.bfloat16)
    y = f_out.forward_residual(h8, res)
    y_ref = res + f_out(h8.float() * f_out.input_scale)  # the unfused path reading the same quantised input
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=2e-2, atol=2e-2)


def _render_psnr(a, b, width=96):
    from flexrt.kernels import rasterize, sh_dc_to_rgb
    from flexrt.model.camera import default_camera, pixel_intrinsics, viewmat_from_cam2world

    c2w, K = default_camera()
    out = []
    for g in (a, b):
        n = g.positions.shape[0]
        rgb, _ = rasterize(g.positions.cpu(), g.rotations.cpu(), g.scales.cpu(), g.opacities[..., 0].cpu(),
                           sh_dc_to_rgb(g.colors.cpu()), viewmat_from_cam2world(c2w).expand(n, 1, 4, 4),
                           pixel_intrinsics(K, width, width).expand(n, 1, 3, 3), width, width,
                           background=torch.ones(3), backend="cpu")
        out.append(rgb.clamp(0, 1))
    return -10 * torch.log10(((out[0] - out[1]) ** 2).flatten(1).mean(1).clamp_min(1e-20))


def test_engine_fp8_fused_close_to_fp32_and_to_static():
    p = build_pipeline("tiny")
    code, expr = torch.randn(3, 64, 64), torch.randn(3, 135) * 0.5
    ref = TorchEngine(p, precision="fp32").decode(code, expr)
    static = TorchEngine(p, precision="bf16", fp8="static", residual="bf16").decode(code, expr)
    eng = TorchEngine(p, precision="bf16", fp8="fused", residual="bf16")
    assert eng.info.precision == "bf16+fp8-fused+bf16-residual"
    assert "reference torch ops on cpu" in eng.info.detail["fp8_kernels"]  # says what runs the epilogues
    assert all(b.fused_epilogues for b in eng.decoder.blocks) and not eng.decoder.needs_calibration
    out = eng.decode(code, expr)
    for k in ref.keys():
        rel = lambda x: float((x[k] - ref[k]).abs().max() / ref[k].abs().max())  # noqa: E731
        assert rel(out) < max(1.5 * rel(static), 2e-3), (k, rel(out), rel(static))
        assert float((out[k] - static[k]).abs().max()) > 0  # really another path
    assert float(_render_psnr(out, ref).min()) >= 45.0
    # the q|k|v GEMM with its head norms in one op (fp8_qkv_rmsnorm) against the unfused q|k|v path the decoder
    # keeps where that kernel cannot run: the same function up to the bf16 rounding of q|k|v before the norms
    assert all(b.fused_qkv for b in eng.decoder.blocks)
    for b in eng.decoder.blocks:
        b.fused_qkv = False
    unfused_qkv = eng.decode(code, expr)
    for k in ref.keys():
        assert float((out[k] - unfused_qkv[k]).abs().max()) > 0, k  # really another path
        torch.testing.assert_close(out[k], unfused_qkv[k], rtol=0.05, atol=0.02 * float(ref[k].abs().max()))
    with pytest.raises(ValueError, match="needs residual='bf16'"):
        p.model.deploy_decoder("bf16", fp8="fused")


def test_engine_rowwise_residual_gemms_compute_the_same_function(monkeypatch):
    """FLEXRT_FP8_RESIDUAL_GEMM=rowwise (to_out / ff_out as torch's row-wise FP8 GEMM, the residual added after it)
    against the default epilogue path: the same function up to the bf16 rounding of the product before the add;
    the engine says which runs; a wrong value is one line."""
    p = build_pipeline("tiny")
    code, expr = torch.randn(3, 64, 64), torch.randn(3, 135) * 0.5
    ref = TorchEngine(p, precision="fp32").decode(code, expr)
    epilogue = TorchEngine(p, precision="bf16", fp8="fused", residual="bf16")
    assert epilogue.info.detail["residual_gemm"] == "epilogue"
    monkeypatch.setenv(RESIDUAL_GEMM_ENV, "rowwise")
    rowwise = TorchEngine(p, precision="bf16", fp8="fused", residual="bf16")
    assert rowwise.info.detail["residual_gemm"] == "rowwise"
    assert all(b.residual_gemm == "rowwise" for b in rowwise.decoder.blocks)
    a, b = epilogue.decode(code, expr), rowwise.decode(code, expr)
    for k in ref.keys():
        assert float((a[k] - b[k]).abs().max()) > 0, k  # really another path
        torch.testing.assert_close(b[k], a[k], rtol=0.05, atol=0.02 * float(ref[k].abs().max()))
    assert float(_render_psnr(b, ref).min()) >= 45.0
    x8, w8, w_scale, bias, x_scale, _ = _operands()
    y = (x8.double() * float(x_scale)) @ (w8.double() * w_scale.double()[:, None]).t() + bias.double()
    out = fp8_linear_rowwise(x8, w8, w_scale, bias, x_scale)
    assert out.dtype == torch.bfloat16
    assert float(((out.double() - y).abs() / y.abs().clamp_min(1e-3)).max()) <= 2.0 ** -8 + 1e-6
    monkeypatch.setenv(RESIDUAL_GEMM_ENV, "cutlass")
    with pytest.raises(ValueError, match="FLEXRT_FP8_RESIDUAL_GEMM must be one of"):
        TorchEngine(p, precision="bf16", fp8="fused", residual="bf16")


def interpreter_check_of(module: str) -> dict:
    """``module.interpreter_check()`` in a subprocess with TRITON_INTERPRET=1 (set before Triton is imported) -> its
    result; skips the calling test without Triton."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("Triton is not installed (pip install triton; the GPU test runs the compiled kernel)")
    code = f"import json; from {module} import interpreter_check; print(json.dumps(interpreter_check()))"
    run = subprocess.run([sys.executable, "-c", code], env={**os.environ, "TRITON_INTERPRET": "1"},
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_triton_kernel_in_the_interpreter():
    """Both kernels' tiles, masks (pointer loads) or zero-filled TMA edges, and both epilogues, run by Triton's CPU
    interpreter at a ragged shape: GELU + quantise within 4 e4m3 steps of the reference ops on < 5 % of elements
    (tanh vs its sigmoid form and the summation order), the residual add within 1 bf16 step (the interpreter
    truncates to bf16 where a GPU rounds); the q|k|v kernel's norms, rows (a frame boundary inside a tile) and
    planes within 1 bf16 step of the composed ops, every sample row written (NaN-filled before)."""
    result = interpreter_check_of("flexrt.kernels.fp8_gemm")
    for kernel in ("pointer", "tma"):
        gelu = result[f"{kernel}/gelu_quantize"]
        assert gelu["max_diff_steps"] <= 4 and gelu["share_differing"] < 0.05, (kernel, gelu)
        assert result[f"{kernel}/residual"]["max_diff_steps"] <= 1, kernel
    assert result["qkv_rmsnorm"]["max_diff_steps"] <= 1


def _qkv_operands(b=2, n=24, m=5, h=2, hd=48, k=64, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x8, w8, w_scale, bias, x_scale, _ = _operands(b * n, 3 * h * hd, k, seed, device="cpu")
    gains = 1.0 + 0.2 * torch.randn(2, hd, generator=g)
    context = torch.randn(3, b, m, h, hd, generator=g).to(torch.bfloat16)
    return [t.to(device) for t in (x8, w8, w_scale, bias, x_scale, gains, context)]


def test_qkv_rmsnorm_reference_is_the_stated_function():
    """fp8_qkv_rmsnorm on a CPU against the spec's steps written out in fp64 (q|k|v product, head split, RMS norm
    of q and k with their gains, v as is, sample tokens then the context's): one bf16 rounding."""
    b, n, m, h, hd = 2, 24, 5, 2, 48
    x8, w8, w_scale, bias, x_scale, gains, context = _qkv_operands(b, n, m, h, hd)
    out = fp8_qkv_rmsnorm(x8, w8, w_scale, bias, x_scale, gains, context, 1e-6)
    assert out.shape == (3, b, n + m, h, hd) and out.dtype == torch.bfloat16
    y = ((x8.double() * float(x_scale)) @ (w8.double() * w_scale.double()[:, None]).t() + bias.double())
    y = y.view(b, n, 3, h, hd)
    for plane in range(3):
        t = y[:, :, plane]
        if plane < 2:
            t = t / (t.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt() * gains[plane].double()
        rel = (out[plane, :, :n].double() - t).abs() / t.abs().clamp_min(1e-2)
        assert float(rel.max()) <= 2.0 ** -8 + 1e-6, plane
        assert torch.equal(out[plane, :, n:], context[plane])
    with pytest.raises(ValueError, match=r"context \[3,B,M,H,hd\]"):
        fp8_qkv_rmsnorm(x8, w8, w_scale, bias, x_scale, gains, context[:2], 1e-6)


def _agreement(out, ref, scale=1.0):
    """(largest |out - ref| x scale, i.e. in the activation's units; share of elements that differ)."""
    return float((out - ref).abs().max()) * scale, float((out != ref).float().mean())


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["pointer", "tma"])
def test_gpu_triton_kernel_matches_the_reference_ops(kernel):
    """Each compiled kernel (pointer loads; TMA + persistent, the Hopper default) against the reference ops (fp32 on
    the CPU), beside the unfused path the decoder runs with fp8="static" (cuBLAS FP8 GEMM with bf16 output, then the
    epilogue). Hopper's FP8 MMAs accumulate with fewer bits than fp32 in both paths (an error relative to the sum of
    |terms|, not to the result: near-zero outputs differ by many steps of their own size; dev/fused_ffn_probe.py
    measured it), so the bar is the unfused path's own agreement: the kernel's largest error within 1.5x of it, and
    no more elements differing (+0.5 %)."""
    backend, why = fused_fp8_status("cuda")
    if backend != "triton":
        pytest.skip(why)
    if kernel == "tma" and torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("the TMA kernel needs compute capability >= 9.0")
    launch = _build()[0]
    one = torch.ones((), device="cuda")
    # FLEX-1 shapes, and partial tiles in M, N and K (sizes divisible by 16, as torch._scaled_mm requires)
    for m, n, k in ((4096, 3072, 768), (1000, 768, 3072), (96, 208, 160)):
        x8, w8, w_scale, bias, x_scale, residual = _operands(m, n, k, device="cuda")
        out_scale = torch.tensor(12.0 / FP8_MAX, device="cuda")
        cpu = [t.cpu() for t in (x8, w8, w_scale, bias, x_scale)]
        unfused = (torch._scaled_mm(x8, w8.t(), scale_a=x_scale, scale_b=one, out_dtype=torch.bfloat16,
                                    use_fast_accum=True).float() * w_scale + bias.float()).to(torch.bfloat16)
        q = launch(x8, w8, w_scale, bias, x_scale, torch.empty(m, n, device="cuda", dtype=torch.float8_e4m3fn),
                   out_scale=out_scale, kernel=kernel).float()
        q_ref = fp8_linear_gelu_quantize(*cpu, out_scale.cpu()).float().cuda()
        q_unfused = (F.gelu(unfused, approximate="tanh").float() / out_scale).clamp(-FP8_MAX, FP8_MAX)
        err, share = _agreement(q, q_ref, float(out_scale))
        err_unfused, share_unfused = _agreement(q_unfused.to(torch.float8_e4m3fn).float(), q_ref, float(out_scale))
        assert err <= 1.5 * err_unfused + 1e-6 and share <= share_unfused + 5e-3, \
            ("gelu", m, n, k, err, err_unfused, share, share_unfused)
        r = launch(x8, w8, w_scale, bias, x_scale, torch.empty_like(residual), residual=residual, kernel=kernel).float()
        r_ref = fp8_linear_residual(*cpu, residual.cpu()).float().cuda()
        err, share = _agreement(r, r_ref)
        err_unfused, share_unfused = _agreement((residual + unfused).float(), r_ref)
        assert err <= 1.5 * err_unfused + 1e-6 and share <= share_unfused + 5e-3, \
            ("residual", m, n, k, err, err_unfused, share, share_unfused)


@pytest.mark.gpu
def test_gpu_rowwise_gemm_matches_the_reference_ops():
    """fp8_linear_rowwise on the GPU (ATen's row-wise FP8 GEMM, bias in its epilogue) against the reference ops, with
    the fused kernels' bar: within 1.5x the error of the tensor-wise cuBLAS path and no more elements differing."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("row-wise FP8 GEMMs need a CUDA GPU of compute capability >= 8.9")
    one = torch.ones((), device="cuda")
    for m, n, k in ((4096, 768, 768), (1000, 768, 3072)):
        x8, w8, w_scale, bias, x_scale, _ = _operands(m, n, k, device="cuda")
        out = fp8_linear_rowwise(x8, w8, w_scale, bias, x_scale).float()
        ref = fp8_linear_rowwise(*[t.cpu() for t in (x8, w8, w_scale, bias, x_scale)]).float().cuda()
        unfused = (torch._scaled_mm(x8, w8.t(), scale_a=x_scale, scale_b=one, out_dtype=torch.bfloat16,
                                    use_fast_accum=True).float() * w_scale + bias.float()).to(torch.bfloat16)
        err, share = _agreement(out, ref)
        err_unfused, share_unfused = _agreement(unfused.float(), ref)
        assert err <= 1.5 * err_unfused + 1e-6 and share <= share_unfused + 5e-3, \
            (m, n, k, err, err_unfused, share, share_unfused)


@pytest.mark.gpu
def test_gpu_qkv_rmsnorm_kernel_matches_the_reference_ops():
    """The q|k|v kernel (FLEX-1's 4 heads of 192; 1,024 tokens a frame, and 1,000 so frames end inside row tiles)
    against the composed ops in fp32 on the CPU, with the same bar as the GEMM kernels: within 1.5x the error of the
    path it replaces (cuBLAS FP8 GEMM writing bf16, then scale, bias and norms) and no more elements differing
    (+0.5 %); the context rows copied exactly."""
    backend, why = fused_fp8_status("cuda")
    if backend != "triton" or torch.cuda.get_device_capability() < (9, 0):
        pytest.skip(why if backend != "triton" else "the q|k|v kernel needs compute capability >= 9.0 (TMA)")
    from flexrt.kernels.fp8_gemm import _qkv_composed
    for b, n in ((4, 1024), (3, 1000)):
        ops = _qkv_operands(b, n, 5, 4, 192, 768, device="cuda")
        out = fp8_qkv_rmsnorm(*ops, 1e-6).float()
        ref = fp8_qkv_rmsnorm(*[t.cpu() for t in ops], 1e-6).float().cuda()
        err, share = _agreement(out, ref)
        err_composed, share_composed = _agreement(_qkv_composed(*ops, 1e-6).float(), ref)
        assert err <= 1.5 * err_composed + 1e-6 and share <= share_composed + 5e-3, \
            (b, n, err, err_composed, share, share_composed)
        assert torch.equal(out[:, :, n:], ops[-1].float())


@pytest.mark.gpu
@pytest.mark.parametrize("upsampler", ["bf16", "fp8"])
def test_gpu_fp8_fused_compiled_graphs_close_to_fp32(upsampler):
    """The served decoder (fused FP8 epilogues; with upsampler="fp8" the FP8 convolutions of kernels/fp8_conv.py
    too) compiled under CUDA graphs against fp32: per output no further off than the static path (GEMM epilogues
    alone), rendered PSNR >= 45 dB."""
    backend, why = fused_fp8_status("cuda")
    if backend != "triton":
        pytest.skip(why)
    p = build_pipeline("tiny")
    code = torch.randn(3, 64, 64, device="cuda")
    expr = torch.randn(3, 135, device="cuda") * 0.5
    ref = TorchEngine(p, device="cuda", precision="fp32").decode(code, expr)
    static = TorchEngine(p, device="cuda", precision="bf16", fp8="static", residual="bf16").decode(code, expr)
    fast = TorchEngine(p, device="cuda", precision="bf16", fp8="fused", residual="bf16", upsampler=upsampler,
                       graphs="cuda", compile=True)
    assert fast.info.detail["fp8_kernels"].startswith("fused FP8 epilogues: Triton")
    assert ("FP8 convolutions: Triton" in fast.info.detail["fp8_kernels"]) == (upsampler == "fp8")
    out = fast.decode(code, expr).map(lambda t: t.clone())
    assert float(_render_psnr(out, ref).min()) >= 45.0
    if upsampler == "fp8":  # the residual GEMMs as torch's row-wise FP8 GEMM (FLEXRT_FP8_RESIDUAL_GEMM=rowwise)
        os.environ[RESIDUAL_GEMM_ENV] = "rowwise"
        try:
            rowwise = TorchEngine(p, device="cuda", precision="bf16", fp8="fused", residual="bf16",
                                  upsampler=upsampler, graphs="cuda", compile=True)
        finally:
            del os.environ[RESIDUAL_GEMM_ENV]
        assert rowwise.info.detail["residual_gemm"] == "rowwise"
        assert float(_render_psnr(rowwise.decode(code, expr), ref).min()) >= 45.0
    if upsampler == "bf16":  # FP8 convolutions add their own (larger) error: judged by the render alone
        for k in ref.keys():
            rel = lambda x: float((x[k] - ref[k]).abs().max() / ref[k].abs().max())  # noqa: E731
            assert rel(out) <= max(1.5 * rel(static), 2e-3), (k, rel(out), rel(static))
    assert float(_render_psnr(out, ref).min()) >= 45.0
