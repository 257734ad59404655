"""Driving sequences: what `flexavatar stream` / `demo` send, frame by frame (format: docs/SEQUENCES.md).

    seq = load_sequence("driving.npz")         # expression_codes [T,135] (+ cameras); ValueError when malformed
    seq = load_sequence("synthetic", frames=121)   # the procedural sequence below, no file needed
    save_sequence(synthetic_sequence(121, cameras=True), "example.npz")

A sequence file is an .npz with ``expression_codes`` float [T,135] (layout: spec §10, README of the reference
assets) and optionally ``cam2world_head_centric`` [T,4,4] (OpenCV cam-to-world in the head-centric FLAME space)
with ``intrinsics`` [T,3,3] in pixels of an image of ``image_size`` (H, W; default 512x512). In memory the
intrinsics are normalised (divided by the image size), as everywhere in flexrt.model.camera.
"""
from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EXPRESSION_DIM = 135
ROTATION_6D_SLOTS = (100, 106, 114, 120, 126)  # eyes (x2), neck, jaw, global rotation: 6D each (spec §10)
SYNTHETIC = "synthetic"  # the name that load_sequence answers with synthetic_sequence


@dataclass
class Sequence:
    expressions: np.ndarray  # [T,135] float32
    cam2world: np.ndarray | None  # [T,4,4] OpenCV head-centric
    intrinsics: np.ndarray | None  # [T,3,3] normalised
    name: str


def neutral_expression() -> np.ndarray:
    """Zeros with the identity 6D rotation [1,0,0,0,1,0] in the eyes (x2), neck, jaw and global-rotation slots."""
    code = np.zeros(EXPRESSION_DIM, dtype=np.float32)
    for start in ROTATION_6D_SLOTS:
        code[start:start + 6] = (1, 0, 0, 0, 1, 0)
    return code


def synthetic_sequence(frames: int, fps: float = 30.0, cameras: bool = False) -> Sequence:
    """A procedural driving sequence: the neutral code plus smooth sinusoids on exp[0:10] and a jaw that opens
    and closes (rotation about x, first two rows of the matrix as the 6D code). ``cameras``: also a camera per
    frame, flexrt.model.camera.default_camera swinging +-15 degrees of yaw (imports torch)."""
    if frames < 1:
        raise ValueError(f"a synthetic sequence needs at least 1 frame, got {frames}")
    t = np.arange(frames, dtype=np.float32) / fps  # seconds
    codes = np.repeat(neutral_expression()[None], frames, axis=0)  # [T,135]
    k = np.arange(10, dtype=np.float32)
    codes[:, 0:10] = 1.5 * np.sin(2 * np.pi * (0.3 + 0.07 * k)[None] * t[:, None] + k[None])  # [T,10]
    angle = 0.15 * (1 - np.cos(2 * np.pi * 0.5 * t))  # [T] jaw opening, 0 .. 0.3 rad
    c, s = np.cos(angle), np.sin(angle)
    codes[:, 120:126] = np.stack([np.ones_like(c), 0 * c, 0 * c, 0 * c, c, -s], axis=1)
    cam2world = intrinsics = None
    if cameras:
        from flexrt.model.camera import default_camera

        pairs = [default_camera(yaw_deg=float(15.0 * np.sin(2 * np.pi * 0.25 * ti))) for ti in t]
        cam2world = np.stack([c2w.numpy() for c2w, _ in pairs]).astype(np.float32)  # [T,4,4]
        intrinsics = np.stack([K.numpy() for _, K in pairs]).astype(np.float32)  # [T,3,3] normalised
    return Sequence(codes.astype(np.float32), cam2world, intrinsics, SYNTHETIC)


def rotation_6d_angle(rows: np.ndarray) -> np.ndarray:
    """Rotation angle (radians) of 6D rotation codes [...,6] (two rows, unnormalised as a tracker writes them),
    decoded by flexrt.corpus.codes.rotation_6d_to_matrix (spec §10) -> [...] (imports torch)."""
    import torch

    from flexrt.corpus.codes import rotation_6d_to_matrix

    m = rotation_6d_to_matrix(torch.from_numpy(np.asarray(rows, dtype=np.float64)))
    trace = m.diagonal(dim1=-2, dim2=-1).sum(-1).numpy()
    return np.arccos(np.clip((trace - 1.0) / 2.0, -1.0, 1.0))


def widest_jaw_frame(sequence: Sequence) -> int:
    """Index of the frame whose jaw (code [120:126], spec §10) is rotated the most: the open mouth of a sequence."""
    from flexrt.corpus.codes import JAW

    return int(np.argmax(rotation_6d_angle(sequence.expressions[:, JAW])))


def turntable_sequence(expression: np.ndarray, frames: int = 48, name: str = "turntable") -> Sequence:
    """One expression code [135] seen by ``frames`` cameras orbiting the head once (yaw 0 .. 360 degrees, the
    flexrt.model.camera.default_camera distance and focal length), so the 3D shape is visible (imports torch)."""
    if frames < 1:
        raise ValueError(f"a turntable needs at least 1 frame, got {frames}")
    from flexrt.model.camera import default_camera

    pairs = [default_camera(yaw_deg=360.0 * i / frames) for i in range(frames)]
    cam2world = np.stack([c2w.numpy() for c2w, _ in pairs]).astype(np.float32)  # [T,4,4]
    intrinsics = np.stack([K.numpy() for _, K in pairs]).astype(np.float32)  # [T,3,3] normalised
    codes = np.repeat(np.asarray(expression, np.float32).reshape(1, EXPRESSION_DIM), frames, axis=0)
    return Sequence(codes, cam2world, intrinsics, name)


def blink_sequence(expression: np.ndarray, frames: int = 12, closed: float | None = None,
                   name: str = "blink") -> Sequence:
    """One expression code [135] with both eyelids [112:114] going from open (0) to ``closed`` (default
    ``corpus.codes.BLINK_CLOSED``) and open again over ``frames`` frames (a sin² profile: shut at the middle, the
    middle frame for an odd count), default camera. For drivers whose tracking has no
    blink (EMO-1's eyelids only squint, 0.39 -> 0.68), so a demo can show that the eyes are modelled."""
    from flexrt.corpus.codes import BLINK_CLOSED, EYELIDS

    closed = BLINK_CLOSED if closed is None else closed
    if frames < 3:
        raise ValueError(f"a blink needs at least 3 frames, got {frames}")
    if not 0.0 < closed <= 1.5:
        raise ValueError(f"closed is an eyelid value in (0, 1.5], got {closed}")

    codes = np.repeat(np.asarray(expression, np.float32).reshape(1, EXPRESSION_DIM), frames, axis=0)
    lids = closed * np.sin(np.pi * np.arange(frames) / (frames - 1)) ** 2  # 0 .. closed .. 0
    codes[:, EYELIDS] = lids[:, None].astype(np.float32)
    return Sequence(codes, None, None, name)


def load_sequence(path: str | Path, frames: int | None = None, cameras: bool = False) -> Sequence:
    """A driving-sequence .npz (module docstring), or ``"synthetic"`` for synthetic_sequence(frames or 121,
    cameras=cameras). Raises ValueError with one line saying what is wrong with the file."""
    if str(path) == SYNTHETIC:
        return synthetic_sequence(frames or 121, cameras=cameras)
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file (a driving sequence is an .npz; or pass 'synthetic')")
    return _load_npz(path, path)


def load_sequence_bytes(data: bytes, name: str = "upload", max_bytes: int = 64 << 20) -> Sequence:
    """The bytes of a driving-sequence .npz (an upload) -> Sequence named ``name``; the same checks and one-line
    ValueError as load_sequence. The arrays' sizes declared in the zip directory must add up to at most
    ``max_bytes`` (zipfile reads no more than a member declares), so a compressed upload cannot expand without
    bound."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise ValueError(f"{name}: not a readable .npz file ({type(exc).__name__})") from None
    if declared > max_bytes:
        raise ValueError(f"{name}: its arrays take {declared / 2**20:.1f} MiB, more than the {max_bytes / 2**20:g} "
                         "MiB allowed for an uploaded sequence")
    return _load_npz(io.BytesIO(data), Path(name))


def _load_npz(source, path: Path) -> Sequence:
    """``source`` (a path or a binary file object) -> Sequence; ``path`` names it in error messages."""
    try:
        z = np.load(source, allow_pickle=False)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable .npz file ({type(exc).__name__})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: is a single .npy array; a driving sequence is an .npz with 'expression_codes' "
                         "(np.savez(path, expression_codes=codes), see docs/SEQUENCES.md)")
    try:
        with z:
            if "expression_codes" not in z.files:
                raise ValueError(f"{path}: has no 'expression_codes' array (found {sorted(z.files)})")
            expressions = np.asarray(z["expression_codes"])
            cam2world = np.asarray(z["cam2world_head_centric"]) if "cam2world_head_centric" in z.files else None
            pixel_K = np.asarray(z["intrinsics"]) if "intrinsics" in z.files else None
            size = np.asarray(z["image_size"]) if "image_size" in z.files else np.array([512, 512])
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable .npz file ({type(exc).__name__})") from None
    return _validated(path, expressions, cam2world, pixel_K, size)


def _validated(path, expressions, cam2world, pixel_K, size) -> Sequence:
    if expressions.dtype.kind not in "fiu" or expressions.ndim != 2 or expressions.shape[1] != EXPRESSION_DIM:
        raise ValueError(f"{path}: expression_codes must be a float array [T,{EXPRESSION_DIM}], got "
                         f"{expressions.dtype} {list(expressions.shape)}")
    if len(expressions) == 0:
        raise ValueError(f"{path}: expression_codes has no frames")
    bad = np.flatnonzero(~np.isfinite(expressions).all(axis=1))
    if len(bad):
        raise ValueError(f"{path}: expression_codes has NaN or Inf in {len(bad)} frames (first: frame {bad[0]})")
    T = len(expressions)
    intrinsics = None
    if cam2world is not None:
        if cam2world.shape != (T, 4, 4) or not np.isfinite(cam2world).all():
            raise ValueError(f"{path}: cam2world_head_centric must be finite [T,4,4] = [{T},4,4], got "
                             f"{list(cam2world.shape)}")
        cam2world = cam2world.astype(np.float32)
        if pixel_K is not None:
            if pixel_K.shape != (T, 3, 3) or not np.isfinite(pixel_K).all():
                raise ValueError(f"{path}: intrinsics must be finite [T,3,3] = [{T},3,3] in pixels, got "
                                 f"{list(pixel_K.shape)}")
            if size.shape != (2,) or (size <= 0).any():
                raise ValueError(f"{path}: image_size must be (H, W), got {size.tolist()}")
            intrinsics = pixel_K.astype(np.float32).copy()
            intrinsics[:, 0, :] /= float(size[1])  # row 0 (fx, 0, cx) / width; image_size is (H, W)
            intrinsics[:, 1, :] /= float(size[0])  # row 1 (0, fy, cy) / height
            intrinsics[:, 2, :] = (0.0, 0.0, 1.0)
    return Sequence(expressions.astype(np.float32), cam2world, intrinsics, Path(path).stem)


def save_sequence(sequence: Sequence, path: str | Path, image_size: tuple[int, int] = (512, 512)) -> None:
    """Write ``sequence`` in the documented .npz format (pixel intrinsics for ``image_size`` = (H, W))."""
    arrays = {"expression_codes": sequence.expressions.astype(np.float32)}
    if sequence.cam2world is not None:
        arrays["cam2world_head_centric"] = sequence.cam2world.astype(np.float32)
        if sequence.intrinsics is not None:
            K = sequence.intrinsics.astype(np.float32).copy()
            K[:, 0, :] *= image_size[1]
            K[:, 1, :] *= image_size[0]
            K[:, 2, :] = (0.0, 0.0, 1.0)
            arrays["intrinsics"] = K
            arrays["image_size"] = np.array(image_size, dtype=np.int64)
    np.savez(path, **arrays)
