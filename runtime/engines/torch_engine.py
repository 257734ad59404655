"""PyTorch engine: the model itself (avatar creation) and its deployed per-frame decoder, eager or replayed.

precision: "fp32" (the official inference setting) or "bf16" (autocast, the official training setting). The
per-frame decoder is ``model.deploy_decoder(...)`` (model/deploy.py: fused q|k|v projections, weights stored in the
compute dtype, optional FP8 GEMMs ``fp8="row"`` / ``"static"`` / ``"fused"`` (static, with the epilogues in the
GEMMs), bf16 upsampler ``upsampler="bf16"`` and bf16 residual stream ``residual="bf16"``, each measured against fp32
in docs/BENCHMARKS.md). ``fp8="static"`` / ``"fused"`` calibrate the activation scales once, here, on seeded
calibration inputs (``fp8_calibration_inputs``) before any compile or
capture. ``compile=True`` runs it through ``torch.compile`` (inductor fuses the many small elementwise
kernels; the batch axis is compiled once as a dynamic size) before CUDA-graph capture.

CUDA graphs (``graphs="cuda"``) are captured per batch *bucket* (``BATCH_BUCKETS``): every batch size from 1 to 64
has its own, so no batch is padded (with buckets 8 frames apart a batch of 33 ran as 40, and 64 streams measured
p99 76 ms against 22 with a graph per size: ``docs/SERVING.md``, "Stream capacity"); a batch above the largest runs
at its own size.
A new batch size never triggers a capture or recompilation mid-stream once :meth:`warmup` has run (one compiled
decoder serves every size above 1: its batch axis is dynamic). Outputs are views of the graph's static buffers, valid
until the next ``decode`` call on this engine (the frame renderer copies them into its own buffers at once).
"""
from __future__ import annotations

import torch
import torch._dynamo

from flexrt.kernels.fp8_conv import fp8_conv_status
from flexrt.kernels.fp8_gemm import fused_fp8_status, fused_qkv_available, residual_gemm_choice
from flexrt.model.flexavatar import FlexAvatarModel
from flexrt.model.gaussians import GAUSSIAN_ATTRIBUTES, Gaussians
from flexrt.model.pipeline import Pipeline

from .base import Engine, EngineInfo

PRECISIONS = ("fp32", "bf16")
GRAPH_MODES = ("none", "cuda")
BATCH_BUCKETS = tuple(range(1, 65))  # one CUDA graph per batch size (a coarser set pads batches up)
MAX_BATCH = BATCH_BUCKETS[-1]


def batch_bucket(b: int) -> int:
    """The captured batch size a batch of ``b`` frames runs at: the smallest bucket >= b (with every size a bucket,
    b itself; ``b`` above the largest bucket)."""
    return next((k for k in BATCH_BUCKETS if k >= b), b)


class TorchEngine(Engine):
    def __init__(self, pipeline: Pipeline | FlexAvatarModel, device: str | torch.device = "cpu",
                 precision: str = "fp32", graphs: str = "none", identity: dict | None = None,
                 upsampler: str = "auto", compile: bool = False, fp8: str = "off", residual: str = "fp32"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        if graphs not in GRAPH_MODES:
            raise ValueError(f"graphs must be one of {GRAPH_MODES}, got {graphs!r}")
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("TorchEngine: device 'cuda' requested but torch sees no CUDA device")
        if graphs == "cuda" and device.type != "cuda":
            raise ValueError("graphs='cuda' needs a CUDA device")
        if fp8 == "row" and not fp8_capable(device):
            raise RuntimeError("fp8='row' needs a CUDA GPU with FP8 tensor cores (compute capability >= 8.9, e.g. "
                               "Ada or Hopper); use fp8='off' (or 'static', which also runs on a CPU)")
        if fp8 in ("static", "fused") and device.type == "cuda" and not fp8_capable(device):
            raise RuntimeError(f"fp8={fp8!r} on CUDA needs FP8 tensor cores (compute capability >= 8.9, e.g. Ada or "
                               "Hopper); use fp8='off'")
        fp8_kernels = None
        if fp8 == "fused":  # which kernel runs the fused epilogues: Triton on the GPU, the reference ops on a CPU
            backend, fp8_kernels = fused_fp8_status(device)
            if backend is None:
                raise RuntimeError(f"fp8='fused': {fp8_kernels}; use fp8='static'")
        if upsampler == "fp8":  # which kernel runs the FP8 convolutions: Triton on the GPU, reference ops on a CPU
            backend, why = fp8_conv_status(device)
            if backend is None:
                raise RuntimeError(f"upsampler='fp8': {why}; use upsampler='bf16'")
            fp8_kernels = why if fp8_kernels is None else f"{fp8_kernels}; {why}"
        if isinstance(pipeline, Pipeline):
            self.model, self.encoder = pipeline.model, pipeline.encoder
            identity = identity or pipeline.identity
        else:
            self.model, self.encoder = pipeline, None
            identity = identity or getattr(pipeline, "identity", {})
        if upsampler == "auto":  # bf16 with bf16: 0.74 -> 0.59 ms a frame at batch 32, render PSNR 84.5 dB vs fp32
            upsampler = "bf16" if precision == "bf16" else "fp32"
        # the per-frame decoder: its own copy of the weights (fused, cast); the model stays fp32 for avatar creation
        residual_gemm = residual_gemm_choice()  # FLEXRT_FP8_RESIDUAL_GEMM (fp8="fused" only)
        self.decoder = self.model.deploy_decoder(precision=precision, fp8=fp8, upsampler=upsampler, residual=residual,
                                                 fused_qkv=fused_qkv_available(device),
                                                 residual_gemm=residual_gemm).to(device)
        if self.decoder.needs_calibration:  # static FP8 activation scales, fixed before any compile or capture
            self.decoder.calibrate_fp8(*fp8_calibration_inputs(self.model, device))
        self.model.to(device).eval()
        if self.encoder is not None:
            self.encoder.to(device).eval()
        self.dtype = torch.bfloat16 if precision == "bf16" else None
        self.graphs = graphs
        self.num_head_tokens = self.model.num_head_tokens
        self.hidden_dim = self.model.hidden_dim
        self.num_gaussians = self.model.num_gaussians
        self.image_size = self.model.cfg.image_resolution
        dev = str(device) if device.type == "cpu" else f"cuda:{device.index or 0}"
        self.compiled = bool(compile)
        if compile:
            _raise_recompile_limit()
            self._decode_fn = torch.compile(self._decode_eager, dynamic=None)
        else:
            self._decode_fn = self._decode_eager
        self.info = EngineInfo(backend="torch", device=dev,
                               precision=precision + ("" if fp8 == "off" else f"+fp8-{fp8}")
                               + ("+bf16-residual" if residual == "bf16" else "")
                               + ("+fp8-upsampler" if upsampler == "fp8" else ""),
                               detail={"graphs": graphs, "upsampler": upsampler, "compile": compile, "fp8": fp8,
                                       "residual": residual, **({"fp8_kernels": fp8_kernels} if fp8_kernels else {}),
                                       **({"residual_gemm": residual_gemm} if fp8 == "fused" else {}),
                                       "torch": torch.__version__, **{k: v for k, v in identity.items()
                                                                      if k in ("weights", "preset")}})
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, tuple, tuple]] = {}
        # one memory pool for every bucket's graph: they are replayed one at a time on one stream and their outputs
        # are copied out before the next replay, so their temporaries may share memory
        self._pool = torch.cuda.graph_pool_handle() if graphs == "cuda" else None

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
        g = self.decoder(avatar_code, expression_codes)
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

    def warmup(self, max_batch: int, progress=None) -> None:
        buckets = sorted({batch_bucket(b) for b in range(1, max_batch + 1)})
        if self.graphs != "cuda":
            if self._decode_fn is not self._decode_eager:  # compile for every bucket up to max_batch
                for i, k in enumerate(buckets):
                    self.decode(torch.zeros(k, self.num_head_tokens, self.hidden_dim, device=self.device),
                                torch.zeros(k, 135, device=self.device))
                    if progress is not None:
                        progress(i + 1, len(buckets), f"decoder batch {k} compiled")
            return
        todo = [k for k in reversed(buckets) if k not in self._graphs]  # largest pool first
        for i, k in enumerate(todo):
            self._capture(k)
            if progress is not None:
                progress(i + 1, len(todo), f"decoder batch {k} captured")

    @torch.inference_mode(False)  # static buffers must stay writable outside inference mode
    @torch.no_grad()
    def _capture(self, b: int) -> None:
        # static input buffers; the graph reads them and writes its outputs to static buffers on every replay
        s_code = torch.zeros(b, self.num_head_tokens, self.hidden_dim, device=self.device)
        s_expr = torch.zeros(b, 135, device=self.device)
        if self.compiled and b > 1:  # one compiled version serves every bucket above 1 (batch 1 is its own)
            torch._dynamo.mark_dynamic(s_code, 0, min=2, max=MAX_BATCH)
            torch._dynamo.mark_dynamic(s_expr, 0, min=2, max=MAX_BATCH)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm up: compilation, cuBLAS handles, autotuning, allocator pools
                self._decode_fn(s_code, s_expr)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            outs = self._decode_fn(s_code, s_expr)
        self._graphs[b] = (graph, (s_code, s_expr), outs)


def fp8_capable(device) -> bool:
    """True for a CUDA device with FP8 tensor cores (compute capability >= 8.9: Ada, Hopper and later)."""
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= (8, 9)


def resolve_decoder_options(device, precision: str, fp8: str = "auto", residual: str = "auto",
                            upsampler: str = "auto") -> tuple[str, str, str, str]:
    """``"auto"`` fp8 / residual / upsampler -> (fp8, residual, upsampler, why). On a GPU with FP8 tensor cores the
    bf16 decoder gets FP8 GEMMs with static scales and a bf16 residual stream (0.50 vs 0.56 ms a frame at batch 32
    on the H200, rendered PSNR vs fp32 66 dB on EMO-1: docs/SERVING.md section 5), with their epilogues fused
    ("fused": 0.462 vs 0.475 ms, PSNR 66.1 dB) and the upsampler's convolutions in FP8 ("fp8": 0.413 vs 0.457 ms
    in the same run, PSNR 62.4 dB) where Triton is there; elsewhere bf16 GEMMs and a bf16 upsampler (fp32 with the
    fp32 decoder). Explicit values are kept; with ``fp8="off"`` the upsampler stays bf16 (no FP8 anywhere)."""
    why = []
    if fp8 == "auto":
        if precision != "bf16":
            fp8 = "off"
            why.append(f"fp8 off: the decoder is {precision}")
        elif not fp8_capable(device):
            fp8 = "off"
            why.append(f"fp8 off: {device} has no FP8 tensor cores")
        elif residual in ("auto", "bf16") and fused_fp8_status(device)[0] == "triton":
            fp8 = "fused"
            why.append("fp8 fused: bf16 decoder on a GPU with FP8 tensor cores, epilogues in Triton FP8 GEMMs")
        else:
            fp8 = "static"
            why.append("fp8 static: bf16 decoder on a GPU with FP8 tensor cores"
                       + ("" if residual == "fp32" else f" (not fused: {fused_fp8_status(device)[1]})"))
    if residual == "auto":
        residual = "bf16" if precision == "bf16" else "fp32"
    if upsampler == "auto":
        if precision != "bf16":
            upsampler = "fp32"
        elif fp8 != "off" and fp8_conv_status(device)[0] == "triton":
            upsampler = "fp8"
            why.append("upsampler fp8: its 3x3 convolutions as Triton FP8 implicit GEMMs")
        else:
            upsampler = "bf16"
            if fp8 != "off" and torch.device(device).type == "cuda":
                why.append(f"upsampler bf16 (not fp8: {fp8_conv_status(device)[1]})")
    return fp8, residual, upsampler, "; ".join(why)


FP8_CALIBRATION_COUNT = 8


@torch.no_grad()
def fp8_calibration_inputs(model: FlexAvatarModel, device, count: int = FP8_CALIBRATION_COUNT, seed: int = 0):
    """Calibration inputs of fp8="static": ``count`` seeded random avatar codes [count,HT,D] (every FP8 GEMM reads a
    normalised activation, so their scale does not matter) and expression codes [count,135] sampled as the training
    corpus samples them at the tracker's spread (corpus.codes.sample_codes: jaw, eyes, eyelids, head pose, exp)."""
    import numpy as np

    from flexrt.corpus.codes import sample_codes

    g = torch.Generator().manual_seed(seed)
    codes = torch.randn(count, model.num_head_tokens, model.hidden_dim, generator=g)
    expr = torch.from_numpy(sample_codes(np.random.default_rng(seed), count, exp_scale=1.7)).float()
    return codes.to(device), expr.to(device)


def _raise_recompile_limit() -> None:
    """One compiled decoder is specialised per batch bucket: allow that many versions (dynamo's default is 8)."""
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), 2 * len(BATCH_BUCKETS)))
