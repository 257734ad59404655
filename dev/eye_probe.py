"""Does a model draw the eyes? Held-out persons, front camera, the neutral code with the eyes open (eyelids 0)
and closed (eyelids 0.9, the rig's lids fully down): mean |change| over the pixels where the rig's own frames
change by more than 0.05 (the eye region), for the corpus rig (the truth) and each checkpoint; the ratio model /
truth says how much of a blink a model shows. Also draws the open and closed frames side by side (--png).

    python dev/eye_probe.py training/assets/flexavatar_tiny_corpus.safetensors OTHER.safetensors --size 128 \
        --png /tmp/eyes.png
"""
import argparse
import json

import numpy as np
import torch

from flexrt.corpus import cameras
from flexrt.corpus.codes import EYELIDS, neutral_code
from flexrt.corpus.dataset import CorpusConfig, HeadCorpus
from flexrt.training.showcase import model_frames, truth_frames
from flexrt.training.trainer import TrainConfig, build_model

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("checkpoints", nargs="+", help="weights (official layout, tiny preset) or 'random'")
p.add_argument("--persons", default="0,1,2,3,4,5")
p.add_argument("--size", type=int, default=64, help="frame size (default 64, the training targets' size)")
p.add_argument("--png", default=None, help="picture: per person, truth and each model, eyes open | closed")
args = p.parse_args()
torch.set_num_threads(2)
torch.set_flush_denormal(True)
corpus = HeadCorpus(CorpusConfig(pose_scale=0.35))
codes = neutral_code(2)
codes[0, EYELIDS], codes[1, EYELIDS] = 0.0, 0.9
fc2w, fK = cameras.eval_views(("front", "front"))
samples = [corpus.sample("heldout", int(i)) for i in args.persons.split(",")]
truth = [truth_frames(corpus, corpus.identity("heldout", s.identity), codes, fc2w, fK, args.size) for s in samples]
masks = [((t[1] - t[0]).abs().amax(0) > 0.05) for t in truth]
change = lambda f, m: float((f[1] - f[0]).abs().amax(0)[m].mean()) if m.any() else 0.0  # noqa: E731
result = {"size": args.size, "eye_pixels": [int(m.sum()) for m in masks],
          "truth": [round(change(t, m), 4) for t, m in zip(truth, masks)]}
print("eye pixels", result["eye_pixels"], "truth", result["truth"], flush=True)
rows = [truth]
for ck in args.checkpoints:
    model, dino, _ = build_model(TrainConfig(init_checkpoint=None if ck == "random" else ck))
    model.eval()
    with torch.no_grad():
        frames = [model_frames(model, dino, s.input_image, s.input_cam2world, s.input_intrinsics, codes, fc2w, fK,
                               args.size).cpu() for s in samples]
    rows.append(frames)
    result[ck] = [round(change(f, m), 4) for f, m in zip(frames, masks)]
    result[ck + ":ratio"] = [round(a / max(b, 1e-9), 3) for a, b in zip(result[ck], result["truth"])]
    print(ck, result[ck], "ratio", result[ck + ":ratio"], flush=True)
if args.png:
    from PIL import Image

    tiles = [torch.cat([torch.cat([f[0], f[1]], 2) for f in row], 2) for row in rows]  # [3,S,2S*persons]
    img = torch.cat(tiles, 1).clamp(0, 1).permute(1, 2, 0).numpy()
    Image.fromarray((img * 255 + 0.5).astype(np.uint8)).save(args.png)
    print("wrote", args.png)
print(json.dumps(result))
