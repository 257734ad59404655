"""gRPC benchmarks through the real service and client library (flexrt.runtime.server / client) on 127.0.0.1:

* round trip: one Animate stream, one frame in flight, per encoding: client send -> response received
  (``latency``), the server's own stage timings, and ``transport`` = latency - server time;
* concurrency sweep: S streams at ``fps`` each (1 .. 64), for ``duration`` seconds after ``warmup`` seconds, frames
  sent on schedule with no client-side in-flight limit (the server keeps the newest frame and drops stale ones):
  achieved fps, dropped frames, latency p50 / p99.

The server runs in this process (its asyncio loop and engine thread), the streams in separate client processes
(``client_procs``; each runs its streams on threads), so client work does not share the server's interpreter
lock. This module imports neither torch nor the engines at import time: the client processes stay light.
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time

import numpy as np

log = logging.getLogger("flexrt.bench")

DEFAULT_STREAMS = (1, 8, 16, 32, 48, 64, 80, 96)
TARGET_P99_MS = 33.0
MIN_FPS_FRACTION = 0.95  # a stream "keeps up" when it gets at least this share of the frames it sent per second
MAX_DROP_FRACTION = 0.01
FIT_OBSERVATIONS, FIT_STEPS, FIT_RESOLUTION = 4, 200, 512  # the fitting point's FitAvatar request (issue 11)
_FIELDS = ("latency_us", "queue_us", "decode_us", "render_us", "encode_us", "server_us", "batch_size")


# ------------------------------------------------------------------------------------------------------------
# client side (runs in the client processes)
# ------------------------------------------------------------------------------------------------------------

def _one_stream(target: str, avatar_id: str, expressions: np.ndarray, offset: int, n_frames: int, fps: float,
                width: int, height: int, encoding: str, start_at: float, out: dict) -> None:
    from flexrt.runtime.client import FlexAvatarClient

    t = len(expressions)
    frames = (expressions[(offset + j) % t] for j in range(n_frames))
    records = []
    last_dropped = 0
    try:
        with FlexAvatarClient(target, timeout=60.0) as client:
            client.wait_ready(10.0)
            delay = start_at - time.time()
            if delay > 0:
                time.sleep(delay)
            t0 = time.perf_counter()
            for r in client.animate(avatar_id, frames, width, height, encoding=encoding, fps=fps or None,
                                    max_in_flight=None if fps else 1, decode=False,
                                    timeout=n_frames / (fps or 10.0) + 60.0):
                records.append((r.sequence, *(getattr(r, f) for f in _FIELDS)))
                last_dropped = r.dropped
            out["wall_s"] = time.perf_counter() - t0
    except Exception as e:  # a failed stream is a result too (e.g. RESOURCE_EXHAUSTED at the stream limit)
        out["error"] = f"{type(e).__name__}: {e}"
    out["records"] = records
    out["server_dropped"] = last_dropped


def stream_worker(task: dict) -> list[dict]:
    """One client process: ``task['streams']`` concurrent streams on threads; returns one dict per stream."""
    outs = [dict() for _ in range(task["streams"])]
    phases = task.get("phases") or [0.0] * task["streams"]  # each stream's offset within the frame period
    threads = [threading.Thread(target=_one_stream, args=(
        task["target"], task["avatar_id"], task["expressions"], task["offset"] + 37 * k, task["frames"],
        task["fps"], task["width"], task["height"], task["encoding"], task["start_at"] + phases[k], outs[k]),
        daemon=True)
        for k in range(task["streams"])]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for o in outs:
        o["records"] = np.asarray(o.get("records", []), dtype=np.int64).reshape(-1, 1 + len(_FIELDS))
    return outs


def _ping(_):
    import flexrt.runtime.client  # noqa: F401  (import once, before the first timed sweep point)

    return os.getpid()


# ------------------------------------------------------------------------------------------------------------
# analysis
# ------------------------------------------------------------------------------------------------------------

def _percentiles(values_ms: np.ndarray) -> dict:
    if values_ms.size == 0:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "p999_ms": None, "mean_ms": None, "max_ms": None}
    return {"p50_ms": float(np.percentile(values_ms, 50)), "p90_ms": float(np.percentile(values_ms, 90)),
            "p99_ms": float(np.percentile(values_ms, 99)), "p999_ms": float(np.percentile(values_ms, 99.9)),
            "mean_ms": float(values_ms.mean()),
            "max_ms": float(values_ms.max())}


def summarize_streams(outs: list[dict], fps: float, warmup_frames: int, measured_frames: int) -> dict:
    """Per-stream results -> one concurrency row (frames before ``warmup_frames`` are not counted)."""
    recs = [o["records"] for o in outs]
    measured = [r[r[:, 0] >= warmup_frames] for r in recs]
    allm = np.concatenate(measured) if measured else np.zeros((0, 1 + len(_FIELDS)), np.int64)
    window_s = measured_frames / fps if fps else None
    per_stream_fps = [len(m) / window_s for m in measured] if window_s else []
    answered = int(sum(len(m) for m in measured))
    sent = measured_frames * len(outs)
    lat = allm[:, 1] / 1e3 if allm.size else np.zeros(0)
    row = {
        "frames_sent": sent, "frames_answered": answered, "dropped": sent - answered,
        "drop_fraction": (sent - answered) / sent if sent else None,
        "server_dropped_total": int(sum(o.get("server_dropped", 0) for o in outs)),
        "achieved_fps_total": answered / window_s if window_s else None,
        "achieved_fps_per_stream_median": float(np.median(per_stream_fps)) if per_stream_fps else None,
        "achieved_fps_per_stream_min": float(min(per_stream_fps)) if per_stream_fps else None,
        "latency": _percentiles(lat),
        "server_stage_median_ms": {f[:-3]: (float(np.median(allm[:, 1 + j])) / 1e3 if allm.size else None)
                                   for j, f in enumerate(_FIELDS[1:-1], start=1)},
        "batch_size_mean": float(allm[:, -1].mean()) if allm.size else None,
        "stream_errors": [o["error"] for o in outs if "error" in o][:5],
        "failed_streams": sum(1 for o in outs if "error" in o),
    }
    if allm.size:
        row["transport_median_ms"] = float(np.median((allm[:, 1] - allm[:, 6]) / 1e3))
    keeps_up = (row["achieved_fps_per_stream_min"] or 0) >= MIN_FPS_FRACTION * fps if fps else None
    row["keeps_up"] = bool(keeps_up and row["failed_streams"] == 0 and
                           (row["drop_fraction"] or 0) <= MAX_DROP_FRACTION)
    p99 = row["latency"]["p99_ms"]
    row["meets_target"] = bool(row["keeps_up"] and p99 is not None and p99 <= TARGET_P99_MS)
    return row


# ------------------------------------------------------------------------------------------------------------
# the benchmark (server side)
# ------------------------------------------------------------------------------------------------------------

def resolve_backend(ctx, requested: str, best: dict | None = None) -> str:
    """'best' (the e2e phase's fastest decoder), 'auto' (what `flexavatar serve` picks) or a decoder name."""
    from .bench_decoder import DECODER_BACKENDS, Unavailable

    if requested == "best" and best:
        return best["decoder"]
    if requested in ("best", "auto"):
        # what `flexavatar serve` picks (--fp8 auto, --upsampler auto): FP8 GEMMs with fused epilogues and FP8
        # upsampler convolutions where the GPU has FP8 tensor cores and Triton, FP8 GEMMs without Triton, else bf16
        order = (("tensorrt-fp16", "torch-compiled-fp8-up8", "torch-compiled-fp8", "torch-compiled-bf16")
                 if ctx.device.type == "cuda" else ("ort-fp32", "torch-eager-fp32"))
        for name in order:
            try:
                ctx.make_engine(name)
                return name
            except Unavailable:
                continue
        return order[-1]
    if requested not in DECODER_BACKENDS:
        raise ValueError(f"unknown gRPC backend {requested!r}: 'best', 'auto' or one of {list(DECODER_BACKENDS)}")
    return requested


def run(ctx, backend: str = "best", best: dict | None = None, resolution: int = 512, encoding: str = "jpeg",
        round_trip_encodings=("raw", "jpeg", "png"), round_trip_frames: int = 100, streams=DEFAULT_STREAMS,
        fps: float = 30.0, duration: float = 5.0, warmup_s: float = 1.0, client_procs: int | None = None,
        encode_workers: int | None = None, max_batch: int = 64, max_batch_wait_ms: float = 1.0,
        rasterizer: str = "auto", budget=None, on_row=None, sink: dict | None = None, sweep_encodings=None,
        creation_streams: int | None = None, fitting_streams: int | None = None,
        fit_resolution: int = FIT_RESOLUTION, stream_phases: str = "random") -> dict:
    """-> {"server": {...}, "round_trip": [rows], "concurrency": [rows]} (filled into ``sink`` when given, so a
    caller saving it after every row keeps partial results).

    ``sweep_encodings``: the sweep runs once per encoding (default: ``encoding``). ``creation_streams``: one more
    point with this many streams while another client creates avatars from a photo back to back (their GPU work
    runs on a low-priority stream; the row records how many were created). ``fitting_streams``: one more point
    with this many streams while another client runs FitAvatar fits back to back (4 observations at
    ``fit_resolution``², 200 steps, on the lowest-priority CUDA stream; the row's "avatar_fitting" records the fits
    and their seconds); it needs a backend with a PyTorch model (torch-*), else the row says so.
    ``stream_phases``: "random" (each stream's first frame at a seeded uniform offset within one frame period, as
    independent clients send) or "aligned" (all at once: a burst of S frames every period, the worst case)."""
    if stream_phases not in ("random", "aligned"):
        raise ValueError(f"stream_phases must be 'random' or 'aligned', got {stream_phases!r}")
    sweep_encodings = tuple(sweep_encodings or (encoding,))
    import multiprocessing as mp

    from flexrt.runtime.frames import resolve_rasterizer
    from flexrt.runtime.client import FlexAvatarClient
    from flexrt.runtime.limits import ServerConfig
    from flexrt.runtime.server import start_server

    from .bench_decoder import Unavailable, release_memory
    from .timing import Budget

    budget = budget or Budget(None)
    result = sink if sink is not None else {}
    result.update(round_trip=[], concurrency=[])
    name = resolve_backend(ctx, backend, best)
    try:
        engine = ctx.make_engine(name)
    except Unavailable as e:
        result["server"] = {"status": "unavailable", "backend": name, "reason": str(e)}
        return result
    limit = ctx.max_batch(name)
    max_batch = min(max_batch, limit) if limit else max_batch
    raster = resolve_rasterizer(rasterizer, engine.device)  # the server warms itself up before SERVING
    streams = sorted(set(int(s) for s in streams))
    cfg_fields = dict(host="127.0.0.1", port=0, store_dir=None, max_streams=max(streams) + 8,
                      max_width=max(1024, resolution), max_height=max(1024, resolution), max_batch_size=max_batch,
                      max_batch_wait_ms=max_batch_wait_ms, rasterizer=raster, shutdown_grace_s=1.0,
                      warmup_sizes=((resolution, resolution),))
    if encode_workers:
        cfg_fields["encode_workers"] = int(encode_workers)
    config = ServerConfig(**cfg_fields)
    procs = max(1, int(client_procs or max(1, min(8, (os.cpu_count() or 2) // 2))))
    expressions = ctx.expression_pool()
    code = ctx.avatar_codes(1)[0].cpu().numpy()
    photo_png = _photo_png() if (creation_streams or fitting_streams) else None
    result["server"] = {"status": "ok", "backend": name, "engine": engine.info.describe(), "rasterizer": raster,
                        "resolution": resolution, "encoding": encoding, "fps": fps, "duration_s": duration,
                        "warmup_s": warmup_s, "client_procs": procs, "stream_phases": stream_phases,
                        "config": config.public_dict(),
                        "in_flight": "unbounded (server keeps the newest frame per stream, drops stale ones)"}

    with start_server(engine, config) as server, FlexAvatarClient(server.address) as client:
        avatar_id = client.create_avatar(npy=code, name="bench").avatar_id
        # ---- round trip: one stream, one frame in flight, as fast as the server answers ----
        for enc in round_trip_encodings:
            if budget.exhausted():
                result["round_trip"].append({"encoding": enc, "resolution": resolution, "status": "skipped",
                                             "reason": "time budget used up"})
                continue
            n_warm = 10
            frames = (expressions[j % len(expressions)] for j in range(n_warm + round_trip_frames))
            recs = [(r.sequence, *(getattr(r, f) for f in _FIELDS))
                    for r in client.animate(avatar_id, frames, resolution, resolution, encoding=enc, fps=None,
                                            max_in_flight=1, decode=False)]
            a = np.asarray(recs, dtype=np.float64)
            a = a[a[:, 0] >= n_warm]
            row = {"encoding": enc, "resolution": resolution, "status": "ok", "n": int(len(a)),
                   "latency": _percentiles(a[:, 1] / 1e3),
                   "server_stage_median_ms": {f[:-3]: float(np.median(a[:, 1 + j])) / 1e3
                                              for j, f in enumerate(_FIELDS[1:-1], start=1)},
                   "transport_median_ms": float(np.median((a[:, 1] - a[:, 6]) / 1e3))}
            result["round_trip"].append(row)
            if on_row is not None:
                on_row(row)
            log.info("grpc round trip %-4s %d²: p50 %.2f ms, p99 %.2f ms (server %.2f, transport %.2f)", enc,
                     resolution, row["latency"]["p50_ms"], row["latency"]["p99_ms"],
                     row["server_stage_median_ms"]["server"], row["transport_median_ms"])

        # ---- concurrency sweep ----
        warm_frames = int(round(warmup_s * fps))
        measured_frames = max(1, int(round(duration * fps)))
        ctx_mp = mp.get_context("spawn")
        with ctx_mp.Pool(procs) as pool:
            pool.map(_ping, range(procs), chunksize=1)
            points = [(s, sweep_encodings[0], False) for s in streams]
            if creation_streams:  # right after the main sweep: it matters more than the other encodings' points
                points.append((int(creation_streams), sweep_encodings[0], "creation"))
            if fitting_streams:
                points.append((int(fitting_streams), sweep_encodings[0], "fitting"))
            points += [(s, enc, None) for enc in sweep_encodings[1:] for s in streams]
            for s, enc, background in points:
                point_s = (warm_frames + measured_frames) / fps + 2.0
                if budget.remaining() < point_s:
                    row = {"streams": s, "encoding": enc, "status": "skipped",
                           "reason": f"time budget: {budget.remaining():.0f} s left, a point needs ~{point_s:.0f} s"}
                    result["concurrency"].append(row)
                    continue
                fitter = None
                if background == "fitting":
                    fitter = _Fitter(server.address, photo_png, avatar_id, fit_resolution, engine)
                    if fitter.unavailable:
                        row = {"streams": s, "encoding": enc, "status": "unavailable",
                               "avatar_fitting": {"reason": fitter.unavailable}}
                        result["concurrency"].append(row)
                        log.info("grpc %d streams + avatar fitting: %s", s, fitter.unavailable)
                        continue
                    fitter.start()  # after one short warm-up fit (gsplat's first call, allocator), not counted
                n_tasks = min(s, procs)
                per = [s // n_tasks + (1 if i < s % n_tasks else 0) for i in range(n_tasks)]
                start_at = time.time() + 0.5
                # phases: stream j of the point starts at start_at + phase[j] (seeded per point: repeatable)
                phase = (np.random.default_rng(s).uniform(0.0, 1.0 / fps, s) if stream_phases == "random"
                         else np.zeros(s)).tolist()
                first = np.cumsum([0] + per[:-1])
                tasks = [{"target": server.address, "avatar_id": avatar_id, "expressions": expressions,
                          "offset": 1000 * i, "frames": warm_frames + measured_frames, "fps": fps,
                          "width": resolution, "height": resolution, "encoding": enc, "start_at": start_at,
                          "phases": phase[first[i]:first[i] + n], "streams": n} for i, n in enumerate(per)]
                before = server.stats()["batch_sizes"]
                creator = _Creator(server.address, photo_png) if background == "creation" else None
                outs = [o for chunk in pool.map(stream_worker, tasks, chunksize=1) for o in chunk]
                created = creator.stop() if creator else None
                fitted = fitter.stop() if fitter else None
                after = server.stats()["batch_sizes"]
                row = {"streams": s, "encoding": enc, "status": "ok", "fps_target": fps,
                       **summarize_streams(outs, fps, warm_frames, measured_frames),
                       "batch_histogram": {int(b): int(after.get(b, 0)) - int(before.get(b, 0)) for b in after
                                           if int(after.get(b, 0)) - int(before.get(b, 0)) > 0}}
                if created is not None:
                    row["avatar_creation"] = created
                if fitted is not None:
                    row["avatar_fitting"] = fitted
                result["concurrency"].append(row)
                if on_row is not None:
                    on_row(row)
                lat = row["latency"]
                log.info("grpc %2d streams %s @ %g fps%s: %.1f fps/stream (min %.1f), dropped %d, p50 %s ms, "
                         "p99 %s ms", s, enc, fps, f" + avatar {background}" if background else "",
                         row["achieved_fps_per_stream_median"] or 0, row["achieved_fps_per_stream_min"] or 0,
                         row["dropped"], _fmt(lat["p50_ms"]), _fmt(lat["p99_ms"]))
    del engine
    release_memory(ctx.device)
    return result


class _Creator:
    """A client thread that creates avatars from one photo back to back until stopped."""

    def __init__(self, target: str, png: bytes):
        self.created, self.errors, self.latencies = 0, [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(target, png), daemon=True)
        self._thread.start()

    def _loop(self, target: str, png: bytes) -> None:
        from flexrt.runtime.client import FlexAvatarClient

        with FlexAvatarClient(target) as client:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:
                    avatar = client.create_avatar(image=png, name="bench-creation")
                    client.delete_avatar(avatar.avatar_id)
                    self.created += 1
                    self.latencies.append((time.perf_counter() - t0) * 1e3)
                except Exception as e:  # reported in the row
                    self.errors.append(f"{type(e).__name__}: {e}"[:200])
                    time.sleep(0.1)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join(timeout=30)
        lat = np.asarray(self.latencies) if self.latencies else np.zeros(0)
        return {"created": self.created, "create_ms_median": float(np.median(lat)) if lat.size else None,
                "errors": self.errors[:3]}


class _Fitter:
    """A client thread that runs FitAvatar fits back to back until stopped: the example photo as 4 observations
    (default camera, neutral expression), starting from the bench avatar, FIT_STEPS steps at ``resolution``²; each
    fitted avatar is deleted again. ``stop()`` cancels the fit in progress (not counted)."""

    def __init__(self, target: str, png: bytes, avatar_id: str, resolution: int, engine):
        from flexrt.runtime.fit_rpc import fitting_model
        from flexrt.runtime.sequences import neutral_expression

        self.unavailable = None if fitting_model(engine) is not None else (
            f"FitAvatar needs a backend with a PyTorch model (torch-*); this point's engine is "
            f"{engine.info.backend}: pass --grpc-backend torch-compiled-bf16")
        self.target, self.resolution = target, resolution
        self.fits, self.errors, self.seconds, self.fit_seconds, self.steps_done = 0, [], [], [], 0
        self.kwargs = dict(images=[png] * FIT_OBSERVATIONS, expression_codes=np.stack([neutral_expression()] *
                           FIT_OBSERVATIONS), init_avatar_id=avatar_id, resolution=resolution, steps=FIT_STEPS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.warmup_s = None

    def start(self) -> None:
        from flexrt.runtime.client import FlexAvatarClient

        t0 = time.perf_counter()
        with FlexAvatarClient(self.target, timeout=600.0) as client:  # warm-up: gsplat's first call, allocator
            avatar, _ = client.fit_avatar(**dict(self.kwargs, steps=2), timeout=600.0)
            client.delete_avatar(avatar.avatar_id)
        self.warmup_s = time.perf_counter() - t0
        self._t0 = time.perf_counter()
        self._thread.start()

    def _on_progress(self, _progress) -> bool:
        self.steps_done += 1
        return not self._stop.is_set()  # False cancels the fit in progress

    def _loop(self) -> None:
        from flexrt.runtime.client import FitCancelled, FlexAvatarClient

        with FlexAvatarClient(self.target, timeout=600.0) as client:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:
                    avatar, result = client.fit_avatar(**self.kwargs, on_progress=self._on_progress, timeout=600.0)
                    client.delete_avatar(avatar.avatar_id)
                    self.fits += 1
                    self.seconds.append(time.perf_counter() - t0)
                    self.fit_seconds.append(result.fit_seconds)
                except FitCancelled:
                    return
                except Exception as e:  # reported in the row
                    self.errors.append(f"{type(e).__name__}: {e}"[:200])
                    time.sleep(0.1)

    def stop(self) -> dict:
        point_s = time.perf_counter() - self._t0
        self._stop.set()
        self._thread.join(timeout=60)
        return {"fits": self.fits, "point_seconds": round(point_s, 3),
                "steps_per_s": round(self.steps_done / point_s, 3),  # fit steps (all fits) while the streams ran
                "seconds_each": [round(x, 3) for x in self.seconds],
                "fit_seconds_each": [round(x, 3) for x in self.fit_seconds],
                "steps_during_point": self.steps_done, "warmup_fit_s": self.warmup_s, "errors": self.errors[:3],
                "request": f"{FIT_OBSERVATIONS} observations (the example photo, default camera, neutral "
                           f"expression) at {self.resolution}x{self.resolution}, {FIT_STEPS} steps, from the bench "
                           "avatar"}


def _photo_png() -> bytes:
    import io

    from PIL import Image

    from flexrt.runtime.cli import find_shared_dir, synthetic_photo

    shared = find_shared_dir()
    photo = shared / "reference/assets/images/marble_sculpture.png" if shared else None
    image = Image.open(photo).convert("RGB") if photo and photo.is_file() else Image.fromarray(synthetic_photo(512))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}"


def max_streams_meeting_target(rows: list[dict]) -> int | None:
    """The largest stream count whose point met the target (and every smaller measured point did too)."""
    best = None
    for row in sorted((r for r in rows if r.get("status") == "ok"), key=lambda r: r["streams"]):
        if not row["meets_target"]:
            break
        best = row["streams"]
    return best


# ------------------------------------------------------------------------------------------------------------
# the sweep against servers that already run (replicas, a balancer): --targets
# ------------------------------------------------------------------------------------------------------------

def sweep_targets(targets: list[str], streams=(16, 32, 64), fps: float = 30.0, duration: float = 5.0,
                  warmup_s: float = 1.0, resolution: int = 512, encoding: str = "jpeg",
                  client_procs: int | None = None, on_row=None) -> dict:
    """The concurrency sweep of ``run`` against running servers: S streams at ``fps`` each, split round robin over
    ``targets`` ("host:port": `flexavatar serve` replicas, or one balancer). One avatar (a random code of the
    servers' shape) is created on every target, so replicas with separate directory stores work too. Same row
    fields as ``run`` (no batch histogram: the servers are in other processes)."""
    import multiprocessing as mp

    from flexrt.runtime.cli import find_shared_dir, load_sequence, synthetic_sequence
    from flexrt.runtime.client import FlexAvatarClient

    from .bench_decoder import SEQUENCE_NAME

    shared = find_shared_dir()
    path = shared / "reference" / "assets" / "expressions" / f"{SEQUENCE_NAME}.npz" if shared else None
    expressions = (load_sequence(path) if path is not None and path.is_file() else synthetic_sequence(120)).expressions
    avatars, servers = {}, {}
    for target in targets:
        with FlexAvatarClient(target, timeout=60.0) as client:
            client.wait_ready(30.0)
            info = client.server_info()
            code = 0.5 * np.random.default_rng(0).standard_normal((info.num_head_tokens, info.hidden_dim))
            avatars[target] = client.create_avatar(npy=code.astype(np.float32), name="bench").avatar_id
            servers[target] = {"engine": info.engine_description, "rasterizer": info.rasterizer_backend,
                               "max_streams": info.limits.max_streams, "max_batch_size": info.limits.max_batch_size}
    result = {"targets": servers, "fps": fps, "duration_s": duration, "warmup_s": warmup_s, "resolution": resolution,
              "encoding": encoding, "expressions": str(path) if path is not None and path.is_file() else "synthetic",
              "in_flight": "unbounded (server keeps the newest frame per stream, drops stale ones)", "concurrency": []}
    warm_frames, measured_frames = int(round(warmup_s * fps)), max(1, int(round(duration * fps)))
    procs = max(1, int(client_procs or max(1, min(8, (os.cpu_count() or 2) // 2))))
    with mp.get_context("spawn").Pool(procs) as pool:
        pool.map(_ping, range(procs), chunksize=1)
        for s in sorted(set(int(s) for s in streams)):
            # stream k goes to target k % len(targets); each client process takes streams of one target
            per_target = {t: sum(1 for k in range(s) if targets[k % len(targets)] == t) for t in targets}
            tasks, start_at = [], time.time() + 0.5
            for i, (target, n) in enumerate(per_target.items()):
                n_tasks = max(1, min(n, max(1, procs // len(targets))))
                for j in range(n_tasks):
                    count = n // n_tasks + (1 if j < n % n_tasks else 0)
                    if count:
                        tasks.append({"target": target, "avatar_id": avatars[target], "expressions": expressions,
                                      "offset": 1000 * (i * 64 + j), "frames": warm_frames + measured_frames,
                                      "fps": fps, "width": resolution, "height": resolution, "encoding": encoding,
                                      "start_at": start_at, "streams": count})
            outs = [o for chunk in pool.map(stream_worker, tasks, chunksize=1) for o in chunk]
            row = {"streams": s, "encoding": encoding, "status": "ok", "fps_target": fps,
                   "streams_per_target": per_target, **summarize_streams(outs, fps, warm_frames, measured_frames)}
            result["concurrency"].append(row)
            if on_row is not None:
                on_row(row)
    result["max_streams_meeting_target"] = max_streams_meeting_target(result["concurrency"])
    return result


def main(argv=None) -> int:
    import argparse
    import json

    p = argparse.ArgumentParser(
        prog="python -m flexrt.benchmarks.bench_grpc",
        description="Concurrency sweep against running servers (`flexavatar serve` replicas or a balancer); "
                    "the in-process benchmark is `flexavatar bench --phases grpc`.")
    p.add_argument("--targets", required=True,
                   help="comma-separated host:port of the servers; stream k goes to target k mod N")
    p.add_argument("--streams", default="16,32,64", help="comma-separated stream counts (one point each)")
    p.add_argument("--fps", type=float, default=30.0, help="frames per second each stream sends")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds per point before the measurement")
    p.add_argument("--resolution", type=int, default=512, help="frame width = height")
    p.add_argument("--encoding", default="jpeg", choices=("raw", "jpeg", "png"))
    p.add_argument("--client-procs", type=int, default=None, help="client processes (default: cores / 2, <= 8)")
    p.add_argument("--out", help="write the result as JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    def show(row):
        lat = row["latency"]
        log.info("%3d streams over %d targets: %.1f fps/stream (min %.1f), dropped %d, p50 %s ms, p99 %s ms%s",
                 row["streams"], len(targets), row["achieved_fps_per_stream_median"] or 0,
                 row["achieved_fps_per_stream_min"] or 0, row["dropped"], _fmt(lat["p50_ms"]), _fmt(lat["p99_ms"]),
                 "" if row["meets_target"] else "  (misses the bar)")

    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    result = sweep_targets(targets, [int(s) for s in args.streams.split(",")], args.fps, args.duration, args.warmup,
                           args.resolution, args.encoding, args.client_procs, on_row=show)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    log.info("largest stream count meeting the bar (every stream >= %d%% of %g fps, <= %d%% dropped, p99 <= %g ms): %s",
             MIN_FPS_FRACTION * 100, args.fps, MAX_DROP_FRACTION * 100, TARGET_P99_MS,
             result["max_streams_meeting_target"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
