"""TensorRT engine (TensorRT 10 Python API): deserialise the FP16 engines built by ``export-engines --tensorrt``
and run them on torch-owned device buffers with ``execute_async_v3`` on the current torch stream.

NOT EXERCISED in this project's development workplace (TensorRT cannot be installed there); written against the
documented TensorRT 10 API (``Runtime.deserialize_cuda_engine``, ``IExecutionContext.set_input_shape``,
``set_tensor_address``, ``execute_async_v3``). See README "TensorRT".
"""
from __future__ import annotations

from pathlib import Path

import torch

from flexrt.export.manifest import find_file, read_manifest, verify_file
from flexrt.model.gaussians import GAUSSIAN_ATTRIBUTES, Gaussians

from .base import Engine, EngineInfo


class TensorRTEngine(Engine):
    def __init__(self, engine_dir: str | Path, device: str = "cuda", manifest: dict | None = None):
        from flexrt.export.tensorrt_build import gpu_arch, require_tensorrt

        trt = require_tensorrt()
        self.root = Path(engine_dir)
        self.manifest = manifest or read_manifest(self.root)
        arch = gpu_arch()
        m = self.manifest["model"]
        self.num_head_tokens, self.hidden_dim = m["num_head_tokens"], m["hidden_dim"]
        self.num_gaussians, self.image_size = m["num_gaussians"], m["image_size"]
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._contexts = {}
        for graph in ("encoder", "decoder"):
            path = verify_file(self.root, find_file(self.manifest, f"tensorrt.{graph}.fp16.{arch}"))
            engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is None:
                raise RuntimeError(f"TensorRT could not deserialise {path} (built with another TensorRT version?)")
            self._contexts[graph] = (engine, engine.create_execution_context())
        self.info = EngineInfo(backend="tensorrt", device=str(torch.device(device)), precision="fp16",
                               detail={"tensorrt": trt.__version__, "gpu_arch": arch, "weights": m.get("weights")})

    def _run(self, graph: str, inputs: dict[str, torch.Tensor], outputs: list[str]) -> dict[str, torch.Tensor]:
        engine, ctx = self._contexts[graph]
        keep = []
        for name, t in inputs.items():
            t = t.to(self.device, torch.float32).contiguous()
            keep.append(t)
            ctx.set_input_shape(name, tuple(t.shape))
            ctx.set_tensor_address(name, t.data_ptr())
        outs = {}
        for name in outputs:
            o = torch.empty(tuple(ctx.get_tensor_shape(name)), device=self.device, dtype=torch.float32)
            ctx.set_tensor_address(name, o.data_ptr())
            outs[name] = o
        if not ctx.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise RuntimeError(f"TensorRT execution of the {graph} engine failed")
        return outs

    def encode(self, images, cam2world, intrinsics):
        self.check_encode_inputs(images, cam2world, intrinsics)
        return self._run("encoder", {"image": images, "cam2world": cam2world, "intrinsics": intrinsics},
                         ["avatar_code"])["avatar_code"]

    def decode(self, avatar_code, expression_codes):
        self.check_decode_inputs(avatar_code, expression_codes)
        out = self._run("decoder", {"avatar_code": avatar_code, "expression_codes": expression_codes},
                        list(GAUSSIAN_ATTRIBUTES))
        return Gaussians(**out)
