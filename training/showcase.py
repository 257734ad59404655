"""Before / after pictures of a trained model on a held-out corpus person driven by a FLAME sequence.

    python -m flexrt.training.showcase --checkpoint runs/demo/checkpoints/step_0002000.safetensors \\
        --out docs/training_before_after.png

Rows (64x64 tiles, front camera unless stated): the corpus rig's own render of the person (the truth), the
``tiny`` model with seeded random weights (what ``flexavatar demo`` showed before), the trained model; then a
turntable (0 to 300 degrees) of the truth and of the trained model at the sequence's widest jaw. Also prints (and
returns) how much the mouth region changes between the sequence's most closed and most open jaw frames.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from flexrt.corpus import cameras
from flexrt.corpus.codes import clip_ignored_exp, matrix_to_yaw_pitch, rig_controls, sample_codes
from flexrt.corpus.dataset import CorpusConfig, HeadCorpus
from flexrt.corpus.render import render
from flexrt.model.flexavatar import DATASET_ID_3D

from .trainer import Batch, build_model, encoder_image, forward_batch, TrainConfig

MOUTH_BOX = (slice(38, 54), slice(22, 42))  # rows, cols of the mouth in a 64x64 front view
FOREHEAD_ROWS = slice(0, 30)  # rows of a 64x64 front view above the eyes: the jaw must not change them


def load_codes(sequence: str | None, frames: int) -> tuple[torch.Tensor, str]:
    """[T,135] driving codes: a sequence .npz (expression_codes), else procedural codes."""
    if sequence:
        with np.load(sequence) as z:
            return torch.from_numpy(np.asarray(z["expression_codes"], dtype=np.float32)), Path(sequence).stem
    return torch.from_numpy(sample_codes(np.random.default_rng(0), frames)), "procedural"


@torch.no_grad()
def model_frames(model, dino, image: torch.Tensor, c2w, K, codes: torch.Tensor, tc2w, tK, size: int,
                 device="cpu", backend: str = "torch"):
    """One person (input image [3,S,S]) driven by codes [T,135], seen by cameras [T,4,4] -> [T,3,size,size]
    (on ``device``; the model's train/eval mode is restored)."""
    t = codes.shape[0]
    batch = Batch(images=encoder_image(image[None]), cam2world=c2w[None], intrinsics=K[None],
                  target_images=torch.zeros(1, t, 3, size, size), target_cam2world=tc2w[None],
                  target_intrinsics=tK[None], target_codes=codes[None],
                  dataset_ids=torch.tensor([DATASET_ID_3D]), splits=["heldout"]).to(device)
    was_training = model.training
    model.eval()
    try:
        return forward_batch(model, dino, batch, size, backend)[0].clamp(0, 1)
    finally:
        model.train(was_training)


def truth_frames(corpus: HeadCorpus, ident, codes, tc2w, tK, size: int) -> torch.Tensor:
    out = corpus.rig.gaussians(ident, codes)
    return torch.stack([render(out.gaussians.map(lambda x: x[i]), tc2w[i:i + 1], tK[i:i + 1], size,
                               out.normals[i])[0].permute(2, 0, 1) for i in range(codes.shape[0])])


def mouth_change(frames: torch.Tensor, lo: int, hi: int) -> float:
    """Mean |frame[hi] - frame[lo]| over the mouth box of front views [T,3,64,64] (0..1 scale)."""
    r, c = MOUTH_BOX
    return float((frames[hi, :, r, c] - frames[lo, :, r, c]).abs().mean())


def forehead_change(frames: torch.Tensor, lo: int, hi: int) -> float:
    """Mean |frame[hi] - frame[lo]| over the FOREHEAD_ROWS of front views [T,3,64,64] (0..1 scale)."""
    return float((frames[hi, :, FOREHEAD_ROWS] - frames[lo, :, FOREHEAD_ROWS]).abs().mean())


def showcase(checkpoint: str | None, out: str | Path, sequence: str | None = None, persons=(0,),
             columns: int = 6, size: int = 64, corpus_cfg: CorpusConfig | None = None,
             clip_ignored: bool = False) -> dict:
    """Write the PNG (one block of rows per held-out person, stacked) and return the metrics per person.
    ``clip_ignored``: drive with the exp coefficients the rig ignores clipped to the corpus's range, as
    ``flexavatar demo`` does for the shipped model (``corpus.codes.clip_ignored_exp``; the truth row is unchanged)."""
    from PIL import Image

    torch.set_flush_denormal(True)
    corpus = HeadCorpus(corpus_cfg or CorpusConfig())
    blocks, metrics = [], {}
    for person in persons:
        img, m = _person_block(corpus, checkpoint, sequence, person, columns, size, clip_ignored)
        blocks.append(np.asarray(img))
        metrics[f"person_{person}"] = m
    width = max(b.shape[1] for b in blocks)
    blocks = [np.pad(b, ((0, 6), (0, width - b.shape[1]), (0, 0)), constant_values=255) for b in blocks]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(blocks, 0)).save(out, optimize=True)
    return metrics


def _person_block(corpus: HeadCorpus, checkpoint, sequence, person: int, columns: int, size: int,
                  clip_ignored: bool = False):
    from PIL import Image, ImageDraw

    sample = corpus.sample("heldout", person)
    ident = corpus.identity("heldout", sample.identity)
    codes, seq_name = load_codes(sequence, 64)
    if clip_ignored:
        codes = torch.from_numpy(clip_ignored_exp(codes.numpy(), corpus.cfg.exp_scale)[0])
    jaw = matrix_to_yaw_pitch(rig_controls(codes)["jaw"])[1]
    lo, hi = int(jaw.argmin()), int(jaw.argmax())
    picks = sorted(set(np.linspace(0, len(codes) - 1, columns - 2).round().astype(int).tolist()) | {lo, hi})
    picks = picks[:columns]
    c = codes[picks]
    fc2w, fK = cameras.eval_views(("front",))
    fc2w, fK = fc2w.expand(len(picks), 4, 4), fK.expand(len(picks), 3, 3)
    yaws = np.arange(0, 360, 360 // columns)[:columns]
    tc2w, tK = cameras.cameras_from_directions(np.stack([cameras.direction(y, 5.0) for y in yaws]), np.ones(columns))
    spin = codes[hi:hi + 1].expand(columns, -1)

    rows, labels = [truth_frames(corpus, ident, c, fc2w, fK, size)], ["truth"]
    metrics = {"sequence": seq_name, "clip_ignored_exp": clip_ignored, "frames": picks, "jaw_closed_frame": lo,
               "jaw_open_frame": hi}
    lo_i, hi_i = picks.index(lo), picks.index(hi)
    metrics["mouth_change_truth"] = mouth_change(rows[0], lo_i, hi_i)
    for name, ckpt in (("random", None), ("trained", checkpoint)):
        if name == "trained" and ckpt is None:
            continue
        model, dino, _ = build_model(TrainConfig(init_checkpoint=ckpt))
        frames = model_frames(model, dino, sample.input_image, sample.input_cam2world, sample.input_intrinsics,
                              c, fc2w, fK, size)
        rows.append(frames)
        labels.append("random w." if name == "random" else "trained")
        metrics[f"mouth_change_{name}"] = mouth_change(frames, lo_i, hi_i)
        if name == "trained":
            turn = model_frames(model, dino, sample.input_image, sample.input_cam2world, sample.input_intrinsics,
                                spin, tc2w, tK, size)
    rows.append(truth_frames(corpus, ident, spin, tc2w, tK, size))
    labels.append("truth 360")
    if checkpoint is not None:
        rows.append(turn)
        labels.append("trained 360")

    inp = torch.nn.functional.interpolate(sample.input_image[None], size=(size, size), mode="area")[0]
    label_w, gap = 70, 2
    width = label_w + size + gap * 2 + columns * size
    canvas = torch.ones(3, len(rows) * (size + gap), width)
    for i, r in enumerate(rows):
        y = i * (size + gap)
        if i == 0:
            canvas[:, y:y + size, label_w:label_w + size] = inp
        for j in range(r.shape[0]):
            x = label_w + size + gap * 2 + j * size
            canvas[:, y:y + size, x:x + size] = r[j]
    img = Image.fromarray((canvas.permute(1, 2, 0) * 255 + 0.5).to(torch.uint8).numpy())
    draw = ImageDraw.Draw(img)
    for i, text in enumerate(labels):
        draw.text((3, i * (size + gap) + size // 2 - 5), text, fill=(0, 0, 0))
    draw.text((label_w + 2, size - 10), f"input {person}", fill=(80, 80, 80))
    return img, metrics


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flexrt.training.showcase", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="trained weights (official layout, tiny preset); omit to show only "
                                        "the random-weights model")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--sequence", help="driving .npz (expression_codes); default: ../shared EMO-1 when present, "
                                      "else procedural codes")
    p.add_argument("--persons", default="0,1", help="held-out person indices, comma-separated")
    p.add_argument("--corpus-cache", help="take the corpus config (seed, pose_scale, ...) from this cache")
    p.add_argument("--columns", type=int, default=6)
    p.add_argument("--clip-ignored-exp", action="store_true",
                   help="clip the exp coefficients the rig ignores to the corpus's range, as the demo does for the "
                        "shipped model (the truth is unchanged by it)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    seq = args.sequence
    if seq is None:
        from flexrt.runtime.cli import find_shared_dir

        shared = find_shared_dir()
        cand = shared / "reference/assets/expressions/EMO-1-shout+laugh.npz" if shared else None
        seq = str(cand) if cand is not None and cand.is_file() else None
    cfg = None
    if args.corpus_cache:
        from flexrt.corpus.dataset import read_cache_config

        cfg = read_cache_config(args.corpus_cache)
    persons = [int(x) for x in args.persons.split(",") if x.strip()]
    metrics = showcase(args.checkpoint, args.out, seq, persons, args.columns, corpus_cfg=cfg,
                       clip_ignored=args.clip_ignored_exp)
    print(json.dumps(metrics, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
