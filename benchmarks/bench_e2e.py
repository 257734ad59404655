"""Per-stage and end-to-end frame latency, in process: render (rasterizer backends), frame encoding, and
expression -> frame.

Stages of one frame (B frames of a batch, G Gaussians, H x W pixels, on the run's device):

    expression codes [B,135] on the host -> device -> decoder -> Gaussians [B,G,*]      "decode"  (bench_decoder)
    -> sh_dc_to_rgb + rasterize (white background) -> float rgb [B,1,H,W,3]           "render"
    -> uint8 on the device -> one device->host copy [B,H,W,3]                          "readback"
    -> JPEG / PNG / raw bytes per frame (Pillow, runtime.codec)                          "encode"

``expression -> frame`` (the 1.8 ms target) ends with the uint8 frame in host memory (encoding "raw"); rows with
encoding "jpeg" add the encoder. The official-path baseline is the eager fp32 decoder + gsplat, timed here in the
same run as the runtime's paths.

Rasterizers: ``cupy`` (flexrt.kernels, CUDA), ``gsplat`` (gsplat.rasterization with the official settings:
SH degree 0, packed=False, classic, near 0.01, far 1e10, eps2d 0.3) and ``cpu`` (flexrt.kernels' PyTorch
reference on the host; on a GPU machine the Gaussians are copied to the host first, as the server does).
"""
from __future__ import annotations

import logging
import os
import time

import numpy as np
import torch

from flexrt.runtime.frames import rgb_to_uint8  # the server's uint8 conversion

from .bench_decoder import OFFICIAL_DECODER, BenchContext, Unavailable, release_memory, row_base
from .timing import Budget, time_fn

log = logging.getLogger("flexrt.bench")

RASTERIZERS = ("cupy", "gsplat", "cpu")
ENCODINGS = ("raw", "jpeg", "png")
OFFICIAL_RASTERIZER = "gsplat"
CPU_RASTER_MAX_PIXELS = 512 * 512  # the host reference rasterizer is timed up to this size on a GPU machine
DISTINCT_FRAMES = 8  # decoded frames the render/encode stages rotate through
GSPLAT_UNAVAILABLE_ENV = "FLEXRT_BENCH_GSPLAT_UNAVAILABLE"  # a reason: gsplat is reported unavailable with it


# ------------------------------------------------------------------------------------------------------------
# cameras and renderers
# ------------------------------------------------------------------------------------------------------------

def camera_tensors(batch: int, width: int, height: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The default frontal camera (flexrt.model.camera) -> viewmats [B,1,4,4], Ks [B,1,3,3], white bg [B,1,3]."""
    from flexrt.model.camera import default_camera, pixel_intrinsics, viewmat_from_cam2world

    c2w, K = default_camera()
    view = viewmat_from_cam2world(c2w)
    Kp = pixel_intrinsics(K, width, height)
    viewmats = view.expand(batch, 1, 4, 4).contiguous().to(device)
    Ks = Kp.expand(batch, 1, 3, 3).contiguous().to(device)
    bg = torch.ones(batch, 1, 3, device=device)
    return viewmats, Ks, bg


def make_renderer(name: str, device: torch.device):
    """-> (render(gaussians, viewmats, Ks, width, height, bg) -> rgb [B,1,H,W,3] on the render device,
    render_device). Raises Unavailable(reason)."""
    from flexrt.kernels import rasterize, sh_dc_to_rgb

    if name == "cupy":
        if device.type != "cuda":
            raise Unavailable(f"the CuPy rasterizer needs a CUDA device (this run's device is {device})")
        try:
            from flexrt.kernels import _cupy_backend

            _cupy_backend.require_cupy()
        except ImportError as e:
            raise Unavailable(f"flexrt.kernels has no CuPy backend here ({e})") from None
        except RuntimeError as e:
            raise Unavailable(str(e)) from None

        def render(g, viewmats, Ks, width, height, bg):
            rgb, _ = rasterize(g.positions, g.rotations, g.scales, g.opacities[..., 0], sh_dc_to_rgb(g.colors),
                               viewmats, Ks, width, height, background=bg, backend="cupy")
            return rgb

        return render, device
    if name == "gsplat":
        if device.type != "cuda":
            raise Unavailable(f"gsplat needs a CUDA device (this run's device is {device})")
        if os.environ.get(GSPLAT_UNAVAILABLE_ENV):  # set by run_device.sh when gsplat's JIT build failed / timed out
            raise Unavailable(os.environ[GSPLAT_UNAVAILABLE_ENV])
        try:
            import gsplat
        except Exception as e:  # ImportError, or a failed extension build
            raise Unavailable(f"gsplat cannot be imported ({type(e).__name__}: {e}); pip install gsplat==1.5.3") from None

        def render(g, viewmats, Ks, width, height, bg):
            rgb, _, _ = gsplat.rasterization(
                g.positions, g.rotations, g.scales, g.opacities[..., 0], g.colors[..., None, :], viewmats, Ks,
                width, height, near_plane=0.01, far_plane=1e10, eps2d=0.3, sh_degree=0, packed=False,
                rasterize_mode="classic", backgrounds=bg)
            return rgb

        return render, device
    if name == "cpu":
        host = torch.device("cpu")

        def render(g, viewmats, Ks, width, height, bg):
            rgb, _ = rasterize(g.positions, g.rotations, g.scales, g.opacities[..., 0], sh_dc_to_rgb(g.colors),
                               viewmats, Ks, width, height, background=bg, backend="cpu")
            return rgb

        return render, host
    raise ValueError(f"unknown rasterizer {name!r}; expected one of {RASTERIZERS}")


# ------------------------------------------------------------------------------------------------------------
# inputs: decoded frames to render
# ------------------------------------------------------------------------------------------------------------

def decoded_frames(ctx: BenchContext, count: int = DISTINCT_FRAMES):
    """``count`` decoded frames (eager fp32, batch 1 each) of different expressions and avatars: list of
    Gaussians with attributes [1,G,*] on the run's device."""
    from flexrt.runtime.engines import TorchEngine

    engine = TorchEngine(ctx.pipeline(), device=ctx.device, precision="fp32")
    codes = ctx.avatar_codes(count)
    pool = ctx.expression_pool()
    step = max(1, len(pool) // count)
    frames = []
    for k in range(count):
        expr = torch.from_numpy(pool[(k * step) % len(pool)][None]).to(ctx.device)
        g = engine.decode(codes[k:k + 1], expr)
        frames.append(g.map(lambda t: t.clone()))
    return frames


def stack_frames(frames, batch: int, start: int, device):
    from flexrt.model.gaussians import Gaussians

    picked = [frames[(start + k) % len(frames)] for k in range(batch)]
    return Gaussians(**{k: torch.cat([f[k] for f in picked]).to(device) for k in picked[0].keys()})


# ------------------------------------------------------------------------------------------------------------
# render stage
# ------------------------------------------------------------------------------------------------------------

def run_render(ctx: BenchContext, rasterizers=RASTERIZERS, resolutions=(256, 512, 1024), batch_sizes=(1,),
               warmup: int = 20, iters: int = 100, budget: Budget | None = None, on_row=None,
               frames=None) -> list[dict]:
    """Rasterizer latency (sh_dc_to_rgb + rasterize, white background) on decoded Gaussians."""
    budget = budget or Budget(None)
    rows: list[dict] = []
    dev = ctx.device
    frames = frames if frames is not None else decoded_frames(ctx)

    def emit(row):
        rows.append(row)
        if on_row is not None:
            on_row(row)

    batch_sizes = sorted(set(int(b) for b in batch_sizes))
    pending = len(rasterizers) * len(resolutions) * len(batch_sizes)
    for name in rasterizers:
        try:
            render, rdev = make_renderer(name, dev)
        except Unavailable as e:
            for res in resolutions:
                for b in batch_sizes:
                    emit(row_base({"backend": name, "resolution": res, "batch": b}, "unavailable", str(e)))
            pending -= len(resolutions) * len(batch_sizes)
            log.info("render %s: unavailable: %s", name, e)
            continue
        for res in resolutions:
            for b in batch_sizes:
                keys = {"backend": name, "resolution": res, "batch": b}
                pending -= 1
                if name == "cpu" and dev.type == "cuda" and (b > 1 or res * res > CPU_RASTER_MAX_PIXELS):
                    emit(row_base(keys, "skipped", "host CPU rasterizer on a GPU machine: timed at batch 1 up to "
                                                   f"{CPU_RASTER_MAX_PIXELS} pixels only (seconds per frame)"))
                    continue
                if budget.exhausted():
                    emit(row_base(keys, "skipped", f"time budget of {budget.seconds:.0f} s used up"))
                    continue
                batches = [stack_frames(frames, b, j * b, rdev) for j in range(min(4, len(frames)))]
                viewmats, Ks, bg = camera_tensors(b, res, res, rdev)
                try:
                    rgb = render(batches[0], viewmats, Ks, res, res, bg)  # first call: kernel compilation
                    coverage = float((rgb < 0.99).any(-1).float().mean())  # share of non-background pixels
                    stats = time_fn(lambda i: render(batches[i % len(batches)], viewmats, Ks, res, res, bg), rdev,
                                    warmup, iters, max_seconds=budget.share(pending + 1))
                except Exception as e:
                    emit(row_base(keys, "error", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
                    log.warning("render %s %d² batch %d failed: %s", name, res, b, e)
                    release_memory(dev)
                    continue
                s = stats.as_dict()
                row = row_base(keys)
                row.update(coverage=coverage, per_frame_ms=s["median_ms"] / b, **s)
                emit(row)
                log.info("render %-6s %4d² batch %2d: median %.3f ms, p99 %.3f ms (n=%d)", name, res, b,
                         s["median_ms"], s["p99_ms"], s["n"])
        release_memory(dev)
    return rows


# ------------------------------------------------------------------------------------------------------------
# encode stage
# ------------------------------------------------------------------------------------------------------------

def run_encode(ctx: BenchContext, encodings=ENCODINGS, resolutions=(256, 512, 1024), warmup: int = 5,
               iters: int = 100, budget: Budget | None = None, on_row=None, frames=None) -> list[dict]:
    """Frame encoding (runtime.codec.encode_frame, what the server runs) of rendered uint8 frames, per frame."""
    from flexrt.runtime import codec

    budget = budget or Budget(None)
    rows: list[dict] = []
    frames = frames if frames is not None else decoded_frames(ctx)
    # content: the frames rendered by the best rasterizer available here
    render = rdev = None
    for name in ("cupy", "gsplat", "cpu"):
        try:
            render, rdev = make_renderer(name, ctx.device)
            break
        except Unavailable:
            continue
    pending = len(encodings) * len(resolutions)
    for res in resolutions:
        viewmats, Ks, bg = camera_tensors(1, res, res, rdev)
        images = []
        for j in range(min(4, len(frames))):
            rgb = render(stack_frames(frames, 1, j, rdev), viewmats, Ks, res, res, bg)
            images.append(np.ascontiguousarray(rgb_to_uint8(rgb[0, 0]).cpu().numpy()))
        for enc in encodings:
            keys = {"format": enc, "resolution": res}
            pending -= 1
            if budget.exhausted():
                rows.append(row_base(keys, "skipped", f"time budget of {budget.seconds:.0f} s used up"))
                continue
            sizes = [len(codec.encode_frame(im, enc)) for im in images]
            stats = time_fn(lambda i: codec.encode_frame(images[i % len(images)], enc), "cpu", warmup, iters,
                            max_seconds=budget.share(pending + 1))
            s = stats.as_dict()
            row = row_base(keys)
            row.update(bytes_median=int(np.median(sizes)), encoder="runtime.codec.encode_frame (Pillow"
                       + (f", JPEG quality {codec.DEFAULT_JPEG_QUALITY}" if enc == "jpeg" else
                          f", zlib level {codec.PNG_COMPRESS_LEVEL}" if enc == "png" else "") + ")", **s)
            rows.append(row)
            if on_row is not None:
                on_row(row)
            log.info("encode %-4s %4d²: median %.3f ms, %d bytes", enc, res, s["median_ms"], row["bytes_median"])
    return rows


# ------------------------------------------------------------------------------------------------------------
# end to end: expression -> frame
# ------------------------------------------------------------------------------------------------------------

class _StageClock:
    """Stage timestamps without extra syncs: CUDA events on a GPU (read after the host copy), else perf_counter."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def intervals_us(self) -> list[int]:
        if self.cuda:
            return [int(a.elapsed_time(b) * 1000) for a, b in zip(self.marks, self.marks[1:])]
        return [int((b - a) * 1e6) for a, b in zip(self.marks, self.marks[1:])]


def e2e_frame_fn(ctx: BenchContext, engine, render, rdev, batch: int, res: int, encoding: str, stage_log: list,
                 rasterizer: str | None = None):
    """-> fn(i): one timed frame (batch) from host expression codes to host frames (uint8, or encoded bytes).

    The runtime's path (``rasterizer`` "cupy", or "cpu" on a CPU machine) is the server's own hot path,
    ``runtime.frames.FrameRenderer.render`` (JPEG on the GPU where the server does it); other paths (the official
    one: gsplat, CPU encoding) are written out here step by step."""
    from flexrt.runtime import codec

    dev = ctx.device
    code = ctx.avatar_codes(batch)
    host_batches = [b.numpy() for b in ctx.expression_batches(batch)]  # numpy [B,135], as the server gets them
    if rasterizer == "cupy" or (rasterizer == "cpu" and dev.type == "cpu"):
        from flexrt.proto import flexavatar_pb2 as pb
        from flexrt.runtime.frames import FrameBatch, FrameRenderer

        renderer = FrameRenderer(engine, rasterizer, max_batch=max(batch, 1), slots=1)
        viewmats, Ks, bg = (t.cpu().numpy() for t in camera_tensors(batch, res, res, "cpu"))
        enc = {"raw": pb.RAW_RGB8, "jpeg": pb.JPEG, "png": pb.PNG}[encoding]

        def fn_renderer(i):
            result = renderer.render(FrameBatch(
                avatar_codes=list(code), expression_codes=host_batches[i % len(host_batches)],
                viewmats=viewmats[:, 0], intrinsics=Ks[:, 0], backgrounds=bg[:, 0], sizes=[(res, res)] * batch,
                encodings=[enc] * batch, qualities=[codec.DEFAULT_JPEG_QUALITY] * batch))
            stage_log.append([result.decode_us / 1e3, result.render_us / 1e3, 0.0, result.cpu_encode_us / 1e3])
            return result

        return fn_renderer
    viewmats, Ks, bg = camera_tensors(batch, res, res, rdev)
    copy_to_host = rdev.type == "cpu" and dev.type != "cpu"

    def fn(i):
        clock = _StageClock(dev)
        clock.mark()
        expr = torch.from_numpy(host_batches[i % len(host_batches)]).to(dev, non_blocking=True)
        g = engine.decode(code, expr)
        clock.mark()
        if copy_to_host:
            g = g.map(lambda t: t.cpu())
        rgb = render(g, viewmats, Ks, res, res, bg)
        u8 = rgb_to_uint8(rgb[:, 0])
        clock.mark()
        frame = u8.cpu().numpy()  # [B,H,W,3]; synchronises
        clock.mark()
        t0 = time.perf_counter()
        if encoding != "raw":
            for k in range(batch):
                codec.encode_frame(frame[k], encoding)
        encode_ms = (time.perf_counter() - t0) * 1e3
        stage_log.append([us / 1e3 for us in clock.intervals_us()] + [encode_ms])
        return frame

    return fn


STAGES = ("decode", "render", "readback", "encode")


def run_e2e(ctx: BenchContext, paths, resolutions=(512,), batch_sizes=(1,), encodings=("raw",), warmup: int = 20,
            iters: int = 100, budget: Budget | None = None, on_row=None, engines=None) -> list[dict]:
    """Expression -> frame latency for each path = (label, decoder backend, rasterizer), on the host clock
    (the frame ends in host memory, which synchronises), with per-stage medians from CUDA events / perf_counter.

    ``engines``: dict decoder backend -> built engine, filled and reused across calls (the caller frees it)."""
    budget = budget or Budget(None)
    rows: list[dict] = []
    dev = ctx.device
    engines = engines if engines is not None else {}
    renderers: dict = {}
    combos = [(p, r, b, e) for p in paths for r in resolutions for b in batch_sizes for e in encodings]
    pending = len(combos)

    def emit(row):
        rows.append(row)
        if on_row is not None:
            on_row(row)

    for (label, decoder, rasterizer), res, b, enc in combos:
        keys = {"path": label, "decoder": decoder, "rasterizer": rasterizer, "resolution": res, "batch": b,
                "encoding": enc}
        pending -= 1
        try:
            if decoder not in engines:
                engines[decoder] = ctx.make_engine(decoder)
            if rasterizer not in renderers:
                renderers[rasterizer] = make_renderer(rasterizer, dev)
        except Unavailable as e:
            emit(row_base(keys, "unavailable", str(e)))
            continue
        except Exception as e:
            emit(row_base(keys, "error", f"building {decoder} / {rasterizer} failed: {type(e).__name__}: {e}"))
            release_memory(dev)
            continue
        engine = engines[decoder]
        limit = ctx.max_batch(decoder)
        if limit is not None and b > limit:
            emit(row_base(keys, "unavailable", f"batch {b} > the TensorRT profile's max_batch {limit}"))
            continue
        if budget.exhausted():
            emit(row_base(keys, "skipped", f"time budget of {budget.seconds:.0f} s used up"))
            continue
        render, rdev = renderers[rasterizer]
        stage_log: list = []
        try:
            fn = e2e_frame_fn(ctx, engine, render, rdev, b, res, enc, stage_log, rasterizer)
            stats = time_fn(fn, "cpu", warmup, iters, max_seconds=budget.share(pending + 1))
        except Exception as e:
            emit(row_base(keys, "error", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
            log.warning("e2e %s failed: %s", keys, e)
            release_memory(dev)
            continue
        s = stats.as_dict()
        timed = np.asarray(stage_log[-stats.n:], dtype=np.float64)  # the timed iterations' stages
        row = row_base(keys)
        row.update(engine=engine.info.describe(), per_frame_ms=s["median_ms"] / b,
                   stages_median_ms={k: float(np.median(timed[:, j])) for j, k in enumerate(STAGES)},
                   stage_timer="cuda_events" if dev.type == "cuda" else "perf_counter", **s)
        emit(row)
        log.info("e2e %-9s %-18s + %-6s %4d² b%-2d %-4s: median %.3f ms, p99 %.3f ms", label, decoder, rasterizer,
                 res, b, enc, s["median_ms"], s["p99_ms"])
    return rows


def preferred_rasterizer(device: torch.device) -> str:
    """The runtime's rasterizer on this device: cupy on a GPU (when it runs), else the host reference."""
    if device.type == "cuda":
        try:
            make_renderer("cupy", device)
            return "cupy"
        except Unavailable:
            pass
        try:
            make_renderer("gsplat", device)
            return "gsplat"
        except Unavailable:
            pass
    return "cpu"


def run_all(ctx: BenchContext, decoders, resolutions=(256, 512, 1024), batch_sizes=(1, 2, 4, 8, 16, 32),
            warmup: int = 20, iters: int = 100, budget: Budget | None = None, on_row=None) -> tuple[list[dict], dict]:
    """The e2e phase: (1) every available decoder with the runtime's rasterizer at 512² batch 1 (raw) -> the
    best path; (2) the official path (eager fp32 + gsplat) and the best path over resolutions, batch 1, raw and
    JPEG at 512²; (3) the best path over batch sizes at 512². Returns (rows, summary of the best path)."""
    budget = budget or Budget(None)
    dev = ctx.device
    raster = preferred_rasterizer(dev)
    ref_res = 512 if 512 in resolutions else resolutions[len(resolutions) // 2]
    rows: list[dict] = []
    engines: dict = {}  # kept: the official decoder and the best candidate so far
    best = None
    candidates = Budget(budget.remaining() * 0.4 if budget.seconds is not None else None, budget.cap)
    for k, decoder in enumerate(decoders):
        mine: dict = {d: e for d, e in engines.items() if d == decoder}
        share = Budget(candidates.remaining() / (len(decoders) - k) if candidates.seconds is not None else None,
                       candidates.cap)
        new = run_e2e(ctx, [("candidate", decoder, raster)], (ref_res,), (1,), ("raw",), warmup, iters, share,
                      on_row, mine)
        rows += new
        if new and new[0]["status"] == "ok" and (best is None or new[0]["median_ms"] < best["median_ms"]):
            best = new[0]
        engines.update(mine)
        for name in list(engines):
            if name != OFFICIAL_DECODER and (best is None or name != best["decoder"]):
                del engines[name]
        release_memory(dev)
    summary = {"rasterizer": raster, "reference_resolution": ref_res,
               "best": None if best is None else {"decoder": best["decoder"], "rasterizer": raster}}
    if best is None:
        return rows, summary
    best_path = ("best", best["decoder"], raster)
    official = ("official", OFFICIAL_DECODER, OFFICIAL_RASTERIZER)
    rest = Budget(budget.remaining() if budget.seconds is not None else None, budget.cap)
    sweep = Budget(rest.remaining() * 0.6 if rest.seconds is not None else None, rest.cap)
    rows += run_e2e(ctx, [official, best_path], resolutions, (1,), ("raw",), warmup, iters, sweep, on_row, engines)
    rows += run_e2e(ctx, [official, best_path], (ref_res,), (1,), ("jpeg",), warmup, iters, sweep, on_row, engines)
    big = tuple(b for b in batch_sizes if b > 1)
    if big:
        batches = Budget(rest.remaining() if rest.seconds is not None else None, rest.cap)
        rows += run_e2e(ctx, [best_path], (ref_res,), big, ("raw",), warmup, iters, batches, on_row, engines)
    engines.clear()
    release_memory(dev)
    return rows, summary


def build_gsplat() -> float:
    """First gsplat call on a tiny scene: JIT-compiles gsplat's CUDA extension when no prebuilt one is installed
    (minutes, cached in ~/.cache/torch_extensions). Returns the seconds it took; raises what gsplat raises."""
    from flexrt.kernels.scenes import head_scene
    from flexrt.model.gaussians import Gaussians

    t0 = time.perf_counter()
    dev = torch.device("cuda")
    render, _ = make_renderer("gsplat", dev)
    s = head_scene(64, device=dev)
    g = Gaussians(positions=s["means"], scales=s["scales"], rotations=s["quats"], colors=s["colors"],
                  opacities=s["opacities"][..., None])
    viewmats, Ks, bg = camera_tensors(1, 32, 32, dev)
    render(g.map(lambda t: t[None]), viewmats, Ks, 32, 32, bg)
    torch.cuda.synchronize()
    return time.perf_counter() - t0


if __name__ == "__main__":  # python -m flexrt.benchmarks.bench_e2e build-gsplat   (used by run_device.sh)
    import sys

    if sys.argv[1:] != ["build-gsplat"]:
        sys.exit("usage: python -m flexrt.benchmarks.bench_e2e build-gsplat")
    try:
        from .report import _version

        print(f"gsplat {_version('gsplat')}: ready in {build_gsplat():.1f} s")
    except Unavailable as e:
        sys.exit(f"gsplat unavailable: {e}")
