"""Rasterizer latency: flexrt CuPy backend vs gsplat 1.5.3 ``rasterization()``, in one process, same scenes.

Head-like synthetic scenes (flexrt.kernels.scenes), cameras on an arc at 1 m, fx = 1500 * W / 512, white
background, fp32 output. Each timed call is one full frame through the public API (validation, launches,
everything it enqueues), measured with CUDA events around the call and a synchronisation after it
(per-frame latency, not pipelined throughput). Warm-up first; median and p99 over ``iters`` calls.

    python -m flexrt.benchmarks.bench_rasterizer --out bench.json
    python -m flexrt.benchmarks.bench_rasterizer --G 58361 --res 512 --cams 1 --iters 200

``run(config) -> list[dict]`` is the importable entry point (``flexavatar bench`` can call it).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import platform
import statistics
import sys
import time

import torch

DEFAULT_CONFIG = {
    "G": [15000, 58361, 120000],
    "res": [512, 1024],
    "cams": [1, 8],
    "warmup": 20,
    "iters": 100,
    "backends": ["cupy", "cupy-eager", "gsplat"],
    "seed": 0,
    "check": True,  # PSNR / max |alpha| difference of cupy vs gsplat per config
    "profile": True,  # per-stage GPU times of one cupy frame (CUDA events between stages)
}


def _percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    k = (len(s) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _time(fn, warmup: int, iters: int) -> dict:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ev, wall = [], []
    for _ in range(iters):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        t0 = time.perf_counter()
        start.record()
        fn()
        end.record()
        end.synchronize()
        wall.append((time.perf_counter() - t0) * 1e3)
        ev.append(start.elapsed_time(end))
    return {
        "median_ms": statistics.median(ev), "p99_ms": _percentile(ev, 0.99), "mean_ms": statistics.fmean(ev),
        "min_ms": min(ev), "wall_median_ms": statistics.median(wall), "iters": iters, "warmup": warmup,
    }


def environment() -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "date": _dt.date.today().isoformat()}
    if torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    try:
        import cupy

        env["cupy"] = cupy.__version__
    except Exception as exc:
        env["cupy"] = f"unavailable: {exc}"
    try:
        import gsplat

        env["gsplat"] = gsplat.__version__
    except Exception as exc:
        env["gsplat"] = f"unavailable: {type(exc).__name__}"
    return env


def run(config: dict | None = None) -> list[dict]:
    """Time every (G, res, cams, backend) of ``config`` (see DEFAULT_CONFIG) -> one dict per row."""
    cfg = {**DEFAULT_CONFIG, **(config or {})}
    if not torch.cuda.is_available():
        raise RuntimeError("bench_rasterizer needs a CUDA GPU")
    from flexrt.kernels import Workspace, _cupy_backend, capture_graph, rasterize
    from flexrt.kernels.scenes import head_cameras, head_scene

    gsplat_rast = None
    gsplat_err = None
    if "gsplat" in cfg["backends"]:
        try:
            from gsplat import rasterization as gsplat_rast
        except Exception as exc:
            gsplat_err = f"gsplat not importable: {type(exc).__name__}: {exc}"
    dev = torch.device("cuda")
    rows: list[dict] = []
    for G in cfg["G"]:
        scene = head_scene(G, cfg["seed"], device=dev)
        for res in cfg["res"]:
            for cams in cfg["cams"]:
                view, K = head_cameras(cams, res, res, device=dev)
                bg = torch.ones(3, device=dev)
                bgs = bg.expand(cams, 3).contiguous()
                base = {"G": G, "res": res, "cams": cams}
                fns = {}
                for name in ("cupy", "cupy-eager"):
                    if name not in cfg["backends"]:
                        continue
                    if name == "cupy":  # the serving path: the frame captured once in a CUDA graph, replayed
                        ws = Workspace()
                        graph, out = capture_graph(lambda: rasterize(**scene, viewmats=view, Ks=K, width=res,
                                                                     height=res, background=bg, backend="cupy",
                                                                     workspace=ws))
                        fns[name] = lambda graph=graph, out=out, ws=ws: (graph.replay(), out)[1]
                    else:
                        fns[name] = lambda: rasterize(**scene, viewmats=view, Ks=K, width=res, height=res,
                                                      background=bg, backend="cupy")
                if gsplat_rast is not None:
                    def f_gsplat():
                        out = gsplat_rast(
                            scene["means"], scene["quats"], scene["scales"], scene["opacities"], scene["colors"],
                            view, K, res, res, near_plane=0.01, far_plane=1e10, eps2d=0.3, radius_clip=0.0,
                            sh_degree=None, packed=False, tile_size=16, backgrounds=bgs, rasterize_mode="classic",
                        )
                        return out[0], out[1]

                    fns["gsplat"] = f_gsplat
                elif "gsplat" in cfg["backends"]:
                    rows.append({**base, "backend": "gsplat", "error": gsplat_err})
                outs = {}
                for name, fn in fns.items():
                    row = {**base, "backend": name}
                    try:
                        outs[name] = fn()
                        row.update(_time(fn, cfg["warmup"], cfg["iters"]))
                        if name == "cupy" and cfg["profile"]:
                            stats = {"profile": True}
                            flat = [scene[k][None] for k in ("means", "quats", "scales", "opacities", "colors")]
                            _cupy_backend.rasterize_cupy(*flat, view[None], K[None], res, res,
                                                         bg.expand(1, cams, 3).contiguous(), stats=stats)
                            row["n_isect"] = stats["n_isect"]
                            row["bitmap_bytes"] = stats["bitmap_bytes"]
                            row["stage_ms"] = {k: round(v, 4) for k, v in stats["stage_ms"].items()}
                    except Exception as exc:  # keep going: one broken backend must not hide the others
                        row["error"] = f"{type(exc).__name__}: {exc}"
                    rows.append(row)
                if cfg["check"] and "gsplat" in outs:
                    g_rgb, g_alpha = outs["gsplat"]
                    for name, (rgb, alpha) in outs.items():
                        if name == "gsplat":
                            continue
                        mse = torch.mean((rgb.double() - g_rgb.double()) ** 2).item()
                        for r in rows:
                            if r.get("backend") == name and (r["G"], r["res"], r["cams"]) == (G, res, cams):
                                r["psnr_vs_gsplat"] = float("inf") if mse == 0 else 10 * math.log10(1 / mse)
                                r["max_dalpha_vs_gsplat"] = (alpha.float() - g_alpha.float()).abs().max().item()
                del outs
                torch.cuda.empty_cache()
    return rows


def markdown(rows: list[dict]) -> str:
    """Rows -> one Markdown table line per (G, res, cams): every backend's median / p99 and the speed-up."""
    keys = []
    for r in rows:
        k = (r["G"], r["res"], r["cams"])
        if k not in keys:
            keys.append(k)
    names = []
    for r in rows:
        if r["backend"] not in names:
            names.append(r["backend"])
    head = "| G | res | cams | " + " | ".join(f"{n} median / p99 ms" for n in names)
    head += " | speed-up vs gsplat (median) | PSNR vs gsplat dB | isects |"
    lines = [head, "|" + "---|" * (3 + len(names) + 3)]
    for k in keys:
        sel = {r["backend"]: r for r in rows if (r["G"], r["res"], r["cams"]) == k}
        cells = []
        for n in names:
            r = sel.get(n)
            cells.append("-" if r is None or "median_ms" not in r else f"{r['median_ms']:.3f} / {r['p99_ms']:.3f}")
        g = sel.get("gsplat", {}).get("median_ms")
        c = sel.get("cupy", {}).get("median_ms")
        sp = f"{g / c:.2f}x" if g and c else "-"
        ps = sel.get("cupy", {}).get("psnr_vs_gsplat")
        ni = sel.get("cupy", {}).get("n_isect", "-")
        lines.append(f"| {k[0]} | {k[1]}^2 | {k[2]} | " + " | ".join(cells) +
                     f" | {sp} | {'-' if ps is None else f'{ps:.1f}'} | {ni} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flexrt.benchmarks.bench_rasterizer", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--G", type=int, nargs="+", default=DEFAULT_CONFIG["G"], help="Gaussians per scene")
    ap.add_argument("--res", type=int, nargs="+", default=DEFAULT_CONFIG["res"], help="square image sizes")
    ap.add_argument("--cams", type=int, nargs="+", default=DEFAULT_CONFIG["cams"], help="cameras per call")
    ap.add_argument("--warmup", type=int, default=DEFAULT_CONFIG["warmup"])
    ap.add_argument("--iters", type=int, default=DEFAULT_CONFIG["iters"])
    ap.add_argument("--backends", nargs="+", default=DEFAULT_CONFIG["backends"],
                    choices=["cupy", "cupy-eager", "gsplat"],
                    help="cupy: the default path (captured frames replayed from CUDA graphs); cupy-eager: every "
                         "kernel launched from Python on each call")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-check", action="store_true", help="skip the PSNR check against gsplat")
    ap.add_argument("--no-profile", action="store_true", help="skip the per-stage timing of one cupy frame")
    ap.add_argument("--out", type=str, default=None, help="write rows + environment as JSON here")
    a = ap.parse_args(argv)
    cfg = dict(G=a.G, res=a.res, cams=a.cams, warmup=a.warmup, iters=a.iters, backends=a.backends,
               seed=a.seed, check=not a.no_check, profile=not a.no_profile)
    env = environment()
    rows = run(cfg)
    print(f"# rasterizer benchmark ({env.get('device')}, torch {env['torch']}, cupy {env['cupy']}, "
          f"gsplat {env['gsplat']}, {env['date']})")
    print(markdown(rows))
    for r in rows:
        if "error" in r:
            print(f"ERROR {r['backend']} G={r['G']} res={r['res']} cams={r['cams']}: {r['error']}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"environment": env, "config": cfg, "command": " ".join(sys.argv), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
