"""`flexavatar train`: train FlexAvatar with bias sinks on the procedural head corpus.

    python -m flexrt.corpus build --out corpus_cache                 # optional: render the corpus once
    flexavatar train --out runs/demo --corpus-cache corpus_cache --steps 2000
    flexavatar train --out runs/demo --resume --steps 4000           # continue (optimizer, step, RNG restored)
    flexavatar train --out runs/demo --eval-only                     # PSNR/SSIM on held-out identities

The weights in ``<out>/checkpoints/step_*.safetensors`` are official-layout state dicts:
``flexavatar export-engines --config tiny --checkpoint <that file>`` and ``flexavatar serve --model tiny
--checkpoint <that file>`` take them as they are.
"""
from __future__ import annotations

import argparse
import json
import logging

from pathlib import Path

logger = logging.getLogger("flexrt.training")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train the model with bias sinks on the procedural head corpus",
        description="Train FlexAvatar's encoder and decoder together on the procedural head corpus: monocular (2D) "
                    "and multi-view (3D) samples mixed, one bias sink per sample, L1 + SSIM (+ optional DINO/SAM "
                    "perceptual terms), Adam. Writes official-layout checkpoints, train state, log.csv.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="train_out", help="run directory (checkpoints/, log.csv, train_config.json)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint (its config; --steps may extend it)")
    p.add_argument("--eval-only", action="store_true", help="only evaluate the latest checkpoint of --out")
    m = p.add_argument_group("model")
    m.add_argument("--preset", default="tiny", help="model preset ('tiny', 'flex1') or model_config.json")
    m.add_argument("--template", help="head template OBJ / template_samples.npz (default: the project's own head)")
    m.add_argument("--dinov2", help="encoder DINOv2 weights (frozen); default: the preset's seeded random ViT, "
                                    "the same one export-engines/serve build for the tiny preset")
    m.add_argument("--init-checkpoint", help="start from these weights (official layout) instead of random ones")
    d = p.add_argument_group("data")
    d.add_argument("--corpus-cache", help="directory from `python -m flexrt.corpus build`; default: render on the fly")
    d.add_argument("--data", default="mixed", choices=("mixed", "2d", "3d"), help="which splits to train on")
    d.add_argument("--no-sinks", action="store_true", help="give every sample the 3D sink (ablation)")
    d.add_argument("--mix-3d", type=float, default=0.5, help="share of 3D samples in a mixed batch")
    d.add_argument("--corpus-seed", type=int, default=0, help="corpus seed when rendering on the fly")
    d.add_argument("--image-size", type=int, default=64, help="target render size when rendering on the fly")
    o = p.add_argument_group("optimisation")
    o.add_argument("--steps", type=int, help="total steps (default 1000; with --resume: the run's own total)")
    o.add_argument("--batch-size", type=int, default=4)
    o.add_argument("--views-per-sample", type=int, default=1, help="target views rendered per sample")
    o.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate")
    o.add_argument("--lr-warmup", type=int, default=0, help="linear warm-up steps")
    o.add_argument("--lr-schedule", default="constant", choices=("constant", "cosine"),
                   help="after the warm-up: constant, or cosine decay to --lr-min at --steps")
    o.add_argument("--lr-min", type=float, default=0.0, help="final learning rate of the cosine schedule")
    o.add_argument("--clip-grad", type=float, default=1.0, help="max gradient norm (0: off)")
    o.add_argument("--seed", type=int, default=0, help="batch order seed")
    o.add_argument("--dino-loss-weights", help="dinov2_vits14_pretrain.pth: enables the DINO perceptual loss")
    o.add_argument("--sam-module", help="TorchScript SAM feature module: enables the SAM perceptual loss")
    o.add_argument("--perceptual-start", type=int, default=0, help="step from which the perceptual losses apply")
    o.add_argument("--expression-weight", type=float, default=0.0,
                   help="extra weight of the L1 on the pixels the expression moves (the corpus's expression "
                        "masks: mouth, eyes, brows); 0 = plain loss")
    o.add_argument("--feature-weight", type=float, default=0.0,
                   help="extra weight of the L1 on the pixels where eyes, lids, lips and mouth show (the corpus's "
                        "feature masks: build it with --feature-masks); 0 = off")
    o.add_argument("--rest-pairs", action="store_true",
                   help="also train on each target view's at-rest twin (same camera, the face's code at rest): "
                        "pairs that differ only where the expression acts")
    o.add_argument("--difference-weight", type=float, default=0.0,
                   help="with --rest-pairs: weight of the L1 between the rendered and the target change from rest "
                        "to the code (zero outside the expression masks: penalises a head that wobbles with the "
                        "jaw); 0 = off")
    o.add_argument("--freeze-encoder", action="store_true",
                   help="train only the animation path (expression MLP and transformer, bias sinks, upsampler, "
                        "Gaussian heads): a fine-tuning stage that leaves the avatar codes as they are")
    r = p.add_argument_group("run")
    r.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    r.add_argument("--render-backend", default="auto", choices=("auto", "torch", "gsplat"),
                   help="differentiable rasterizer (auto: gsplat on CUDA when installed, else the PyTorch reference)")
    r.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    r.add_argument("--log-every", type=int, default=10)
    r.add_argument("--tensorboard", action="store_true", help="also log scalars to <out>/tensorboard (needs the "
                                                               "tensorboard package)")
    r.add_argument("--ckpt-every", type=int, default=200)
    r.add_argument("--time-budget", type=float, default=0.0,
                   help="seconds of training: after 20 steps the total is cut to what fits (the lr schedule ends "
                        "on time); 0 = no limit")
    r.add_argument("--eval", action="store_true", help="evaluate on held-out identities at the end")
    r.add_argument("--eval-count", type=int, default=16, help="held-out samples to evaluate")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=run)


def _config_from_args(args):
    from flexrt.runtime.cli import resolve_device

    from .trainer import TrainConfig, resume_config

    if args.resume or args.eval_only:
        over = {"device": resolve_device(args.device), "threads": args.threads}
        if args.eval_only:
            over["steps"] = 0
        elif args.steps is not None:
            over["steps"] = args.steps
        return resume_config(args.out, **over)
    return TrainConfig(
        out=args.out, preset=args.preset, template=args.template, dinov2=args.dinov2,
        init_checkpoint=args.init_checkpoint, corpus_cache=args.corpus_cache,
        corpus={"seed": args.corpus_seed, "image_size": args.image_size}, data=args.data, sinks=not args.no_sinks,
        mix_3d=args.mix_3d, batch_size=args.batch_size, views_per_sample=args.views_per_sample,
        steps=1000 if args.steps is None else args.steps,
        lr=args.lr, lr_warmup=args.lr_warmup, lr_schedule=args.lr_schedule, lr_min=args.lr_min,
        clip_grad=args.clip_grad, seed=args.seed,
        device=resolve_device(args.device), render_backend=args.render_backend,
        dino_loss_weights=args.dino_loss_weights, sam_module=args.sam_module,
        perceptual_start=args.perceptual_start, expression_weight=args.expression_weight,
        feature_weight=args.feature_weight,
        rest_pairs=args.rest_pairs, difference_weight=args.difference_weight,
        freeze_encoder=args.freeze_encoder,
        log_every=args.log_every, ckpt_every=args.ckpt_every,
        tensorboard=args.tensorboard, time_budget_s=args.time_budget,
        threads=args.threads)


def heldout_samples(trainer, count: int):
    """Held-out samples: from the cache's heldout split if present, else rendered."""
    from flexrt.corpus.dataset import CachedSplit, HeadCorpus

    cache = trainer.cfg.corpus_cache
    if cache and (Path(cache) / "heldout").is_dir():
        split = CachedSplit(Path(cache) / "heldout")
        return [split[i] for i in range(min(count, len(split)))]
    corpus = trainer.source.corpus or HeadCorpus(trainer.source.corpus_config)
    return [corpus.sample("heldout", i) for i in range(count)]


def run(args) -> int:
    from .evaluate import BACK_COVERED_BAR, FOREHEAD_RATIO_BAR, MOUTH_BAR, evaluate, expression_response
    from .trainer import Trainer

    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = _config_from_args(args)
        trainer = Trainer(cfg, resume=args.resume or args.eval_only)
        if not args.eval_only:
            rows = trainer.run(progress=not args.no_progress)
            if rows:
                last = rows[-1]
                print(f"[train] step {trainer.step}: loss {last['loss']:.4f}, L1 {last['l1']:.4f}, "
                      f"SSIM {last['ssim']:.3f}; weights: {trainer.latest_checkpoint()}")
        if args.eval or args.eval_only:
            result = evaluate(trainer.model, trainer.dino, heldout_samples(trainer, args.eval_count), trainer.size,
                              trainer.device, cfg.render_backend)
            result["expression"] = expression_response(trainer.model, trainer.dino, trainer.source.corpus_config,
                                                       device=trainer.device, backend=cfg.render_backend)
            (Path(cfg.out) / "eval.json").write_text(json.dumps(result, indent=2))
            print(f"[eval] held-out, 3D sink: front PSNR {result['front']['psnr']:.2f} dB SSIM "
                  f"{result['front']['ssim']:.3f}; side/back PSNR {result['side_back']['psnr']:.2f} dB SSIM "
                  f"{result['side_back']['ssim']:.3f} ({result['count']} samples)")
            e = result["expression"]
            print(f"[eval] expression: mouth change for a 0.45 rad jaw {e['mouth_min']:.4f} (bar > "
                  f"{MOUTH_BAR}), forehead / mouth {e['forehead_ratio_max']:.2f} (bar < {FOREHEAD_RATIO_BAR}), "
                  f"back covered {e['back_covered_min']:.2f} (bar > {BACK_COVERED_BAR}): "
                  f"{'passes' if e['passes'] else 'fails'}")
            print(f"[eval] the jaw in sampled expressions (not in the bar): mouth change / the rig's "
                  f"{e['context_ratio_min']:.2f} on the weakest person")
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}")
        return 2
    return 0


__all__ = ["add_parser", "run"]
