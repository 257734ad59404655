"""The training loop: FlexAvatar's encoder and decoder trained together with bias sinks.

Per step (batch of B persons, each with one input view and ``views_per_sample`` target views):

1. batch: B samples drawn by a generator seeded with (seed, step), so a resumed run sees the same batches; each is
   "2d" or "3d" by ``mix_3d`` (``data="2d"`` / ``"3d"`` use one split only);
2. avatar creation: the input view upsampled to 512x512, its frozen DINOv2 features, ``model.encode``;
3. animation: ``model.animate(code, target codes [B,V,135], dataset_ids [B])``: each sample's bias sink
   (0 = 2D, 1 = 3D; with ``sinks=False`` every sample gets 1, the "2D + 3D without sinks" ablation);
4. rendering: differentiable rasterization on a white background (``kernels.rasterize_differentiable``);
5. loss: 0.8 L1 + 0.2 (1 - SSIM), plus the DINO / SAM perceptual terms from ``perceptual_start`` when their
   weights are given, plus ``expression_weight`` x the L1 inside the corpus's expression masks (the pixels that
   mouth, eyes, brows and cheeks move; ``corpus.dataset``: ~5 % of a 64x64 frame, which the plain loss all but
   ignores in a short run), plus ``feature_weight`` x the L1 inside the corpus's feature masks (eyes, lids, lips,
   mouth wherever they show, moved or not: the features a model must draw before it can blink); Adam (lr 1e-4 by
   default), gradient norm clipped at ``clip_grad``.

With ``rest_pairs``, every picked target view comes twice: as rendered with its code, and at rest (the corpus's
at-rest render, driven by ``codes.pose_only`` of the code, same camera). The two differ only inside the expression
mask, which tells the model directly what the face's code may change and what it must leave alone. With
``difference_weight`` w (needs ``rest_pairs``) the step adds w x mean |(R(code) - R(rest)) - (T(code) - T(rest))|
over all pixels of each pair, R rendered and T target: the change the expression makes must be the target's change.
Outside the masks that change is zero, so this term is the whole head's response to the code (a head outline
that wobbles with the jaw), without the identity error that R and R(rest) share: in the plain L1 of the two
images that error (PSNR ~18 dB) drowns the ~0.5 px wobble, which is why rest pairs alone did not help
(docs/TRAINING.md, section 3).

DINOv2 is frozen, as in FlexAvatar (it is a fixed feature extractor there; the features of the official data
pipeline are computed by a pretrained DINOv2 and the checkpoint has no DINOv2 weights). Here this also keeps the
trained model deployable: the official state_dict layout has no place for DINOv2 weights, so ``export-engines``
and ``serve`` rebuild the encoder's DINOv2 from ``--dinov2`` (or, for the tiny preset, from the same seeded random
ViT the trainer used) -- a DINOv2 changed by training would be lost at export.

Checkpoints: ``<out>/checkpoints/step_<n>.safetensors`` is the model's ``state_dict`` in the official layout
(``load_official``, ``export-engines`` and ``serve`` read it unchanged); ``step_<n>.train.pt`` next to it holds the
optimizer state, the step, the RNG states and the config; ``latest.json`` names the newest pair. ``<out>/log.csv``
gets one row per ``log_every`` steps.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from flexrt.corpus.codes import pose_only
from flexrt.corpus.dataset import CachedSplit, CorpusConfig, HeadCorpus, Sample, read_cache_config
from flexrt.kernels import sh_dc_to_rgb
from flexrt.model.camera import pixel_intrinsics, viewmat_from_cam2world
from flexrt.model.checkpoint import DEFAULT_SEED, load_official, save_state_dict
from flexrt.model.config import IMAGE_RESOLUTION, load_config_dict
from flexrt.model.flexavatar import DATASET_ID_3D
from flexrt.model.pipeline import build_dino, default_dino_size

from .losses import PerceptualLoss, photometric_loss
from flexrt.kernels import rasterize_differentiable

logger = logging.getLogger("flexrt.training")
# A time budget times steps BUDGET_PROBE_FROM .. BUDGET_PROBE_STEPS of a run (the first ones include warm-up costs),
# then fixes the run's total once; the cosine schedule is re-spread over the new total from there on, which is
# continuous when the lr warm-up is longer than the probe (the H200 runs: 100 warm-up steps).
BUDGET_PROBE_FROM, BUDGET_PROBE_STEPS = 5, 20
LOG_FIELDS = ("step", "wall_s", "loss", "l1", "ssim", "expr_l1", "diff_l1", "dino", "sam", "lr", "n2d", "n3d",
              "grad_norm", "sec_per_step", "feat_l1")


@dataclass
class TrainConfig:
    out: str = "train_out"
    preset: str = "tiny"  # model preset or model_config.json
    template: str | None = None  # head template (None: the project's default head)
    dinov2: str | None = None  # DINOv2 weights for the encoder (None: the preset's seeded random ViT)
    init_checkpoint: str | None = None  # start from these weights (official layout) instead of random ones
    corpus_cache: str | None = None  # directory from `python -m flexrt.corpus build`; None = render on the fly
    corpus: dict = field(default_factory=dict)  # CorpusConfig overrides for on-the-fly rendering
    data: str = "mixed"  # "mixed" | "2d" | "3d"
    sinks: bool = True  # per-sample bias sink ids; False: every sample uses the 3D sink
    mix_3d: float = 0.5  # share of 3D samples in a mixed batch
    batch_size: int = 4
    views_per_sample: int = 1  # target views rendered per sample (<= the corpus's views)
    steps: int = 1000
    lr: float = 1e-4
    lr_warmup: int = 0  # linear warm-up steps
    lr_schedule: str = "constant"  # "constant" | "cosine" (after the warm-up, down to lr_min at `steps`)
    lr_min: float = 0.0
    clip_grad: float = 1.0
    seed: int = 0
    device: str = "cpu"
    render_backend: str = "auto"
    dino_loss_weights: str | None = None  # dinov2_vits14_pretrain.pth: enables the DINO perceptual term
    sam_module: str | None = None  # TorchScript SAM feature module: enables the SAM perceptual term
    perceptual_start: int = 0  # step from which the perceptual terms are active
    expression_weight: float = 0.0  # weight of the L1 inside the expression masks (needs a corpus with masks)
    feature_weight: float = 0.0  # weight of the L1 inside the feature masks (a corpus built with feature_masks)
    rest_pairs: bool = False  # add each target view's at-rest twin (needs a corpus with at-rest renders)
    difference_weight: float = 0.0  # weight of the L1 between rendered and target expression changes (rest_pairs)
    freeze_encoder: bool = False  # train stage (b) only (model.animation_parameters): avatar codes stay as they are
    log_every: int = 10
    tensorboard: bool = False  # also write <out>/tensorboard (torch.utils.tensorboard; needs `tensorboard`)
    ckpt_every: int = 200
    keep_checkpoints: int = 3
    threads: int = 1
    time_budget_s: float = 0.0  # > 0: after BUDGET_PROBE_STEPS steps, cut `steps` so training ends in this time

    def __post_init__(self):
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.data not in ("mixed", "2d", "3d"):
            raise ValueError(f"data must be 'mixed', '2d' or '3d', got {self.data!r}")
        if not 0.0 <= self.mix_3d <= 1.0:
            raise ValueError(f"mix_3d must be in [0, 1], got {self.mix_3d}")
        if self.batch_size < 1 or self.views_per_sample < 1 or self.steps < 0:
            raise ValueError("batch_size and views_per_sample must be >= 1 and steps >= 0")
        if self.expression_weight < 0:
            raise ValueError(f"expression_weight must be >= 0, got {self.expression_weight}")
        if self.feature_weight < 0:
            raise ValueError(f"feature_weight must be >= 0, got {self.feature_weight}")
        if self.difference_weight < 0:
            raise ValueError(f"difference_weight must be >= 0, got {self.difference_weight}")
        if self.difference_weight > 0 and not self.rest_pairs:
            raise ValueError("difference_weight > 0 needs rest_pairs (the at-rest twin of each view is what the "
                             "change is measured against)")


@dataclass
class Batch:
    images: torch.Tensor  # [B,3,S,S] input views as stored (S = corpus input_size); forward_batch upsamples to 512
    cam2world: torch.Tensor  # [B,4,4]
    intrinsics: torch.Tensor  # [B,3,3] normalised
    target_images: torch.Tensor  # [B,V,3,H,W]
    target_cam2world: torch.Tensor  # [B,V,4,4]
    target_intrinsics: torch.Tensor  # [B,V,3,3]
    target_codes: torch.Tensor  # [B,V,135]
    dataset_ids: torch.Tensor  # [B] int64 (the ids the model gets)
    splits: list[str]
    target_masks: torch.Tensor | None = None  # [B,V,1,H,W] expression masks in {0,1}, when the corpus has them
    target_feature_masks: torch.Tensor | None = None  # [B,V,1,H,W] feature masks in {0,1}, likewise

    def to(self, device) -> "Batch":
        return Batch(**{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()})


def encoder_image(image: torch.Tensor) -> torch.Tensor:
    """Corpus input views [B,3,S,S] -> the encoder's 512x512 (bilinear upsampling)."""
    if image.shape[-1] == IMAGE_RESOLUTION:
        return image
    return F.interpolate(image, size=(IMAGE_RESOLUTION, IMAGE_RESOLUTION), mode="bilinear", align_corners=False)


def collate(samples: list[Sample], views: int, rng: np.random.Generator, sinks: bool = True,
            rest_pairs: bool = False) -> Batch:
    """Stack samples; keep ``views`` of each sample's target views (chosen by rng). ``rest_pairs``: the target
    axis becomes [the V picked views, their V at-rest twins] (codes ``pose_only``, same cameras and masks)."""
    pick = [np.sort(rng.choice(s.target_images.shape[0], size=views, replace=False)) for s in samples]
    st = lambda f: torch.stack([f(s, p) for s, p in zip(samples, pick)])  # noqa: E731
    ids = [s.dataset_id if sinks else DATASET_ID_3D for s in samples]
    batch = Batch(
        images=torch.stack([s.input_image for s in samples]),  # upsampled on the model's device (forward_batch)
        cam2world=torch.stack([s.input_cam2world for s in samples]),
        intrinsics=torch.stack([s.input_intrinsics for s in samples]),
        target_images=st(lambda s, p: s.target_images[p]),
        target_cam2world=st(lambda s, p: s.target_cam2world[p]),
        target_intrinsics=st(lambda s, p: s.target_intrinsics[p]),
        target_codes=st(lambda s, p: s.target_codes[p]),
        dataset_ids=torch.tensor(ids, dtype=torch.long),
        splits=[s.split for s in samples],
        target_masks=(st(lambda s, p: s.target_masks[p])
                      if all(s.target_masks is not None for s in samples) else None),
        target_feature_masks=(st(lambda s, p: s.target_feature_masks[p])
                              if all(s.target_feature_masks is not None for s in samples) else None),
    )
    if not rest_pairs:
        return batch
    if any(s.target_rest_images is None for s in samples):
        raise ValueError("rest_pairs needs a corpus with at-rest renders (built with expression masks, since this "
                         "version); rebuild the corpus")
    twins = lambda x, y: torch.cat([x, y], dim=1)  # noqa: E731  [B,V,...] + [B,V,...] -> [B,2V,...]
    batch.target_images = twins(batch.target_images, st(lambda s, p: s.target_rest_images[p]))
    batch.target_codes = twins(batch.target_codes, pose_only(batch.target_codes))
    batch.target_cam2world = twins(batch.target_cam2world, batch.target_cam2world)
    batch.target_intrinsics = twins(batch.target_intrinsics, batch.target_intrinsics)
    batch.target_masks = twins(batch.target_masks, batch.target_masks)
    if batch.target_feature_masks is not None:  # the features sit where they are at rest too (lids over open eyes)
        batch.target_feature_masks = twins(batch.target_feature_masks, batch.target_feature_masks)
    return batch


class SampleSource:
    """Where samples come from: a disk cache (``corpus_cache``) or the corpus generator (rendering on the fly)."""

    def __init__(self, cfg: TrainConfig):
        self.cache: dict[str, CachedSplit] = {}
        self.corpus = None
        if cfg.corpus_cache:
            self.corpus_config = read_cache_config(cfg.corpus_cache)
            for split in ("2d", "3d"):
                path = Path(cfg.corpus_cache) / split
                if path.is_dir():
                    self.cache[split] = CachedSplit(path)
        else:
            self.corpus_config = CorpusConfig(**cfg.corpus)
            self.corpus = HeadCorpus(self.corpus_config)

    def count(self, split: str) -> int:
        if self.corpus is not None:
            return 1 << 30  # on the fly: any index
        if split not in self.cache:
            raise ValueError(f"the corpus cache has no {split!r} split; build it with --count-{split} > 0")
        return len(self.cache[split])

    def get(self, split: str, index: int) -> Sample:
        return self.corpus.sample(split, index) if self.corpus is not None else self.cache[split][index]


def batch_for_step(source: SampleSource, cfg: TrainConfig, step: int) -> Batch:
    """The batch of a step: a pure function of (seed, step) and the sample source."""
    rng = np.random.default_rng([cfg.seed, 99, step])
    if cfg.data == "mixed":
        n3 = int(rng.binomial(cfg.batch_size, cfg.mix_3d))
        splits = ["3d"] * n3 + ["2d"] * (cfg.batch_size - n3)
    else:
        splits = [cfg.data] * cfg.batch_size
    samples = [source.get(s, int(rng.integers(source.count(s)))) for s in splits]
    return collate(samples, cfg.views_per_sample, rng, cfg.sinks, cfg.rest_pairs)


def render_batch(g, target_cam2world: torch.Tensor, target_intrinsics: torch.Tensor, size: int,
                 backend: str = "auto") -> torch.Tensor:
    """Gaussians [B,V,G,*] seen by their cameras [B,V,4,4] / [B,V,3,3] -> images [B,V,3,size,size]."""
    b, v = target_cam2world.shape[:2]
    flat = lambda t: t.reshape(b * v, *t.shape[2:])  # noqa: E731
    view = viewmat_from_cam2world(flat(target_cam2world))[:, None]  # [BV,1,4,4]
    K = pixel_intrinsics(flat(target_intrinsics), size, size)[:, None]  # [BV,1,3,3]
    white = torch.ones(3, device=view.device)
    rgb, _ = rasterize_differentiable(flat(g.positions), flat(g.rotations), flat(g.scales), flat(g.opacities)[..., 0],
                                   sh_dc_to_rgb(flat(g.colors)), view, K, size, size, background=white,
                                   backend=backend)
    return rgb[:, 0].permute(0, 3, 1, 2).reshape(b, v, 3, size, size)


def masked_l1(pred: torch.Tensor, target: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean |pred - target| over the pixels of masks (expression or feature masks): pred, target [N,3,H,W], masks
    [N,1,H,W]."""
    err = ((pred - target).abs() * masks).sum()
    return err / (3.0 * masks.sum()).clamp_min(1.0)


def difference_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean |(pred_code - pred_rest) - (target_code - target_rest)| of rest-pair batches: pred, target
    [B,2V,3,H,W], views [0, V) rendered with their codes and [V, 2V) their at-rest twins (``collate``)."""
    v = pred.shape[1] // 2
    if pred.shape[1] != 2 * v or pred.shape != target.shape:
        raise ValueError(f"expected pred and target [B,2V,3,H,W] of the same shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    return ((pred[:, :v] - pred[:, v:]) - (target[:, :v] - target[:, v:])).abs().mean()


def build_model(cfg: TrainConfig):
    """(model in train mode, frozen DINOv2 feature extractor, DINOv2 description)."""
    model = load_official(cfg.preset, cfg.init_checkpoint, cfg.template, seed=DEFAULT_SEED)
    model.train().requires_grad_(True)
    _, extras = load_config_dict(cfg.preset)
    size = extras.get("dinov2", default_dino_size(model.cfg.feature_dim))
    dino, source = build_dino(size, cfg.dinov2, DEFAULT_SEED)  # the encoder engine's DINOv2 (export/serve)
    return model, dino.eval().requires_grad_(False), source


def forward_batch(model, dino, batch: Batch, size: int, backend: str = "auto", encoder_grad: bool = True
                  ) -> torch.Tensor:
    """Encode the inputs, animate with the target codes and sinks, render -> [B,V,3,size,size].
    ``encoder_grad=False``: the avatar codes are computed without a graph (a frozen encoder)."""
    images = encoder_image(batch.images)  # [B,3,512,512], on the device: 16x fewer bytes cross PCIe per step
    with torch.no_grad():
        feats = dino(images)  # [B,C,16,16]
    with torch.set_grad_enabled(encoder_grad and torch.is_grad_enabled()):
        code = model.encode(images[:, None], batch.cam2world[:, None], batch.intrinsics[:, None], feats[:, None])
    g = model.animate(code, batch.target_codes, batch.dataset_ids)
    return render_batch(g, batch.target_cam2world, batch.target_intrinsics, size, backend)


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False):
        torch.set_num_threads(cfg.threads)
        torch.set_flush_denormal(True)  # exp() of far-away pixels underflows in the rasterizer: denormals are slow
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.device = torch.device(cfg.device)
        self.model, self.dino, self.dino_source = build_model(cfg)
        self.model.to(self.device)
        self.dino.to(self.device)
        self.source = SampleSource(cfg)
        if cfg.corpus_cache:  # train_config.json records the corpus trained on (the cache's), not the CLI defaults
            cfg.corpus = asdict(self.source.corpus_config)
        self.size = self.source.corpus_config.image_size
        if cfg.views_per_sample > self.source.corpus_config.views:
            raise ValueError(f"views_per_sample={cfg.views_per_sample} but the corpus has "
                             f"{self.source.corpus_config.views} target views per sample")
        if cfg.freeze_encoder:
            self.model.requires_grad_(False)
            for p in self.model.animation_parameters():
                p.requires_grad_(True)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=cfg.lr)
        self.perceptual = PerceptualLoss(cfg.dino_loss_weights, cfg.sam_module, cfg.perceptual_start).to(self.device)
        if cfg.feature_weight > 0 and not self.source.corpus_config.feature_masks:
            raise ValueError("feature_weight > 0 needs a corpus with feature masks (its config has "
                             "feature_masks=False); build one with `python -m flexrt.corpus build --feature-masks`")
        if (cfg.expression_weight > 0 or cfg.rest_pairs) and not self.source.corpus_config.expression_masks:
            raise ValueError("expression_weight > 0 and rest_pairs need a corpus with expression masks (its "
                             "config has expression_masks=False); rebuild the corpus or turn them off")
        self.step = 0
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        if resume:
            self.load(self.latest_checkpoint())

    # ----------------------------------------------------------------------------------------- checkpoints
    @property
    def ckpt_dir(self) -> Path:
        return self.out / "checkpoints"

    def latest_checkpoint(self) -> Path:
        marker = self.ckpt_dir / "latest.json"
        if not marker.is_file():
            raise FileNotFoundError(f"nothing to resume: {marker} not found")
        return self.ckpt_dir / json.loads(marker.read_text())["weights"]

    def save(self) -> Path:
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        name = f"step_{self.step:07d}"
        weights = self.ckpt_dir / f"{name}.safetensors"
        save_state_dict(self.model, weights)  # official layout: load_official / export-engines / serve
        state = {"step": self.step, "optimizer": self.optimizer.state_dict(), "config": asdict(self.cfg),
                 "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(),
                 "dinov2": self.dino_source}
        torch.save(state, self.ckpt_dir / f"{name}.train.pt")
        (self.ckpt_dir / "latest.json").write_text(json.dumps({"weights": weights.name, "step": self.step}))
        old = sorted(self.ckpt_dir.glob("step_*.safetensors"))[:-self.cfg.keep_checkpoints]
        for w in old:
            w.unlink()
            w.with_name(w.name.replace(".safetensors", ".train.pt")).unlink(missing_ok=True)
        return weights

    def load(self, weights: Path) -> None:
        from flexrt.model.checkpoint import check_state_dict, load_state_dict_file

        sd = load_state_dict_file(weights)
        check_state_dict(self.model, sd)
        self.model.load_state_dict(sd, strict=True)
        state = torch.load(weights.with_name(weights.name.replace(".safetensors", ".train.pt")),
                           map_location="cpu", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        logger.info("resumed from %s at step %d", weights, self.step)

    # ----------------------------------------------------------------------------------------- training
    def lr_at(self, step: int) -> float:
        cfg = self.cfg
        if cfg.lr_warmup > 0 and step < cfg.lr_warmup:
            return cfg.lr * (step + 1) / cfg.lr_warmup
        if cfg.lr_schedule == "cosine":
            t = min(1.0, (step - cfg.lr_warmup) / max(1, cfg.steps - cfg.lr_warmup))
            return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * t))
        return cfg.lr

    def train_step(self, batch: Batch) -> dict:
        cfg = self.cfg
        batch = batch.to(self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        pred = forward_batch(self.model, self.dino, batch, self.size, cfg.render_backend,
                             encoder_grad=not cfg.freeze_encoder)  # [B,V,3,H,W]
        p, t = pred.flatten(0, 1), batch.target_images.flatten(0, 1)
        loss, logs = photometric_loss(p, t)
        extra, plogs = self.perceptual(p, t, self.step)
        loss = loss + extra
        for weight, masks, key, missing in (  # the masked L1 terms: (weight, masks [B,V,1,H,W], log column, hint)
                (cfg.expression_weight, batch.target_masks, "expr_l1",
                 "expression_weight > 0 but the corpus samples carry no expression masks (a cache built before "
                 "masks existed: rebuild it)"),
                (cfg.feature_weight, batch.target_feature_masks, "feat_l1",
                 "feature_weight > 0 but the corpus samples carry no feature masks (build the corpus with "
                 "--feature-masks)")):
            if weight > 0:
                if masks is None:
                    raise ValueError(missing)
                term = masked_l1(p, t, masks.flatten(0, 1))
                loss = loss + weight * term
                logs[key] = float(term.detach())
        if cfg.difference_weight > 0:
            d = difference_l1(pred, batch.target_images)
            loss = loss + cfg.difference_weight * d
            logs["diff_l1"] = float(d.detach())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, cfg.clip_grad if cfg.clip_grad > 0 else math.inf)
        self.optimizer.step()
        self.step += 1
        n3 = sum(s == "3d" for s in batch.splits)
        return {"loss": float(loss.detach()), **logs, **plogs, "lr": self.lr_at(self.step - 1),
                "n2d": len(batch.splits) - n3, "n3d": n3, "grad_norm": float(gnorm)}

    def run(self, steps: int | None = None, progress: bool = True) -> list[dict]:
        """Train until ``steps`` (default cfg.steps) total steps; returns the logged rows."""
        from tqdm import tqdm

        cfg = self.cfg
        total = cfg.steps if steps is None else steps
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
        log_path = self.out / "log.csv"
        new_log = not log_path.is_file() or self.step == 0
        fields = list(LOG_FIELDS)
        if not new_log:  # a resumed run appends under the header its log already has (maybe an older LOG_FIELDS)
            with log_path.open(newline="") as f:
                fields = next(csv.reader(f), fields)
        logger.info("%s", self.perceptual.describe())
        logger.info("encoder DINOv2: %s (frozen)", self.dino_source)
        rows = []
        tb = None
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise RuntimeError("--tensorboard needs the tensorboard package (pip install tensorboard)") from e
            tb = SummaryWriter(str(self.out / "tensorboard"))
        t0 = time.perf_counter()
        with open(log_path, "w" if new_log else "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            if new_log:
                writer.writeheader()
            bar = tqdm(total=total, initial=self.step, desc="train", unit="step", disable=not progress)
            t_last, s_last = time.perf_counter(), self.step
            s_start, t_probe = self.step, None
            while self.step < total:
                row = self.train_step(batch_for_step(self.source, cfg, self.step))
                bar.update(1)
                if cfg.time_budget_s > 0 and self.step - s_start == BUDGET_PROBE_FROM:
                    t_probe = time.perf_counter()
                elif cfg.time_budget_s > 0 and self.step - s_start == BUDGET_PROBE_STEPS:
                    # the time budget fixes the total once, early, so the lr schedule still ends at the last step
                    sec = (time.perf_counter() - t_probe) / (BUDGET_PROBE_STEPS - BUDGET_PROBE_FROM)
                    left = cfg.time_budget_s - (time.perf_counter() - t0)
                    fit = self.step + max(0, int(left / sec))
                    if fit < total:
                        logger.info("time budget %.0f s at %.3f s/step: %d steps instead of %d",
                                    cfg.time_budget_s, sec, fit, total)
                        total = fit
                        self.cfg = cfg = replace(cfg, steps=total)
                        (self.out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
                        bar.total = total
                        bar.refresh()
                bar.set_postfix(loss=f"{row['loss']:.4f}", ssim=f"{row['ssim']:.3f}")
                if self.step % cfg.log_every == 0 or self.step == total:
                    now = time.perf_counter()
                    row.update(step=self.step, wall_s=round(now - t0, 2),
                               sec_per_step=round((now - t_last) / max(1, self.step - s_last), 3))
                    t_last, s_last = now, self.step
                    writer.writerow({k: row.get(k, "") for k in fields})
                    f.flush()
                    if tb is not None:
                        for k in ("loss", "l1", "ssim", "dino", "sam", "lr", "grad_norm"):
                            if k in row:
                                tb.add_scalar(f"train/{k}", row[k], self.step)
                    rows.append(row)
                if self.step % cfg.ckpt_every == 0 or self.step == total:
                    self.save()
            bar.close()
        if tb is not None:
            tb.close()
        return rows


def resume_config(out: str | Path, **overrides) -> TrainConfig:
    """The TrainConfig of an existing run directory (``<out>/train_config.json``), with overrides."""
    path = Path(out) / "train_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a training run directory")
    return replace(TrainConfig(**json.loads(path.read_text())), **overrides)


__all__ = ["TrainConfig", "Trainer", "Batch", "collate", "batch_for_step", "render_batch", "forward_batch",
           "masked_l1",
           "build_model", "difference_l1", "encoder_image", "SampleSource", "resume_config", "LOG_FIELDS"]
