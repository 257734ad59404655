"""``export_engines``: build an engine directory from a model config, checkpoint, DINOv2 weights and template.

    out/
      manifest.json                      identity, files + sha256, tensor I/O, tool versions, parity report
      encoder.onnx  decoder.onnx         fp32 graphs (dynamic batch)
      encoder.fp16.onnx  decoder.fp16.onnx
      torch/                             weights for the PyTorch backend (model, DINOv2, template samples, config)
      tensorrt/                          FP16 engines per GPU architecture (only with --tensorrt)
"""
from __future__ import annotations

import datetime as _dt
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from flexrt.model.checkpoint import save_state_dict
from flexrt.model.pipeline import DECODER_OUTPUTS, Pipeline, build_pipeline

from . import onnx_export
from .manifest import file_entry, write_manifest

PRECISIONS = ("fp32", "fp16")
# parity bounds against the PyTorch fp32 reference: max|diff| / max|ref| per output
PARITY_BOUNDS = {"fp32": 1e-5, "fp16": 2e-2}
RANDOM_WEIGHTS_WARNING = (
    "RANDOM WEIGHTS: no checkpoint was given, so these engines hold seeded random weights. "
    "They exercise the runtime but do not produce a real avatar."
)


def _tool_versions() -> dict[str, str]:
    import onnx

    versions = {"python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__,
                "numpy": np.__version__}
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        versions["onnxruntime"] = "not installed"
    try:
        import tensorrt

        versions["tensorrt"] = tensorrt.__version__
    except ImportError:
        versions["tensorrt"] = "not installed"
    return versions


def _relative_error(a: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    diff = float(np.abs(a.astype(np.float64) - ref.astype(np.float64)).max())
    scale = float(np.abs(ref).max()) or 1.0
    return diff, diff / scale


def parity_check(pipeline: Pipeline, root: Path, files: Mapping[str, dict], batch: int = 2) -> list[dict]:
    """Run every ONNX graph with ONNX Runtime (CPU) against the PyTorch fp32 reference on the same inputs."""
    import onnxruntime as ort

    m = pipeline.model
    enc_in = onnx_export.example_encoder_inputs(batch)
    dec_in = onnx_export.example_decoder_inputs(batch, m.num_head_tokens, m.hidden_dim)
    with torch.no_grad():
        ref = {"encoder": {"avatar_code": pipeline.encoder(*enc_in).numpy()},
               "decoder": dict(zip(DECODER_OUTPUTS, (t.numpy() for t in pipeline.decoder(*dec_in))))}
    feeds = {"encoder": dict(zip(("image", "cam2world", "intrinsics"), (t.numpy() for t in enc_in))),
             "decoder": dict(zip(("avatar_code", "expression_codes"), (t.numpy() for t in dec_in)))}
    rows = []
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: fp16 constant-folding notices are expected
    for key, entry in files.items():
        if entry.get("format") != "onnx":
            continue
        graph, precision = entry["graph"], entry["precision"]
        sess = ort.InferenceSession(str(root / entry["path"]), opts, providers=["CPUExecutionProvider"])
        outs = sess.run(None, feeds[graph])
        names = [o.name for o in sess.get_outputs()]
        for name, value in zip(names, outs):
            abs_err, rel_err = _relative_error(value, ref[graph][name])
            rows.append({"file": entry["path"], "graph": graph, "precision": precision, "output": name,
                         "backend": "onnxruntime-cpu", "max_abs": abs_err, "max_rel": rel_err,
                         "bound_rel": PARITY_BOUNDS[precision], "ok": rel_err <= PARITY_BOUNDS[precision]})
    return rows


def format_parity_table(rows: list[dict]) -> str:
    lines = ["| file | output | max abs | max rel | bound | ok |", "|---|---|---:|---:|---:|:-:|"]
    for r in rows:
        lines.append(f"| {r['file']} | {r['output']} | {r['max_abs']:.3e} | {r['max_rel']:.3e} | "
                     f"{r['bound_rel']:.0e} | {'yes' if r['ok'] else 'NO'} |")
    return "\n".join(lines)


def _save_torch_artifacts(pipeline: Pipeline, root: Path, raw_config: Mapping[str, Any]) -> dict[str, dict]:
    tdir = root / "torch"
    tdir.mkdir(parents=True, exist_ok=True)
    m = pipeline.model
    save_state_dict(m, tdir / "model.safetensors")
    save_state_dict(pipeline.encoder.dino.vit, tdir / "dinov2.safetensors")
    np.savez(tdir / "template_samples.npz", **{k: v.cpu().numpy() for k, v in m.template_buffers().items()})
    (tdir / "model_config.json").write_text(json.dumps(raw_config, indent=2) + "\n")
    return {f"torch.{name}": file_entry(root, f"torch/{fname}", format="torch", graph="all", precision="fp32")
            for name, fname in (("model", "model.safetensors"), ("dinov2", "dinov2.safetensors"),
                                ("template", "template_samples.npz"), ("config", "model_config.json"))}


def export_engines(
    config: str | Path | Mapping[str, Any] = "tiny",
    checkpoint: str | Path | None = None,
    dinov2: str | Path | None = None,
    template: str | Path | None = None,
    out_dir: str | Path = "engines",
    precisions: tuple[str, ...] | list[str] = ("fp32", "fp16"),
    tensorrt: bool = False,
    max_batch: int = 8,
    stylegan_channel_base: int | None = None,
    stylegan_channel_max: int | None = None,
    opset: int = onnx_export.DEFAULT_OPSET,
    parity: bool = True,
    progress: bool = True,
    log=print,
) -> dict[str, Any]:
    """Export encoder/decoder ONNX graphs (+ fp16, + TensorRT) into ``out_dir``; returns the manifest."""
    from tqdm.auto import tqdm

    precisions = tuple(precisions)
    unknown = set(precisions) - set(PRECISIONS)
    if unknown or not precisions:
        raise ValueError(f"precisions must be a non-empty subset of {PRECISIONS}, got {precisions}")
    if "fp32" not in precisions:
        precisions = ("fp32",) + precisions  # fp16 graphs are converted from the fp32 ones
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    if tensorrt:
        from .tensorrt_build import require_tensorrt

        require_tensorrt()  # stops here, before the long export, when TensorRT is not importable
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    steps = ["build model", "export encoder.onnx", "export decoder.onnx"]
    steps += [f"convert {g}.fp16.onnx" for g in ("encoder", "decoder") if "fp16" in precisions]
    steps += ["save torch weights"] + (["parity check"] if parity else []) + (["build TensorRT engines"] if tensorrt else [])
    bar = tqdm(total=len(steps), desc="export-engines", unit="step", disable=not progress, file=sys.stderr)
    t_start = time.perf_counter()

    def step(name: str):
        bar.set_postfix_str(name)

    step(steps[0])
    pipeline = build_pipeline(config, checkpoint, dinov2, template, stylegan_channel_base, stylegan_channel_max)
    warnings_ = []
    if checkpoint is None:
        warnings_.append(RANDOM_WEIGHTS_WARNING)
    if dinov2 is None:
        warnings_.append("RANDOM DINOv2 WEIGHTS: no --dinov2 checkpoint was given; the encoder's features are random.")
    for w in warnings_:
        log(f"WARNING: {w}")
    bar.update()

    files: dict[str, dict] = {}
    for graph, fn in (("encoder", onnx_export.export_encoder), ("decoder", onnx_export.export_decoder)):
        step(f"export {graph}.onnx")
        extra = fn(pipeline, root / f"{graph}.onnx", opset)
        files[f"{graph}.fp32"] = file_entry(root, f"{graph}.onnx", format="onnx", graph=graph, precision="fp32",
                                            external_data={n: file_entry(root, n)["sha256"] for n in extra},
                                            io=onnx_export.graph_io(root / f"{graph}.onnx"))
        bar.update()
    if "fp16" in precisions:
        for graph in ("encoder", "decoder"):
            step(f"convert {graph}.fp16.onnx")
            extra = onnx_export.convert_fp16(root / f"{graph}.onnx", root / f"{graph}.fp16.onnx")
            files[f"{graph}.fp16"] = file_entry(root, f"{graph}.fp16.onnx", format="onnx", graph=graph,
                                                precision="fp16", keep_fp32_ops=onnx_export.FP16_KEEP_FP32_OPS,
                                                external_data={n: file_entry(root, n)["sha256"] for n in extra},
                                                io=onnx_export.graph_io(root / f"{graph}.fp16.onnx"))
            bar.update()
    step("save torch weights")
    from flexrt.model.config import load_config_dict

    raw_config, _ = load_config_dict(config)
    files.update(_save_torch_artifacts(pipeline, root, raw_config))
    bar.update()

    parity_rows: list[dict] = []
    if parity:
        step("parity check")
        parity_rows = parity_check(pipeline, root, files)
        bar.update()
    if tensorrt:
        step("build TensorRT engines")
        from .tensorrt_build import build_engines

        files.update(build_engines(root, files, max_batch=max_batch, log=log))
        bar.update()
    bar.close()

    m = pipeline.model
    cfg = m.cfg
    manifest = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "warnings": warnings_,
        "model": {
            **pipeline.identity,
            "stylegan_channel_base": cfg.stylegan_channel_base,
            "stylegan_channel_max": cfg.stylegan_channel_max,
            "num_head_tokens": m.num_head_tokens,
            "hidden_dim": m.hidden_dim,
            "num_gaussians": m.num_gaussians,
            "image_size": cfg.image_resolution,
            "expression_dim": cfg.d_expression_codes,
            "decoder_dataset_id": 1,
        },
        "opset": opset,
        "precisions": list(precisions),
        "max_batch": max_batch,
        "tools": _tool_versions(),
        "files": files,
        "parity": {"reference": "PyTorch fp32 (CPU)", "bounds_rel": PARITY_BOUNDS, "rows": parity_rows,
                   "ok": all(r["ok"] for r in parity_rows)},
        "export_seconds": round(time.perf_counter() - t_start, 2),
    }
    write_manifest(root, manifest)
    if parity_rows:
        log("\nParity against the PyTorch fp32 reference (ONNX Runtime CPU, max|diff| / max|ref|):\n")
        log(format_parity_table(parity_rows))
    for w in warnings_:
        log(f"\nWARNING: {w}")
    log(f"\nengines written to {root} ({manifest['export_seconds']} s); manifest: {root / 'manifest.json'}")
    return manifest
