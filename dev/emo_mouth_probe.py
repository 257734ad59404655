"""The mouth's response to a real driving sequence (docs/TRAINING.md, section 3): mean |change| of the mouth box
between EMO-1's frames 24 (jaw nearly shut) and 59 (widest jaw) for held-out persons 0-5, front camera, 64x64,
for the corpus rig (the truth) and for each checkpoint given (tiny preset; "random" = seeded random weights).

    python dev/emo_mouth_probe.py --sequence ../shared/reference/assets/expressions/EMO-1-shout+laugh.npz \
        training/assets/flexavatar_tiny_corpus.safetensors random
"""
import argparse
import json

import torch

from flexrt.corpus import cameras
from flexrt.corpus.codes import RANGE_STD, TRANS, TRANSLATION_STD, clip_ignored_exp
from flexrt.corpus.dataset import CorpusConfig, HeadCorpus
from flexrt.training.showcase import load_codes, model_frames, mouth_change, truth_frames
from flexrt.training.trainer import TrainConfig, build_model

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("checkpoints", nargs="+", help="weights (official layout, tiny preset) or 'random'")
p.add_argument("--sequence", required=True, help="driving .npz (EMO-1)")
p.add_argument("--frames", default="24,59", help="the two frames compared")
p.add_argument("--persons", default="0,1,2,3,4,5")
p.add_argument("--in-corpus-range", action="store_true",
               help="bring the codes into the training corpus's range first: the exp coefficients the rig ignores "
                    "(all but 0, 1, 3) clipped to +-2.5 std of corpus.codes.sample_codes, the translation t set to 0")
p.add_argument("--translation", choices=("zero", "clip", "keep"), default="zero",
               help="with --in-corpus-range: t set to 0 (default), clipped to +-2.5 std of the corpus's t, or kept")
args = p.parse_args()
torch.set_num_threads(2)
torch.set_flush_denormal(True)
corpus = HeadCorpus(CorpusConfig(pose_scale=0.35))
codes, _ = load_codes(args.sequence, 121)
lo, hi = (int(f) for f in args.frames.split(","))
pair = torch.stack([codes[lo], codes[hi]])
if args.in_corpus_range:
    pair = torch.from_numpy(clip_ignored_exp(pair.numpy())[0])  # 2.5 std of sample_codes; smile, brows, cheeks kept
    if args.translation == "zero":
        pair[:, TRANS] = 0.0
    elif args.translation == "clip":  # the corpus's t: std TRANSLATION_STD x pose_scale 0.35
        t_lim = torch.as_tensor(RANGE_STD * 0.35 * TRANSLATION_STD, dtype=torch.float32)
        pair[:, TRANS] = torch.maximum(torch.minimum(pair[:, TRANS], t_lim), -t_lim)
fc2w, fK = cameras.eval_views(("front", "front"))
samples = [corpus.sample("heldout", int(i)) for i in args.persons.split(",")]
result = {"truth": [round(mouth_change(truth_frames(corpus, corpus.identity("heldout", s.identity), pair, fc2w, fK,
                                                   64), 0, 1), 4) for s in samples]}
print("truth", result["truth"], flush=True)
for ck in args.checkpoints:
    model, dino, _ = build_model(TrainConfig(init_checkpoint=None if ck == "random" else ck))
    model.eval()
    with torch.no_grad():
        result[ck] = [round(mouth_change(model_frames(model, dino, s.input_image, s.input_cam2world, s.input_intrinsics,
                                                      pair, fc2w, fK, 64), 0, 1), 4) for s in samples]
    print(ck, result[ck], flush=True)
print(json.dumps({"frames": [lo, hi], "persons": args.persons, "in_corpus_range": args.in_corpus_range,
                  "translation": args.translation if args.in_corpus_range else "as driven",
                  "mouth_change": result}))
