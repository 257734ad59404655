"""Does a model draw the eyes? ``training.evaluate.blink_response`` for each checkpoint: held-out persons, front
camera, the neutral code with the eyes open (eyelids 0) and shut (corpus.codes.BLINK_CLOSED, the rig's lids fully
down): mean |change| over the pixels where the rig's own frames change by more than EYE_CHANGE (the eye region), for
the corpus rig (the truth) and each checkpoint; the ratio model / truth says how much of a blink a model shows. Also
draws the open and shut frames side by side (--png): a row for the truth, then one per checkpoint.

    python dev/eye_probe.py training/assets/flexavatar_tiny_corpus.safetensors OTHER.safetensors --size 128 \
        --png /tmp/eyes.png
"""
import argparse
import json

import numpy as np
import torch

from flexrt.corpus.dataset import CorpusConfig
from flexrt.training.evaluate import blink_response
from flexrt.training.trainer import TrainConfig, build_model

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("checkpoints", nargs="+", help="weights (official layout, tiny preset) or 'random'")
p.add_argument("--persons", default="0,1,2,3")
p.add_argument("--size", type=int, default=128, help="frame size (default 128)")
p.add_argument("--png", default=None, help="picture: per person, truth and each model, eyes open | shut")
args = p.parse_args()
torch.set_num_threads(2)
torch.set_flush_denormal(True)
persons = tuple(int(i) for i in args.persons.split(","))
result, rows = {"size": args.size}, []
for ck in args.checkpoints:
    model, dino, _ = build_model(TrainConfig(init_checkpoint=None if ck == "random" else ck))
    model.eval()
    r = blink_response(model, dino, CorpusConfig(pose_scale=0.35), persons, args.size, frames=True)
    if not rows:
        result["eye_pixels"] = [x["eye_pixels"] for x in r["persons"]]
        result["truth"] = [round(x["truth"], 4) for x in r["persons"]]
        print("eye pixels", result["eye_pixels"], "truth", result["truth"], flush=True)
        rows.append([t for t, _ in r["frames"]])
    rows.append([m for _, m in r["frames"]])
    result[ck] = [round(x["model"], 4) for x in r["persons"]]
    result[ck + ":ratio"] = [round(x["ratio"], 3) for x in r["persons"]]
    print(ck, result[ck], "ratio", result[ck + ":ratio"], flush=True)
if args.png:
    from PIL import Image

    tiles = [torch.cat([torch.cat([f[0], f[1]], 2) for f in row], 2) for row in rows]  # [3,S,2S*persons]
    img = torch.cat(tiles, 1).clamp(0, 1).permute(1, 2, 0).numpy()
    Image.fromarray((img * 255 + 0.5).astype(np.uint8)).save(args.png)
    print("wrote", args.png)
print(json.dumps(result))
