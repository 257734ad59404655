"""The paper's bias-sink ablation at toy scale, on the procedural corpus.

Four runs with the same model, budget, batch order seed and corpus cache; evaluation on held-out identities with
the 3D sink (the inference setting), PSNR / SSIM on the front view and on the side / back views (completeness):

    only_2d         monocular samples only (frontal cameras, tracked codes that leak the viewpoint)
    only_3d         multi-view samples only (few identities)
    mixed_no_sinks  both, every sample with the same (3D) sink: no way to tell the sources apart
    mixed_sinks     both, each sample with its own sink (2D: 0, 3D: 1): FlexAvatar

Single-source runs and the no-sink run give every sample the 3D sink, so the token used at inference is the one
that was trained. The paper's direction: without sinks about as incomplete as monocular-only; with sinks complete
(side / back close to only_3d) and general (front at least as good as only_2d).

    python -m flexrt.training.ablation --corpus-cache corpus_cache --out runs/ablation --steps 3000 \\
        --batch-size 8 --device cuda

Writes ``<out>/<run>/`` (the training run and its ``result.json``), ``<out>/ablation.json``, ``<out>/ablation.md``
(the table) and ``<out>/ablation.png`` (held-out renders: target, then each run; front, left, back). The runs are
independent: on a GPU with room to spare, start one process per run (``--runs only_2d`` ...) with the same
arguments and a ``--time-budget``, then ``--collect`` builds the table and the picture from the finished runs.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

RUNS = {
    "only_2d": dict(data="2d", sinks=False),
    "only_3d": dict(data="3d", sinks=False),
    "mixed_no_sinks": dict(data="mixed", sinks=False),
    "mixed_sinks": dict(data="mixed", sinks=True),
}


def format_table(results: dict) -> str:
    lines = ["| run | front PSNR (dB) | front SSIM | side/back PSNR (dB) | side/back SSIM | steps | train time (s) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in results.items():
        e = r["eval"]
        lines.append(f"| {name} | {e['front']['psnr']:.2f} | {e['front']['ssim']:.4f} | "
                     f"{e['side_back']['psnr']:.2f} | {e['side_back']['ssim']:.4f} | {r['steps']} | "
                     f"{r['train_s']:.0f} |")
    return "\n".join(lines)


@torch.no_grad()
def render_strip(trainers: dict, samples, size: int, device, views=("front", "left", "back")) -> np.ndarray:
    """uint8 image: per held-out sample a row of blocks (target, then each run), each block the chosen views."""
    from flexrt.corpus.cameras import EVAL_VIEWS
    from flexrt.model.flexavatar import DATASET_ID_3D

    from .trainer import collate, forward_batch

    idx = [list(EVAL_VIEWS).index(v) for v in views]
    rows = []
    for s in samples:
        batch = collate([s], s.target_images.shape[0], np.random.default_rng(0)).to(device)
        batch.dataset_ids[:] = DATASET_ID_3D
        blocks = [s.target_images[idx]]
        for tr in trainers.values():
            tr.model.eval()
            blocks.append(forward_batch(tr.model, tr.dino, batch, size, tr.cfg.render_backend)[0, idx].cpu())
        gap = torch.ones(3, size, 4)
        rows.append(torch.cat([torch.cat([torch.cat(list(b), dim=2), gap], dim=2) for b in blocks], dim=2))
    img = torch.cat(rows, dim=1).clamp(0, 1).permute(1, 2, 0)
    return (img * 255 + 0.5).to(torch.uint8).numpy()


def main(argv: list[str] | None = None) -> int:
    from flexrt.runtime.cli import resolve_device

    from .cli import heldout_samples
    from .evaluate import evaluate
    from .trainer import TrainConfig, Trainer

    p = argparse.ArgumentParser(prog="python -m flexrt.training.ablation", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--corpus-cache", required=True, help="from `python -m flexrt.corpus build` (2d, 3d, heldout)")
    p.add_argument("--out", required=True)
    p.add_argument("--runs", default=",".join(RUNS), help="comma-separated subset of " + ",".join(RUNS))
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--views-per-sample", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--lr-warmup", type=int, default=0)
    p.add_argument("--lr-schedule", default="constant", choices=("constant", "cosine"))
    p.add_argument("--lr-min", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-count", type=int, default=32, help="held-out samples")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--render-backend", default="auto", choices=("auto", "torch", "gsplat"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ckpt-every", type=int, default=1000)
    p.add_argument("--time-budget", type=float, default=0.0,
                   help="seconds of training per run (the total steps are cut after 20 steps to fit; 0 = no limit)")
    p.add_argument("--collect", action="store_true",
                   help="train nothing: build the table and picture from the runs finished in --out")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    names = [n.strip() for n in args.runs.split(",") if n.strip()]
    unknown = set(names) - set(RUNS)
    if unknown:
        print(f"error: unknown runs {sorted(unknown)}; expected a subset of {list(RUNS)}")
        return 2
    device = resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.collect:
        return collect(out, args.eval_count, device)
    held = None
    for name in names:
        cfg = TrainConfig(out=str(out / name), corpus_cache=args.corpus_cache, steps=args.steps,
                          batch_size=args.batch_size, views_per_sample=args.views_per_sample, lr=args.lr,
                          lr_warmup=args.lr_warmup, lr_schedule=args.lr_schedule, lr_min=args.lr_min,
                          seed=args.seed, device=device,
                          render_backend=args.render_backend, threads=args.threads, ckpt_every=args.ckpt_every,
                          time_budget_s=args.time_budget, **RUNS[name])
        tr = Trainer(cfg)
        t0 = time.perf_counter()
        tr.run(progress=not args.no_progress)
        train_s = time.perf_counter() - t0
        held = held or heldout_samples(tr, args.eval_count)
        ev = evaluate(tr.model, tr.dino, held, tr.size, tr.device, cfg.render_backend)
        result = {"eval": ev, "steps": tr.step, "train_s": train_s, "config": RUNS[name], "args": vars(args)}
        (out / name / "result.json").write_text(json.dumps(result, indent=2))
        print(f"[ablation] {name}: front {ev['front']['psnr']:.2f} dB / {ev['front']['ssim']:.4f}, side+back "
              f"{ev['side_back']['psnr']:.2f} dB / {ev['side_back']['ssim']:.4f} ({tr.step} steps, {train_s:.0f} s)")
    return collect(out, args.eval_count, device)


def collect(out: Path, eval_count: int, device) -> int:
    """Table (``ablation.md``, ``ablation.json``) and picture (``ablation.png``) of the runs finished in ``out``
    (each ``<out>/<run>/result.json``), in the order of RUNS."""
    from .cli import heldout_samples
    from .trainer import Trainer, resume_config

    results, trainers = {}, {}
    for name in RUNS:
        path = out / name / "result.json"
        if path.is_file():
            results[name] = json.loads(path.read_text())
            trainers[name] = Trainer(resume_config(out / name, device=device, steps=0), resume=True)
    if not results:
        print(f"error: no finished runs in {out} (expected {out}/<run>/result.json)")
        return 2
    (out / "ablation.json").write_text(json.dumps({"results": results}, indent=2))
    table = format_table(results)
    (out / "ablation.md").write_text(table + "\n")
    print(table)
    from PIL import Image

    first = next(iter(trainers.values()))
    held = heldout_samples(first, min(eval_count, 3))
    Image.fromarray(render_strip(trainers, held, first.size, device)).save(out / "ablation.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
