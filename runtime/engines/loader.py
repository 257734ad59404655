"""``load_engine``: pick and load a backend for an engine directory, and say which one was picked."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from flexrt.export.manifest import find_file, read_manifest, verify_file

from .base import Engine

log = logging.getLogger("flexrt.engines")
BACKENDS = ("auto", "onnxruntime", "torch", "tensorrt")


def _torch_pipeline(root: Path, manifest: dict):
    from flexrt.model.pipeline import build_pipeline

    m = manifest["model"]
    paths = {k: verify_file(root, find_file(manifest, f"torch.{k}")) for k in ("model", "dinov2", "template", "config")}
    return build_pipeline(paths["config"], paths["model"], paths["dinov2"], paths["template"],
                          m["stylegan_channel_base"], m["stylegan_channel_max"], dinov2_size=m["dinov2_size"])


def load_engine(engine_dir: str | Path, backend: str = "auto", device: str = "auto", precision: str = "auto",
                graphs: str | None = None, compile: bool | None = None, fp8: str = "auto",
                residual: str = "auto", upsampler: str = "auto") -> Engine:
    """Load an engine directory written by ``export-engines``.

    backend: "onnxruntime", "torch", "tensorrt", or "auto" (CPU: onnxruntime fp32; CUDA: tensorrt if its engines
    and the package are present, else torch bf16 + torch.compile + CUDA graphs, the fastest path measured in
    docs/BENCHMARKS.md). device: "cpu", "cuda", "cuda:N" or "auto".
    precision: "auto" | "fp32" | "fp16" (onnxruntime) | "bf16" (torch); tensorrt is always fp16. "auto" is fp32,
    except bf16 for the torch backend on CUDA. graphs ("none" | "cuda") and compile default to the device's best:
    CUDA graphs and torch.compile on CUDA, neither on the CPU. fp8 / residual / upsampler (torch backend): "auto" =
    FP8 GEMMs (epilogues fused where Triton is there), a bf16 residual stream and FP8 upsampler convolutions for
    bf16 on a GPU with FP8 tensor cores (``resolve_decoder_options``); other backends take only "auto" (or "off" /
    "fp32").
    No silent fallbacks: an explicitly requested backend that is unavailable raises with the reason.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    root = Path(engine_dir)
    manifest = read_manifest(root)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but torch sees no CUDA device")
    if backend == "auto":
        if device == "cpu":
            backend = "onnxruntime"
        else:
            has_trt = any(k.startswith("tensorrt.") for k in manifest["files"])
            try:
                import tensorrt  # noqa: F401
                trt_ok = has_trt
            except ImportError:
                trt_ok = False
            backend = "tensorrt" if trt_ok else "torch"
    on_cuda = device.startswith("cuda")
    if precision == "auto":
        precision = "bf16" if (backend == "torch" and on_cuda) else "fp32"
    if graphs is None:
        graphs = "cuda" if on_cuda else "none"
    if compile is None:
        compile = on_cuda
    if backend != "torch" and (fp8 not in ("auto", "off") or residual not in ("auto", "fp32")
                               or upsampler not in ("auto", "fp32")):
        raise ValueError(f"fp8={fp8!r} / residual={residual!r} / upsampler={upsampler!r} shape the PyTorch decoder; "
                         f"the {backend} backend runs its exported graph")
    if backend == "onnxruntime":
        from .ort_engine import OrtEngine

        engine = OrtEngine(root, device=device, precision=precision, manifest=manifest)
    elif backend == "torch":
        from .torch_engine import TorchEngine, resolve_decoder_options

        fp8, residual, upsampler, why = resolve_decoder_options(device, precision, fp8, residual, upsampler)
        if why:
            log.info("decoder: %s", why)
        engine = TorchEngine(_torch_pipeline(root, manifest), device=device, precision=precision, graphs=graphs,
                             identity=manifest["model"], compile=compile, fp8=fp8, residual=residual,
                             upsampler=upsampler)
    else:
        from .tensorrt_engine import TensorRTEngine

        engine = TensorRTEngine(root, device=device, manifest=manifest)
    for w in manifest.get("warnings", []):
        log.warning(w)
    log.info("engine: %s", engine.info.describe())
    return engine
