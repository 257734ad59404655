"""``python -m flexrt.corpus build|sheet``: cache corpus samples to disk, or draw a contact sheet of samples.

    python -m flexrt.corpus build --out corpus_cache --count-2d 600 --count-3d 300 --count-heldout 32 [--jobs 8]
    python -m flexrt.corpus sheet --out docs/corpus_samples.png

Rendering is single-threaded by default (``--threads``): the CPU reference rasterizer, ~0.75 s per 2D/3D sample
(one 128x128 input view and two 64x64 targets) on one core. ``--device cuda`` rasterizes on the GPU (the rig
stays on the CPU, ~50 ms per sample per process; use ``--jobs`` to fill the host's cores).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from .dataset import CorpusConfig, HeadCorpus, write_cache


def add_config_args(p: argparse.ArgumentParser) -> None:
    """One option per CorpusConfig field (--seed, --identities-2d, ..., --leak)."""
    for f in fields(CorpusConfig):
        name = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):  # --expression-masks / --no-expression-masks
            p.add_argument(name, action=argparse.BooleanOptionalAction, default=f.default,
                           help=f"corpus {f.name} (default {f.default})")
        else:
            p.add_argument(name, type=type(f.default), default=f.default, help=f"corpus {f.name} (default {f.default})")


def config_from_args(args) -> CorpusConfig:
    return CorpusConfig(**{f.name: getattr(args, f.name) for f in fields(CorpusConfig)})


def contact_sheet(corpus: HeadCorpus, rows_per_split: int = 2, size: int = 64) -> np.ndarray:
    """uint8 [H, W, 3]: per row the input view (resized to ``size``) then the target views; 2D, 3D, held-out
    rows, separated by a grey line."""
    rows = []
    for split in ("2d", "3d", "heldout"):
        for r in range(rows_per_split):
            s = corpus.sample(split, r)
            inp = torch.nn.functional.interpolate(s.input_image[None], size=(size, size), mode="area")[0]
            tiles = [inp, torch.full((3, size, 2), 0.5)] + [t for t in s.target_images]
            row = torch.cat([torch.nn.functional.interpolate(t[None], size=(size, t.shape[-1] * size // t.shape[-2]),
                                                             mode="area")[0] for t in tiles], dim=2)
            rows.append(row)
    width = max(r.shape[-1] for r in rows)
    rows = [torch.cat([r, torch.ones(3, size, width - r.shape[-1])], dim=2) for r in rows]
    sep = torch.full((3, 2, width), 0.5)
    out = []
    for i, r in enumerate(rows):
        if i and i % rows_per_split == 0:
            out.append(sep)
        out.append(r)
    img = torch.cat(out, dim=1).permute(1, 2, 0)
    return (img.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flexrt.corpus", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="render samples of each split into OUT/<split>.npz")
    b.add_argument("--out", required=True)
    b.add_argument("--count-2d", type=int, default=600)
    b.add_argument("--count-3d", type=int, default=300)
    b.add_argument("--count-heldout", type=int, default=32)
    b.add_argument("--jobs", type=int, default=1, help="processes rendering shards in parallel (one thread each)")
    b.add_argument("--shard-size", type=int, default=100, help="samples per cache file")
    s = sub.add_parser("sheet", help="write a contact sheet PNG of samples (rows: 2D, 3D, held-out)")
    s.add_argument("--out", required=True)
    s.add_argument("--rows", type=int, default=2, help="rows per split")
    for p in (b, s):
        add_config_args(p)
        p.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared: 1)")
        p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                       help="where frames are rasterized (the rig runs on the CPU either way)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # exp() of far-away pixels underflows: denormals are slow on x86
    corpus = HeadCorpus(config_from_args(args), args.device)
    t0 = time.perf_counter()
    if args.cmd == "build":
        for split, n in (("2d", args.count_2d), ("3d", args.count_3d), ("heldout", args.count_heldout)):
            if n > 0:
                print(f"wrote {write_cache(corpus, split, n, args.out, args.shard_size, jobs=args.jobs)}")
    else:
        from PIL import Image

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(contact_sheet(corpus, args.rows)).save(args.out, optimize=True)
        print(f"wrote {args.out}")
    print(f"{time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
