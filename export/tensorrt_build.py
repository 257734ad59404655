"""TensorRT FP16 engines from the exported ONNX graphs (TensorRT 10 Python API).

NOT EXERCISED in this project's development workplace: TensorRT's libraries are distributed only through
NVIDIA's own package index, which the workplace cannot reach. The code follows the documented TensorRT 10 API
(``Builder``, ``OnnxParser``, ``IBuilderConfig`` with an optimisation profile over the batch axis and a timing
cache, ``build_serialized_network``) and is kept small and isolated; see README "TensorRT".

One engine per GPU architecture: files are named ``tensorrt/<graph>.fp16.sm<major><minor>.engine``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from .manifest import file_entry

WORKSPACE_BYTES = 8 << 30
TIMING_CACHE = "tensorrt/timing.cache"


class TensorRTUnavailable(RuntimeError):
    pass


def require_tensorrt():
    try:
        import tensorrt  # noqa: F401
    except ImportError as e:
        raise TensorRTUnavailable(
            "--tensorrt needs the `tensorrt` Python package (TensorRT >= 10) and a CUDA GPU; it is not importable "
            f"here ({e}). Install it from NVIDIA's index (pip install tensorrt) or export without --tensorrt."
        ) from None
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable("--tensorrt needs a CUDA GPU to build engines for; none is visible")
    return tensorrt


def gpu_arch() -> str:
    import torch

    major, minor = torch.cuda.get_device_capability()
    return f"sm{major}{minor}"


def build_engine(onnx_path: Path, engine_path: Path, max_batch: int, cache_path: Path, log: Callable = print,
                 opt_batch: int | None = None) -> None:
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # resolves external data next to the file
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    config.set_flag(trt.BuilderFlag.FP16)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    opt = opt_batch or min(max_batch, 4)
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        dims = list(inp.shape)[1:]  # batch axis first, dynamic (-1)
        profile.set_shape(inp.name, [1, *dims], [opt, *dims], [max_batch, *dims])
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(bytes(serialized))
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    log(f"built {engine_path}")


def build_engines(root: Path, files: dict, max_batch: int, log: Callable = print) -> dict[str, dict]:
    """FP16 engines for the encoder and decoder, built from the fp32 ONNX graphs (TensorRT picks fp16 kernels)."""
    arch = gpu_arch()
    out = {}
    for graph in ("encoder", "decoder"):
        rel = f"tensorrt/{graph}.fp16.{arch}.engine"
        build_engine(root / files[f"{graph}.fp32"]["path"], root / rel, max_batch, root / TIMING_CACHE, log)
        out[f"tensorrt.{graph}.fp16.{arch}"] = file_entry(root, rel, format="tensorrt", graph=graph, precision="fp16",
                                                          gpu_arch=arch, max_batch=max_batch)
    return out
