"""Training samples from the procedural heads: monocular ("2D"), multi-view ("3D") and held-out evaluation.

Every sample is a pure function of (seed, split, index): ``HeadCorpus(cfg).sample(split, i)`` gives the same
tensors on every machine and every call. A sample holds one input view (what the encoder sees: a frontal-ish
photo, rendered at ``input_size`` and upsampled to 512 by the trainer) and V target views with the expression code
that drives each (what the decoder must reproduce).

- ``"3d"`` (bias sink 1, ``DATASET_ID_3D``): few identities (``identities_3d``); the V targets are one frame seen
  by V cameras on the sphere (``cameras.sphere``: back and sides included); the code is the true one.
- ``"2d"`` (bias sink 0): many identities (``identities_2d``); self-reenactment: V frames of the same person, each
  seen by its own camera in the frontal cone, each driven by the code *tracked from that frame*. The tracker assumes
  a fixed frontal camera, so it explains the camera's offset as head rotation: the code's R is the true head
  rotation composed with the inverse camera offset (``leak`` = 1: all of it). This is the monocular entanglement
  of the paper: the driving code tells the model where the target camera is.
- ``"heldout"``: identities never used in training; one frame (true code) seen from the ``EVAL_VIEWS`` cameras
  (front, left, right, back), for PSNR/SSIM on front and on back/side views.

Images are float32 in [0, 1], channels first ([3,H,W]); white background.

Expression masks (``expression_masks``, on by default): for every target view, the pixels that the face's own
motion changes, i.e. where the render differs (by more than ``MASK_THRESHOLD`` in a channel, grown by
``MASK_GROW`` pixels) from the same head in the same pose with the expression at rest (``codes.pose_only``: mouth
shut, eyes forward and open, exp 0). At 64x64 the mouth and eyes are ~5 % of a frame; the trainer can weight
these pixels (``TrainConfig.expression_weight``) so that the model learns to follow the code within a short run.
The at-rest renders are kept too (``Sample.target_rest_images``): with the at-rest code and the same camera they
are a second target that differs from the first only inside the mask (``TrainConfig.rest_pairs``).

Feature masks (``feature_masks``, off by default): for every target view, the pixels where the facial features are
visible: eyeballs, the skin over the eye openings (the lids), lips and mouth interior (``HeadRig`` region
"features"), rendered with the rest of the head as an occluder and grown by ``MASK_GROW``. Unlike the expression
masks they cover the eyes whether or not the code moves them, so the trainer can weight the features a model
must draw before it can show a blink (``TrainConfig.feature_weight``).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from flexrt.model.flexavatar import DATASET_ID_2D, DATASET_ID_3D

from . import cameras
from .codes import ROT, euler_matrix, pose_only, rotation_6d_to_matrix, sample_codes
from .head import HeadIdentity, HeadRig, rgb_to_sh_dc, sample_identity
from .render import render

SPLITS = ("2d", "3d", "heldout")
_SPLIT_KEYS = {"2d": 2, "3d": 3, "heldout": 7}
DATASET_IDS = {"2d": DATASET_ID_2D, "3d": DATASET_ID_3D, "heldout": DATASET_ID_3D}
MASK_THRESHOLD = 0.03  # a pixel belongs to the expression mask when a channel moves by more than this (0..1)
MASK_GROW = 1  # pixels the mask is grown by (3x3 max filter)


@dataclass(frozen=True)
class CorpusConfig:
    seed: int = 0
    identities_3d: int = 8  # multi-view identities ("limited")
    identities_2d: int = 2000  # monocular identities ("many more")
    identities_heldout: int = 16
    image_size: int = 64  # target views
    input_size: int = 128  # the input view (the trainer upsamples it to the encoder's 512)
    views: int = 2  # target views per 2D / 3D sample
    template_res: int = 96  # corpus head detail: (res - 2)^2 surface Gaussians
    cone_deg: float = 25.0  # half-angle of the monocular camera cone
    input_cone_deg: float = 20.0  # half-angle of the input-view cone (all splits)
    leak: float = 1.0  # 2D: share of the camera's offset from frontal that the tracked head rotation absorbs
    pose_scale: float = 1.0  # spread of the head pose in the codes (1: the shipped sequences' range)
    exp_scale: float = 1.0  # spread of the exp coefficients the rig ignores (the shipped sequences: ~1.7)
    translation_scale: float = 1.0  # spread of t on top of pose_scale (sample_codes)
    expression_masks: bool = True  # also render each target with the expression at rest -> Sample.target_masks
    feature_masks: bool = False  # also render where eyes, lids, lips, mouth show -> Sample.target_feature_masks

    def code_spread(self) -> dict:
        return {"exp_scale": self.exp_scale, "translation_scale": self.translation_scale}

    def num_identities(self, split: str) -> int:
        return {"2d": self.identities_2d, "3d": self.identities_3d, "heldout": self.identities_heldout}[_check(split)]


def _check(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown corpus split {split!r}; expected one of {SPLITS}")
    return split


@dataclass
class Sample:
    split: str
    dataset_id: int  # bias sink: 0 = 2D, 1 = 3D
    identity: int  # index of the person within its split
    input_image: torch.Tensor  # [3, S, S] in [0, 1]
    input_cam2world: torch.Tensor  # [4, 4] OpenCV, head-centric
    input_intrinsics: torch.Tensor  # [3, 3] normalised
    target_images: torch.Tensor  # [V, 3, H, W] in [0, 1]
    target_cam2world: torch.Tensor  # [V, 4, 4]
    target_intrinsics: torch.Tensor  # [V, 3, 3]
    target_codes: torch.Tensor  # [V, 135] the code that drives each target (2D: as tracked)
    target_masks: torch.Tensor | None = None  # [V, 1, H, W] in {0, 1}: pixels the expression moves (or None)
    target_rest_images: torch.Tensor | None = None  # [V, 3, H, W]: the same views, expression at rest (or None)
    target_feature_masks: torch.Tensor | None = None  # [V, 1, H, W] in {0, 1}: eyes, lids, lips, mouth (or None)
    meta: dict = field(default_factory=dict)


def _grow(mask: torch.Tensor) -> torch.Tensor:
    """Masks [V,1,H,W] in {0,1} grown by MASK_GROW pixels (a (2 MASK_GROW + 1)^2 max filter)."""
    return torch.nn.functional.max_pool2d(mask, 2 * MASK_GROW + 1, stride=1, padding=MASK_GROW)


def tracked_rotation(codes: torch.Tensor, cam2world: torch.Tensor, leak: float) -> torch.Tensor:
    """2D leak: codes [V,135] with R replaced by R_view @ R_true, where R_view is the head rotation that a
    fixed-frontal-camera tracker would see for the camera offset of cam2world [V,4,4] (scaled by ``leak``).
    The raw row lengths of the original 6D are kept."""
    pos = cam2world[:, :3, 3] - torch.tensor(cameras.LOOK_AT)
    yaw_c = torch.atan2(pos[:, 0], pos[:, 2])  # camera toward +x ...
    elev_c = torch.atan2(pos[:, 1], torch.sqrt(pos[:, 0] ** 2 + pos[:, 2] ** 2))
    r_view = euler_matrix(-leak * yaw_c, leak * elev_c, torch.zeros_like(yaw_c))  # ... looks like a turn to -x
    raw = codes[:, ROT]
    r_true = rotation_6d_to_matrix(raw)
    r = r_view @ r_true  # [V,3,3]
    scale = torch.stack([raw[:, 0:3].norm(dim=-1), raw[:, 3:6].norm(dim=-1)], -1)  # [V,2]
    out = codes.clone()
    out[:, ROT] = (r[:, :2, :] * scale[..., None]).reshape(-1, 6)
    return out


class HeadCorpus:
    """Deterministic sample generator. The rig runs on the CPU; ``device`` is where the frames are rasterized
    (``flexrt.kernels.rasterize``: "cpu" reference, or "cuda"; the same samples up to float rounding)."""

    def __init__(self, cfg: CorpusConfig = CorpusConfig(), device: str = "cpu"):
        self.cfg = cfg
        self.device = device
        self.rig = HeadRig(cfg.template_res)
        self._identities: dict[tuple[str, int], HeadIdentity] = {}

    def identity(self, split: str, index: int) -> HeadIdentity:
        """Person ``index`` of a split (its own random stream; splits never share a person)."""
        key = (_check(split), int(index))
        if key not in self._identities:
            rng = np.random.default_rng([self.cfg.seed, _SPLIT_KEYS[split], 0, int(index)])
            self._identities[key] = sample_identity(rng)
        return self._identities[key]

    def _render_frames(self, ident: HeadIdentity, codes: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor,
                       size: int, per_frame_camera: bool, region: str | None = None) -> torch.Tensor:
        """codes [F,135]; cameras [V,4,4]: one per frame (per_frame_camera) or all for frame 0 -> [V,3,size,size].
        ``region``: render that rig region black and everything else white (the head still occludes it)."""
        out = self.rig.gaussians(ident, codes)
        gs = out.gaussians
        if region is not None:
            black = out.regions[region][None, :, None]  # [1,N,1]
            gs = replace(gs, colors=rgb_to_sh_dc(torch.where(black, 0.0, 1.0).expand_as(gs.colors)))
        images = []
        for v in range(c2w.shape[0]):
            f = v if per_frame_camera else 0
            g = gs.map(lambda x: x[f])
            images.append(render(g, c2w[v:v + 1], K[v:v + 1], size, out.normals[f], self.device)[0])
        return torch.stack(images).permute(0, 3, 1, 2).contiguous()

    def _feature_masks(self, ident: HeadIdentity, codes: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor,
                       per_frame_camera: bool, size: int) -> torch.Tensor | None:
        """[V,1,size,size] in {0,1}: the pixels where the rig's "features" region shows (more than half covered),
        grown by MASK_GROW; None when feature_masks is off."""
        if not self.cfg.feature_masks:
            return None
        cover = self._render_frames(ident, codes, c2w, K, size, per_frame_camera, region="features")
        return _grow((cover.amin(1, keepdim=True) < 0.5).float())

    def _expression_masks(self, ident: HeadIdentity, codes: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor,
                          per_frame_camera: bool, images: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """images [V,3,H,W] of ``codes`` -> (masks [V,1,H,W] in {0,1}: where they differ from the expression at
        rest; the at-rest images [V,3,H,W]), or (None, None) when expression_masks is off."""
        if not self.cfg.expression_masks:
            return None, None
        rest = self._render_frames(ident, pose_only(codes), c2w, K, images.shape[-1], per_frame_camera)
        return _grow(((images - rest).abs().amax(1, keepdim=True) > MASK_THRESHOLD).float()), rest

    def sample(self, split: str, index: int) -> Sample:
        cfg = self.cfg
        n_id = cfg.num_identities(_check(split))
        person = int(index) % n_id
        ident = self.identity(split, person)
        rng = np.random.default_rng([cfg.seed, _SPLIT_KEYS[split], 1, int(index)])

        # 1. the input view: a frontal-ish photo of the person with a mild head pose and its own expression
        spread = cfg.code_spread()
        in_code = torch.from_numpy(sample_codes(rng, 1, pose_scale=0.45 * cfg.pose_scale, **spread))  # a calm photo
        in_c2w, in_K = cameras.frontal_cone(rng, 1, cfg.input_cone_deg)
        in_img = self._render_frames(ident, in_code, in_c2w, in_K, cfg.input_size, True)[0]

        # 2. targets
        if split == "3d":
            code = torch.from_numpy(sample_codes(rng, 1, pose_scale=cfg.pose_scale, **spread))
            c2w, K = cameras.sphere(rng, cfg.views)
            imgs = self._render_frames(ident, code, c2w, K, cfg.image_size, False)
            masks, rest = self._expression_masks(ident, code, c2w, K, False, imgs)
            features = self._feature_masks(ident, code, c2w, K, False, cfg.image_size)
            codes = code.expand(cfg.views, -1).clone()
        elif split == "2d":
            true_codes = torch.from_numpy(sample_codes(rng, cfg.views, pose_scale=cfg.pose_scale, **spread))
            c2w, K = cameras.frontal_cone(rng, cfg.views, cfg.cone_deg)
            imgs = self._render_frames(ident, true_codes, c2w, K, cfg.image_size, True)
            masks, rest = self._expression_masks(ident, true_codes, c2w, K, True, imgs)
            features = self._feature_masks(ident, true_codes, c2w, K, True, cfg.image_size)
            codes = tracked_rotation(true_codes, c2w, cfg.leak)
        else:  # held-out: one frame, the fixed evaluation views
            code = torch.from_numpy(sample_codes(rng, 1, pose_scale=0.45 * cfg.pose_scale, **spread))
            c2w, K = cameras.eval_views()
            imgs = self._render_frames(ident, code, c2w, K, cfg.image_size, False)
            masks, rest = self._expression_masks(ident, code, c2w, K, False, imgs)
            features = self._feature_masks(ident, code, c2w, K, False, cfg.image_size)
            codes = code.expand(c2w.shape[0], -1).clone()
        return Sample(split=split, dataset_id=DATASET_IDS[split], identity=person, input_image=in_img,
                      input_cam2world=in_c2w[0], input_intrinsics=in_K[0], target_images=imgs,
                      target_cam2world=c2w, target_intrinsics=K, target_codes=codes, target_masks=masks,
                      target_rest_images=rest, target_feature_masks=features,
                      meta={"index": int(index), "views": list(cameras.EVAL_VIEWS) if split == "heldout" else None})


# ------------------------------------------------------------------------------------------------------ disk cache
_ARRAYS = ("input_image", "input_cam2world", "input_intrinsics", "target_images", "target_cam2world",
           "target_intrinsics", "target_codes", "dataset_id", "identity", "index")
# absent with expression_masks=False / feature_masks=False (and in older caches)
_OPTIONAL = ("target_masks", "target_rest_images", "target_feature_masks")


def _to_u8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()


def _shard_complete(path: Path, indices: range) -> bool:
    if not path.is_file():
        return False
    with np.load(path) as z:
        return z["index"].tolist() == list(indices)


def _write_shard(corpus: HeadCorpus, split: str, indices: range, path: Path, bar=None) -> None:
    cols: dict[str, list] = {key: [] for key in _ARRAYS}
    for i in indices:
        s = corpus.sample(split, i)
        cols["input_image"].append(_to_u8(s.input_image))
        cols["target_images"].append(_to_u8(s.target_images))
        if s.target_masks is not None:
            cols.setdefault("target_masks", []).append(s.target_masks.to(torch.uint8).numpy())
            cols.setdefault("target_rest_images", []).append(_to_u8(s.target_rest_images))
        if s.target_feature_masks is not None:
            cols.setdefault("target_feature_masks", []).append(s.target_feature_masks.to(torch.uint8).numpy())
        for key in ("input_cam2world", "input_intrinsics", "target_cam2world", "target_intrinsics", "target_codes"):
            cols[key].append(getattr(s, key).numpy().astype(np.float32))
        cols["dataset_id"].append(s.dataset_id)
        cols["identity"].append(s.identity)
        cols["index"].append(i)
        if bar is not None:
            bar.update(1)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **{key: np.stack(v) for key, v in cols.items()})
    tmp.replace(path)


_WORKER: dict = {}


def _pool_shard(job: tuple) -> int:
    """Worker process: one shard (each worker builds its own corpus once, single-threaded)."""
    cfg, split, first, stop, path, device = job
    if _WORKER.get("cfg") != (cfg, device):
        torch.set_num_threads(1)
        torch.set_flush_denormal(True)
        _WORKER.update(cfg=(cfg, device), corpus=HeadCorpus(cfg, device))
    _write_shard(_WORKER["corpus"], split, range(first, stop), Path(path))
    return stop - first


def write_cache(corpus: HeadCorpus, split: str, count: int, out_dir: str | Path, shard_size: int = 100,
                progress: bool = True, jobs: int = 1) -> Path:
    """Render samples 0 .. count-1 of a split into ``out_dir/<split>/shard_<k>.npz`` (images as uint8) and write
    ``out_dir/corpus.json`` (the config). Complete shards already on disk are kept, so an interrupted build
    resumes. ``jobs`` > 1 renders shards in that many single-threaded processes (same bytes: every sample is a
    function of (seed, split, index)). Returns the split directory."""
    from tqdm import tqdm

    out = Path(out_dir)
    folder = out / _check(split)
    folder.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "corpus.json"
    if cfg_path.is_file() and read_cache_config(out) != corpus.cfg:
        raise ValueError(f"{out} holds a corpus with another config ({cfg_path}); use a new directory")
    cfg_path.write_text(json.dumps(asdict(corpus.cfg), indent=2))
    todo = []
    for k, first in enumerate(range(0, count, shard_size)):
        indices = range(first, min(first + shard_size, count))
        path = folder / f"shard_{k:04d}.npz"
        if not _shard_complete(path, indices):
            todo.append((indices, path))
    bar = tqdm(total=count, initial=count - sum(len(i) for i, _ in todo), desc=f"corpus {split}",
               disable=not progress, unit="sample")
    if jobs > 1 and len(todo) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(jobs) as pool:
            for n in pool.imap_unordered(_pool_shard, [(corpus.cfg, split, i.start, i.stop, str(p), corpus.device)
                                                          for i, p in todo]):
                bar.update(n)
    else:
        for indices, path in todo:
            _write_shard(corpus, split, indices, path, bar)
    bar.close()
    return folder


class CachedSplit:
    """Samples of one split read back from ``write_cache`` (all shards in memory; a few MB at 64x64)."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        shards = sorted(folder.glob("shard_*.npz")) if folder.is_dir() else []
        shards = [s for s in shards if not s.name.endswith(".tmp.npz")]
        if not shards:
            raise FileNotFoundError(f"corpus cache not found: {folder} has no shards "
                                    "(build it with `python -m flexrt.corpus build`)")
        parts = []
        for path in shards:
            with np.load(path) as z:
                missing = set(_ARRAYS) - set(z.files)
                if missing:
                    raise ValueError(f"{path} is not a corpus cache shard: it lacks {sorted(missing)}")
                parts.append({k: z[k] for k in _ARRAYS + _OPTIONAL if k in z.files})
        keys = list(_ARRAYS)
        for key in _OPTIONAL:
            have = sum(key in p for p in parts)
            if have == len(parts):
                keys.append(key)
            elif have:
                what = {"target_feature_masks": "feature masks"}.get(key, "expression masks")
                raise ValueError(f"{folder}: {have} of {len(parts)} shards have {key} ({what}); "
                                 "rebuild the corpus in a new directory")
        self.arrays = {k: np.concatenate([p[k] for p in parts]) for k in keys}
        self.split = folder.name

    def __len__(self) -> int:
        return int(self.arrays["index"].shape[0])

    def __getitem__(self, i: int) -> Sample:
        a = self.arrays
        f = lambda k: torch.from_numpy(np.ascontiguousarray(a[k][i]))  # noqa: E731
        return Sample(split=self.split, dataset_id=int(a["dataset_id"][i]), identity=int(a["identity"][i]),
                      input_image=f("input_image").float() / 255, input_cam2world=f("input_cam2world"),
                      input_intrinsics=f("input_intrinsics"), target_images=f("target_images").float() / 255,
                      target_cam2world=f("target_cam2world"), target_intrinsics=f("target_intrinsics"),
                      target_codes=f("target_codes"),
                      target_masks=f("target_masks").float() if "target_masks" in a else None,
                      target_rest_images=(f("target_rest_images").float() / 255
                                          if "target_rest_images" in a else None),
                      target_feature_masks=(f("target_feature_masks").float()
                                            if "target_feature_masks" in a else None),
                      meta={"index": int(a["index"][i])})


def read_cache_config(cache_dir: str | Path) -> CorpusConfig:
    path = Path(cache_dir) / "corpus.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a corpus cache directory")
    return CorpusConfig(**json.loads(path.read_text()))


__all__ = ["CorpusConfig", "HeadCorpus", "Sample", "SPLITS", "DATASET_IDS", "MASK_THRESHOLD", "MASK_GROW",
           "tracked_rotation", "write_cache",
           "CachedSplit", "read_cache_config"]
