"""ONNX Runtime engine: CPU execution provider, or CUDA EP with IO binding (GPU tensors never visit the host).

On CUDA the session runs on the caller's current torch stream (``user_compute_stream``) so that work ordered on
that stream (the rasterizer, frame encoding) needs no extra synchronisation.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from flexrt.export.manifest import find_file, read_manifest, verify_file
from flexrt.model.gaussians import GAUSSIAN_ATTRIBUTES, GAUSSIAN_WIDTHS, Gaussians

from .base import Engine, EngineInfo


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise RuntimeError("the onnxruntime backend needs `onnxruntime` (CPU) or `onnxruntime-gpu` (CUDA)") from e
    return ort


class OrtEngine(Engine):
    def __init__(self, engine_dir: str | Path, device: str = "cpu", precision: str = "fp32",
                 graphs: tuple[str, ...] = ("encoder", "decoder"), manifest: dict | None = None):
        ort = _import_ort()
        self.root = Path(engine_dir)
        self.manifest = manifest or read_manifest(self.root)
        device = torch.device(device)
        available = ort.get_available_providers()
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in available:
                raise RuntimeError(
                    "onnxruntime backend on cuda needs the CUDA execution provider (package onnxruntime-gpu); "
                    f"this onnxruntime {ort.__version__} offers {available}"
                )
            if not torch.cuda.is_available():
                raise RuntimeError("onnxruntime backend on cuda: torch sees no CUDA device")
            self._stream = torch.cuda.current_stream(device)
            providers = [("CUDAExecutionProvider", {
                "device_id": device.index or 0,
                "user_compute_stream": str(self._stream.cuda_stream),  # run on torch's stream: no extra syncs
                "use_tf32": "0" if precision == "fp32" else "1",  # fp32 means fp32 (parity with PyTorch fp32)
            })]
        else:
            providers = ["CPUExecutionProvider"]
        m = self.manifest["model"]
        self.num_head_tokens, self.hidden_dim = m["num_head_tokens"], m["hidden_dim"]
        self.num_gaussians, self.image_size = m["num_gaussians"], m["image_size"]
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        # worker threads must not busy-wait after a run: they would steal the cores of the CPU rasterizer
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.sessions = {}
        for graph in graphs:
            path = verify_file(self.root, find_file(self.manifest, f"{graph}.{precision}"))
            self.sessions[graph] = ort.InferenceSession(str(path), opts, providers=providers)
        dev = "cpu" if device.type == "cpu" else f"cuda:{device.index or 0}"
        used = self.sessions[graphs[0]].get_providers()
        self.info = EngineInfo(backend="onnxruntime", device=dev, precision=precision,
                               detail={"providers": used[0], "onnxruntime": ort.__version__,
                                       "weights": m.get("weights")})

    # ------------------------------------------------------------------ running
    def _run(self, graph: str, inputs: dict[str, torch.Tensor], out_shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
        sess = self.sessions.get(graph)
        if sess is None:
            raise RuntimeError(f"this engine was loaded without the {graph} graph")
        if self.device.type == "cpu":
            feeds = {k: v.detach().to(torch.float32).contiguous().numpy() for k, v in inputs.items()}
            outs = sess.run(list(out_shapes), feeds)
            return {k: torch.from_numpy(v) for k, v in zip(out_shapes, outs)}
        binding = sess.io_binding()
        dev_id = self.device.index or 0
        keep = []
        for name, t in inputs.items():
            t = t.detach().to(self.device, torch.float32).contiguous()
            keep.append(t)
            binding.bind_input(name, "cuda", dev_id, np.float32, tuple(t.shape), t.data_ptr())
        outs = {}
        for name, shape in out_shapes.items():
            o = torch.empty(shape, device=self.device, dtype=torch.float32)
            binding.bind_output(name, "cuda", dev_id, np.float32, tuple(shape), o.data_ptr())
            outs[name] = o
        sess.run_with_iobinding(binding)
        return outs

    def encode(self, images, cam2world, intrinsics):
        self.check_encode_inputs(images, cam2world, intrinsics)
        b = images.shape[0]
        out = self._run("encoder", {"image": images, "cam2world": cam2world, "intrinsics": intrinsics},
                        {"avatar_code": (b, self.num_head_tokens, self.hidden_dim)})
        return out["avatar_code"]

    def decode(self, avatar_code, expression_codes):
        self.check_decode_inputs(avatar_code, expression_codes)
        b, g = avatar_code.shape[0], self.num_gaussians
        out = self._run("decoder", {"avatar_code": avatar_code, "expression_codes": expression_codes},
                        {k: (b, g, GAUSSIAN_WIDTHS[k]) for k in GAUSSIAN_ATTRIBUTES})
        return Gaussians(**out)
