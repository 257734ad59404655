"""Decoder latency (avatar code + expression code -> Gaussians) per backend and batch size, and the shared
benchmark context: which model, which engine directory, which inputs, and how each backend is built.

    ctx = BenchContext(preset="flex1", device="cuda")
    rows = run(ctx, backends=DEFAULT_BACKENDS, batch_sizes=(1, 8, 32))

Backends (names used everywhere in the benchmark output):

    torch-eager-fp32     TorchEngine, eager fp32: the official inference setting
    torch-eager-bf16     TorchEngine, eager bf16 autocast: the official training setting
    torch-graphs-fp32    TorchEngine replayed from CUDA graphs (fp32)
    torch-graphs-bf16    TorchEngine replayed from CUDA graphs (bf16 autocast)
    ort-fp32, ort-fp16   ONNX Runtime on the run's device (CUDA EP with IO binding on a GPU, CPU EP on the CPU)
    tensorrt-fp16        TensorRT FP16 engines (export-engines --tensorrt)
    torch-compile-fp32   opt-in: torch.compile(mode="reduce-overhead") of the decoder, what the official config
                         turns on (compiles for minutes; not in the default list)

A backend that cannot run here is reported as ``unavailable`` with the reason; one that fails while running as
``error`` with the exception. Inputs rotate every iteration: expression codes walk through a driving sequence
(EMO-1-shout+laugh when the reference data is found, else a synthetic one) and every row of a batch is a
different avatar code.
"""
from __future__ import annotations

import gc
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .timing import DEFAULT_ITERS, DEFAULT_WARMUP, Budget, time_fn

log = logging.getLogger("flexrt.bench")


@dataclass(frozen=True)
class BackendSpec:
    kind: str  # "torch", "compile", "onnxruntime", "tensorrt"
    precision: str
    graphs: str = "none"
    note: str = ""
    compile: bool = False  # TorchEngine(compile=True): inductor-fused decoder under CUDA graphs
    fp8: str = "off"  # TorchEngine(fp8=...): "static" = FP8 sample-stream GEMMs with calibrated activation scales
    residual: str = "fp32"  # TorchEngine(residual=...): the sample stream's residual dtype
    upsampler: str = "auto"  # TorchEngine(upsampler=...): "fp8" = the upsampler's 3x3 convolutions in FP8


DECODER_BACKENDS: dict[str, BackendSpec] = {
    "torch-eager-fp32": BackendSpec("torch", "fp32", note="official inference setting"),
    "torch-eager-bf16": BackendSpec("torch", "bf16", note="official training setting (autocast)"),
    "torch-graphs-fp32": BackendSpec("torch", "fp32", "cuda", note="CUDA graphs"),
    "torch-graphs-bf16": BackendSpec("torch", "bf16", "cuda", note="CUDA graphs, bf16 autocast"),
    "torch-compiled-bf16": BackendSpec("torch", "bf16", "cuda", compile=True,
                                       note="torch.compile + CUDA graphs, bf16 autocast (the default on GPUs without FP8)"),
    "torch-compiled-fp8": BackendSpec("torch", "bf16", "cuda", compile=True, fp8="static", residual="bf16",
                                      note="as torch-compiled-bf16, + FP8 GEMMs (static scales), bf16 residual (the GPU default "
                                           "where FP8 tensor cores exist)"),
    "torch-compiled-fp8-fused": BackendSpec("torch", "bf16", "cuda", compile=True, fp8="fused", residual="bf16",
                                            note="as torch-compiled-fp8, with GELU, quantisation and residual adds "
                                                 "in the FP8 GEMMs' epilogues (Triton, kernels/fp8_gemm.py)"),
    "torch-compiled-fp8-up8": BackendSpec("torch", "bf16", "cuda", compile=True, fp8="fused", residual="bf16",
                                          upsampler="fp8",
                                          note="as torch-compiled-fp8-fused, + the upsampler's 3x3 convolutions in "
                                               "FP8 with their epilogues (Triton, kernels/fp8_conv.py)"),
    "ort-fp32": BackendSpec("onnxruntime", "fp32"),
    "ort-fp16": BackendSpec("onnxruntime", "fp16"),
    "tensorrt-fp16": BackendSpec("tensorrt", "fp16"),
    "torch-compile-fp32": BackendSpec("compile", "fp32", note="torch.compile reduce-overhead (official config)"),
}
DEFAULT_BACKENDS = tuple(k for k in DECODER_BACKENDS if k != "torch-compile-fp32")
OFFICIAL_DECODER = "torch-eager-fp32"
SEQUENCE_NAME = "EMO-1-shout+laugh"


class Unavailable(Exception):
    """A backend (or rasterizer, or stage) that cannot run in this environment; the message is the reason."""


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


@dataclass
class BenchContext:
    """Everything the benchmark phases share: model preset, device, engine directory (exported on first need),
    the PyTorch pipeline (built once) and the rotating inputs."""

    preset: str = "flex1"
    device: str | torch.device = "auto"
    engine_dir: str | Path | None = None
    work_dir: str | Path = "bench_out"
    checkpoint: str | None = None
    dinov2: str | None = None
    template: str | None = None  # None: the official gghead_template.obj for flex1 when the reference data is found
    export_tensorrt: bool = False
    seed: int = 0
    info: dict = field(default_factory=dict)  # what was built and how (goes into the JSON "model" section)

    def __post_init__(self):
        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(self.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device cuda requested, but torch sees no CUDA device")
        self.work_dir = Path(self.work_dir)
        self._pipeline = None
        self._manifest = None
        self._sequence = None
        self._export_error: str | None = None

    # ---- model ----
    def template_path(self) -> str | None:
        """The template to build / export with: --template, else for flex1 the official gghead_template.obj from
        the reference data (FLEXRT_SHARED), else None (the project's default head)."""
        if self.template is not None or self.preset != "flex1":
            return self.template
        from flexrt.runtime.cli import find_shared_dir

        shared = find_shared_dir()
        obj = shared / "reference" / "assets" / "gghead_template.obj" if shared else None
        if obj is not None and obj.is_file():
            return str(obj)
        self.info["template_note"] = ("the official gghead_template.obj was not found (set FLEXRT_SHARED): "
                                      "FLEX-1 uses the project's default head template")
        log.warning(self.info["template_note"])
        return None

    def _record_model(self, identity: dict, num_head_tokens: int, hidden_dim: int, num_gaussians: int) -> None:
        template = identity.get("template")
        self.info.update(preset=identity.get("preset") or self.preset, weights=identity.get("weights"),
                         template=("project default head (model/assets/default_head.obj)"
                                   if template in (None, "default") else template),
                         template_sha256=identity.get("template_sha256"), num_gaussians=num_gaussians,
                         num_head_tokens=num_head_tokens, hidden_dim=hidden_dim)

    def engines(self) -> Path:
        """The engine directory: --engines (exported there when it holds no manifest yet), or exported into
        work_dir/engines-<preset> on first use. Raises Unavailable when there is none and the export failed."""
        if self._export_error is not None:
            raise Unavailable(self._export_error)
        try:
            return self._engines()
        except Exception as e:
            self._export_error = f"no engine directory: export failed ({type(e).__name__}: {e})"
            raise Unavailable(self._export_error) from e

    def needs_engines(self, backends) -> bool:
        return any(DECODER_BACKENDS[b].kind in ("onnxruntime", "tensorrt") for b in backends if b in DECODER_BACKENDS)

    def _engines(self) -> Path:
        from flexrt.export.manifest import read_manifest

        out = Path(self.engine_dir) if self.engine_dir is not None else self.work_dir / f"engines-{self.preset}"
        if not (out / "manifest.json").is_file():
            from flexrt.export import export_engines

            t0 = time.perf_counter()
            log.info("exporting %s engines to %s (ONNX fp32 + fp16%s, no parity check) ...", self.preset, out,
                     ", TensorRT" if self.export_tensorrt else "")
            export_engines(self.preset, checkpoint=self.checkpoint, dinov2=self.dinov2,
                           template=self.template_path(), out_dir=out, precisions=("fp32", "fp16"),
                           tensorrt=self.export_tensorrt, max_batch=32, parity=False, progress=False,
                           log=lambda *a: None)
            self.info["export_seconds"] = round(time.perf_counter() - t0, 1)
        self.engine_dir = out
        if self._manifest is None:
            self._manifest = read_manifest(out)
            m = self._manifest["model"]
            self._record_model(m, m["num_head_tokens"], m["hidden_dim"], m["num_gaussians"])
            self.info.update(engine_dir=str(out), manifest_warnings=self._manifest.get("warnings", []),
                             tensorrt_max_batch=self._manifest.get("max_batch"))
        return out

    @property
    def manifest(self) -> dict:
        self.engines()
        return self._manifest

    def pipeline(self):
        """The PyTorch pipeline: from the engine directory when there is one (the same weights as the ONNX /
        TensorRT engines), else straight from the preset."""
        if self._pipeline is None:
            root = None
            if self.engine_dir is not None and self._export_error is None:
                try:
                    root = self.engines()
                except Unavailable:
                    root = None
            if root is not None:
                from flexrt.runtime.engines.loader import _torch_pipeline

                self._pipeline = _torch_pipeline(root, self._manifest)
            else:
                from flexrt.model.pipeline import build_pipeline

                self._pipeline = build_pipeline(self.preset, self.checkpoint, self.dinov2, self.template_path())
                m = self._pipeline.model
                self._record_model(self._pipeline.identity, m.num_head_tokens, m.hidden_dim, m.num_gaussians)
        return self._pipeline

    def dims(self) -> tuple[int, int, int]:
        """(HT, D, G) without building anything that is not needed."""
        if self._pipeline is None and self._manifest is not None:
            m = self._manifest["model"]
            return m["num_head_tokens"], m["hidden_dim"], m["num_gaussians"]
        m = self.pipeline().model
        return m.num_head_tokens, m.hidden_dim, m.num_gaussians

    # ---- inputs ----
    def expression_pool(self) -> np.ndarray:
        """[T,135] float32 driving expression codes (the reference sequence, else a synthetic one)."""
        if self._sequence is None:
            from flexrt.runtime.cli import find_shared_dir, load_sequence, synthetic_sequence

            shared = find_shared_dir()
            path = shared / "reference" / "assets" / "expressions" / f"{SEQUENCE_NAME}.npz" if shared else None
            if path is not None and path.is_file():
                seq = load_sequence(path)
                self.info["expressions"] = f"{SEQUENCE_NAME} ({len(seq.expressions)} frames, {path})"
            else:
                seq = synthetic_sequence(120)
                self.info["expressions"] = "synthetic sequence (120 frames; reference data not found)"
            self._sequence = np.ascontiguousarray(seq.expressions, dtype=np.float32)
        return self._sequence

    def expression_batches(self, batch: int, device: torch.device | None = None, count: int | None = None):
        """Distinct [batch,135] batches walking through the sequence (row k of batch j is frame j*batch+k)."""
        pool = self.expression_pool()
        t = len(pool)
        count = count or max(8, math.ceil(t / batch))
        idx = (np.arange(count * batch) % t).reshape(count, batch)
        batches = [torch.from_numpy(pool[i]) for i in idx]
        return [b.to(device) for b in batches] if device is not None else batches

    def avatar_codes(self, n: int, device: torch.device | None = None) -> torch.Tensor:
        """[n,HT,D] float32: n different avatar codes with the statistics of an encoded code (seeded)."""
        ht, d, _ = self.dims()
        gen = torch.Generator().manual_seed(self.seed + 7)
        codes = 0.5 * torch.randn(n, ht, d, generator=gen)
        return codes.to(device or self.device)

    # ---- backends ----
    def make_engine(self, name: str):
        """Build decoder backend ``name`` on the run's device; raises Unavailable(reason)."""
        if name not in DECODER_BACKENDS:
            raise ValueError(f"unknown decoder backend {name!r}; expected one of {list(DECODER_BACKENDS)}")
        spec = DECODER_BACKENDS[name]
        dev = self.device
        if spec.kind == "torch":
            from flexrt.runtime.engines import TorchEngine
            from flexrt.kernels.fp8_conv import fp8_conv_status
            from flexrt.kernels.fp8_gemm import fused_fp8_status
            from flexrt.runtime.engines.torch_engine import fp8_capable

            if spec.graphs == "cuda" and dev.type != "cuda":
                raise Unavailable(f"CUDA graphs need a CUDA device (this run's device is {dev})")
            if spec.fp8 != "off" and not fp8_capable(dev):
                raise Unavailable("FP8 GEMMs need a CUDA GPU of compute capability >= 8.9 (Ada, Hopper)")
            if spec.fp8 == "fused" and fused_fp8_status(dev)[0] != "triton":
                raise Unavailable(fused_fp8_status(dev)[1])
            if spec.upsampler == "fp8" and fp8_conv_status(dev)[0] != "triton":
                raise Unavailable(fp8_conv_status(dev)[1])
            return TorchEngine(self.pipeline(), device=dev, precision=spec.precision, graphs=spec.graphs,
                               compile=spec.compile, fp8=spec.fp8, residual=spec.residual, upsampler=spec.upsampler)
        if spec.kind == "compile":
            return CompiledDecoder(self.pipeline(), dev)
        if spec.kind == "onnxruntime":
            try:
                import onnxruntime as ort
            except ImportError:
                raise Unavailable("onnxruntime is not installed (pip install onnxruntime / onnxruntime-gpu)") from None
            providers = ort.get_available_providers()
            if dev.type == "cuda" and "CUDAExecutionProvider" not in providers:
                raise Unavailable(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (install "
                                  f"onnxruntime-gpu instead of onnxruntime); providers: {', '.join(providers)}")
            from flexrt.runtime.engines.ort_engine import OrtEngine

            root = self.engines()  # raises Unavailable when there is none
            try:
                return OrtEngine(root, device=str(dev), precision=spec.precision, graphs=("decoder",),
                                 manifest=self.manifest)
            except (RuntimeError, KeyError, FileNotFoundError) as e:
                raise Unavailable(f"{type(e).__name__}: {e}") from None
        # tensorrt
        if dev.type != "cuda":
            raise Unavailable(f"TensorRT needs a CUDA device (this run's device is {dev})")
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            raise Unavailable("tensorrt is not installed (pip install tensorrt; then export-engines --tensorrt)") from None
        root = self.engines()
        if not any(k.startswith("tensorrt.") for k in self.manifest["files"]):
            raise Unavailable(f"the engine directory {root} has no TensorRT engines "
                              "(export-engines --tensorrt, or bench --export-tensorrt)")
        from flexrt.runtime.engines.tensorrt_engine import TensorRTEngine

        try:
            return TensorRTEngine(root, device=str(dev), manifest=self.manifest)
        except Exception as e:  # deserialisation / architecture mismatch: say why
            raise Unavailable(f"{type(e).__name__}: {e}") from None

    def max_batch(self, name: str) -> int | None:
        """The largest batch a backend accepts (TensorRT: its optimisation profile), None = unbounded."""
        if DECODER_BACKENDS[name].kind == "tensorrt":
            return int(self.manifest.get("max_batch") or 8)
        return None


class CompiledDecoder:
    """``torch.compile(mode="reduce-overhead")`` of the model's per-frame decode (fp32): the official config's
    setting, for comparison only. Recompiles per batch size; outputs are valid until the next call."""

    def __init__(self, pipeline, device: torch.device):
        from flexrt.model.pipeline import DECODER_OUTPUTS
        from flexrt.runtime.engines import EngineInfo, TorchEngine

        base = TorchEngine(pipeline, device=device, precision="fp32")
        self.num_head_tokens, self.hidden_dim = base.num_head_tokens, base.hidden_dim
        self.num_gaussians = base.num_gaussians
        self._outputs = DECODER_OUTPUTS
        self._fn = torch.compile(base.model.decode_frames, mode="reduce-overhead")
        self.info = EngineInfo("torch.compile", base.info.device, "fp32", {"mode": "reduce-overhead"})
        self.device = device

    @torch.no_grad()
    def decode(self, avatar_code, expression_codes):
        from flexrt.model.gaussians import Gaussians

        if self.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        g = self._fn(avatar_code, expression_codes)
        return Gaussians(*(g[k] for k in self._outputs))


def row_base(section_keys: dict, status: str = "ok", reason: str | None = None) -> dict:
    row = dict(section_keys)
    row["status"] = status
    if reason:
        row["reason"] = reason
    return row


def run(ctx: BenchContext, backends=DEFAULT_BACKENDS, batch_sizes=(1, 2, 4, 8, 16, 32), warmup: int = DEFAULT_WARMUP,
        iters: int = DEFAULT_ITERS, budget: Budget | None = None, on_row=None) -> list[dict]:
    """Decoder latency rows, one per (backend, batch size). ``on_row(row)`` is called after each row."""
    budget = budget or Budget(None)
    rows: list[dict] = []
    dev = ctx.device

    def emit(row):
        rows.append(row)
        if on_row is not None:
            on_row(row)

    batch_sizes = sorted(set(int(b) for b in batch_sizes))
    pending = len(backends) * len(batch_sizes)
    codes = None
    for name in backends:
        t0 = time.perf_counter()
        try:
            engine = ctx.make_engine(name)
        except Exception as e:  # Unavailable: cannot run here; anything else: failed to build
            status = "unavailable" if isinstance(e, Unavailable) else "error"
            reason = str(e) if isinstance(e, Unavailable) else f"building the engine failed: {type(e).__name__}: {e}"
            for b in batch_sizes:
                emit(row_base({"backend": name, "batch": b}, status, reason))
            pending -= len(batch_sizes)
            log.info("decoder %s: %s: %s", name, status, reason)
            release_memory(dev)
            continue
        load_s = time.perf_counter() - t0
        if codes is None:
            codes = ctx.avatar_codes(max(batch_sizes))
        limit = ctx.max_batch(name)
        for b in batch_sizes:
            keys = {"backend": name, "batch": b}
            pending -= 1
            if limit is not None and b > limit:
                emit(row_base(keys, "unavailable", f"batch {b} > the TensorRT profile's max_batch {limit}"))
                continue
            if budget.exhausted():
                emit(row_base(keys, "skipped", f"time budget of {budget.seconds:.0f} s used up"))
                continue
            code = codes[:b].contiguous()
            inputs = ctx.expression_batches(b, dev)
            try:
                g = engine.decode(code, inputs[0])  # first call (graph capture, autotuning) + sanity check
                finite = bool(torch.isfinite(g.positions).all()) and bool(torch.isfinite(g.colors).all())
                del g
                stats = time_fn(lambda i: engine.decode(code, inputs[i % len(inputs)]), dev, warmup, iters,
                                max_seconds=budget.share(pending + 1))
            except Exception as e:  # OOM at large batches, a backend failing at run time: report, go on
                emit(row_base(keys, "error", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
                log.warning("decoder %s batch %d failed: %s", name, b, e)
                release_memory(dev)
                continue
            s = stats.as_dict()
            row = row_base(keys)
            row.update(engine=engine.info.describe(), note=DECODER_BACKENDS[name].note, finite=finite,
                       load_s=round(load_s, 2), per_frame_ms=s["median_ms"] / b,
                       frames_per_s=1e3 * b / s["median_ms"] if s["median_ms"] > 0 else None, **s)
            emit(row)
            log.info("decoder %-18s batch %2d: median %.3f ms, p99 %.3f ms (n=%d)", name, b, s["median_ms"],
                     s["p99_ms"], s["n"])
        del engine
        release_memory(dev)
    return rows
