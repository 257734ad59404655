"""Issue 12 probe (CPU, minutes): can the tiny decoder learn the jaw from raw 6D codes whose row lengths jitter per
frame, as the corpus draws them, or only from unit rows? One held-out corpus person, its avatar code from a trained
checkpoint's encoder (frozen), jaw-only codes (pitch 0-30 degrees, everything else neutral), front camera, 32x32
targets from the corpus rig; the decoder is trained alone (Adam) on these frames and the mouth box's response to a
0.45 rad jaw (unit rows, the quality bar's probe) is printed as it learns.

    python dev/expression_probe.py --checkpoint .devdata/init/demo_a_1655.safetensors --lengths jitter
    python dev/expression_probe.py --checkpoint .devdata/init/demo_a_1655.safetensors --lengths unit
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from flexrt.corpus import cameras
from flexrt.corpus.codes import JAW, euler_matrix, neutral_code, with_rotation
from flexrt.corpus.dataset import CorpusConfig, HeadCorpus
from flexrt.corpus.render import render
from flexrt.fitting.losses import photometric_loss
from flexrt.model.flexavatar import DATASET_ID_3D
from flexrt.training.trainer import TrainConfig, build_model, encoder_image, render_batch

SIZE = 32
MOUTH = (slice(19, 27), slice(11, 21))  # the 64x64 quality-bar box, halved


def jaw_codes(rng: np.random.Generator, n: int, lengths: str) -> torch.Tensor:
    pitch = torch.from_numpy(rng.uniform(0.0, math.radians(30), n))
    m = euler_matrix(torch.zeros(n, dtype=torch.float64), pitch, torch.zeros(n, dtype=torch.float64))
    rows = m[:, :2, :].clone()
    if lengths == "jitter":  # as corpus/codes.py _raw_6d for the jaw: each row scaled by U(0.9, 2.2)
        rows = rows * torch.from_numpy(rng.uniform(0.9, 2.2, size=(n, 2, 1)))
    codes = neutral_code(n)
    codes[:, JAW] = rows.reshape(n, 6).float()
    return codes


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--lengths", choices=("jitter", "unit"), default="jitter")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--batch", type=int, default=6)
    p.add_argument("--lr", type=float, default=1e-3)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    corpus = HeadCorpus(CorpusConfig(pose_scale=0.35))
    sample = corpus.sample("heldout", 1)
    ident = corpus.identity("heldout", sample.identity)
    codes = jaw_codes(rng, args.frames, args.lengths)
    c2w, K = cameras.eval_views(("front",))
    rig = corpus.rig.gaussians(ident, codes)
    targets = torch.stack([render(rig.gaussians.map(lambda x: x[i]), c2w, K, SIZE, rig.normals[i])[0].permute(2, 0, 1)
                           for i in range(args.frames)])  # [F,3,S,S]
    model, dino, _ = build_model(TrainConfig(init_checkpoint=args.checkpoint))
    with torch.no_grad():
        img = encoder_image(sample.input_image[None])
        code = model.encode(img[:, None], sample.input_cam2world[None, None], sample.input_intrinsics[None, None],
                            dino(img)[:, None])  # [1,HT,D], frozen
    params = [q for n, q in model.named_parameters() if "_expression" in n or "_gaussian_decoder" in n]  # decoder
    opt = torch.optim.Adam(params, lr=args.lr)
    probe = with_rotation(neutral_code(2), "jaw", euler_matrix(torch.tensor(0.0), torch.tensor([0.0, 0.45]),
                                                                 torch.tensor(0.0)))

    def mouth_response() -> float:
        model.eval()
        with torch.no_grad():
            g = model.animate(code, probe[None], torch.tensor([DATASET_ID_3D]))
            fr = render_batch(g, c2w[None].expand(1, 2, 4, 4), K[None].expand(1, 2, 3, 3), SIZE, "torch")[0]
        model.train()
        r, c = MOUTH
        return float((fr[1, :, r, c] - fr[0, :, r, c]).abs().mean())

    truth = float((targets[:, :, MOUTH[0], MOUTH[1]] - targets[:1, :, MOUTH[0], MOUTH[1]]).abs().mean())
    print(f"lengths={args.lengths}: truth mouth change vs frame 0 (mean over frames) {truth:.4f}; "
          f"step 0 response {mouth_response():.4f}", flush=True)
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        idx = torch.from_numpy(rng.choice(args.frames, args.batch, replace=False))
        g = model.animate(code, codes[idx][None], torch.tensor([DATASET_ID_3D]))
        pred = render_batch(g, c2w[None].expand(1, args.batch, 4, 4), K[None].expand(1, args.batch, 3, 3), SIZE,
                            "torch")[0]
        loss = photometric_loss(pred, targets[idx])[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 25 == 0:
            print(f"step {step}: loss {float(loss):.4f}, 0.45 rad jaw -> mouth response {mouth_response():.4f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
