"""Procedural heads as 3D Gaussians, built on the project's own head template and animated by 135-d codes.

A head = the template surface (``model/assets/default_head.obj`` sampled as ``model/template.py`` samples it, at
``template_res``) with per-identity shape and appearance, plus two eyeballs and a mouth interior (cavity and
teeth). Every surface Gaussian knows its direction ``d`` on the unit sphere that the template was built from
(``model/make_default_template.py``: front chart u < 0.5 around +z, back chart around -z), and through it its
azimuth ``h = atan2(d_x, d_z)`` and elevation ``v = asin(d_y)``: regions (eyes, mouth, brows, hair, ears) are
defined in (h, v), so they sit where the template's own eye sockets, nose and chin are.

Animation (``HeadRig.gaussians``), in this order, from ``corpus.codes.rig_controls``:

1. expression: smile lifts the mouth corners, brow raises the brows and forehead, cheek puffs the cheeks;
2. jaw: the lower face, the lower teeth and the lower mouth cavity rotate about a pivot behind the mouth (the jaw
   rotation of the code; positive pitch opens the mouth and uncovers the dark cavity and the teeth);
3. eyes: each eyeball rotates about its centre by its 6D rotation (gaze clamped to 40 degrees); the eyelids
   (``closure``) lower the upper lid: the skin over the eye opening turns opaque from the top down, with a dark
   lash line at the lid edge;
4. neck: the head rotates about a pivot at the top of the neck, the neck base stays;
5. R, t: the whole head rotates about the FLAME-like root and translates.

Output layout is ``model/gaussians.py``'s: positions [T,N,3] (metres, head-centric), scales [T,N,3], rotations
[T,N,4] (wxyz; identity, the Gaussians are isotropic), colors [T,N,3] raw SH-DC (``rgb_to_sh_dc`` is the
inverse of ``flexrt.kernels.sh_dc_to_rgb`` on RGB >= 0), opacities [T,N,1]. Colours carry a fixed Lambert shading
(light from the upper front left of the head), so that the shape reads at 64x64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from flexrt.kernels import SH_C0
from flexrt.model.gaussians import Gaussians
from flexrt.model.make_default_template import FLAME_BBOX_MAX, FLAME_BBOX_MIN
from flexrt.model.template import load_template

from .codes import euler_matrix, matrix_to_yaw_pitch, rig_controls

# Feature anchors in (h, v) radians, from the template's own bumps (make_default_template._head_shape).
EYE_H, EYE_V = 0.337, 0.12  # eye sockets at directions (+-0.33, 0.12, 0.94)
MOUTH_V = -0.37  # between the nose (v = -0.05) and the chin (v = -0.67)
NOSE_V = -0.05
JAW_PIVOT = (0.0, -0.035, -0.045)  # metres; behind and above the mouth, toward the ears
NECK_PIVOT = (0.0, -0.13, -0.03)  # top of the neck
ROOT_PIVOT = (0.0, -0.08, -0.03)  # what R rotates about
NECK_BASE_V = (-1.45, -1.05)  # the neck weight fades from 0 at the first elevation to 1 at the second
LIGHT_DIR = (0.35, 0.55, 0.76)  # fixed in the head frame: upper front, from the head's left (+x)
MAX_GAZE = math.radians(40.0)
EYE_RADIUS = 0.015
EYEBALL_POINTS = 160
HAIR_PALETTE = np.array([  # near-black, dark brown, brown, auburn, blond, grey
    [0.06, 0.05, 0.05], [0.20, 0.12, 0.07], [0.38, 0.24, 0.13], [0.50, 0.20, 0.10], [0.80, 0.66, 0.40],
    [0.62, 0.62, 0.62]])
IRIS_PALETTE = np.array([[0.30, 0.17, 0.08], [0.18, 0.35, 0.62], [0.25, 0.45, 0.28], [0.45, 0.47, 0.50]])
SKIN_LIGHT = np.array([0.96, 0.80, 0.69])
SKIN_DARK = np.array([0.36, 0.22, 0.14])


def _lips(h: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Lip colour weight in [0, 1] at template directions (h, v): an ellipse around the mouth line."""
    return _sig((1 - ((h / 0.2) ** 2 + ((v - MOUTH_V) / 0.055) ** 2)) / 0.15)


def rgb_to_sh_dc(rgb: torch.Tensor) -> torch.Tensor:
    """RGB [..., 3] (>= 0) -> raw SH-DC coefficients: the inverse of ``flexrt.kernels.sh_dc_to_rgb`` there."""
    return (rgb - 0.5) / SH_C0


@dataclass(frozen=True)
class HeadIdentity:
    """One person: shape and appearance parameters (all plain floats / tuples; see ``sample_identity``)."""

    scale: tuple[float, float, float]  # per-axis head scale
    jaw_width: float  # x scale of the lower face
    nose: float  # nose size (1 = template)
    chin: float  # chin protrusion (metres, along the normal)
    ears: float  # ear size (0 = none)
    bumps: tuple[tuple[float, float, float, float], ...]  # low-frequency shape bumps: (h, v, width, metres)
    eye_spacing: float
    eye_size: float
    skin: tuple[float, float, float]  # RGB
    lips: tuple[float, float, float]
    blush: float
    hair: tuple[float, float, float]
    hair_front: float  # hairline elevation (radians) at the forehead; > 1.5 = bald on top
    hair_side: float  # at the temples / over the ears
    hair_back: float  # at the back (low = long hair)
    hair_thickness: float  # metres
    brow_thickness: float  # radians
    beard: float  # 0 .. 1
    iris: tuple[float, float, float]
    noise_seed: int = field(default=0)  # per-Gaussian colour noise (hair strands, skin mottling)


def sample_identity(rng: np.random.Generator) -> HeadIdentity:
    """A random identity (deterministic given the generator state)."""
    tone = rng.beta(1.6, 1.6)
    skin = (1 - tone) * SKIN_LIGHT + tone * SKIN_DARK + rng.normal(0, 0.025, 3) * np.array([1.0, 0.8, 0.8])
    skin = np.clip(skin, 0.05, 1.0)
    lips = np.clip(skin * np.array([0.88, 0.55, 0.55]) + rng.normal(0, 0.03, 3), 0.02, 1.0)
    hair = HAIR_PALETTE[rng.integers(len(HAIR_PALETTE))] * rng.uniform(0.8, 1.15) + rng.normal(0, 0.02, 3)
    bald = rng.random() < 0.12
    long_hair = rng.random() < 0.4
    bumps = tuple(
        (float(rng.uniform(-math.pi, math.pi)), float(rng.uniform(-1.0, 1.2)), float(rng.uniform(0.3, 0.7)),
         float(rng.normal(0, 0.004)))
        for _ in range(3)
    )
    return HeadIdentity(
        scale=tuple(float(x) for x in rng.uniform([0.9, 0.93, 0.92], [1.1, 1.07, 1.08])),
        jaw_width=float(rng.uniform(0.86, 1.1)),
        nose=float(rng.uniform(0.6, 1.5)),
        chin=float(rng.normal(0.0, 0.004)),
        ears=float(rng.uniform(0.6, 1.3)),
        bumps=bumps,
        eye_spacing=float(rng.uniform(0.92, 1.08)),
        eye_size=float(rng.uniform(0.85, 1.15)),
        skin=tuple(float(x) for x in skin),
        lips=tuple(float(x) for x in lips),
        blush=float(rng.uniform(0.0, 0.25)),
        hair=tuple(float(x) for x in np.clip(hair, 0.02, 1.0)),
        hair_front=float(rng.uniform(1.55, 1.7) if bald else rng.uniform(0.5, 0.85)),
        hair_side=float(rng.uniform(0.1, 0.35) if not long_hair else rng.uniform(-0.6, -0.1)),
        hair_back=float(rng.uniform(-0.35, 0.1) if not long_hair else rng.uniform(-1.0, -0.5)),
        hair_thickness=float(rng.uniform(0.004, 0.018)),
        brow_thickness=float(rng.uniform(0.02, 0.045)),
        beard=float(rng.uniform(0.4, 1.0) if rng.random() < 0.15 else 0.0),
        iris=tuple(float(x) for x in IRIS_PALETTE[rng.integers(len(IRIS_PALETTE))]),
        noise_seed=int(rng.integers(2**31)),
    )


def _sig(x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(x)


def _smoothstep(lo: float, hi: float, x: torch.Tensor) -> torch.Tensor:
    t = torch.clamp((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _gauss2(h: torch.Tensor, v: torch.Tensor, h0, v0, wh, wv) -> torch.Tensor:
    return torch.exp(-(((h - h0) / wh) ** 2 + ((v - v0) / wv) ** 2))


def _rotate_about(p: torch.Tensor, rot: torch.Tensor, pivot: torch.Tensor, weight: torch.Tensor | None = None):
    """p [T,N,3], rot [T,3,3], pivot [3] or [T,N,3]; weight [N] or [T,N] blends (linear blend skinning)."""
    q = torch.einsum("tij,tnj->tni", rot, p - pivot) + pivot
    if weight is None:
        return q
    w = weight if weight.dim() == 2 else weight[None]
    return p + w[..., None] * (q - p)


def _template_directions(uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Template UV samples [N,2] in [-1,1] (x = column = u, y = row = v) -> (unit-sphere directions [N,3], chart
    border distance [N]), the inverse of make_default_template's chart layout (front chart u in [0, .5] around +z,
    back mirrored). The border distance is 1 - max(-a, |b|): 0 on the chart edges that are not the shared u = 0.5
    seam (the template's valid samples stop short of them, leaving a crack to cover)."""
    u = (uv[:, 0] + 1) / 2
    v = (uv[:, 1] + 1) / 2
    front = u < 0.5
    a = torch.where(front, (u - 0.25) / 0.25, (0.75 - u) / 0.25)
    b = (v - 0.5) / 0.5
    x = a * torch.sqrt(torch.clamp(1 - 0.5 * b * b, min=0))  # elliptical-grid square -> disk
    y = b * torch.sqrt(torch.clamp(1 - 0.5 * a * a, min=0))
    rho = torch.sqrt(x * x + y * y)
    theta = torch.clamp(rho, 0, 1) * (math.pi / 2)  # azimuthal-equidistant lift
    s = torch.where(rho > 0, torch.sin(theta) / torch.where(rho > 0, rho, torch.ones_like(rho)), torch.ones_like(rho))
    z = torch.where(front, torch.cos(theta), -torch.cos(theta))
    border = 1 - torch.maximum(-a, torch.abs(b))
    return torch.nn.functional.normalize(torch.stack([x * s, y * s, z], -1), dim=-1), border


def _fibonacci_cap(n: int, max_angle: float) -> torch.Tensor:
    """n points on the unit sphere within ``max_angle`` of +z -> [n,3]."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    cos_t = 1 - (1 - math.cos(max_angle)) * i / n
    phi = math.pi * (3 - math.sqrt(5)) * i
    sin_t = torch.sqrt(1 - cos_t**2)
    return torch.stack([sin_t * torch.cos(phi), sin_t * torch.sin(phi), cos_t], -1).float()


@dataclass
class RigOutput:
    gaussians: Gaussians  # attributes [T, N, *]
    normals: torch.Tensor  # [T, N, 3] approximate outward normals; zero rows = interior parts (never culled)
    regions: dict[str, torch.Tensor]  # name -> [N] bool (surface, eyes, mouth, ...), for tests and masks


class HeadRig:
    """The procedural head rig on the default template sampled at ``template_res`` (G = (res - 2)^2 surface
    Gaussians) plus 2 x 160 eyeball and ~300 mouth-interior Gaussians."""

    def __init__(self, template_res: int = 96):
        t = load_template(None, res_head_tokens=8, res_gaussians=template_res)
        self.template_res = template_res
        p0 = t.initial_gaussian_positions[0]  # [S,3]
        d, border = _template_directions(t.uv_samples[0, :, 0])  # [S,3], [S]
        self.p0, self.d = p0, d
        self.h = torch.atan2(d[:, 0], d[:, 2])  # [S]
        self.v = torch.asin(torch.clamp(d[:, 1], -1, 1))  # [S]
        half = torch.tensor((FLAME_BBOX_MAX - FLAME_BBOX_MIN) / 2, dtype=torch.float32)
        self.n0 = torch.nn.functional.normalize(d / half, dim=-1)  # [S,3] ellipsoid normals
        # local spacing: mean distance to the 4 nearest neighbours (one-off, chunked)
        nn_d = []
        for chunk in torch.split(p0, 2048):
            nn_d.append(torch.cdist(chunk, p0).topk(5, largest=False).values[:, 1:].mean(-1))
        # Gaussians along the open chart edges grow to close the crack between the charts (about 2 grid steps)
        self.spacing = torch.cat(nn_d)  # [S]
        # The template's valid samples stop short of the chart edges that are not the shared u = 0.5 seam, which
        # leaves a crack along the rest of the equator (about 1 cm at the sides). Filler Gaussians interpolate
        # between each edge sample and its nearest sample across the crack, at 1/4, 1/2 and 3/4.
        front = t.uv_samples[0, :, 0, 0] < 0
        edge = border * template_res / 2 < 2.5  # within 2.5 grid steps of an open edge
        ia = torch.nonzero(edge & front)[:, 0]
        ib = torch.nonzero(edge & ~front)[:, 0]
        dist, nearest = torch.cdist(p0[ia], p0[ib]).min(1)
        gap = dist > 1.5 * self.spacing[ia]
        fi, fj = ia[gap], ib[nearest[gap]]
        ft = torch.tensor([0.25, 0.5, 0.75])
        self.fill_i, self.fill_j = fi.repeat_interleave(3), fj.repeat_interleave(3)  # [F]
        self.fill_t = ft.repeat(len(fi))  # [F]
        self.num_template = p0.shape[0]
        self.num_surface = self.num_template + len(self.fill_t)
        # eyeballs: a cap around +z (rest gaze), radius EYE_RADIUS, centred per identity
        self.eye_unit = _fibonacci_cap(EYEBALL_POINTS, math.radians(115))  # [M,3]
        # mouth interior, as (h, v, depth) shells under the surface around the mouth line: a dark cavity 12 mm
        # deep, upper teeth 4 mm deep straddling the mouth line (their lower half hides behind the lower lip until
        # the jaw opens), lower teeth below it (they move with the jaw)
        def shell(h_lim, v_lo, v_hi, nh, nv, depth):
            hh, vv = torch.meshgrid(torch.linspace(-h_lim, h_lim, nh), torch.linspace(v_lo, v_hi, nv), indexing="xy")
            hv = torch.stack([hh.flatten(), vv.flatten()], -1)
            idx = torch.cdist(hv, torch.stack([self.h, self.v], -1)).argmin(1)
            return idx, torch.full((len(idx),), depth), vv.flatten()

        parts = [shell(0.22, MOUTH_V - 0.3, MOUTH_V + 0.03, 13, 12, 0.012),
                 shell(0.16, MOUTH_V - 0.035, MOUTH_V + 0.03, 12, 4, 0.004),
                 shell(0.15, MOUTH_V - 0.11, MOUTH_V - 0.05, 12, 3, 0.004)]
        self.interior_idx = torch.cat([q[0] for q in parts])  # [K] surface sample under each interior Gaussian
        self.interior_depth = torch.cat([q[1] for q in parts])  # [K] metres
        cav_v = parts[0][2]
        self.interior_jaw = torch.cat([torch.clamp((MOUTH_V - cav_v) / 0.3, 0, 1) * 0.85,
                                       torch.zeros(len(parts[1][0])), torch.ones(len(parts[2][0]))])  # [K]
        self.num_cavity = len(parts[0][0])
        self.num_gaussians = self.num_surface + 2 * EYEBALL_POINTS + len(self.interior_idx)

    # ------------------------------------------------------------------------------------------------ identity
    def _neutral_surface(self, ident: HeadIdentity) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> positions [S,3], normals [S,3], hair mask [S] for the identity at the neutral expression."""
        h, v, n0 = self.h, self.v, self.n0
        p = self.p0.clone()
        lower = _smoothstep(-0.05, -0.6, v)  # 0 above the cheekbones, 1 at the jaw
        p[:, 0] = p[:, 0] * (1 + (ident.jaw_width - 1) * lower)
        disp = (ident.nose - 1) * 0.012 * _gauss2(h, v, 0.0, NOSE_V, 0.12, 0.16)
        disp = disp + ident.chin * _gauss2(h, v, 0.0, -0.67, 0.25, 0.15)
        for bh, bv, bw, amount in ident.bumps:
            dh = torch.remainder(h - bh + math.pi, 2 * math.pi) - math.pi
            disp = disp + amount * torch.exp(-((dh / bw) ** 2 + ((v - bv) / bw) ** 2))
        ear = ident.ears * 0.011 * (_gauss2(h, v, math.pi / 2, -0.05, 0.14, 0.24) + _gauss2(h, v, -math.pi / 2, -0.05, 0.14, 0.24))
        hair = self._hair_mask(ident)
        disp = disp + ear + hair * ident.hair_thickness * (0.6 + 0.4 * torch.clamp(torch.sin(v), min=0))
        p = p + disp[:, None] * n0
        p = p * torch.tensor(ident.scale)
        half = torch.tensor((FLAME_BBOX_MAX - FLAME_BBOX_MIN) / 2, dtype=torch.float32) * torch.tensor(ident.scale)
        normals = torch.nn.functional.normalize(self.d / half, dim=-1)
        return p, normals, hair

    def _hair_mask(self, ident: HeadIdentity) -> torch.Tensor:
        a = torch.abs(self.h)  # 0 front .. pi back
        front = ident.hair_front + (ident.hair_side - ident.hair_front) * _smoothstep(0.25, math.pi / 2, a)
        line = front + (ident.hair_back - ident.hair_side) * _smoothstep(math.pi / 2, 2.6, a)
        return _sig((self.v - line) / 0.035)

    def _eye_anchor(self, ident: HeadIdentity, p: torch.Tensor, normals: torch.Tensor, side: float):
        """Eyeball centre [3] for side +1 (left, +x) / -1, and the eye opening's (h, v) centre."""
        he, ve = side * EYE_H * ident.eye_spacing, EYE_V
        i = int(torch.argmin((self.h - he) ** 2 + (self.v - ve) ** 2))
        r = EYE_RADIUS * ident.eye_size
        return p[i] - normals[i] * (r + 0.003), he, ve  # the eyeball's front 3 mm under the lids

    def _base_colors(self, ident: HeadIdentity, normals: torch.Tensor, hair: torch.Tensor) -> torch.Tensor:
        """Neutral surface colours [S,3] RGB (before eyelids), shaded."""
        h, v = self.h, self.v
        gen = torch.Generator().manual_seed(ident.noise_seed)
        noise = torch.randn(self.num_template, 3, generator=gen)  # [S,3]
        skin = torch.tensor(ident.skin) * (1 + 0.03 * noise[:, :1])
        c = skin.expand(self.num_template, 3).clone()
        blush = ident.blush * (_gauss2(torch.abs(h), v, 0.5, -0.15, 0.15, 0.12))
        c = c * (1 - blush[:, None]) + blush[:, None] * torch.tensor([0.85, 0.35, 0.35])
        nose_tip = 0.15 * _gauss2(h, v, 0.0, NOSE_V, 0.06, 0.06)
        c = c * (1 - nose_tip[:, None]) + nose_tip[:, None] * torch.tensor([0.8, 0.45, 0.4])
        lips = _lips(h, v)
        c = c * (1 - lips[:, None]) + lips[:, None] * torch.tensor(ident.lips)
        hair_col = torch.tensor(ident.hair) * (1 + 0.12 * noise[:, 1:2] + 0.06 * torch.sin(40 * h + 3 * noise[:, 2])[:, None])
        brow = torch.zeros_like(h)
        for side in (1.0, -1.0):
            hb = side * EYE_H * ident.eye_spacing
            brow = brow + _sig((1 - (((h - hb) / 0.17) ** 2 + ((v - (EYE_V + 0.15)) / ident.brow_thickness) ** 2)) / 0.2)
        beard = ident.beard * _sig((MOUTH_V + 0.06 - v) / 0.04) * _sig((1.1 - torch.abs(h)) / 0.1) * (1 - lips)
        beard = beard * _smoothstep(-1.35, -1.0, v)
        cover = torch.clamp(hair + brow + 0.85 * beard, 0, 1)
        c = c * (1 - cover[:, None]) + cover[:, None] * hair_col
        light = torch.nn.functional.normalize(torch.tensor(LIGHT_DIR), dim=0)
        shade = 0.6 + 0.4 * torch.clamp(normals @ light, min=0)
        return torch.clamp(c * shade[:, None], 0, 1)

    def _fill(self, x: torch.Tensor) -> torch.Tensor:
        """Append the crack fillers along the Gaussian axis of x: [S], [S,C], [T,S] or [T,S,C] (S = template)."""
        axis = 0 if x.dim() == 1 or (x.dim() == 2 and x.shape[0] == self.num_template) else 1
        xi, xj = x.index_select(axis, self.fill_i), x.index_select(axis, self.fill_j)
        t = self.fill_t.reshape((-1,) + (1,) * (x.dim() - 1 - axis))
        return torch.cat([x, xi + t * (xj - xi)], dim=axis)

    # ------------------------------------------------------------------------------------------------ animation
    def gaussians(self, ident: HeadIdentity, codes: torch.Tensor) -> RigOutput:
        """codes [T,135] -> Gaussians [T,N,*] (N = self.num_gaussians), approximate normals, region masks."""
        if codes.dim() != 2 or codes.shape[1] != 135:
            raise ValueError(f"codes must be [T,135], got {tuple(codes.shape)}")
        T = codes.shape[0]
        ctl = rig_controls(codes)
        h, v = self.h, self.v
        p_neutral, n_surf, hair = self._neutral_surface(ident)
        base = self._base_colors(ident, n_surf, hair)
        p = p_neutral[None].expand(T, -1, -1).clone()  # [T,S,3]

        # 1. expression displacements (metres), before the jaw so the lower lip keeps its smile
        smile, brow, cheek = ctl["smile"][:, None], ctl["brow"][:, None], ctl["cheek"][:, None]  # [T,1]
        corner = _gauss2(torch.abs(h), v, 0.2, MOUTH_V, 0.09, 0.08)[None]  # [1,S]
        p[..., 0] += smile * corner * torch.sign(h)[None] * 0.004
        p[..., 1] += smile * corner * 0.007
        forehead = _gauss2(torch.abs(h), v, EYE_H, EYE_V + 0.17, 0.3, 0.12)[None]
        p[..., 1] += brow * forehead * 0.006
        puff = (cheek + 0.5 * torch.clamp(smile, min=0)) * _gauss2(torch.abs(h), v, 0.5, -0.17, 0.16, 0.14)[None]
        p += (puff * 0.006)[..., None] * n_surf[None]

        # 2. jaw: lower face about the jaw pivot; sharp split across the lips, smooth stretch on the cheeks
        tau = 0.012 + 0.1 * _smoothstep(0.18, 0.45, torch.abs(h))
        w_jaw = _sig((MOUTH_V - v) / tau) * _smoothstep(1.6, 1.0, torch.abs(h)) * _smoothstep(-1.35, -0.9, v)  # [S]
        w_jaw = w_jaw * _smoothstep(MOUTH_V + 0.3, MOUTH_V + 0.05, v)  # exactly 0 from the cheekbones up
        jaw = ctl["jaw"]
        jaw_pivot = torch.tensor(JAW_PIVOT)
        p = _rotate_about(p, jaw, jaw_pivot, w_jaw)

        # 3. eyelids (opacity and lash line of the surface over each eye opening) and eyeballs
        opac = torch.full((T, self.num_template), 0.985)
        colors = base[None].expand(T, -1, -1).clone()
        eye_parts, eye_colors = [], []
        eye_openings = torch.zeros(self.num_template, dtype=torch.bool)  # surface over either eye opening
        for k, (side, key) in enumerate(((1.0, "eye_left"), (-1.0, "eye_right"))):
            centre, he, ve = self._eye_anchor(ident, p_neutral, n_surf, side)
            a, b = 0.14 * ident.eye_size, 0.075 * ident.eye_size  # large (toy) eyes: blinks show at 64x64
            inside = _sig((1 - ((h - he) / a) ** 2 - ((v - ve) / b) ** 2) / 0.12)  # [S]
            eye_openings |= inside > 0.5
            lid = ve + b * (1 - 2.4 * ctl["closure"][:, k:k + 1])  # [T,1] the upper lid's edge (past the bottom at 1)
            hole = inside[None] * _sig((lid - v[None]) / 0.006)  # [T,S]
            opac = opac * (1 - hole)
            lash = inside[None] * torch.exp(-(((v[None] - lid) / 0.012) ** 2)) * (1 - hole)
            colors = colors * (1 - 0.8 * lash[..., None]) + 0.8 * lash[..., None] * torch.tensor([0.08, 0.06, 0.05])
            # eyeball: rest gaze +z, gaze clamped to MAX_GAZE
            yaw, pitch = matrix_to_yaw_pitch(ctl[key])
            rot = euler_matrix(torch.clamp(yaw, -MAX_GAZE, MAX_GAZE), torch.clamp(pitch, -MAX_GAZE, MAX_GAZE), 0.0 * yaw)
            r = EYE_RADIUS * ident.eye_size
            pts = torch.einsum("tij,mj->tmi", rot, self.eye_unit * r) + centre  # [T,M,3]
            eye_parts.append(pts)
            ang = torch.acos(torch.clamp(self.eye_unit[:, 2], -1, 1))  # angle from the rest gaze
            col = torch.tensor([0.93, 0.92, 0.9]).expand(EYEBALL_POINTS, 3).clone()
            iris = _sig((0.45 - ang) / 0.03)
            col = col * (1 - iris[:, None]) + iris[:, None] * torch.tensor(ident.iris)
            pupil = _sig((0.2 - ang) / 0.03)
            col = col * (1 - pupil[:, None]) + pupil[:, None] * 0.03
            eye_colors.append(col)

        # mouth interior: under the neutral surface, then the jaw (lower parts follow it)
        interior = p_neutral[self.interior_idx] - n_surf[self.interior_idx] * self.interior_depth[:, None]  # [K,3]
        interior = _rotate_about(interior[None].expand(T, -1, -1), jaw, jaw_pivot, self.interior_jaw)
        k_teeth = len(self.interior_idx) - self.num_cavity
        int_col = torch.cat([torch.tensor([0.22, 0.05, 0.06]).expand(self.num_cavity, 3),
                             torch.tensor([0.92, 0.9, 0.84]).expand(k_teeth, 3)])

        # crack fillers: interpolated surface Gaussians
        lips = _lips(h, v)
        p, colors, opac, n_surf, v, hair, w_jaw, eye_openings, lips = (
            self._fill(x) for x in (p, colors, opac, n_surf, v, hair, w_jaw, eye_openings.float(), lips))  # [.., S]
        spacing = self._fill(self.spacing)

        # 4-5. neck, then the global rotation and translation, for everything
        allp = torch.cat([p] + eye_parts + [interior], dim=1)  # [T,N,3]
        n_all = torch.cat([n_surf[None].expand(T, -1, -1),
                           torch.zeros(T, allp.shape[1] - self.num_surface, 3)], dim=1)
        v_all = torch.cat([v, torch.full((allp.shape[1] - self.num_surface,), 0.0)])
        w_neck = _smoothstep(NECK_BASE_V[0], NECK_BASE_V[1], v_all)
        neck_pivot = torch.tensor(NECK_PIVOT)
        allp = _rotate_about(allp, ctl["neck"], neck_pivot, w_neck)
        n_all = _rotate_about(n_all, ctl["neck"], torch.zeros(3), w_neck)
        root = torch.tensor(ROOT_PIVOT)
        allp = _rotate_about(allp, ctl["rot"], root) + ctl["trans"][:, None, :]
        n_all = torch.einsum("tij,tnj->tni", ctl["rot"], n_all)

        n_extra = allp.shape[1] - self.num_surface
        rgb = torch.cat([colors, torch.cat(eye_colors + [int_col])[None].expand(T, -1, -1)], dim=1)
        opacity = torch.cat([opac, torch.full((T, n_extra), 0.985)], dim=1)
        s_surf = 0.62 * spacing * (sum(ident.scale) / 3) * (1 + 0.15 * hair)
        s_all = torch.cat([s_surf, torch.full((2 * EYEBALL_POINTS,), 0.0019 * ident.eye_size),
                           torch.full((len(int_col),), 0.0024)])
        N = allp.shape[1]
        quats = torch.zeros(T, N, 4)
        quats[..., 0] = 1.0
        g = Gaussians(positions=allp.contiguous(), scales=s_all[None, :, None].expand(T, N, 3).contiguous(),
                      rotations=quats, colors=rgb_to_sh_dc(rgb).contiguous(), opacities=opacity[..., None].contiguous())
        s = self.num_surface
        regions = {
            "surface": torch.arange(N) < s,
            "eyes": (torch.arange(N) >= s) & (torch.arange(N) < s + 2 * EYEBALL_POINTS),
            "mouth_interior": torch.arange(N) >= s + 2 * EYEBALL_POINTS,
            "hair": torch.cat([hair > 0.5, torch.zeros(n_extra, dtype=torch.bool)]),
            "jaw": torch.cat([w_jaw > 0.5, torch.zeros(n_extra, dtype=torch.bool)]),
            "eye_openings": torch.cat([eye_openings > 0.5, torch.zeros(n_extra, dtype=torch.bool)]),
            "lips": torch.cat([lips > 0.5, torch.zeros(n_extra, dtype=torch.bool)]),
        }
        # the facial features a model must draw to show a blink, gaze and an open mouth: the eyeballs, the skin
        # over the eye openings (the lids), the lips and the mouth interior (Sample.target_feature_masks)
        regions["features"] = regions["eyes"] | regions["eye_openings"] | regions["lips"] | regions["mouth_interior"]
        return RigOutput(gaussians=g, normals=n_all, regions=regions)


__all__ = ["HeadIdentity", "HeadRig", "RigOutput", "sample_identity", "rgb_to_sh_dc"]
