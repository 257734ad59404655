"""Issue 12 probe (CPU, ~10 min): do at-rest twins (``--rest-pairs``, ``--difference-weight``) make the jaw code act
locally?

The best H200 run moves every decoded Gaussian by 1-6 mm when only the jaw changes (docs/TRAINING.md, section 3).
This probe freezes the encoder (avatar codes of a few corpus samples computed once), fine-tunes the rest of the
model (expression path and Gaussian decoder) with the trainer's loss and expression weight, and every
``--eval-every`` steps measures on held-out persons 0, 1, 4 the median displacement of the top quarter of the head
(the scalp, which the jaw must not move) between the neutral code and a 0.45 rad jaw, plus the mouth's response.
Same rendered views per step in both arms: 2 target views (off) or 1 view + its at-rest twin (on).

    python dev/locality_probe.py --checkpoint .devdata/init/c3_a_w10_3593.safetensors --corpus-cache CACHE --rest-pairs
    python dev/locality_probe.py --checkpoint .devdata/init/c3_a_w10_3593.safetensors --corpus-cache CACHE
    python dev/locality_probe.py --checkpoint ... --corpus-cache CACHE --rest-pairs --difference-weight 10
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from flexrt.corpus.dataset import CachedSplit, CorpusConfig, HeadCorpus
from flexrt.fitting.losses import photometric_loss
from flexrt.model.flexavatar import DATASET_ID_3D
from flexrt.training.evaluate import expression_response, jaw_probe_codes
from flexrt.training.trainer import (TrainConfig, build_model, collate, difference_l1, encoder_image, masked_l1,
                                     render_batch)


@torch.no_grad()
def avatar_code(model, dino, sample) -> torch.Tensor:
    img = encoder_image(sample.input_image[None])
    return model.encode(img[:, None], sample.input_cam2world[None, None], sample.input_intrinsics[None, None],
                        dino(img)[:, None])  # [1, HT, D]


@torch.no_grad()
def scalp_motion_mm(model, codes_heldout, jaw_codes) -> float:
    out = []
    for code in codes_heldout:
        g = model.animate(code, jaw_codes[None], torch.tensor([DATASET_ID_3D]))
        p = g.positions[0]  # [2, G, 3]
        y = p[0, :, 1]
        top = y < torch.quantile(y, 0.25)  # OpenCV: y points down, the scalp has the smallest y
        out.append(float((p[1] - p[0])[top].norm(dim=-1).median()) * 1000)
    return float(np.mean(out))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--corpus-cache", required=True, help="a cache built with expression masks (at-rest renders)")
    ap.add_argument("--rest-pairs", action="store_true")
    ap.add_argument("--samples", type=int, default=48, help="samples per split (2d, 3d)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--expression-weight", type=float, default=10.0)
    ap.add_argument("--difference-weight", type=float, default=0.0, help="with --rest-pairs (trainer.difference_l1)")
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--out", help="write the curve as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model, dino, _ = build_model(TrainConfig(init_checkpoint=args.checkpoint))
    samples = [s for split in ("2d", "3d") for s in
               (lambda c: [c[i] for i in range(min(args.samples, len(c)))])(CachedSplit(f"{args.corpus_cache}/{split}"))]
    codes = torch.cat([avatar_code(model, dino, s) for s in samples])  # frozen: [N, HT, D]
    heldout = HeadCorpus(CorpusConfig(pose_scale=0.35))
    codes_heldout = [avatar_code(model, dino, heldout.sample("heldout", i)) for i in (0, 1, 4)]
    jaw = jaw_probe_codes()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    curve = []

    def evaluate(step):
        model.eval()
        r = expression_response(model, dino, CorpusConfig(pose_scale=0.35), persons=(0, 1, 4))
        row = {"step": step, "scalp_motion_mm": round(scalp_motion_mm(model, codes_heldout, jaw), 3),
               "mouth": [round(p["mouth"], 4) for p in r["persons"]],
               "forehead_over_mouth": [round(p["forehead"] / max(p["mouth"], 1e-9), 2) for p in r["persons"]]}
        model.train()
        curve.append(row)
        print(json.dumps(row), flush=True)

    evaluate(0)
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        idx = rng.choice(len(samples), size=args.batch, replace=False)
        batch = collate([samples[i] for i in idx], 1 if args.rest_pairs else 2, rng, True, args.rest_pairs)
        g = model.animate(codes[idx], batch.target_codes, batch.dataset_ids)
        pred_bv = render_batch(g, batch.target_cam2world, batch.target_intrinsics, batch.target_images.shape[-1],
                               "torch")
        pred, target = pred_bv.flatten(0, 1), batch.target_images.flatten(0, 1)
        loss = photometric_loss(pred, target)[0] + args.expression_weight * masked_l1(
            pred, target, batch.target_masks.flatten(0, 1))
        if args.difference_weight > 0:
            loss = loss + args.difference_weight * difference_l1(pred_bv, batch.target_images)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % args.eval_every == 0:
            evaluate(step)
    print(f"{args.steps} steps in {time.perf_counter() - t0:.0f} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "curve": curve}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
