"""Engine backends: selection, refusal of unavailable backends, PyTorch bf16, GPU parity (gpu marker)."""
from __future__ import annotations

import pytest
import torch

from flexrt.export import export_engines
from flexrt.model.pipeline import build_pipeline
from flexrt.runtime.engines import TorchEngine, load_engine


@pytest.fixture(scope="module")
def engines_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("engines")
    export_engines("tiny", out_dir=out, progress=False, log=lambda *a: None)
    return out


def test_auto_on_cpu_is_onnxruntime_and_says_so(engines_dir):
    if torch.cuda.is_available():
        pytest.skip("auto picks a GPU backend on this machine")
    e = load_engine(engines_dir)
    assert e.info.backend == "onnxruntime" and e.info.device == "cpu"
    assert "CPUExecutionProvider" in e.info.describe()


def test_unavailable_backends_are_refused(engines_dir):
    with pytest.raises(ValueError, match="backend must be one of"):
        load_engine(engines_dir, backend="magic")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            load_engine(engines_dir, backend="onnxruntime", device="cuda")
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers() and torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="onnxruntime-gpu"):
            load_engine(engines_dir, backend="onnxruntime", device="cuda")


def test_engine_input_validation(engines_dir):
    e = load_engine(engines_dir, backend="onnxruntime", device="cpu")
    with pytest.raises(ValueError, match=r"expression_codes must be \[B,135\]"):
        e.decode(torch.zeros(1, 64, 64), torch.zeros(1, 134))
    with pytest.raises(ValueError, match="batch mismatch"):
        e.decode(torch.zeros(2, 64, 64), torch.zeros(1, 135))
    bad = torch.zeros(1, 135)
    bad[0, 3] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        e.decode(torch.zeros(1, 64, 64), bad)
    with pytest.raises(ValueError, match=r"images must be \[B,3,512,512\]"):
        e.encode(torch.zeros(1, 3, 256, 256), torch.eye(4)[None], torch.eye(3)[None])


def test_torch_bf16_encode_runs_under_autocast_and_stays_close():
    p = build_pipeline("tiny")
    from flexrt.export.onnx_export import example_encoder_inputs

    x = example_encoder_inputs(1)
    a = TorchEngine(p, precision="fp32").encode(*x)
    b = TorchEngine(p, precision="bf16").encode(*x)
    assert b.dtype == torch.float32
    rel = float((a - b).abs().max() / a.abs().max())
    assert 0 < rel < 5e-2  # bf16 really ran (Plücker rays stay fp32 under autocast)


def test_torch_bf16_close_to_fp32():
    p = build_pipeline("tiny")
    fp32 = TorchEngine(p, precision="fp32")
    bf16 = TorchEngine(p, precision="bf16")
    code = torch.randn(2, 64, 64)
    expr = torch.randn(2, 135) * 0.5
    a, b = fp32.decode(code, expr), bf16.decode(code, expr)
    assert b.positions.dtype == torch.float32
    err = float((a.positions - b.positions).abs().max())
    assert 0 < err < 5e-3  # bf16 really ran, and stays within 5 mm on positions


@pytest.mark.gpu
def test_gpu_torch_cuda_graphs_equal_eager_one_graph_per_batch_size(monkeypatch):
    from flexrt.runtime.engines import torch_engine

    p = build_pipeline("tiny")
    eager = TorchEngine(p, device="cuda", graphs="none")
    graphed = TorchEngine(p, device="cuda", graphs="cuda")
    code = torch.randn(3, 64, 64, device="cuda")
    expr = torch.randn(3, 135, device="cuda")
    b = graphed.decode(code, expr)  # batch 3 runs in its own graph: no padding
    assert b.positions.shape[0] == 3 and set(graphed._graphs) == {3}
    b = b.map(lambda t: t.clone())  # outputs are views of the graph's static buffers until the next decode
    a = eager.decode(code, expr)
    for k in a.keys():  # the same graph up to cuBLAS's choice of algorithm under capture (measured <= 1.1e-5 abs
        # on positions of ~0.1; relative to the largest value <= 1e-4)
        rel = float((b[k] - a[k]).abs().max() / a[k].abs().max())
        assert rel <= 2e-4, (k, rel)
    b2 = graphed.decode(code * 0.5, expr)  # replay with new inputs
    assert not torch.equal(b2.positions, b.positions)
    calls = []
    graphed.warmup(5, progress=lambda *a: calls.append(a))
    assert set(graphed._graphs) == {1, 2, 3, 4, 5}
    assert calls == [(1, 4, "decoder batch 5 captured"), (2, 4, "decoder batch 4 captured"),
                     (3, 4, "decoder batch 2 captured"), (4, 4, "decoder batch 1 captured")]  # 3 was captured above
    # a coarser bucket set (dev/serving_variants.py "coarse") pads: batch 3 runs in the batch-4 graph, its padding
    # row's outputs dropped
    monkeypatch.setattr(torch_engine, "BATCH_BUCKETS", (1, 2, 4, 8))
    coarse = TorchEngine(p, device="cuda", graphs="cuda")
    c = coarse.decode(code, expr)
    assert c.positions.shape[0] == 3 and set(coarse._graphs) == {4}
    for k in a.keys():
        rel = float((c[k] - a[k]).abs().max() / a[k].abs().max())
        assert rel <= 2e-4, (k, rel)


@pytest.mark.gpu
def test_gpu_torch_compiled_bf16_no_worse_than_eager_bf16():
    p = build_pipeline("tiny")
    fp32 = TorchEngine(p, device="cuda", precision="fp32", graphs="none")
    eager = TorchEngine(p, device="cuda", precision="bf16", graphs="none")
    compiled = TorchEngine(p, device="cuda", precision="bf16", graphs="cuda", compile=True)
    code = torch.randn(2, 64, 64, device="cuda")
    expr = torch.randn(2, 135, device="cuda")
    ref = fp32.decode(code, expr)
    a = eager.decode(code, expr)
    b = compiled.decode(code, expr).map(lambda t: t.clone())
    for k in ref.keys():
        rel = lambda x: float((x[k] - ref[k]).abs().max() / ref[k].abs().max())  # noqa: E731
        # the same bf16 weights; inductor fuses and reorders: no further from fp32 than eager bf16 is
        assert rel(b) <= max(1.5 * rel(a), 1e-3), (k, rel(b), rel(a))


@pytest.mark.gpu
def test_gpu_onnxruntime_cuda_iobinding_matches_cpu(engines_dir):
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu (CUDA EP) not installed")
    cpu = load_engine(engines_dir, backend="torch", device="cpu")
    gpu = load_engine(engines_dir, backend="onnxruntime", device="cuda")
    code = torch.randn(2, 64, 64)
    expr = torch.randn(2, 135)
    ref = cpu.decode(code, expr)
    out = gpu.decode(code.cuda(), expr.cuda())
    assert out.positions.is_cuda
    for k in ref.keys():
        rel = float((out[k].cpu() - ref[k]).abs().max() / ref[k].abs().max())
        assert rel <= 1e-4, (k, rel)  # CUDA fp32 kernels, TF32 disabled


def test_torch_engine_decoder_is_the_model_and_leaves_it_alone():
    """fp32: the deployed decoder (fused projections, constant bias-sink token) computes decode_frames exactly;
    bf16: no further from fp32 than the official autocast setting (its Gaussian heads stay fp32, where autocast
    would run them in bf16); the caller's model keeps its fp32 weights either way."""
    p = build_pipeline("tiny")
    code, expr = torch.randn(2, 64, 64), torch.randn(2, 135)
    with torch.no_grad():
        ref = p.model.decode_frames(code, expr)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            official_bf16 = p.model.decode_frames(code, expr)
    fp32 = TorchEngine(p, precision="fp32").decode(code, expr)
    bf16 = TorchEngine(p, precision="bf16").decode(code, expr)
    for k in ref.keys():
        torch.testing.assert_close(fp32[k], ref[k], rtol=1e-6, atol=1e-7)
        rel = lambda x: float((x[k].float() - ref[k]).abs().max() / ref[k].abs().max())  # noqa: E731
        assert 0 < rel(bf16) <= rel(official_bf16), (k, rel(bf16), rel(official_bf16))
    assert p.model._head_transformer._expression_mlp[0].weight.dtype == torch.float32
