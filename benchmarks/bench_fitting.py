"""Avatar fitting time (issue 11 target: FLEX-1 size, 4 views at 512², 200 steps without SAM in <= 10 s on an H200),
with the per-step time split.

    python -m flexrt.benchmarks.bench_fitting --out bench_fitting.json                  # FLEX-1, CUDA, defaults
    python -m flexrt.benchmarks.bench_fitting --precision bf16 --out bench_fitting_bf16.json
    python -m flexrt.benchmarks.bench_fitting --preset tiny --device cpu --res 48 --steps 3 --warmup 1   # smoke

Scene: seeded random FLEX-1 weights with the official head template when ``--template`` (or the reference data's
``gghead_template.obj``) is there; targets are renders of one random avatar code at ``--views`` yaws on a frontal
arc (the tracked EMO-1 expressions when the reference data is there, else neutral + noise); the fit starts from
another random code. Random weights change nothing about the time per step (same shapes, same kernels).

Two measurements:
1. ``fit_avatar`` end to end (what a user waits for: initial/final PSNR renders, ``steps`` steps), wall clock with
   the device synchronised before and after, after a short warm-up fit (cuDNN autotuning, gsplat's first call).
2. The step split: ``min(steps, 100)`` steps of the same loop, each stage bracketed by CUDA events (``perf_counter`` plus a
   synchronisation on the CPU): decode forward, render forward, loss forward, loss backward (d loss / d rgb),
   render backward (d rgb / d Gaussians), decode backward (Gaussians -> avatar code and offsets), optimiser step.
   Medians over the steps after ``--warmup`` untimed ones. The backward is split with ``torch.autograd.grad`` at
   the render and Gaussian tensors; it computes the same gradients as one ``loss.backward()``.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

STAGES = ("decode_fwd", "render_fwd", "loss_fwd", "loss_bwd", "render_bwd", "decode_bwd", "optimizer")
TARGET_SECONDS = 10.0


def _shared_dir() -> Path | None:
    try:
        from flexrt.runtime.cli import find_shared_dir
    except Exception:  # pragma: no cover - runtime extras missing
        return None
    return find_shared_dir()


def _scene(preset: str, template: str | None, views: int, res: int, device: str, seed: int = 0):
    from flexrt.fitting import render_views
    from flexrt.model import load_official
    from flexrt.model.camera import default_camera

    shared = _shared_dir()
    if template is None and preset == "flex1" and shared is not None:
        cand = shared / "reference" / "assets" / "gghead_template.obj"
        template = str(cand) if cand.is_file() else None
    model = load_official(preset, None, template).to(device)
    g = torch.Generator().manual_seed(seed)
    code_true, code_init = (torch.randn(model.num_head_tokens, model.hidden_dim, generator=g) * 0.5 for _ in range(2))
    yaws = np.linspace(-30.0, 30.0, views) if views > 1 else np.zeros(1)
    cams = [default_camera(yaw_deg=float(y)) for y in yaws]
    c2w, K = torch.stack([c for c, _ in cams]), torch.stack([k for _, k in cams])
    expr = None
    if shared is not None:
        seq = shared / "reference" / "assets" / "expressions" / "EMO-1-shout+laugh.npz"
        if seq.is_file():
            codes = np.load(seq)["expression_codes"]
            expr = torch.from_numpy(codes[np.linspace(0, len(codes) - 1, views).round().astype(int)]).float()
    if expr is None:
        expr = torch.zeros(views, 135)
        for s in (100, 106, 114, 120, 126):
            expr[:, s: s + 6] = torch.tensor([1.0, 0, 0, 0, 1, 0])
        expr[:, :10] += torch.randn(views, 10, generator=g)
    targets = render_views(model, code_true.to(device), c2w.to(device), K.to(device), expr.to(device), res, res)
    return model, targets, c2w.to(device), K.to(device), expr.to(device), code_init.to(device), template


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Marks:
    """Time marks on the device timeline: CUDA events (no synchronisation between them), or perf_counter."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            self.marks.append(e)
        else:
            self.marks.append(time.perf_counter())

    def intervals_ms(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return [a.elapsed_time(b) for a, b in zip(self.marks[:-1], self.marks[1:])]
        return [(b - a) * 1000.0 for a, b in zip(self.marks[:-1], self.marks[1:])]


def step_split(model, targets, c2w, K, expr, code_init, config, steps: int, warmup: int) -> dict:
    """Per-stage medians (ms) over ``steps`` timed steps of the fitting loop (after ``warmup`` untimed ones)."""
    from flexrt.fitting.fit import FitProblem, check_observations

    device = targets.device
    obs = check_observations(targets, c2w, K, expr, device)
    model.eval().requires_grad_(False)
    problem = FitProblem(model, obs, config, None)
    code = torch.nn.Parameter(code_init[None].clone())
    offsets = [torch.nn.Parameter(torch.zeros(135, device=device)) for _ in range(obs.n)]
    opt = torch.optim.Adam([code, *offsets], lr=config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=warmup + steps, eta_min=config.lr_min)
    rng = np.random.default_rng(config.seed)
    rows = []
    with torch.enable_grad():
        for it in range(warmup + steps):
            i = int(rng.integers(obs.n))
            m = _Marks(device)
            if device.type != "cuda":
                _sync(device)
            m.mark()
            g = problem.decode(code, obs.expression_codes[i: i + 1] + offsets[i][None])
            m.mark()
            rgb = problem.render(g, [i])
            m.mark()
            loss = problem.loss(rgb, [i])
            m.mark()
            (d_rgb,) = torch.autograd.grad(loss, [rgb])
            m.mark()
            tensors = [g.positions, g.scales, g.rotations, g.colors, g.opacities]
            d_g = torch.autograd.grad([rgb], tensors, [d_rgb], allow_unused=True)
            m.mark()
            pairs = [(t, d) for t, d in zip(tensors, d_g) if d is not None]
            torch.autograd.backward([t for t, _ in pairs], [d for _, d in pairs])
            m.mark()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            m.mark()
            if it >= warmup:
                rows.append(m.intervals_ms())
    a = np.asarray(rows)  # [steps, stages]
    med = {s: float(np.median(a[:, k])) for k, s in enumerate(STAGES)}
    total = float(np.median(a.sum(axis=1)))
    return {"median_ms": med, "step_median_ms": total, "steps": steps, "warmup": warmup,
            "share": {s: med[s] / sum(med.values()) for s in STAGES}, "backend": problem.backend}


def run(preset: str = "flex1", device: str = "cuda", views: int = 4, res: int = 512, steps: int = 200,
        warmup: int = 10, rasterizer: str = "auto", precision: str = "fp32", template: str | None = None) -> dict:
    from flexrt.fitting import FitConfig, fit_avatar

    dev = torch.device(device)
    model, targets, c2w, K, expr, code_init, template = _scene(preset, template, views, res, device)
    config = FitConfig(steps=steps, rasterizer=rasterizer, precision=precision)
    # warm-up fit: cuDNN autotuning, gsplat's first call, allocator growth
    fit_avatar(model, targets, c2w, K, expr, init_code=code_init, config=FitConfig(steps=max(1, warmup),
                                                                                      rasterizer=rasterizer,
                                                                                      precision=precision))
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    _sync(dev)
    t0 = time.perf_counter()
    result = fit_avatar(model, targets, c2w, K, expr, init_code=code_init, config=config)
    _sync(dev)
    wall = time.perf_counter() - t0
    split = step_split(model, targets, c2w, K, expr, code_init, config, steps=min(steps, 100), warmup=warmup)
    out = {
        "preset": preset, "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__, "G": model.num_gaussians, "template": template or "default", "views": views,
        "resolution": res, "steps": steps, "precision": precision, "rasterizer": result.rasterizer,
        "terms": result.terms, "fit_avatar_seconds": wall, "fit_loop_seconds": result.seconds,
        # the target is stated for FLEX-1 at 512² on a GPU; other configurations report no verdict
        "target_seconds": TARGET_SECONDS,
        # the target is for 200 steps: a shorter run is not judged (its projection is in "projected_200_steps_s")
        "meets_target": (bool(wall <= TARGET_SECONDS) if (preset == "flex1" and dev.type == "cuda" and steps >= 200)
                         else None),
        "psnr_before_db": result.psnr_before, "psnr_after_db": result.psnr_after,
        "step_split": split, "projected_200_steps_s": split["step_median_ms"] * 200 / 1000.0,
        "peak_memory_gib": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else math.nan,
    }
    return out


def format_report(r: dict) -> str:
    s = r["step_split"]
    lines = [
        f"fitting: {r['preset']} (G = {r['G']}), {r['views']} views at {r['resolution']}², {r['steps']} steps, "
        f"{r['precision']}, rasterizer {r['rasterizer']}, on {r['device']} (torch {r['torch']})",
        f"fit_avatar end to end: {r['fit_avatar_seconds']:.2f} s "
        f"({'no target for this configuration' if r['meets_target'] is None else 'target <= %.0f s: %s' % (r['target_seconds'], 'met' if r['meets_target'] else 'NOT met')}); "
        f"PSNR {r['psnr_before_db']:.2f} -> {r['psnr_after_db']:.2f} dB",
        "", "| stage | median ms / step | share |", "| --- | ---: | ---: |",
    ]
    for k in STAGES:
        lines.append(f"| {k} | {s['median_ms'][k]:.2f} | {100 * s['share'][k]:.0f} % |")
    lines.append(f"| step (median of sums) | {s['step_median_ms']:.2f} | |")
    lines.append(f"\nprojected 200 steps from the split: {r['projected_200_steps_s']:.2f} s; peak memory "
                 f"{r['peak_memory_gib']:.2f} GiB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="flex1", help="model preset (flex1 | tiny)")
    p.add_argument("--template", help="head template (default: reference gghead_template.obj for flex1)")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--res", type=int, default=512)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rasterizer", default="auto", choices=("auto", "torch", "gsplat"))
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--out", help="write the results as JSON here")
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is visible")
    r = run(a.preset, a.device, a.views, a.res, a.steps, a.warmup, a.rasterizer, a.precision, a.template)
    print(format_report(r))
    if a.out:
        Path(a.out).write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
