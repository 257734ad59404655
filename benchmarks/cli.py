"""`flexavatar bench`: per-stage and end-to-end latency of the runtime, the official-path baseline beside the
runtime's best path, and a gRPC concurrency sweep; JSON + Markdown + PNG plots.

    flexavatar bench --smoke --out bench_smoke                 # CPU smoke: tiny preset, seconds (CI runs it)
    flexavatar bench --out bench_h100                          # the full suite at FLEX-1 size (GPU)
    flexavatar bench --phases decoder,e2e --backends torch-graphs-fp32,ort-fp16 --batch-sizes 1,8
    flexavatar bench --merge run1/bench.json run2/bench.json --out merged

benchmarks/run_device.sh runs the device suite in guarded phases with time budgets.
"""
from __future__ import annotations

import argparse
import logging
import time
import traceback
from pathlib import Path

from .timing import setup_logging as _setup_logging

PHASES = ("export", "decoder", "render", "rasterizer", "encode", "e2e", "grpc", "psnr")
DEFAULT_PHASES = ("decoder", "render", "rasterizer", "encode", "e2e", "grpc")
# share of the --budget each phase gets (renormalised over the phases still to run)
PHASE_WEIGHTS = {"export": 0.15, "decoder": 0.25, "render": 0.1, "rasterizer": 0.06, "encode": 0.04, "e2e": 0.18,
                 "grpc": 0.2, "psnr": 0.08}

FULL = dict(preset="flex1", batch_sizes="1,2,4,8,16,32", resolutions="256,512,1024", encodings="raw,jpeg,png",
            streams="1,8,16,32,48,64,80,96", duration=5.0, stream_warmup=1.0, warmup=20, iters=100, max_seconds=20.0,
            stream_resolution=512, round_trip_frames=100, rasterizers="cupy,gsplat,cpu", psnr_frames=None,
            psnr_resolution=512)
SMOKE = dict(preset="tiny", batch_sizes="1,2", resolutions="32", encodings="raw,jpeg,png", streams="1,2",
             duration=0.5, stream_warmup=0.2, warmup=1, iters=3, max_seconds=0.5, stream_resolution=32,
             round_trip_frames=3, rasterizers="cupy,gsplat,cpu", psnr_frames=2, psnr_resolution=32)


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _names(text: str, allowed, what: str) -> list[str]:
    values = [v.strip() for v in str(text).split(",") if v.strip()]
    bad = [v for v in values if v not in allowed]
    if bad:
        raise SystemExit(f"error: unknown {what} {bad}; expected some of: {', '.join(allowed)}")
    return values


def add_parser(subparsers) -> None:
    from .bench_decoder import DECODER_BACKENDS, DEFAULT_BACKENDS

    p = subparsers.add_parser(
        "bench", help="latency benchmarks (per stage and end to end)",
        description=(
            "Benchmark the runtime: decoder backends x batch sizes, rasterizers (CuPy, gsplat, CPU) x resolutions, "
            "frame encoding (raw/JPEG/PNG), expression -> frame end to end (the official path = eager fp32 decoder "
            "+ gsplat, beside the runtime's best path, ratios from the same run), gRPC round trip and a "
            "concurrency sweep (streams at a fixed fps: achieved fps, drops, p50/p99). GPU stages are timed with "
            "CUDA events after >= 20 warm-up calls, CPU ones with perf_counter; inputs rotate every iteration. "
            "Writes OUT/bench.json, OUT/bench.md and OUT/bench_*.png (matplotlib). A backend that cannot run is "
            "listed as 'unavailable: <reason>', never dropped. Defaults are for the full run; --smoke switches to "
            "the tiny preset and tiny sizes (seconds on a CPU)."),
        epilog=("backends: " + "; ".join(f"{k} ({v.note or v.kind})" for k, v in DECODER_BACKENDS.items())
                + ". Phases: export (engine export, when an ONNX/TensorRT backend needs it), decoder, render "
                  "(rasterizers on decoded Gaussians), rasterizer (benchmarks/bench_rasterizer.py: CuPy vs gsplat on "
                  "synthetic scenes, GPU only), encode, e2e, grpc, psnr (fp16 vs fp32 render PSNR)."),
    )
    g = p.add_argument_group("what to run")
    g.add_argument("--smoke", action="store_true",
                   help="CPU smoke mode: tiny preset, 32x32, batch 1-2, streams 1-2 for 0.5 s, 3 iterations; checks "
                        "that every part of the tool works in seconds (numbers are meaningless)")
    g.add_argument("--phases", default=",".join(DEFAULT_PHASES),
                   help=f"comma-separated phases to run, of {', '.join(PHASES)} (default: %(default)s; 'psnr' is "
                        "also python -m flexrt.benchmarks.fp16_render_psnr)")
    g.add_argument("--backends", default=",".join(DEFAULT_BACKENDS),
                   help="decoder backends, comma-separated (default: all but the opt-in torch-compile-fp32)")
    g.add_argument("--rasterizers", default=None, help=f"rasterizers to time (default: {FULL['rasterizers']})")
    g.add_argument("--batch-sizes", default=None,
                   help=f"batch sizes (decoder, render, e2e) (default: {FULL['batch_sizes']}; smoke {SMOKE['batch_sizes']})")
    g.add_argument("--resolutions", default=None,
                   help=f"square render sizes (default: {FULL['resolutions']}; smoke {SMOKE['resolutions']})")
    g.add_argument("--encodings", default=None, help=f"frame encodings to time (default: {FULL['encodings']})")

    g = p.add_argument_group("model and engines")
    g.add_argument("--preset", default=None, choices=("flex1", "tiny"),
                   help="model size (default: flex1; smoke: tiny)")
    g.add_argument("--engines", help="engine directory from `flexavatar export-engines` (exported there if it holds "
                                     "no manifest yet; default: OUT/engines-PRESET, exported when an ONNX/TensorRT "
                                     "backend or the psnr phase needs it)")
    g.add_argument("--checkpoint", help="FLEX-1 weights for the export (default: seeded random weights)")
    g.add_argument("--dinov2", help="DINOv2 weights for the export (default: random)")
    g.add_argument("--template", help="template for the export (default for flex1: the official gghead_template.obj "
                                      "from $FLEXRT_SHARED/reference/assets, else the project's default head)")
    g.add_argument("--export-tensorrt", action="store_true",
                   help="when exporting, also build TensorRT FP16 engines (max batch 32; needs tensorrt)")
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto: cuda when torch sees a GPU (default: %(default)s)")

    g = p.add_argument_group("timing")
    g.add_argument("--warmup", type=int, default=None, help="untimed calls per measurement (default: 20; smoke 1)")
    g.add_argument("--iters", type=int, default=None, help="timed calls per measurement (default: 100; smoke 3)")
    g.add_argument("--max-seconds", type=float, default=None,
                   help="cap on one measurement's seconds; fewer iterations are timed when it is reached and the "
                        "row says so (default: 20; smoke 0.5)")
    g.add_argument("--budget", type=float, default=None,
                   help="total seconds for this invocation, shared out over the phases (default: none)")

    g = p.add_argument_group("gRPC")
    g.add_argument("--streams", default=None,
                   help=f"concurrent stream counts of the sweep (default: {FULL['streams']}; smoke {SMOKE['streams']})")
    g.add_argument("--fps", type=float, default=30.0, help="frames per second each stream sends (default: 30)")
    g.add_argument("--duration", type=float, default=None,
                   help="measured seconds per sweep point, after the warm-up (default: 5; smoke 0.5)")
    g.add_argument("--stream-warmup", type=float, default=None,
                   help="seconds at the start of each sweep point that are not counted (default: 1; smoke 0.2)")
    g.add_argument("--stream-resolution", type=int, default=None, help="frame size of the gRPC runs (default: 512; smoke 32)")
    g.add_argument("--stream-encoding", default="jpeg",
                   help="frame encoding(s) of the concurrency sweep, comma-separated: the sweep runs once per "
                        "encoding (raw, jpeg, png; default: %(default)s)")
    g.add_argument("--creation-streams", type=int, default=None,
                   help="one more sweep point with this many streams while avatars are created back to back "
                        "(live streams vs avatar creation); default: none")
    g.add_argument("--fitting-streams", type=int, default=None,
                   help="one more sweep point with this many streams while FitAvatar fits run back to back (4 "
                        "observations at --fit-resolution², 200 steps; live streams vs avatar fitting); needs a "
                        "torch-* --grpc-backend; default: none")
    g.add_argument("--fit-resolution", type=int, default=512,
                   help="side of the fitting point's observations (default: %(default)s, the official fit's)")
    g.add_argument("--grpc-backend", default="best",
                   help="decoder backend of the server: 'best' (the e2e phase's fastest, else as 'auto'), 'auto' "
                        "(TensorRT, else CUDA graphs; ONNX Runtime on the CPU) or a backend name (default: best)")
    g.add_argument("--grpc-max-batch", type=int, default=64, help="server max_batch_size (default: %(default)s)")
    g.add_argument("--grpc-batch-wait-ms", type=float, default=1.0,
                   help="server max_batch_wait_ms (default: %(default)s)")
    g.add_argument("--grpc-encode-workers", type=int, default=None,
                   help="server encode_workers (JPEG/PNG threads) (default: the server's default)")
    g.add_argument("--grpc-client-procs", type=int, default=None,
                   help="client processes the streams are spread over (default: min(8, cores/2))")
    g.add_argument("--stream-phases", default="random", choices=("random", "aligned"),
                   help="when each stream's frames are sent within the 1/fps period: 'random' = a seeded uniform "
                        "phase per stream, as independent clients do; 'aligned' = every stream at the same instant "
                        "(a synchronised burst of S frames per period: the worst case; the sweeps before 2026-12-03 "
                        "ran this way) (default: %(default)s)")

    g = p.add_argument_group("output")
    g.add_argument("--out", default="bench_out", help="output folder (default: %(default)s)")
    g.add_argument("--append", action="store_true",
                   help="add to OUT/bench.json instead of starting a new one (rows with the same key are replaced)")
    g.add_argument("--merge", nargs="+", metavar="JSON",
                   help="merge these bench.json files (later rows win) into OUT, write the report, run nothing")
    g.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    g.add_argument("--quiet", action="store_true", help="only the summary on stdout")
    p.set_defaults(func=run)


def _settings(args) -> dict:
    base = SMOKE if args.smoke else FULL
    s = dict(base)
    for k in base:
        v = getattr(args, k, None)
        if v is not None:
            s[k] = v
    s["batch_sizes"] = _ints(s["batch_sizes"])
    s["resolutions"] = _ints(s["resolutions"])
    s["streams"] = _ints(s["streams"])
    return s


def run(args) -> int:
    from . import report

    _setup_logging(args.quiet)
    out = Path(args.out)
    if args.merge:
        docs = [report.load_json(p) for p in args.merge]
        data = report.write_report(report.merge(docs, list(args.merge)), out, make_plots=not args.no_plots)
        print("\n".join(report.summary_lines(data)))
        print(f"wrote {out / report.JSON_NAME}, {out / report.MD_NAME}")
        return 0

    from .bench_decoder import DECODER_BACKENDS
    from .bench_e2e import ENCODINGS, RASTERIZERS

    s = _settings(args)
    phases = _names(args.phases, PHASES, "phase")
    backends = _names(args.backends, DECODER_BACKENDS, "backend")
    rasterizers = _names(s["rasterizers"], RASTERIZERS, "rasterizer")
    encodings = _names(s["encodings"], ENCODINGS, "encoding")
    config = dict(s)
    config.update(phases=phases, backends=backends, rasterizers=rasterizers, encodings=encodings, fps=args.fps,
                  device=args.device, engines=args.engines, budget=args.budget, smoke=args.smoke,
                  stream_encoding=args.stream_encoding, grpc_backend=args.grpc_backend,
                  grpc_max_batch=args.grpc_max_batch, grpc_batch_wait_ms=args.grpc_batch_wait_ms,
                  grpc_encode_workers=args.grpc_encode_workers, grpc_client_procs=args.grpc_client_procs,
                  stream_phases=args.stream_phases)
    mode = "smoke" if args.smoke else "full"
    json_path = out / report.JSON_NAME
    data = report.load_json(json_path) if args.append and json_path.is_file() else report.new_results(mode, config)
    if args.append:
        data.setdefault("invocations", []).append({"config": config, "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
        if data.get("mode") != mode:
            data["mode"] = "mixed"
    rec = report.Recorder(out, data)
    t_total = time.perf_counter()
    code = _run_phases(args, s, phases, backends, rasterizers, encodings, rec)
    data = report.write_report(rec.data, out, make_plots=not args.no_plots)
    print("\n".join(report.summary_lines(data)))
    print(f"wrote {out / report.JSON_NAME}, {out / report.MD_NAME}"
          + "".join(f", {out / f}" for f in data["plots"]["files"])
          + (f" ({data['plots']['status']})" if data["plots"]["status"] != "ok" else "")
          + f" in {time.perf_counter() - t_total:.1f} s")
    return code


def _synthetic_rasterizer(ctx) -> dict:
    """The rasterizer owner's own benchmark (benchmarks/bench_rasterizer.py ``run``): CuPy vs gsplat on synthetic
    head scenes over G, resolution and cameras, with PSNR against gsplat. GPU only."""
    import os

    from .bench_e2e import GSPLAT_UNAVAILABLE_ENV

    source = "benchmarks/bench_rasterizer.py run() (synthetic head scenes, default config)"
    if ctx.device.type != "cuda":
        return {"status": "unavailable", "reason": f"needs a CUDA GPU (this run's device is {ctx.device})",
                "source": source}
    from . import bench_rasterizer

    config = {}
    gsplat_reason = os.environ.get(GSPLAT_UNAVAILABLE_ENV)
    if gsplat_reason:
        config["backends"] = ["cupy"]
    rows = bench_rasterizer.run(config)
    if gsplat_reason:
        rows.append({"backend": "gsplat", "error": f"unavailable: {gsplat_reason}"})
    return {"status": "ok", "source": source, "rows": rows, "markdown": bench_rasterizer.markdown(
        [r for r in rows if "G" in r])}


def _run_phases(args, s, phases, backends, rasterizers, encodings, rec) -> int:
    import torch

    from . import report
    from .bench_decoder import BenchContext, Unavailable
    from .timing import Budget

    log = logging.getLogger("flexrt.bench")
    try:
        ctx = BenchContext(preset=s["preset"], device=args.device, engine_dir=args.engines, work_dir=args.out,
                           checkpoint=args.checkpoint, dinov2=args.dinov2, template=args.template,
                           export_tensorrt=args.export_tensorrt)
    except RuntimeError as e:
        raise SystemExit(f"error: {e}") from None
    data = rec.data
    data["environment"] = report.environment(ctx.device)
    # the engine directory first when anything needs it, so that every backend uses the same weights
    if ("psnr" in phases or ctx.needs_engines(backends) or args.engines) and "export" not in phases:
        if args.engines and (Path(args.engines) / "manifest.json").is_file():
            try:
                ctx.engines()
            except Unavailable as e:
                log.warning("%s", e)
        else:
            phases = ["export"] + list(phases)
    phases = [p for p in PHASES if p in phases]
    total = Budget(args.budget)
    shared: dict = {}
    failures = 0

    def phase_budget(name: str) -> Budget:
        if args.budget is None:
            return Budget(None, cap=s["max_seconds"])
        left = [p for p in phases[phases.index(name):]]
        weight = PHASE_WEIGHTS[name] / sum(PHASE_WEIGHTS[p] for p in left)
        return Budget(max(1.0, total.remaining() * weight), cap=s["max_seconds"])

    def frames():
        if "frames" not in shared:
            from .bench_e2e import decoded_frames

            shared["frames"] = decoded_frames(ctx)
        return shared["frames"]

    for name in phases:
        t0 = time.perf_counter()
        budget = phase_budget(name)
        log.info("phase %s (budget %s)", name, "none" if budget.seconds is None else f"{budget.seconds:.0f} s")
        status, error = "ok", None
        try:
            if name == "export":
                try:
                    ctx.engines()
                except Unavailable as e:
                    status, error = "error", str(e)
            elif name == "decoder":
                from .bench_decoder import run as run_decoder

                run_decoder(ctx, backends, s["batch_sizes"], s["warmup"], s["iters"], budget,
                            on_row=lambda r: rec.add_row("decoder", r))
            elif name == "render":
                from .bench_e2e import run_render

                run_render(ctx, rasterizers, s["resolutions"], s["batch_sizes"], s["warmup"], s["iters"], budget,
                           on_row=lambda r: rec.add_row("render", r), frames=frames())
            elif name == "rasterizer":
                rec.set("rasterizer_synthetic", _synthetic_rasterizer(ctx))
            elif name == "encode":
                from .bench_e2e import run_encode

                run_encode(ctx, encodings, s["resolutions"], max(1, min(s["warmup"], 5)), s["iters"], budget,
                           on_row=lambda r: rec.add_row("encode", r), frames=frames())
            elif name == "e2e":
                from .bench_e2e import run_all

                _, summary = run_all(ctx, backends, s["resolutions"], s["batch_sizes"], s["warmup"], s["iters"],
                                     budget, on_row=lambda r: rec.add_row("e2e", r))
                rec.set("e2e_summary", summary)
            elif name == "grpc":
                from .bench_grpc import run as run_grpc

                shared.pop("frames", None)
                best = (data.get("e2e_summary") or {}).get("best")
                data["grpc"] = {}
                sweep_encodings = _names(args.stream_encoding, ("raw", "jpeg", "png"), "stream encoding")
                run_grpc(ctx, args.grpc_backend, best, s["stream_resolution"], sweep_encodings[0], encodings,
                         s["round_trip_frames"], s["streams"], args.fps, s["duration"], s["stream_warmup"],
                         args.grpc_client_procs, args.grpc_encode_workers, args.grpc_max_batch,
                         args.grpc_batch_wait_ms, budget=budget, on_row=lambda r: rec.save(), sink=data["grpc"],
                         sweep_encodings=sweep_encodings, creation_streams=args.creation_streams,
                         fitting_streams=args.fitting_streams, fit_resolution=args.fit_resolution,
                         stream_phases=args.stream_phases)
            elif name == "psnr":
                from .fp16_render_psnr import run as run_psnr

                shared.pop("frames", None)
                from .fp16_render_psnr import write as write_psnr

                result = run_psnr(ctx, frames=s["psnr_frames"], resolution=s["psnr_resolution"])
                rec.set("psnr", result)
                write_psnr(result, args.out)
        except KeyboardInterrupt:
            status, error = "interrupted", "KeyboardInterrupt"
            data["phases"][name] = {"status": status, "seconds": round(time.perf_counter() - t0, 1), "error": error}
            rec.save()
            raise
        except Exception as e:  # one phase failing must not lose the others
            status, error = "error", f"{type(e).__name__}: {e}"
            log.error("phase %s failed:\n%s", name, traceback.format_exc())
        if status != "ok":
            failures += 1
        data["phases"][name] = {"status": status, "seconds": round(time.perf_counter() - t0, 1), "error": error}
        data["model"] = dict(ctx.info)
        rec.save()
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
    return 1 if failures else 0
