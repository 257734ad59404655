"""Head template: OBJ loading and UV sampling of template positions (spec §6, pitfall 16).

``sample_template(mesh, r, R)`` reproduces the official ``sample_template_positions`` exactly:

1. UV rasterization at resolution r and R (texel centers ((j+0.5)/r, (i+0.5)/r); rows index v, no v-flip).
   Per triangle, texels in the bbox floor(min*r)-1 .. floor(max*r)+2 (exclusive end, clipped) are tested with
   dot-product barycentrics in the official dtypes: UVs float32, edge dot products d00/d01/d11 and denom in
   float32, texel centers and d20/d21/barycentrics in float64, barycentrics stored as float32. Degenerate
   triangles (denom == 0) are skipped; a texel is inside if all three barycentrics are >= 0. The official loop
   goes last -> first with overwrite, so the **lowest face index** covering a texel wins. Here the loop is
   vectorised over all (triangle, bbox texel) pairs in chunks of ascending face index; each texel keeps the first
   inside hit, which is the same winner.
2. Position map P[i, j] = sum_k bary_k * vertex[idx_k] in float64, cast to float32; uncovered texels are 0.
3. Head tokens (r): ``initial_head_xyz`` = P_r reshaped to [1, r*r, 3] (texel centers, zero rows included).
4. Gaussians (R): grid points (x_j, y_i) = linspace(-1, 1, R) (not texel centers); a point is valid if
   grid_sample(coverage, bilinear, zeros, align_corners=False) > 0.99; ``uv_samples`` are the valid points in
   row-major order as (x = column, y = row); ``initial_gaussian_positions`` = grid_sample(P_R, uv_samples).

With the official ``gghead_template.obj`` at (32, 256) this gives G = 58,361 and maps bit-identical to
``shared/reference/flex1/template_samples.npz`` (see tests/test_template.py).

The OBJ is parsed raw (``v``, ``vt`` and ``f v/vt[/vn]`` lines, face order kept, polygons fan-triangulated); the
spec verifies that this gives the same maps as the official trimesh loading.
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "TemplateMesh",
    "TemplateSamples",
    "load_obj",
    "rasterize_uv",
    "position_map",
    "sample_template",
    "load_template",
    "default_template_path",
    "template_sha256",
    "clear_template_cache",
]

# The validity threshold of the official code: a grid point is kept only if all its bilinear neighbours are covered.
COVERAGE_THRESHOLD = 0.99
# Max (triangle, texel) candidate pairs evaluated at once by the vectorised rasterizer (bounds peak memory).
_RASTER_CHUNK_PAIRS = 1 << 21


@dataclass(frozen=True)
class TemplateMesh:
    vertices: np.ndarray  # [V, 3] float64
    uvs: np.ndarray  # [VT, 2] float32, (u, v) as written in the OBJ (no flip)
    faces: np.ndarray  # [F, 3] int64 vertex indices (0-based)
    face_uvs: np.ndarray  # [F, 3] int64 uv indices (0-based)

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])


@dataclass(frozen=True)
class TemplateSamples:
    initial_head_xyz: torch.Tensor  # [1, r*r, 3] float32, texel-center positions of the r x r head-token map
    initial_gaussian_positions: torch.Tensor  # [1, G, 3] float32
    uv_samples: torch.Tensor  # [1, G, 1, 2] float32, (x = column, y = row) in [-1, 1]
    head_position_map: torch.Tensor  # [r, r, 3] float32
    position_map: torch.Tensor  # [R, R, 3] float32
    num_gaussians: int  # G

    def clone(self) -> "TemplateSamples":
        return TemplateSamples(
            initial_head_xyz=self.initial_head_xyz.clone(),
            initial_gaussian_positions=self.initial_gaussian_positions.clone(),
            uv_samples=self.uv_samples.clone(),
            head_position_map=self.head_position_map.clone(),
            position_map=self.position_map.clone(),
            num_gaussians=self.num_gaussians,
        )


# ------------------------------------------------------------------------------------------------------------------
# OBJ parsing


def _resolve_index(token: str, count: int, kind: str, source: str, line_no: int) -> int:
    """OBJ index (1-based, or negative = relative to the elements read so far) -> 0-based index."""
    try:
        idx = int(token)
    except ValueError:
        raise ValueError(f"{source}:{line_no}: bad {kind} index {token!r}") from None
    if idx > 0:
        resolved = idx - 1
    elif idx < 0:
        resolved = count + idx
    else:
        raise ValueError(f"{source}:{line_no}: {kind} index 0 is invalid (OBJ indices are 1-based)")
    if not 0 <= resolved < count:
        raise ValueError(f"{source}:{line_no}: {kind} index {idx} out of range (have {count} {kind}s so far)")
    return resolved


def parse_obj_text(text: str, source: str = "<obj>") -> TemplateMesh:
    """Parse OBJ text (``v``, ``vt``, ``f``); see ``load_obj``."""
    vertices: list[tuple[float, float, float]] = []
    uvs: list[tuple[float, float]] = []
    faces: list[tuple[int, int, int]] = []
    face_uvs: list[tuple[int, int, int]] = []
    for line_no, raw in enumerate(text.splitlines(), start=1):
        parts = raw.split()
        if not parts:
            continue
        tag = parts[0]
        if tag == "v":
            if len(parts) < 4:
                raise ValueError(f"{source}:{line_no}: 'v' needs 3 coordinates, got {raw.strip()!r}")
            vertices.append((float(parts[1]), float(parts[2]), float(parts[3])))
        elif tag == "vt":
            if len(parts) < 3:
                raise ValueError(f"{source}:{line_no}: 'vt' needs 2 coordinates (u v), got {raw.strip()!r}")
            uvs.append((float(parts[1]), float(parts[2])))
        elif tag == "f":
            if len(parts) < 4:
                raise ValueError(f"{source}:{line_no}: a face needs at least 3 corners, got {raw.strip()!r}")
            corner_v: list[int] = []
            corner_vt: list[int] = []
            for corner in parts[1:]:
                fields = corner.split("/")
                if len(fields) < 2 or fields[1] == "":
                    raise ValueError(
                        f"{source}:{line_no}: face corner {corner!r} has no UV index; the template needs UVs "
                        "(f v/vt or f v/vt/vn)"
                    )
                corner_v.append(_resolve_index(fields[0], len(vertices), "vertex", source, line_no))
                corner_vt.append(_resolve_index(fields[1], len(uvs), "uv", source, line_no))
            for k in range(1, len(corner_v) - 1):  # fan triangulation keeps the face order
                faces.append((corner_v[0], corner_v[k], corner_v[k + 1]))
                face_uvs.append((corner_vt[0], corner_vt[k], corner_vt[k + 1]))
    if not uvs:
        raise ValueError(f"{source}: no 'vt' lines; the template needs UVs")
    if not faces:
        raise ValueError(f"{source}: no faces ('f' lines)")
    return TemplateMesh(
        vertices=np.asarray(vertices, dtype=np.float64).reshape(-1, 3),  # [V, 3]
        uvs=np.asarray(uvs, dtype=np.float64).astype(np.float32),  # [VT, 2]
        faces=np.asarray(faces, dtype=np.int64),  # [F, 3]
        face_uvs=np.asarray(face_uvs, dtype=np.int64),  # [F, 3]
    )


def load_obj(path: str | Path) -> TemplateMesh:
    """Raw parse of an OBJ file: ``v``, ``vt`` and ``f v/vt[/vn]`` lines, face order kept, polygons fan-triangulated.

    Raises FileNotFoundError if the file is missing and ValueError if it has no UVs, a face without UV indices,
    no faces, or an out-of-range / malformed index.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"template OBJ not found: {path}")
    return parse_obj_text(path.read_text(encoding="utf-8", errors="replace"), source=str(path))


# ------------------------------------------------------------------------------------------------------------------
# UV rasterization and position maps


def rasterize_uv(mesh: TemplateMesh, res: int) -> tuple[np.ndarray, np.ndarray]:
    """Rasterize the UV layout at texel centers.

    Returns (face_index [res, res] int64, -1 where uncovered; barycentrics [res, res, 3] float32, 0 where uncovered).
    The winner of a texel is the lowest face index whose triangle contains its center (official overwrite order).
    """
    if res <= 0:
        raise ValueError(f"resolution must be positive, got {res}")
    tri_uv = mesh.uvs[mesh.face_uvs]  # [F, 3, 2] float32
    a, b, c = tri_uv[:, 0], tri_uv[:, 1], tri_uv[:, 2]  # [F, 2] each
    v0 = b - a  # [F, 2] float32
    v1 = c - a  # [F, 2] float32
    d00 = v0[:, 0] * v0[:, 0] + v0[:, 1] * v0[:, 1]  # [F] float32
    d01 = v0[:, 0] * v1[:, 0] + v0[:, 1] * v1[:, 1]  # [F] float32
    d11 = v1[:, 0] * v1[:, 0] + v1[:, 1] * v1[:, 1]  # [F] float32
    denom = d00 * d11 - d01 * d01  # [F] float32

    # Bounding boxes in texels: floor(min*r)-1 .. floor(max*r)+2 (exclusive), clipped to the image.
    lo = np.floor(tri_uv.min(axis=1) * np.float32(res)).astype(np.int64) - 1  # [F, 2] (col, row)
    hi = np.floor(tri_uv.max(axis=1) * np.float32(res)).astype(np.int64) + 2  # [F, 2]
    lo = np.clip(lo, 0, res)
    hi = np.clip(hi, 0, res)
    width = hi[:, 0] - lo[:, 0]  # [F]
    height = hi[:, 1] - lo[:, 1]  # [F]
    counts = np.where(denom != 0, width * height, 0)  # [F] candidate texels; degenerate triangles skipped

    face_index = np.full(res * res, -1, dtype=np.int64)  # [res*res]
    bary = np.zeros((res * res, 3), dtype=np.float32)  # [res*res, 3]
    num_faces = counts.shape[0]
    start = 0
    while start < num_faces:  # chunks of ascending face index; earlier chunks win
        stop = start + 1
        total = int(counts[start])
        while stop < num_faces and total + int(counts[stop]) <= _RASTER_CHUNK_PAIRS:
            total += int(counts[stop])
            stop += 1
        if total > 0:
            _rasterize_chunk(start, stop, counts, lo, width, a, v0, v1, d00, d01, d11, denom, res, face_index, bary)
        start = stop
    return face_index.reshape(res, res), bary.reshape(res, res, 3)


def _rasterize_chunk(start, stop, counts, lo, width, a, v0, v1, d00, d01, d11, denom, res, face_index, bary):
    faces = np.arange(start, stop)
    n = counts[start:stop]  # [C]
    face = np.repeat(faces, n)  # [N] candidate face index, ascending
    offsets = np.cumsum(n) - n  # [C] first candidate of each face
    local = np.arange(face.shape[0]) - np.repeat(offsets, n)  # [N] index inside the face's bbox
    w = width[face]  # [N]
    col = lo[face, 0] + local % w  # [N]
    row = lo[face, 1] + local // w  # [N]
    px = (col + 0.5) / res  # [N] float64 texel center u
    py = (row + 0.5) / res  # [N] float64 texel center v

    v2x = px - a[face, 0]  # [N] float64 (float32 corner promoted)
    v2y = py - a[face, 1]
    d20 = v2x * v0[face, 0] + v2y * v0[face, 1]  # [N] float64
    d21 = v2x * v1[face, 0] + v2y * v1[face, 1]  # [N] float64
    f00 = d00[face].astype(np.float64)
    f01 = d01[face].astype(np.float64)
    f11 = d11[face].astype(np.float64)
    fden = denom[face].astype(np.float64)
    bv = (f11 * d20 - f01 * d21) / fden  # [N] float64
    bw = (f00 * d21 - f01 * d20) / fden  # [N] float64
    bu = 1.0 - bv - bw  # [N] float64
    inside = (bu >= 0) & (bv >= 0) & (bw >= 0)  # [N]
    if not inside.any():
        return

    texel = (row * res + col)[inside]  # [M]
    hit_face = face[inside]  # [M] ascending
    hit_bary = np.stack([bu[inside], bv[inside], bw[inside]], axis=1).astype(np.float32)  # [M, 3]
    # First occurrence per texel = lowest face index (np.unique uses a stable sort with return_index).
    texel_u, first = np.unique(texel, return_index=True)
    free = face_index[texel_u] < 0  # texels not already won by an earlier chunk
    texel_u, first = texel_u[free], first[free]
    face_index[texel_u] = hit_face[first]
    bary[texel_u] = hit_bary[first]


def position_map(mesh: TemplateMesh, face_index: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """P[i, j] = sum_k bary_k * vertex[idx_k] in float64, cast to float32 -> [res, res, 3]; 0 where uncovered."""
    covered = face_index >= 0  # [res, res]
    corners = mesh.faces[face_index[covered]]  # [M, 3] vertex indices
    w = bary[covered].astype(np.float64)  # [M, 3]
    verts = mesh.vertices  # [V, 3] float64
    pos = w[:, 0:1] * verts[corners[:, 0]] + w[:, 1:2] * verts[corners[:, 1]] + w[:, 2:3] * verts[corners[:, 2]]
    out = np.zeros(face_index.shape + (3,), dtype=np.float64)  # [res, res, 3]
    out[covered] = pos
    return out.astype(np.float32)


def sample_template(mesh: TemplateMesh, res_head_tokens: int = 32, res_gaussians: int = 256) -> TemplateSamples:
    """Head-token positions (texel centers at res_head_tokens) and Gaussian UV samples / positions (res_gaussians).

    res_gaussians = res_head_tokens * upscale_uv_texture * oversampling_factor in the model config.
    """
    if res_head_tokens <= 0 or res_gaussians <= 1:
        raise ValueError(f"bad resolutions: res_head_tokens={res_head_tokens}, res_gaussians={res_gaussians}")

    head_faces, head_bary = rasterize_uv(mesh, res_head_tokens)
    head_map = torch.from_numpy(position_map(mesh, head_faces, head_bary))  # [r, r, 3]
    initial_head_xyz = head_map.reshape(1, res_head_tokens * res_head_tokens, 3).clone()  # [1, r*r, 3]

    faces_R, bary_R = rasterize_uv(mesh, res_gaussians)
    pos_map = torch.from_numpy(position_map(mesh, faces_R, bary_R))  # [R, R, 3]
    coverage = torch.from_numpy((faces_R >= 0).astype(np.float32))[None, None]  # [1, 1, R, R]

    lin = torch.linspace(-1.0, 1.0, res_gaussians, dtype=torch.float32)  # [R]
    grid_y, grid_x = torch.meshgrid(lin, lin, indexing="ij")  # [R, R] each (row, col)
    grid = torch.stack([grid_x, grid_y], dim=-1)[None]  # [1, R, R, 2] (x = column, y = row)
    cov_sampled = F.grid_sample(coverage, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    valid = cov_sampled[0, 0] > COVERAGE_THRESHOLD  # [R, R]
    uv_samples = grid[0][valid].reshape(1, -1, 1, 2).contiguous()  # [1, G, 1, 2], row-major order

    pos_chw = pos_map.permute(2, 0, 1)[None].contiguous()  # [1, 3, R, R]
    sampled = F.grid_sample(pos_chw, uv_samples, mode="bilinear", padding_mode="zeros", align_corners=False)
    initial_gaussian_positions = sampled[0, :, :, 0].transpose(0, 1)[None].contiguous()  # [1, G, 3]

    return TemplateSamples(
        initial_head_xyz=initial_head_xyz,
        initial_gaussian_positions=initial_gaussian_positions,
        uv_samples=uv_samples,
        head_position_map=head_map,
        position_map=pos_map,
        num_gaussians=int(uv_samples.shape[1]),
    )


# ------------------------------------------------------------------------------------------------------------------
# Default template and cached loading


def default_template_path() -> Path:
    """The project's own head template (generated by ``make_default_template.py``), shipped as package data."""
    return Path(__file__).resolve().parent / "assets" / "default_head.obj"


def template_sha256(path: str | Path) -> str:
    """Hex sha256 of the file's bytes: the template's identity."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"template OBJ not found: {path}")
    return hashlib.sha256(path.read_bytes()).hexdigest()


_CACHE: dict[tuple[str, int, int], TemplateSamples] = {}
_CACHE_LOCK = threading.Lock()


def load_template(
    path: str | Path | None = None, res_head_tokens: int = 32, res_gaussians: int = 256
) -> TemplateSamples:
    """Load an OBJ template and sample it; ``path=None`` uses ``default_template_path()``.

    Results are cached in-process per (file sha256, res_head_tokens, res_gaussians); each call returns its own
    copy of the tensors, so callers may modify them.
    """
    path = Path(path) if path is not None else default_template_path()
    if not path.is_file():
        raise FileNotFoundError(f"template OBJ not found: {path}")
    data = path.read_bytes()
    key = (hashlib.sha256(data).hexdigest(), int(res_head_tokens), int(res_gaussians))
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is None:
            mesh = parse_obj_text(data.decode("utf-8", errors="replace"), source=str(path))
            cached = sample_template(mesh, res_head_tokens, res_gaussians)
            _CACHE[key] = cached
    return cached.clone()


def clear_template_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()
