"""Issue 12 figure: does the jaw code act on the mouth only? For held-out persons, the corpus rig (truth) and each
checkpoint given, front view with the jaw closed and open (``evaluate.jaw_probe_codes``), and 4 x |open - closed|
(the difference a local jaw leaves black outside the mouth and chin). Prints the shipping bar's numbers per checkpoint.

    python dev/locality_figure.py --out docs/training_locality.png --persons 1,4,5 \\
        c3_a=.devdata/init/c3_a_w10_3593.safetensors cpu_d=RUN/checkpoints/step_N.safetensors
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image, ImageDraw

from flexrt.corpus import cameras
from flexrt.corpus.dataset import CorpusConfig, HeadCorpus
from flexrt.training.evaluate import jaw_probe_codes
from flexrt.training.showcase import forehead_change, model_frames, mouth_change, truth_frames
from flexrt.training.trainer import TrainConfig, build_model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", help="NAME=weights.safetensors (tiny preset, official layout)")
    ap.add_argument("--persons", default="1,4,5")
    ap.add_argument("--out", required=True)
    ap.add_argument("--scale", type=int, default=3, help="pixel zoom of the 64x64 frames")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    persons = [int(p) for p in args.persons.split(",")]
    corpus = HeadCorpus(CorpusConfig(pose_scale=0.35))
    codes = jaw_probe_codes()
    c2w, K = cameras.eval_views(("front", "front"))
    triple = lambda f: torch.cat([f[0], f[1], ((f[1] - f[0]).abs() * 4).clamp(0, 1)], 2)  # noqa: E731
    columns = {"truth": [triple(truth_frames(corpus, corpus.identity("heldout", corpus.sample("heldout", p).identity),
                                             codes, c2w, K, 64)) for p in persons]}
    for spec in args.checkpoints:
        name, path = spec.split("=", 1)
        model, dino, _ = build_model(TrainConfig(init_checkpoint=path))
        model.eval()
        frames = []
        for p in persons:
            s = corpus.sample("heldout", p)
            with torch.no_grad():
                f = model_frames(model, dino, s.input_image, s.input_cam2world, s.input_intrinsics, codes, c2w, K, 64)
            frames.append(triple(f))
            print(f"{name} person {p}: mouth {mouth_change(f, 0, 1):.4f}, forehead {forehead_change(f, 0, 1):.4f}")
        columns[name] = frames
    gap = torch.ones(3, 64, 4)
    rows = [torch.cat([x for name in columns for x in (columns[name][i], gap)], 2) for i in range(len(persons))]
    img = (torch.cat(rows, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    img = Image.fromarray(img).resize((img.shape[1] * args.scale, img.shape[0] * args.scale), Image.NEAREST)
    canvas = Image.new("RGB", (img.width, img.height + 14), "white")
    canvas.paste(img, (0, 14))
    draw = ImageDraw.Draw(canvas)
    for k, name in enumerate(columns):
        draw.text((k * (3 * 64 + 4) * args.scale + 4, 1), f"{name}: closed, open, 4x|difference|", fill="black")
    canvas.save(args.out, optimize=True)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
