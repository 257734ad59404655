"""The model this project trained itself: the ``tiny`` preset trained on the procedural head corpus
(``flexavatar train``; recipe and metrics in ``assets/flexavatar_tiny_corpus.json`` and docs/TRAINING.md).

``flexavatar demo`` uses it by default: the avatar comes from a held-out corpus identity (a person the model never
saw), since the model has only ever seen procedural heads. FLEX-1 weights stay one flag away (``--checkpoint``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ASSETS = Path(__file__).resolve().parent / "assets"
SHIPPED_WEIGHTS = ASSETS / "flexavatar_tiny_corpus.safetensors"
SHIPPED_CARD = ASSETS / "flexavatar_tiny_corpus.json"
SHIPPED_PRESET = "tiny"


def shipped_checkpoint() -> Path | None:
    """The shipped weights (official state_dict layout, tiny preset), or None when not installed."""
    return SHIPPED_WEIGHTS if SHIPPED_WEIGHTS.is_file() else None


def shipped_card() -> dict:
    return json.loads(SHIPPED_CARD.read_text()) if SHIPPED_CARD.is_file() else {}


def shipped_corpus_config():
    """The CorpusConfig the shipped model was trained on (its model card's "corpus"; defaults without a card)."""
    from flexrt.corpus.dataset import CorpusConfig

    return CorpusConfig(**shipped_card().get("corpus", {}))


# the held-out person the demo animates: of persons 0-3 the shipped model's blink is weakest on 0 (20 % of the rig's)
# and strongest on 3 (49 %; docs/TRAINING.md, section 3), and the demo is there to show it
DEMO_PERSON = 3


def demo_photo(index: int = DEMO_PERSON) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """A held-out corpus person's input view, as the trainer feeds it (rendered, upsampled to 512x512):
    (uint8 [512,512,3], cam2world [4,4], normalised intrinsics [3,3], a description)."""
    import torch

    from flexrt.corpus.dataset import HeadCorpus

    from .trainer import encoder_image

    cfg = shipped_corpus_config()
    torch.set_flush_denormal(True)
    sample = HeadCorpus(cfg).sample("heldout", index)
    img = encoder_image(sample.input_image[None])[0].clamp(0, 1)  # [3,512,512]
    photo = (img.permute(1, 2, 0) * 255 + 0.5).to(torch.uint8).numpy()
    return (photo, sample.input_cam2world.numpy(), sample.input_intrinsics.numpy(),
            f"held-out corpus person {sample.identity} (seed {cfg.seed})")


__all__ = ["shipped_checkpoint", "shipped_card", "shipped_corpus_config", "demo_photo", "package", "SHIPPED_WEIGHTS",
           "SHIPPED_PRESET", "DEMO_PERSON"]


def package(run_dir: str | Path, weights: str | Path | None = None, extra: dict | None = None) -> Path:
    """Copy a run's weights (default: its latest checkpoint) into the package assets and write the model card
    (the run's config, the corpus config, step, wall time from log.csv, held-out metrics from eval.json)."""
    import csv
    import shutil

    from flexrt.corpus.dataset import read_cache_config
    from flexrt.model.checkpoint import file_sha256

    run = Path(run_dir)
    cfg = json.loads((run / "train_config.json").read_text())
    if weights is None:
        weights = run / "checkpoints" / json.loads((run / "checkpoints" / "latest.json").read_text())["weights"]
    rows = list(csv.DictReader((run / "log.csv").open()))
    corpus = cfg.get("corpus") or (read_cache_config(cfg["corpus_cache"]).__dict__ if cfg.get("corpus_cache") else {})
    # (train_config.json records the corpus trained on, the cache's config included: a run packaged on another
    # machine than the one it trained on has no cache folder)
    ASSETS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, SHIPPED_WEIGHTS)
    card = {
        "model": "FlexAvatar tiny preset (official state_dict layout), default head template",
        "weights": SHIPPED_WEIGHTS.name, "sha256": file_sha256(SHIPPED_WEIGHTS),
        "bytes": SHIPPED_WEIGHTS.stat().st_size, "preset": SHIPPED_PRESET,
        "encoder_dinov2": "tiny, seeded random (build_dino('tiny', None, seed 0)), frozen",
        "data": (f"procedural head corpus (flexrt.corpus), rendered at {corpus.get('image_size', 64)}x"
                 f"{corpus.get('image_size', 64)} targets / {corpus.get('input_size', 128)}x"
                 f"{corpus.get('input_size', 128)} inputs"),
        "corpus": corpus, "train_config": cfg,
        "steps": int(rows[-1]["step"]) if rows else 0,
        "train_wall_s": float(rows[-1]["wall_s"]) if rows else None,
        "final_loss": float(rows[-1]["loss"]) if rows else None,
        "heldout_eval": json.loads((run / "eval.json").read_text()) if (run / "eval.json").is_file() else None,
    }
    card.update(extra or {})
    SHIPPED_CARD.write_text(json.dumps(card, indent=2))
    return SHIPPED_WEIGHTS


if __name__ == "__main__":  # python -m flexrt.training.shipped RUN_DIR [WEIGHTS]
    import sys

    print(package(*sys.argv[1:3]))
