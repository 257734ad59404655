"""export-engines: ONNX graphs, fp16 variants, manifest, parity against PyTorch, tamper detection."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from flexrt.export import ManifestError, export_engines, read_manifest
from flexrt.export.onnx_export import example_encoder_inputs
from flexrt.model.pipeline import build_pipeline
from flexrt.runtime.engines import load_engine

ONNX_FP32_REL_TOL = 1e-5  # max|diff| / max|ref| against PyTorch fp32, CPU


@pytest.fixture(scope="module")
def tiny_engines(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_engines")
    manifest = export_engines("tiny", out_dir=out, precisions=("fp32", "fp16"), progress=False, log=lambda *a: None)
    return out, manifest


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a - ref).abs().max() / ref.abs().max())


def test_manifest_identity_files_and_parity(tiny_engines):
    out, manifest = tiny_engines
    on_disk = read_manifest(out)
    assert on_disk["files"] == manifest["files"]
    assert on_disk["parity"]["ok"] is True
    assert any("RANDOM WEIGHTS" in w for w in on_disk["warnings"])
    assert on_disk["model"]["weights"] == "random(seed=0)"
    assert len(on_disk["model"]["config_sha256"]) == 64 and len(on_disk["model"]["template_sha256"]) == 64
    assert on_disk["opset"] >= 17
    assert set(on_disk["files"]) >= {"encoder.fp32", "decoder.fp32", "encoder.fp16", "decoder.fp16", "torch.model"}
    dec = on_disk["files"]["decoder.fp32"]["io"]
    assert [i["name"] for i in dec["inputs"]] == ["avatar_code", "expression_codes"]
    assert [o["name"] for o in dec["outputs"]] == ["positions", "scales", "rotations", "colors", "opacities"]
    assert dec["inputs"][0]["shape"] == ["B", 64, 64] and dec["outputs"][0]["shape"][0] == "B"
    assert {r["graph"] for r in on_disk["parity"]["rows"]} == {"encoder", "decoder"}
    for tool in ("torch", "onnx", "onnxruntime"):
        assert on_disk["tools"][tool]


def test_stylegan_modulation_is_folded_into_constants(tiny_engines):
    import onnx

    out, _ = tiny_engines
    graph = onnx.load(str(out / "decoder.onnx")).graph
    names = [i.name for i in graph.initializer]
    assert not any("affine" in n for n in names)  # styles folded away (ws is always zero)
    assert not any(n.op_type == "ReduceSum" for n in graph.node)  # no per-frame demodulation


def test_onnx_fp32_matches_pytorch_at_another_batch(tiny_engines):
    out, _ = tiny_engines
    ref = build_pipeline("tiny")
    ort_engine = load_engine(out, backend="onnxruntime", device="cpu", precision="fp32")
    x = example_encoder_inputs(3)  # exported at batch 2: the batch axis is dynamic
    with torch.no_grad():
        ref_code = ref.encoder(*x)
    code = ort_engine.encode(*x)
    assert _rel(code, ref_code) <= ONNX_FP32_REL_TOL
    expr = torch.randn(3, 135, generator=torch.Generator().manual_seed(5)) * 0.5
    with torch.no_grad():
        ref_out = ref.decoder(ref_code, expr)
    g = ort_engine.decode(ref_code, expr)
    for name, r in zip(g.keys(), ref_out):
        assert _rel(g[name], r) <= ONNX_FP32_REL_TOL, name


def test_onnx_fp16_within_stated_bound(tiny_engines):
    out, manifest = tiny_engines
    rows = [r for r in manifest["parity"]["rows"] if r["precision"] == "fp16"]
    assert len(rows) == 6 and all(r["max_rel"] <= 2e-2 for r in rows)
    assert all(r["max_rel"] > 0 for r in rows)  # really computed in fp16, not a copy of the fp32 graph


def test_tampered_engine_is_refused(tiny_engines, tmp_path):
    import shutil

    out, _ = tiny_engines
    copy = tmp_path / "engines"
    shutil.copytree(out, copy)
    data = bytearray((copy / "decoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "decoder.onnx").write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="does not match its manifest"):
        load_engine(copy, backend="onnxruntime", device="cpu")
    (copy / "manifest.json").unlink()
    with pytest.raises(ManifestError, match="not an engine directory"):
        load_engine(copy)


def test_torch_backend_from_engine_dir_equals_onnx(tiny_engines):
    out, _ = tiny_engines
    te = load_engine(out, backend="torch", device="cpu")
    oe = load_engine(out, backend="onnxruntime", device="cpu")
    code = torch.randn(2, 64, 64)
    expr = torch.randn(2, 135)
    a, b = te.decode(code, expr), oe.decode(code, expr)
    for k in a.keys():
        assert _rel(b[k], a[k]) <= ONNX_FP32_REL_TOL


def test_exported_decoder_reproduces_golden_3d_sink(shared_dir, tmp_path):
    g = shared_dir / "reference" / "golden"
    export_engines(g / "config.json", checkpoint=g / "state_dict.safetensors",
                   template=shared_dir / "reference" / "assets" / "gghead_template.obj",
                   stylegan_channel_base=1024, stylegan_channel_max=48, out_dir=tmp_path, precisions=("fp32",),
                   parity=False, progress=False, log=lambda *a: None)
    engine = load_engine(tmp_path, backend="onnxruntime", device="cpu")
    inputs, outputs = np.load(g / "inputs.npz"), np.load(g / "outputs.npz")
    # person 1 uses dataset id 1 (the 3D sink), frames 2 and 3 in b-major order
    assert inputs["dataset_ids"][1, 0] == 1
    code = torch.from_numpy(outputs["avatar_code"][:, 1]).unsqueeze(0).expand(2, -1, -1)  # [2, HT, D]
    expr = torch.from_numpy(inputs["expression_codes"][1])  # [2, 135]
    got = engine.decode(code, expr)
    tol = {"positions": 1e-5, "scales": 1e-5, "rotations": 5e-5, "colors": 5e-5, "opacities": 5e-5}
    for k, t in tol.items():
        assert float(np.abs(got[k].numpy() - outputs[k][2:4]).max()) <= t, k


def test_cli_help_and_tensorrt_refusal(capsys, tmp_path):
    from flexrt.cli import main

    with pytest.raises(SystemExit) as e:
        main(["export-engines", "--help"])
    assert e.value.code == 0
    assert "--tensorrt" in capsys.readouterr().out
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here; the refusal path is not reachable")
    except ImportError:
        pass
    code = main(["export-engines", "--config", "tiny", "--out", str(tmp_path / "e"), "--tensorrt"])
    assert code == 2
    assert "tensorrt" in capsys.readouterr().out.lower()
    assert not (tmp_path / "e" / "manifest.json").exists()


def test_bad_export_arguments(tmp_path):
    with pytest.raises(ValueError, match="precisions"):
        export_engines("tiny", out_dir=tmp_path, precisions=("int8",), progress=False)
    with pytest.raises(FileNotFoundError, match="neither a preset"):
        export_engines("no-such-model", out_dir=tmp_path, progress=False)
