"""PyTorch engine: the model itself, eager or replayed from CUDA graphs.

precision: "fp32" (the official inference setting) or "bf16" (autocast, the official training setting: the
StyleGAN upsampler stays fp32). For bf16 the engine keeps its own copy of the per-frame modules with the Linear
and Embedding weights stored in bf16: autocast would round them to bf16 at every call anyway, so the numbers are the
same, minus one cast kernel per weight per frame (norm gains stay fp32, as in the official autocast run). graphs: "none" (eager) or "cuda" (one CUDA graph per batch size, captured on first
use; outputs are views of static buffers, valid until the next ``decode`` call on this engine).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from flexrt.model.flexavatar import FlexAvatarModel
from flexrt.model.gaussians import GAUSSIAN_ATTRIBUTES, Gaussians
from flexrt.model.pipeline import Pipeline

from .base import Engine, EngineInfo

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
GRAPH_MODES = ("none", "cuda")


class TorchEngine(Engine):
    def __init__(self, pipeline: Pipeline | FlexAvatarModel, device: str | torch.device = "cpu",
                 precision: str = "fp32", graphs: str = "none", identity: dict | None = None):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        if graphs not in GRAPH_MODES:
            raise ValueError(f"graphs must be one of {GRAPH_MODES}, got {graphs!r}")
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("TorchEngine: device 'cuda' requested but torch sees no CUDA device")
        if graphs == "cuda" and device.type != "cuda":
            raise ValueError("graphs='cuda' needs a CUDA device")
        if isinstance(pipeline, Pipeline):
            self.model, self.encoder = pipeline.model, pipeline.encoder
            identity = identity or pipeline.identity
        else:
            self.model, self.encoder = pipeline, None
            identity = identity or getattr(pipeline, "identity", {})
        self.model._gaussian_decoder._stylegan_upsampler.fold()  # static modulated weights (ws is always zero)
        if PRECISIONS[precision] is not None:
            self.model = _with_low_precision_linears(self.model, PRECISIONS[precision])
        self.model.to(device).eval()
        if self.encoder is not None:
            self.encoder.to(device).eval()
        self.dtype = PRECISIONS[precision]
        self.graphs = graphs
        self.num_head_tokens = self.model.num_head_tokens
        self.hidden_dim = self.model.hidden_dim
        self.num_gaussians = self.model.num_gaussians
        self.image_size = self.model.cfg.image_resolution
        dev = str(device) if device.type == "cpu" else f"cuda:{device.index or 0}"
        self.info = EngineInfo(backend="torch", device=dev, precision=precision,
                               detail={"graphs": graphs, "torch": torch.__version__, **{k: v for k, v in identity.items()
                                                                                         if k in ("weights", "preset")}})
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, tuple, tuple]] = {}

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    @torch.no_grad()
    def encode(self, images, cam2world, intrinsics):
        if self.encoder is None:
            raise RuntimeError("this TorchEngine was built from a bare model without DINOv2; build it from a "
                               "Pipeline (flexrt.model.pipeline.build_pipeline) or an engine directory to encode")
        self.check_encode_inputs(images, cam2world, intrinsics)
        dev = self.device
        with self._autocast():
            code = self.encoder(images.to(dev, torch.float32), cam2world.to(dev, torch.float32),
                                intrinsics.to(dev, torch.float32))
        return code.float()

    @torch.no_grad()
    def _decode_eager(self, avatar_code, expression_codes) -> tuple[torch.Tensor, ...]:
        with self._autocast():
            g = self.model.decode_frames(avatar_code, expression_codes)
        return tuple(g[k] for k in GAUSSIAN_ATTRIBUTES)

    @torch.no_grad()
    def decode(self, avatar_code, expression_codes) -> Gaussians:
        self.check_decode_inputs(avatar_code, expression_codes)
        code = avatar_code.to(self.device, torch.float32)
        expr = expression_codes.to(self.device, torch.float32)
        if self.graphs == "none":
            return Gaussians(*self._decode_eager(code, expr))
        b = code.shape[0]
        if b not in self._graphs:
            self._capture(b)
        graph, (s_code, s_expr), outs = self._graphs[b]
        s_code.copy_(code)
        s_expr.copy_(expr)
        graph.replay()
        return Gaussians(*outs)

    def _capture(self, b: int) -> None:
        # static input buffers; the graph reads them and writes its outputs to static buffers on every replay
        s_code = torch.zeros(b, self.num_head_tokens, self.hidden_dim, device=self.device)
        s_expr = torch.zeros(b, 135, device=self.device)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm up: cuBLAS handles, autotuning, allocator pools
                self._decode_eager(s_code, s_expr)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outs = self._decode_eager(s_code, s_expr)
        self._graphs[b] = (graph, (s_code, s_expr), outs)


def _with_low_precision_linears(model, dtype: torch.dtype):
    """A copy of ``model`` whose per-frame Linear / Embedding weights are stored in ``dtype``."""
    model = copy.deepcopy(model)
    htm = model._head_transformer
    for part in (htm._expression_mlp, htm._expression_transformer, htm._dataset_embedding):
        for m in part.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                m.to(dtype)
    return model
