"""`flexavatar fit`: fit an avatar code to tracked photos or video frames and write it as an .npy.

    flexavatar fit --inputs a_input.npz b_input.npz --out avatar.npy [--steps 200]
    flexavatar fit --inputs clip_tracking.npz --video clip.mp4 --max-frames 16 --out avatar.npy
    flexavatar fit --checkpoint ckpt-900k.pt --template gghead_template.obj --dinov2 dinov2_vitb14_reg4_pretrain.pth \\
                   --dino-loss-weights dinov2_vits14_pretrain.pth --inputs ... --out avatar.npy

Writes ``--out`` (the official avatar-code layout [HT,1,D]: ``flexavatar serve`` imports it like any avatar code)
and, in ``--report`` (default: ``<out>_fit/``), ``loss.png`` (loss per step), ``before_after.png`` (per input
view: target | initial code | fitted code) and ``fit.json`` (PSNRs, losses, loss terms, rasterizer backend).
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np

logger = logging.getLogger("flexrt.fitting.cli")


# ------------------------------------------------------------------------------------------------ pictures
def plot_losses(losses: np.ndarray, path: str | Path, title: str = "fitting loss") -> None:
    """Loss per step as a PNG line chart (PIL only; no plotting package needed)."""
    from PIL import Image, ImageDraw

    w, h, left, right, top, bottom = 720, 400, 70, 20, 40, 40
    img = Image.new("RGB", (w, h), (255, 255, 255))
    d = ImageDraw.Draw(img)
    d.text((left, 12), title, fill=(0, 0, 0))
    x0, x1, y0, y1 = left, w - right, top, h - bottom
    d.rectangle([x0, y0, x1, y1], outline=(0, 0, 0))
    if len(losses) > 0:
        lo, hi = float(np.min(losses)), float(np.max(losses))
        span = hi - lo if hi > lo else 1.0
        n = len(losses)
        pts = [(x0 + (x1 - x0) * (i / max(n - 1, 1)), y1 - (y1 - y0) * ((float(v) - lo) / span))
               for i, v in enumerate(losses)]
        d.line(pts, fill=(200, 40, 40), width=2) if n > 1 else d.ellipse([pts[0][0] - 2, pts[0][1] - 2,
                                                                          pts[0][0] + 2, pts[0][1] + 2], fill=(200, 40, 40))
        d.text((4, y0 - 6), f"{hi:.4g}", fill=(0, 0, 0))
        d.text((4, y1 - 6), f"{lo:.4g}", fill=(0, 0, 0))
        d.text((x0, y1 + 8), "step 1", fill=(0, 0, 0))
        d.text((x1 - 60, y1 + 8), f"step {n}", fill=(0, 0, 0))
    img.save(path)


def before_after_grid(targets: np.ndarray, before: np.ndarray, after: np.ndarray, labels: list[str],
                      psnr_before: np.ndarray, psnr_after: np.ndarray, path: str | Path) -> None:
    """One PNG: a row per input view with target | initial code | fitted code (float [N,3,H,W] in [0,1])."""
    from PIL import Image, ImageDraw

    n, _, h0, w0 = targets.shape
    scale = max(1, -(-160 // w0))  # small fits are shown enlarged (nearest) so the labels fit
    h, w = h0 * scale, w0 * scale
    head = 18
    img = Image.new("RGB", (3 * w, n * (h + head)), (255, 255, 255))
    d = ImageDraw.Draw(img)
    for i in range(n):
        y = i * (h + head)
        d.text((2, y + 3), f"{labels[i]}: target", fill=(0, 0, 0))
        d.text((w + 2, y + 3), f"before {psnr_before[i]:.1f} dB", fill=(0, 0, 0))
        d.text((2 * w + 2, y + 3), f"after {psnr_after[i]:.1f} dB", fill=(0, 0, 0))
        for j, im in enumerate((targets[i], before[i], after[i])):
            tile = (np.clip(im.transpose(1, 2, 0), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
            img.paste(Image.fromarray(tile).resize((w, h), Image.NEAREST), (j * w, y + head))
    img.save(path)


# ------------------------------------------------------------------------------------------------ command
def _load_model_and_encoder(args, device: str):
    import torch

    from flexrt.model import load_avatar_code, load_official
    from flexrt.model.config import load_config_dict
    from flexrt.model.pipeline import build_dino, default_dino_size

    if args.checkpoint is None:
        logger.warning("no --checkpoint: the %s model has seeded RANDOM weights (the fitted code is not a real avatar)",
                       args.config)
    model = load_official(args.config, args.checkpoint, args.template).to(device)
    init_code, dino = None, None
    if args.init:
        init_code = load_avatar_code(args.init)[0]  # [HT, D]
    else:
        _, extras = load_config_dict(args.config)
        size = extras.get("dinov2", default_dino_size(model.cfg.feature_dim))
        if args.dinov2 is None:
            logger.warning("no --dinov2: the encoder's DINOv2 (%s) has RANDOM weights, so the feed-forward initial "
                           "code is not a real one; pass --dinov2 or --init", size)
        dino, _ = build_dino(size, args.dinov2)
        dino = dino.to(device)
    return model, init_code, dino, torch.device(device)


def cmd_fit(args) -> int:
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from flexrt.model import save_avatar_code
    from flexrt.runtime.cli import resolve_device

    from .fit import FitConfig, FitInputError, fit_avatar, render_views
    from .inputs import border_whiteness, load_fit_inputs

    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.manual_seed(args.seed)
    out = Path(args.out)
    report = Path(args.report) if args.report else out.with_name(out.stem + "_fit")
    try:
        device = resolve_device(args.device)
        inputs = load_fit_inputs(args.inputs, video=args.video, max_frames=args.max_frames)
        images = torch.from_numpy(inputs.images)
        if args.resolution:
            if images.shape[-1] != images.shape[-2]:
                raise FitInputError(f"--resolution resizes square crops; the inputs are {images.shape[-1]}x"
                                    f"{images.shape[-2]}")
            images = F.interpolate(images, size=(args.resolution, args.resolution), mode="bilinear",
                                   align_corners=False, antialias=True).clamp(0.0, 1.0)
        h, w = images.shape[-2:]
        print(f"[fit] {inputs.n} view(s) at {w}x{h} from {', '.join(str(p) for p in args.inputs)}"
              f"{' + ' + str(args.video) if args.video else ''}. Cameras and expression codes are tracked inputs "
              "(a FLAME tracker such as Pixel3DMM); this command does not track or matte.")
        white = border_whiteness(inputs.images)
        if white < 0.9:
            print(f"[fit] warning: the image borders average {white:.2f} (white = 1.0): the inputs do not look matted "
                  "onto white as the model expects (the official pipeline mattes with MODNet)")
        model, init_code, dino, dev = _load_model_and_encoder(args, device)
        if args.steps < 1:
            raise FitInputError(f"--steps must be >= 1, got {args.steps}")
        config = FitConfig(steps=args.steps, lr=args.lr, lr_min=args.lr_min, optimize_expression=not args.no_expression,
                           seed=args.seed, dino_weights=args.dino_loss_weights, sam_module=args.sam_module,
                           rasterizer=args.rasterizer, precision=args.precision, preview_every=max(1, args.steps))
        terms = {"L1": "on (0.8)", "SSIM": "on (0.2)",
                 "DINO": "on (1.0)" if args.dino_loss_weights else "off (no --dino-loss-weights; random weights would "
                                                                   "be noise)",
                 "SAM": f"on (1.0, TorchScript module {args.sam_module})" if args.sam_module else
                        "off (no --sam-module)"}
        print("[fit] loss terms: " + "; ".join(f"{k} {v}" for k, v in terms.items()))
        from flexrt.kernels import resolve_differentiable_backend

        print(f"[fit] rasterizer: {resolve_differentiable_backend(dev, args.rasterizer)} (--rasterizer "
              f"{args.rasterizer}, {device}); initial code: {'--init ' + str(args.init) if args.init else 'feed-forward'}")
        with tqdm(total=args.steps, desc="fit", unit="step", disable=args.no_progress, file=sys.stderr) as bar:
            def progress(step, loss, preview):
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")

            result = fit_avatar(model, images, torch.from_numpy(inputs.cam2world), torch.from_numpy(inputs.intrinsics),
                                torch.from_numpy(inputs.expression_codes), init_code=init_code, config=config,
                                dino=dino, progress=progress)
    except (FitInputError, NotImplementedError, FileNotFoundError, ValueError, RuntimeError) as exc:
        raise SystemExit(f"error: {exc}") from None

    out.parent.mkdir(parents=True, exist_ok=True)
    save_avatar_code(result.avatar_code, out)
    report.mkdir(parents=True, exist_ok=True)
    plot_losses(result.losses, report / "loss.png",
                title=f"fitting loss ({result.steps_done} steps, {result.rasterizer} rasterizer)")
    # before/after on the inputs: initial code with the tracked expressions, fitted code with the fitted offsets
    c2w, K = torch.from_numpy(inputs.cam2world), torch.from_numpy(inputs.intrinsics)
    expr = torch.from_numpy(inputs.expression_codes)
    before = render_views(model, result.initial_code, c2w, K, expr, w, h, result.rasterizer).cpu().numpy()
    after = render_views(model, result.avatar_code, c2w, K, expr + result.expression_offsets, w, h,
                         result.rasterizer).cpu().numpy()
    before_after_grid(images.numpy(), before, after, inputs.names, result.psnr_before_per_view,
                      result.psnr_after_per_view, report / "before_after.png")
    summary = {
        "out": str(out), "steps_done": result.steps_done, "cancelled": result.cancelled, "seconds": result.seconds,
        "psnr_before_db": result.psnr_before, "psnr_after_db": result.psnr_after,
        "psnr_before_per_view_db": result.psnr_before_per_view.tolist(),
        "psnr_after_per_view_db": result.psnr_after_per_view.tolist(), "views": inputs.names,
        "rasterizer": result.rasterizer, "terms": result.terms, "init": result.init, "device": device,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(config).items()
                   if k not in ("dino_weights", "sam_module")},
        "dino_weights": str(args.dino_loss_weights) if args.dino_loss_weights else None,
        "sam_module": str(args.sam_module) if args.sam_module else None,
        "losses": result.losses.tolist(),
    }
    (report / "fit.json").write_text(json.dumps(summary, indent=2))
    print(f"[fit] PSNR on the inputs {result.psnr_before:.2f} -> {result.psnr_after:.2f} dB in {result.seconds:.1f} s")
    print(f"[fit] wrote {out} (avatar code [HT,1,D]); {report / 'loss.png'}, {report / 'before_after.png'}, "
          f"{report / 'fit.json'}")
    return 0


def add_parser(subparsers) -> None:
    from flexrt.kernels.differentiable import DIFFERENTIABLE_BACKENDS

    p = subparsers.add_parser(
        "fit", help="fit an avatar code to tracked photos / video frames (decoder frozen)",
        description="Optimise an avatar code against several photos or the frames of a monocular video with the "
                    "decoder frozen (FlexAvatar test-time fitting: 200 steps of Adam, 0.8 L1 + 0.2 (1-SSIM) "
                    "[+ SAM + DINO]). Inputs are TRACKED observations: images on white with head-centric cameras and "
                    "expression codes from a FLAME tracker (Pixel3DMM); see docs/FITTING.md for the file format.")
    p.add_argument("--inputs", nargs="+", required=True,
                   help="one .npz per photo (<name>_input.npz beside <name>.png) or one N-frame .npz")
    p.add_argument("--video", help="an .mp4 whose frames go with the single per-frame --inputs .npz (needs the "
                                   "`video` extra: imageio, imageio-ffmpeg)")
    p.add_argument("--max-frames", type=int, default=None, help="use at most this many frames, evenly spaced")
    p.add_argument("--out", required=True, help="the fitted avatar code (.npy, official layout [HT,1,D])")
    p.add_argument("--report", help="folder for loss.png, before_after.png, fit.json (default: <out>_fit/)")
    p.add_argument("--steps", type=int, default=200, help="optimisation steps (official: 200)")
    p.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (official: 1e-2)")
    p.add_argument("--lr-min", type=float, default=5e-4, help="cosine schedule floor (official: 5e-4)")
    p.add_argument("--no-expression", action="store_true", help="do not fit per-view expression-code offsets")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-step view choice")
    p.add_argument("--config", default="tiny", help="model preset ('tiny', 'flex1') or model_config.json")
    p.add_argument("--checkpoint", help="FLEX-1 weights (.pt/.safetensors); default: seeded random weights")
    p.add_argument("--template", help="head template OBJ or template_samples.npz (FLEX-1: gghead_template.obj)")
    p.add_argument("--init", help="initial avatar code .npy; default: the feed-forward code of the first input")
    p.add_argument("--dinov2", help="encoder DINOv2 weights for the feed-forward initial code "
                                    "(dinov2_vitb14_reg4_pretrain.pth for FLEX-1)")
    p.add_argument("--dino-loss-weights", help="DINOv2-small weights for the DINO loss (dinov2_vits14_pretrain.pth "
                                               "or facebook/dinov2-small model.safetensors); without: the term is off")
    p.add_argument("--sam-module", metavar="PATH",
                   help="TorchScript module (images [B,3,H,W] in [0,1] -> features) for the SAM loss: export "
                        "SAM2.1-hiera-small's image encoder (image_embed) yourself, this project has no SAM2 "
                        "(docs/FITTING.md); without: the term is off")
    p.add_argument("--rasterizer", default="auto", choices=DIFFERENTIABLE_BACKENDS,
                   help="differentiable rasterizer: gsplat (CUDA), torch (any device); auto picks and says which")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                   help="decoder precision during fitting (bf16: CUDA autocast; the official fit is fp32)")
    p.add_argument("--resolution", type=int, default=None,
                   help="resize the (square) inputs to NxN before fitting (the CPU rasterizer is slow at 512)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=cmd_fit)


__all__ = ["add_parser", "cmd_fit", "plot_losses", "before_after_grid"]
