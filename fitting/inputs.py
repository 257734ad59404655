"""Fitting inputs: tracked observations (images + cameras + expression codes) from files. docs/FITTING.md.

The runtime consumes *tracked* inputs: the head-centric cameras and the 135-d expression codes come from a FLAME
tracker (Pixel3DMM in the official FlexAvatar pipeline); this module only reads them. It does not matte either:
images are expected on a white background (RGBA images are composited onto white with their alpha; an ``alpha``
array in the .npz does the same).

Accepted layouts (one ``.npz`` per photo, or one ``.npz`` for N frames):

* arrays, with or without the leading N axis (a single photo may omit it):
    cameras      ``input_cam2world`` [N,4,4]             or ``cam2world_head_centric`` [N,4,4]   (OpenCV, head-centric)
    intrinsics   ``input_intrinsics_normalized`` [N,3,3]  or pixel intrinsics ``input_intrinsics_pixels`` /
                 ``intrinsics`` [N,3,3] of the image (normalised here: row 0 / W, row 1 / H; ``image_size`` (H, W)
                 if they were tracked at another size)
    expressions  ``input_expression_code`` [N,135]        or ``expression_codes`` [N,135]
* images, one of: ``images`` [N,H,W,3|4] uint8 inside the .npz; ``image_files`` [N] paths relative to the .npz;
  the photo beside a single-photo file (``<name>_input.npz`` -> ``<name>.png|.jpg|.jpeg``); or frames of an
  ``.mp4`` given separately (``video=``), ``frame_indices`` [N] picking them (default 0..N-1).
* optional ``alpha`` [N,H,W] (uint8 or float in [0,1]): matting alpha, composited onto white.

The per-photo spelling is that of ``shared/reference/assets/images/<name>_input.npz``; the sequence spelling is
that of the tracked driving sequences (``reference/assets/expressions/*.npz``), so a tracked video plus its mp4
is a fitting input as it is.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .fit import FitInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CAMERA_KEYS = ("input_cam2world", "cam2world_head_centric")
NORMALISED_K_KEYS = ("input_intrinsics_normalized",)
PIXEL_K_KEYS = ("input_intrinsics_pixels", "intrinsics")
EXPRESSION_KEYS = ("input_expression_code", "expression_codes")


@dataclass
class FitInputs:
    """Observations for ``fit_avatar`` (numpy, float32)."""

    images: np.ndarray  # [N, 3, H, W] in [0, 1], white background
    cam2world: np.ndarray  # [N, 4, 4] OpenCV, head-centric
    intrinsics: np.ndarray  # [N, 3, 3] normalised
    expression_codes: np.ndarray  # [N, 135]
    names: list[str] = field(default_factory=list)  # one label per frame (file stem / frame index)

    @property
    def n(self) -> int:
        return self.images.shape[0]

    def select(self, index: Sequence[int]) -> "FitInputs":
        idx = list(index)
        return FitInputs(self.images[idx], self.cam2world[idx], self.intrinsics[idx], self.expression_codes[idx],
                         [self.names[i] for i in idx])


def _pick(z, keys: Sequence[str], path: Path, what: str, required: bool = True):
    for k in keys:
        if k in z.files:
            return k, np.asarray(z[k])
    if required:
        raise FitInputError(f"{path.name}: no {what} (expected one of {list(keys)}; found {sorted(z.files)})")
    return None, None


def _with_n(arr: np.ndarray, tail: tuple[int, ...], name: str, path: Path) -> np.ndarray:
    if arr.shape == tail:
        arr = arr[None]
    if arr.ndim != len(tail) + 1 or tuple(arr.shape[1:]) != tail:
        raise FitInputError(f"{path.name}: {name} must be [N,{','.join(map(str, tail))}] or "
                            f"[{','.join(map(str, tail))}], got {list(arr.shape)}")
    return arr.astype(np.float32)


def _to_float_rgb(frames: np.ndarray, what: str) -> np.ndarray:
    """uint8 / float frames [N, H, W, 3|4] -> float32 [N, H, W, 3] in [0, 1]; RGBA composited onto white."""
    if frames.ndim != 4 or frames.shape[-1] not in (3, 4):
        raise FitInputError(f"{what}: images must be [N,H,W,3] RGB or [N,H,W,4] RGBA, got {list(frames.shape)}")
    x = frames.astype(np.float32) / 255.0 if frames.dtype == np.uint8 else frames.astype(np.float32)
    if x.shape[-1] == 4:
        x = x[..., :3] * x[..., 3:] + (1.0 - x[..., 3:])
    return x


def _read_image(path: Path) -> np.ndarray:
    """An image file -> float32 [H, W, 3] in [0, 1] (RGBA / transparent palettes composited onto white)."""
    from PIL import Image

    if not path.is_file():
        raise FitInputError(f"image not found: {path}")
    with Image.open(path) as im:
        has_alpha = "A" in im.getbands() or (im.mode == "P" and "transparency" in im.info)
        arr = np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
    return _to_float_rgb(arr[None], path.name)[0]


def read_video_frames(path: str | Path, indices: Sequence[int] | None) -> np.ndarray:
    """Frames of an .mp4 -> uint8 [N, H, W, 3] (``indices``: which frames; None: all). Needs imageio-ffmpeg."""
    path = Path(path)
    if not path.is_file():
        raise FitInputError(f"video not found: {path}")
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        raise FitInputError(f"reading {path.name} needs imageio and imageio-ffmpeg: pip install imageio imageio-ffmpeg "
                            "(the `video` extra)") from None
    wanted = None if indices is None else {int(i) for i in indices}
    frames: dict[int, np.ndarray] = {}
    n_read = 0
    with imageio.get_reader(str(path), "ffmpeg") as reader:
        for i, frame in enumerate(reader):
            n_read = i + 1
            if wanted is None or i in wanted:
                frames[i] = np.asarray(frame)[..., :3]
            if wanted is not None and len(frames) == len(wanted):
                break
    order = sorted(frames) if indices is None else [int(i) for i in indices]
    missing = [i for i in order if i not in frames]
    if missing or not order:
        raise FitInputError(f"{path.name}: frames {missing[:8]} not found (the video has {n_read} frames)")
    return np.stack([frames[i] for i in order])


def _sibling_image(npz: Path) -> Path:
    stem = npz.stem[: -len("_input")] if npz.stem.endswith("_input") else npz.stem
    for suffix in IMAGE_SUFFIXES:
        cand = npz.with_name(stem + suffix)
        if cand.is_file():
            return cand
    raise FitInputError(f"{npz.name}: no images inside (keys 'images' / 'image_files') and no photo beside it "
                        f"({stem}.png/.jpg)")


def _load_npz(path: Path, video: Path | None) -> FitInputs:
    if not path.is_file():
        raise FitInputError(f"inputs file not found: {path}")
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise FitInputError(f"{path.name} is not a readable .npz ({type(exc).__name__}: {exc})") from None
    with z:
        _, c2w = _pick(z, CAMERA_KEYS, path, "cameras")
        c2w = _with_n(c2w, (4, 4), "cam2world", path)
        _, expr = _pick(z, EXPRESSION_KEYS, path, "expression codes")
        expr = _with_n(expr, (135,), "expression codes", path)
        k_key, K = _pick(z, NORMALISED_K_KEYS, path, "intrinsics", required=False)
        pixel = K is None
        if pixel:
            k_key, K = _pick(z, PIXEL_K_KEYS, path, "intrinsics (normalised or pixel)")
        K = _with_n(K, (3, 3), k_key, path)
        tracked_size = np.asarray(z["image_size"]).astype(np.float64) if "image_size" in z.files else None
        # images
        if video is not None:
            indices = np.asarray(z["frame_indices"]).astype(np.int64) if "frame_indices" in z.files \
                else np.arange(c2w.shape[0])
            frames = read_video_frames(video, indices.tolist())
            names = [f"{video.stem}[{i}]" for i in indices.tolist()]
        elif "images" in z.files:
            frames = np.asarray(z["images"])
            frames = frames[None] if frames.ndim == 3 else frames
            names = [f"{path.stem}[{i}]" for i in range(frames.shape[0])]
        elif "image_files" in z.files:
            files = [path.parent / str(f) for f in np.asarray(z["image_files"]).reshape(-1).tolist()]
            loaded = [_read_image(f) for f in files]
            if len({im.shape for im in loaded}) != 1:
                sizes = {f.name: im.shape[:2] for f, im in zip(files, loaded)}
                raise FitInputError(f"{path.name}: the images differ in size {sizes}; crop them to one size")
            frames, names = np.stack(loaded), [f.stem for f in files]
        else:
            img = _sibling_image(path)
            frames, names = _read_image(img)[None], [img.stem]
        images = _to_float_rgb(frames, path.name)
        if "alpha" in z.files:
            a = np.asarray(z["alpha"])
            a = (a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32))
            a = a[None] if a.ndim == 2 else a
            if a.shape != images.shape[:3]:
                raise FitInputError(f"{path.name}: alpha must be [N,H,W] = {list(images.shape[:3])}, got {list(a.shape)}")
            images = images * a[..., None] + (1.0 - a[..., None])
    n = images.shape[0]
    for name, arr in (("cameras", c2w), ("intrinsics", K), ("expression codes", expr)):
        if arr.shape[0] != n:
            raise FitInputError(f"{path.name}: {n} images but {arr.shape[0]} {name}")
    h, w = images.shape[1:3]
    if pixel:
        size_h, size_w = (tracked_size[0], tracked_size[1]) if tracked_size is not None else (h, w)
        K = K.copy()
        K[:, 0, :] /= size_w
        K[:, 1, :] /= size_h
        K[:, 2, :] = (0.0, 0.0, 1.0)
    return FitInputs(np.ascontiguousarray(images.transpose(0, 3, 1, 2)), c2w, K.astype(np.float32), expr, names)


def load_fit_inputs(paths: str | Path | Sequence[str | Path], video: str | Path | None = None,
                    max_frames: int | None = None) -> FitInputs:
    """One or more input .npz files (and an optional .mp4 for a per-frame .npz) -> FitInputs.

    ``max_frames``: keep at most this many frames, evenly spaced (a video has far more frames than a fit needs)."""
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not paths:
        raise FitInputError("no inputs given: pass one or more .npz files")
    if video is not None and len(paths) != 1:
        raise FitInputError(f"a video goes with exactly one per-frame .npz, got {len(paths)} .npz files")
    parts = [_load_npz(p, Path(video) if video is not None else None) for p in paths]
    sizes = {p.images.shape[-2:] for p in parts}
    if len(sizes) != 1:
        raise FitInputError(f"the inputs differ in image size {sorted(sizes)}; all observations need one size")
    out = FitInputs(
        np.concatenate([p.images for p in parts]), np.concatenate([p.cam2world for p in parts]),
        np.concatenate([p.intrinsics for p in parts]), np.concatenate([p.expression_codes for p in parts]),
        [n for p in parts for n in p.names],
    )
    if max_frames is not None and out.n > max_frames:
        if max_frames < 1:
            raise FitInputError(f"max_frames must be >= 1, got {max_frames}")
        out = out.select(np.linspace(0, out.n - 1, max_frames).round().astype(int).tolist())
    return out


def save_fit_inputs(path: str | Path, inputs: FitInputs) -> None:
    """Write FitInputs as one N-frame .npz (images inside as uint8) in the per-photo spelling."""
    images = (np.clip(inputs.images.transpose(0, 2, 3, 1), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    np.savez(path, images=images, input_cam2world=inputs.cam2world.astype(np.float32),
             input_intrinsics_normalized=inputs.intrinsics.astype(np.float32),
             input_expression_code=inputs.expression_codes.astype(np.float32))


def border_whiteness(images: np.ndarray, width: int = 4) -> float:
    """Mean value of the outer ``width`` pixels of images [N, 3, H, W]: near 1 for crops matted onto white."""
    b = np.concatenate([images[..., :width, :].ravel(), images[..., -width:, :].ravel(),
                        images[..., :, :width].ravel(), images[..., :, -width:].ravel()])
    return float(b.mean())


__all__ = ["FitInputs", "load_fit_inputs", "save_fit_inputs", "read_video_frames", "border_whiteness"]
