"""The 135-d expression code of spec §10 as the corpus rig reads it, and a procedural sampler of such codes.

Layout (Pixel3DMM FLAME tracking, in this order; 6D rotations are raw, not normalised):

    exp      [0:100]    FLAME expression coefficients
    eyes     [100:112]  two 6D rotations (the first is the left eye, at +x)
    eyelids  [112:114]  two values, larger = more closed (the shipped sequences span about 0.0 .. 0.85)
    neck     [114:120]  6D rotation
    jaw      [120:126]  6D rotation (about +x: positive opens the mouth)
    R        [126:132]  global head rotation, 6D
    t        [132:135]  global head translation (metres)

6D rotations follow Zhou et al., "On the Continuity of Rotation Representations in Neural Networks" (CVPR 2019),
in the row convention that PyTorch3D uses (and that ``flexrt.runtime.cli.synthetic_sequence`` writes): the code is
the first two *rows* of the matrix; decoding is Gram-Schmidt on those rows, so raw unnormalised tracker values
(the shipped jaw codes have a first row of length ~1.4-3.1) decode to proper rotations. Points rotate as
``p' = M p`` (column vectors).

The sampler draws codes whose decoded controls cover the ranges of the three shipped FLAME sequences
(``../shared/reference/assets/expressions``; numbers in ``CODE_STATS``), and, like the tracker, writes the 6D
rows with random positive scales and a random eye roll (invisible for a round iris), so a model trained on it sees
raw-looking values. It needs nothing from ``../shared``.
"""
from __future__ import annotations

import math

import numpy as np
import torch

CODE_DIM = 135
EXP = slice(0, 100)
EYE_LEFT = slice(100, 106)
EYE_RIGHT = slice(106, 112)
EYELIDS = slice(112, 114)
BLINK_CLOSED = 0.9  # eyelid value of a shut eye (FLAME eyelid blendshapes; the rig's lids are fully down)
NECK = slice(114, 120)
JAW = slice(120, 126)
ROT = slice(126, 132)
TRANS = slice(132, 135)
ROTATION_SLOTS = {"eye_left": EYE_LEFT, "eye_right": EYE_RIGHT, "neck": NECK, "jaw": JAW, "rot": ROT}

# What the three shipped sequences span (EMO-1, SEN-10, EXP-1; measured with rig_controls below): jaw opening
# -0.5 .. 29 deg, head yaw up to ~45 deg, eyelids 0.01 .. 0.84, |exp| <= 3.1, std of exp[20:100] ~0.15-0.3.
CODE_STATS = {"jaw_deg": (-0.5, 29.3), "head_yaw_deg": 45.0, "eyelids": (0.01, 0.84), "exp_abs_max": 3.1}


def neutral_code(n: int | None = None) -> torch.Tensor:
    """The neutral code: zeros with [1,0,0,0,1,0] in the five 6D slots -> [135] (or [n,135])."""
    code = torch.zeros(CODE_DIM)
    for s in ROTATION_SLOTS.values():
        code[s] = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    return code if n is None else code.expand(n, CODE_DIM).clone()


def rotation_6d_to_matrix(d6: torch.Tensor) -> torch.Tensor:
    """Raw 6D [..., 6] -> rotation [..., 3, 3]: Gram-Schmidt on the two rows (Zhou et al. 2019, row convention)."""
    a1, a2 = d6[..., 0:3], d6[..., 3:6]
    b1 = torch.nn.functional.normalize(a1, dim=-1)
    b2 = torch.nn.functional.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-2)


def matrix_to_rotation_6d(m: torch.Tensor) -> torch.Tensor:
    """Rotation [..., 3, 3] -> 6D [..., 6] (its first two rows)."""
    return m[..., :2, :].reshape(m.shape[:-2] + (6,))


def euler_matrix(yaw: torch.Tensor, pitch: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """Ry(yaw) @ Rx(pitch) @ Rz(roll) [..., 3, 3], radians. yaw > 0 turns +z toward +x; pitch > 0 turns +z toward
    -y (a nod down; for the jaw: the chin goes down, the mouth opens); roll about +z."""
    yaw, pitch, roll = torch.broadcast_tensors(torch.as_tensor(yaw), torch.as_tensor(pitch), torch.as_tensor(roll))
    cy, sy = torch.cos(yaw), torch.sin(yaw)
    cp, sp = torch.cos(pitch), torch.sin(pitch)
    cr, sr = torch.cos(roll), torch.sin(roll)
    one, zero = torch.ones_like(yaw), torch.zeros_like(yaw)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).reshape(yaw.shape + (3, 3))
    rx = torch.stack([one, zero, zero, zero, cp, -sp, zero, sp, cp], -1).reshape(yaw.shape + (3, 3))
    rz = torch.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], -1).reshape(yaw.shape + (3, 3))
    return ry @ rx @ rz


def matrix_to_yaw_pitch(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where a rotation sends +z, as (yaw, pitch) radians with the signs of ``euler_matrix``."""
    f = m[..., :, 2]  # [..., 3] image of +z
    return torch.atan2(f[..., 0], f[..., 2]), torch.asin(torch.clamp(-f[..., 1], -1.0, 1.0))


def rig_controls(codes: torch.Tensor) -> dict[str, torch.Tensor]:
    """codes [..., 135] -> the controls the corpus rig uses (leading dims kept):

    jaw, eye_left, eye_right, neck, rot: [..., 3, 3] rotations; trans [..., 3]; closure [..., 2] in [0, 1]
    (eyelids: 0.25 -> open, 0.85 -> closed); smile (exp[0]), brow (exp[1]), cheek (exp[3]) in (-1, 1) via tanh.
    """
    if codes.shape[-1] != CODE_DIM:
        raise ValueError(f"expression codes must be [..., {CODE_DIM}], got {tuple(codes.shape)}")
    c = codes.float()
    out = {name: rotation_6d_to_matrix(c[..., s]) for name, s in ROTATION_SLOTS.items()}
    out["trans"] = c[..., TRANS]
    out["closure"] = torch.clamp((c[..., EYELIDS] - 0.25) / 0.6, 0.0, 1.0)
    out["smile"] = torch.tanh(c[..., 0] / 2.5)
    out["brow"] = torch.tanh(c[..., 1] / 1.2)
    out["cheek"] = torch.tanh(c[..., 3] / 1.2)
    return out


def _raw_6d(rng: np.random.Generator, m: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Rotation [n,3,3] -> tracker-like raw 6D [n,6]: rows scaled by random factors in [lo, hi], plus a little
    non-orthogonality (Gram-Schmidt removes it)."""
    n = m.shape[0]
    rows = m[:, :2, :] * rng.uniform(lo, hi, size=(n, 2, 1))
    rows[:, 1, :] += 0.05 * rng.standard_normal((n, 3)) * np.abs(rows[:, 1, :]).max(-1, keepdims=True)
    return rows.reshape(n, 6)


def _euler_np(yaw, pitch, roll) -> np.ndarray:
    return euler_matrix(torch.from_numpy(np.asarray(yaw, dtype=np.float64)),
                        torch.from_numpy(np.asarray(pitch, dtype=np.float64)),
                        torch.from_numpy(np.asarray(roll, dtype=np.float64))).numpy()


RIG_EXP = (0, 1, 3)  # the exp coefficients the rig uses: smile, brows, cheeks
IGNORED_EXP = [i for i in range(100) if i not in RIG_EXP]  # the other 97: the rig never reads them


TRANSLATION_STD = np.array([0.012, 0.012, 0.015])  # metres: std of t in ``sample_codes`` at pose_scale 1


def exp_spread(exp_scale: float = 1.0) -> np.ndarray:
    """[100]: the std of each exp coefficient in ``sample_codes`` (0.9 (k+1)^-0.35), the ones the rig ignores (all
    but RIG_EXP) times ``exp_scale``. (RIG_EXP's own draws are overridden or added to: smile, brows, cheeks.)"""
    spread = 0.9 * (np.arange(100) + 1.0) ** -0.35
    spread[[k for k in range(100) if k not in RIG_EXP]] *= float(exp_scale)
    return spread


def sample_codes(rng: np.random.Generator, n: int, pose_scale: float = 1.0, exp_scale: float = 1.0,
                 translation_scale: float = 1.0) -> np.ndarray:
    """n procedural expression codes [n, 135] float32 (see the module docstring). ``pose_scale`` scales the spread
    of the head pose (R: yaw std 18 degrees clipped at 2.5 std, pitch 10, roll 6; neck 6/6/4; t 12-15 mm); 1 covers
    the shipped sequences' rotations, smaller values give an easier corpus. ``exp_scale`` scales the spread of the
    exp coefficients the rig ignores (std 0.9 (k+1)^-0.35 at 1; the tracker's in the shipped sequences are ~1.7x
    that: median |x| 1.1 std, 15-18 % beyond 2.5 std, up to 7.7), ``translation_scale`` that of t on top of
    ``pose_scale`` (the shipped sequences move t by up to 4-8 cm). Neither changes the random draws, so at 1 the
    codes are those of earlier corpora."""
    d = math.radians
    codes = np.zeros((n, CODE_DIM), dtype=np.float64)
    codes[:, EXP] = rng.standard_normal((n, 100)) * exp_spread(exp_scale)[None]
    laugh = rng.random(n) < 0.25  # smiles / laughs: exp[0] far out, as in EMO-1
    codes[laugh, 0] = rng.uniform(1.5, 3.2, size=int(laugh.sum()))
    codes[:, 1] = rng.normal(0.0, 0.7, size=n)  # brows
    codes[:, 3] = rng.normal(0.0, 0.7, size=n)  # cheeks

    gaze_yaw = np.clip(rng.normal(0, d(15), n), -d(45), d(45))
    gaze_pitch = np.clip(rng.normal(0, d(12), n), -d(40), d(40))
    for s, sign in ((EYE_LEFT, -1.0), (EYE_RIGHT, 1.0)):
        vergence = sign * np.abs(rng.normal(0, d(2), n))
        m = _euler_np(gaze_yaw + vergence, gaze_pitch, rng.uniform(-d(35), d(35), n))
        codes[:, s] = _raw_6d(rng, m, 0.2, 0.9)

    base = rng.uniform(0.05, 0.7, n)
    blink = rng.random(n) < 0.15
    base[blink] = rng.uniform(0.75, 1.0, int(blink.sum()))
    codes[:, EYELIDS] = np.clip(base[:, None] + rng.normal(0, 0.03, (n, 2)), 0.0, 1.0)

    ps = float(pose_scale)
    codes[:, NECK] = _raw_6d(rng, _euler_np(rng.normal(0, ps * d(6), n), rng.normal(0, ps * d(6), n),
                                            rng.normal(0, ps * d(4), n)), 0.95, 1.25)
    wide = rng.random(n) < 0.4
    jaw = np.where(wide, rng.uniform(d(8), d(32), n), rng.uniform(0.0, d(8), n))
    codes[:, JAW] = _raw_6d(rng, _euler_np(rng.normal(0, d(2), n), jaw, rng.normal(0, d(1), n)), 0.9, 2.2)
    yaw = np.clip(rng.normal(0, ps * d(18), n), -2.5 * ps * d(18), 2.5 * ps * d(18))
    pitch = np.clip(rng.normal(0, ps * d(10), n), -ps * d(25), ps * d(25))
    codes[:, ROT] = _raw_6d(rng, _euler_np(yaw, pitch, rng.normal(0, ps * d(6), n)), 0.8, 1.5)
    codes[:, TRANS] = rng.normal(0.0, 1.0, (n, 3)) * TRANSLATION_STD * ps * float(translation_scale)
    return codes.astype(np.float32)


# A model trained on the corpus has seen codes up to RANGE_STD std of ``sample_codes``' draws; a sequence with more
# than RANGE_BEYOND of its values past that lies beyond the corpus (a normal draw puts 1.2 % beyond 2.5 std).
RANGE_STD = 2.5
RANGE_BEYOND = 0.03


def codes_beyond_range(codes: np.ndarray, pose_scale: float = 1.0, exp_scale: float = 1.0,
                       translation_scale: float = 1.0, k: float = RANGE_STD) -> dict:
    """How far driving codes [T,135] (e.g. a tracked sequence) go beyond what ``sample_codes`` draws with these
    options, where a model trained on the corpus has seen nothing: the exp coefficients the rig ignores (all but
    RIG_EXP) and the translation t, each in units of its std there. Returns {"exp_beyond": fraction of those exp
    values beyond ``k`` std, "exp_max_std", "translation_beyond": the same for t, "translation_max_m",
    "within": both fractions <= RANGE_BEYOND}."""
    codes = np.asarray(codes, dtype=np.float64).reshape(-1, CODE_DIM)
    exp_std = np.abs(codes[:, EXP][:, IGNORED_EXP]) / exp_spread(exp_scale)[IGNORED_EXP]
    t_std = np.abs(codes[:, TRANS]) / (TRANSLATION_STD * float(pose_scale) * float(translation_scale))
    out = {"exp_beyond": float((exp_std > k).mean()), "exp_max_std": float(exp_std.max()),
           "translation_beyond": float((t_std > k).mean()), "translation_max_m": float(np.abs(codes[:, TRANS]).max())}
    out["within"] = out["exp_beyond"] <= RANGE_BEYOND and out["translation_beyond"] <= RANGE_BEYOND
    return out


def clip_ignored_exp(codes: np.ndarray, exp_scale: float = 1.0, k: float = RANGE_STD) -> tuple[np.ndarray, float]:
    """Driving codes [T,135] -> (a copy whose exp coefficients that the rig ignores (all but RIG_EXP) are clipped to
    +-k std of what ``sample_codes`` draws for them, the fraction of those values that changed). The rig never
    reads them, so it renders the clipped codes exactly as the given ones: for a model trained on the corpus this
    keeps inputs that carry nothing for it inside the range it was trained on (beyond it, they move the face in
    ways it never learnt; docs/TRAINING.md, section 3), and leaves its truth unchanged."""
    codes = np.array(codes, dtype=np.float32).reshape(-1, CODE_DIM)
    lim = np.nextafter((k * exp_spread(exp_scale)).astype(np.float32), np.float32(0))  # a clipped value is <= k std
    lim[list(RIG_EXP)] = np.inf
    exp = codes[:, EXP]
    clipped = np.clip(exp, -lim, lim)
    changed = float((clipped[:, IGNORED_EXP] != exp[:, IGNORED_EXP]).mean())
    codes[:, EXP] = clipped
    return codes, changed


def pose_only(codes: torch.Tensor) -> torch.Tensor:
    """Copy of codes [..., 135] with everything the face does set to rest (exp 0, eyes and jaw identity rows,
    eyelids 0 = open) and the head pose kept (neck, R, t): the same head, same place, no expression."""
    out = codes.clone()
    rest = neutral_code().to(out.dtype)
    for s in (EXP, EYE_LEFT, EYE_RIGHT, EYELIDS, JAW):
        out[..., s] = rest[s]
    return out


def with_rotation(codes: torch.Tensor, slot: str, matrix: torch.Tensor) -> torch.Tensor:
    """Copy of codes [..., 135] with one 6D slot replaced by ``matrix`` [..., 3, 3] (unit rows)."""
    out = codes.clone()
    out[..., ROTATION_SLOTS[slot]] = matrix_to_rotation_6d(matrix).to(out.dtype)
    return out


__all__ = [
    "CODE_DIM", "EXP", "EYE_LEFT", "EYE_RIGHT", "EYELIDS", "NECK", "JAW", "ROT", "TRANS", "ROTATION_SLOTS",
    "CODE_STATS", "RIG_EXP", "IGNORED_EXP", "exp_spread", "neutral_code", "rotation_6d_to_matrix", "matrix_to_rotation_6d", "euler_matrix",
    "matrix_to_yaw_pitch", "rig_controls", "sample_codes", "pose_only", "with_rotation", "codes_beyond_range",
    "clip_ignored_exp", "RANGE_STD", "RANGE_BEYOND",
    "TRANSLATION_STD",
]
