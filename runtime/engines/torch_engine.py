"""PyTorch engine: the model itself, eager or replayed from CUDA graphs.

precision: "fp32" (the official inference setting) or "bf16" (autocast, the official training setting: the
StyleGAN upsampler stays fp32 unless ``upsampler="bf16"``, a runtime option measured against fp32 in
docs/BENCHMARKS.md). ``compile=True`` runs the decoder through ``torch.compile`` (inductor fuses the many small
elementwise kernels) before CUDA-graph capture.

CUDA graphs are captured per batch *bucket* (1, 2, 4, 8, 16, 32, then exact sizes); a batch is padded up to its
bucket (rows are independent, the padding rows' outputs are dropped), so a new batch size never triggers a capture
or recompilation mid-stream once :meth:`warmup` has run. For bf16 the engine keeps its own copy of the per-frame modules with the Linear
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
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32)


def batch_bucket(b: int) -> int:
    return next((k for k in BATCH_BUCKETS if k >= b), b)


class TorchEngine(Engine):
    def __init__(self, pipeline: Pipeline | FlexAvatarModel, device: str | torch.device = "cpu",
                 precision: str = "fp32", graphs: str = "none", identity: dict | None = None,
                 upsampler: str = "fp32", compile: bool = False):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        if graphs not in GRAPH_MODES:
            raise ValueError(f"graphs must be one of {GRAPH_MODES}, got {graphs!r}")
        if upsampler not in ("fp32", "bf16"):
            raise ValueError(f"upsampler must be 'fp32' or 'bf16', got {upsampler!r}")
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
        if PRECISIONS[precision] is not None or upsampler == "bf16":
            self.model = copy.deepcopy(self.model)  # the engine's own copy: the caller's model keeps fp32 weights
        if PRECISIONS[precision] is not None:
            _store_linears_in(self.model, PRECISIONS[precision])
        if upsampler == "bf16":
            self.model._gaussian_decoder._stylegan_upsampler.to(torch.bfloat16).to(memory_format=torch.channels_last)
            self.model.upsampler_dtype = torch.bfloat16
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
        self._decode_fn = torch.compile(self._decode_eager, dynamic=False) if compile else self._decode_eager
        self.info = EngineInfo(backend="torch", device=dev, precision=precision,
                               detail={"graphs": graphs, "upsampler": upsampler, "compile": compile,
                                       "torch": torch.__version__, **{k: v for k, v in identity.items()
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
            return Gaussians(*self._decode_fn(code, expr))
        b = code.shape[0]
        bucket = batch_bucket(b)
        if bucket not in self._graphs:
            self._capture(bucket)
        graph, (s_code, s_expr), outs = self._graphs[bucket]
        s_code[:b].copy_(code)
        s_expr[:b].copy_(expr)
        graph.replay()
        return Gaussians(*(o[:b] for o in outs))

    def warmup(self, max_batch: int) -> None:
        if self.graphs != "cuda":
            if self._decode_fn is not self._decode_eager:  # compile for every bucket up to max_batch
                for k in sorted({batch_bucket(b) for b in range(1, max_batch + 1)}):
                    self.decode(torch.zeros(k, self.num_head_tokens, self.hidden_dim, device=self.device),
                                torch.zeros(k, 135, device=self.device))
            return
        for k in sorted({batch_bucket(b) for b in range(1, max_batch + 1)}):
            if k not in self._graphs:
                self._capture(k)

    @torch.inference_mode(False)  # static buffers must stay writable outside inference mode
    @torch.no_grad()
    def _capture(self, b: int) -> None:
        # static input buffers; the graph reads them and writes its outputs to static buffers on every replay
        s_code = torch.zeros(b, self.num_head_tokens, self.hidden_dim, device=self.device)
        s_expr = torch.zeros(b, 135, device=self.device)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm up: compilation, cuBLAS handles, autotuning, allocator pools
                self._decode_fn(s_code, s_expr)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outs = self._decode_fn(s_code, s_expr)
        self._graphs[b] = (graph, (s_code, s_expr), outs)


def _store_linears_in(model, dtype: torch.dtype) -> None:
    """Store the per-frame Linear / Embedding weights of ``model`` in ``dtype`` (in place)."""
    htm = model._head_transformer
    for part in (htm._expression_mlp, htm._expression_transformer, htm._dataset_embedding):
        for m in part.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                m.to(dtype)
