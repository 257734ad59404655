"""Generate ``model/assets/default_head.obj``: the project's own small head template (deterministic).

Usage: ``python -m flexrt.model.make_default_template [--out PATH] [--grid N]``; importable as
``build_default_head(grid) -> (vertices [V,3], uvs [VT,2], faces [F,3], face_uvs [F,3])`` and ``write_obj(...)``.

Geometry
    A closed, genus-0 triangle mesh: a unit sphere whose radius is modulated into a head-like shape (cranium fuller
    at the back, jaw and neck tapered, chin, brow, nose bump on the +z pole, shallow eye sockets), then scaled per
    axis to exactly the FLAME head bounding box x in [-0.105, 0.105], y in [-0.19, 0.13], z in [-0.14, 0.076]
    (metres; +y up, +z forward toward the face; the camera looks at the face from +z).

UV layout (two charts, together covering the whole unit square)
    - Each hemisphere (front z >= 0, back z <= 0) is an N x N quad grid over (a, b) in [-1, 1]^2, mapped to the
      unit disk by the elliptical-grid map (x, y) = (a sqrt(1 - b^2/2), b sqrt(1 - a^2/2)) (the square's boundary
      goes to the circle) and lifted to the hemisphere by an azimuthal-equidistant projection around the +-z axis
      (polar angle = radius * pi/2). The disk boundary is the equator z = 0, shared by both charts.
    - Front chart: (u, v) = (0.25 + 0.25 a, 0.5 + 0.5 b), the left half of the square; +x to the right, +y up, as
      seen by a camera on +z. The face (nose on the +z pole) sits at the chart center, the least distorted part.
    - Back chart: (u, v) = (0.75 - 0.25 a, 0.5 + 0.5 b), the right half, mirrored; this is the back of the head as
      seen from -z. Because of the mirror the seam u = 0.5 is the same equator arc (x > 0) on both sides, so
      bilinear sampling across it stays geometrically consistent. The outer edges u = 0 and u = 1 are the x < 0
      equator arc; v = 0 / v = 1 are the bottom (neck) / top of the head.
    - Equator vertices are shared in position (one ``v``) and duplicated in UV (two ``vt``): OBJ v/vt indices differ.
    - Every quad is split along one diagonal; triangles are counter-clockwise in UV and outward-facing in 3D.
    With N = 30 no quad edge passes through a texel center at the power-of-two resolutions used (8 ... 256), so every
    texel center of the unit square is covered: G = (R - 2)^2 Gaussians at Gaussian resolution R.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

FLAME_BBOX_MIN = np.array([-0.105, -0.19, -0.14])  # [3] metres
FLAME_BBOX_MAX = np.array([0.105, 0.13, 0.076])  # [3]
DEFAULT_GRID = 30  # quads per chart side; see the module docstring for why 30 (not a power of two)
DEFAULT_OUT = Path(__file__).resolve().parent / "assets" / "default_head.obj"


def _square_to_disk(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Elliptical-grid map [-1,1]^2 -> unit disk, boundary to boundary."""
    return a * np.sqrt(1.0 - 0.5 * b * b), b * np.sqrt(1.0 - 0.5 * a * a)


def _disk_to_hemisphere(x: np.ndarray, y: np.ndarray, sign: float) -> np.ndarray:
    """Azimuthal-equidistant lift of the unit disk onto the hemisphere around (0, 0, sign) -> unit vectors [..., 3]."""
    rho = np.sqrt(x * x + y * y)
    theta = np.clip(rho, 0.0, 1.0) * (np.pi / 2)
    safe = np.where(rho > 0, rho, 1.0)
    s = np.sin(theta) / safe
    z = sign * np.cos(theta)
    return np.stack([x * s, y * s, z], axis=-1)


def _bump(d: np.ndarray, center: tuple[float, float, float], width: float) -> np.ndarray:
    """Smooth bump on the unit sphere: exp(-angle^2 / width^2), angle between d and the (normalised) center."""
    c = np.asarray(center, dtype=np.float64)
    c = c / np.linalg.norm(c)
    ang = np.arccos(np.clip(d @ c, -1.0, 1.0))
    return np.exp(-((ang / width) ** 2))


def _head_shape(d: np.ndarray) -> np.ndarray:
    """Unit directions [V, 3] -> head-like surface points [V, 3] (arbitrary scale; fitted to the box afterwards)."""
    x, y, z = d[:, 0], d[:, 1], d[:, 2]
    low = np.clip(-y, 0.0, 1.0)  # 0 at and above the equator, 1 at the bottom (neck)
    front = np.clip(z, 0.0, 1.0)
    back = np.clip(-z, 0.0, 1.0)
    # Jaw / neck: narrower and shallower toward the bottom; the back of the neck is pulled forward.
    sx = 1.0 - 0.32 * low**1.5
    sz = 1.0 - 0.30 * low**1.5 * back - 0.10 * low**2 * front
    # Cranium fuller at the upper back.
    sz = sz + 0.10 * np.clip(y + 0.3, 0.0, 1.0) * back
    p = np.stack([x * sx, y, z * sz], axis=-1)
    r = np.ones_like(x)
    r += 0.16 * _bump(d, (0.0, -0.05, 1.0), 0.16)  # nose
    r += 0.05 * _bump(d, (0.0, -0.62, 0.78), 0.22)  # chin
    r += 0.03 * _bump(d, (0.0, 0.22, 0.97), 0.30)  # brow
    r -= 0.035 * _bump(d, (0.33, 0.12, 0.94), 0.13)  # eye sockets
    r -= 0.035 * _bump(d, (-0.33, 0.12, 0.94), 0.13)
    return p * r[:, None]


def build_default_head(grid: int = DEFAULT_GRID) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """-> vertices [V, 3] float64, uvs [VT, 2] float64, faces [F, 3] int64, face_uvs [F, 3] int64 (0-based)."""
    if grid < 2:
        raise ValueError(f"grid must be >= 2, got {grid}")
    n = grid
    t = np.linspace(-1.0, 1.0, n + 1)  # [n+1]
    a, b = np.meshgrid(t, t, indexing="xy")  # [n+1, n+1]; a varies along columns, b along rows
    on_rim = (np.abs(a) == 1.0) | (np.abs(b) == 1.0)  # [n+1, n+1] equator vertices

    # Vertex ids: front chart owns every grid vertex; back chart reuses the rim (equator) ids.
    front_vid = np.arange((n + 1) * (n + 1)).reshape(n + 1, n + 1)
    back_vid = front_vid.copy()
    interior = ~on_rim
    back_vid[interior] = front_vid.size + np.arange(int(interior.sum()))

    dx, dy = _square_to_disk(a, b)
    front_dir = _disk_to_hemisphere(dx, dy, +1.0).reshape(-1, 3)  # [(n+1)^2, 3]
    back_dir = _disk_to_hemisphere(dx, dy, -1.0)[interior]  # [(n-1)^2, 3]
    directions = np.concatenate([front_dir, back_dir], axis=0)
    directions[:, 2][np.abs(directions[:, 2]) < 1e-15] = 0.0  # exact equator
    points = _head_shape(directions)

    # Fit exactly to the FLAME head box, per axis.
    lo, hi = points.min(axis=0), points.max(axis=0)
    vertices = FLAME_BBOX_MIN + (points - lo) / (hi - lo) * (FLAME_BBOX_MAX - FLAME_BBOX_MIN)  # [V, 3]

    # UVs: one vt per chart grid vertex.
    uv_front = np.stack([0.25 + 0.25 * a, 0.5 + 0.5 * b], axis=-1).reshape(-1, 2)  # [(n+1)^2, 2]
    uv_back = np.stack([0.75 - 0.25 * a, 0.5 + 0.5 * b], axis=-1).reshape(-1, 2)
    uvs = np.concatenate([uv_front, uv_back], axis=0)  # [2 (n+1)^2, 2]
    grid_uv = np.arange((n + 1) * (n + 1)).reshape(n + 1, n + 1)
    back_uv = grid_uv + grid_uv.size

    faces, face_uvs = [], []
    for vid, uid, mirrored in ((front_vid, grid_uv, False), (back_vid, back_uv, True)):
        for row in range(n):
            for col in range(n):
                # Quad corners (row = b index, col = a index): p00 lower-left in (a, b).
                q = [(row, col), (row, col + 1), (row + 1, col + 1), (row + 1, col)]
                # Alternate the diagonal in a checkerboard for a symmetric triangulation.
                if (row + col) % 2 == 0:
                    tris = [(q[0], q[1], q[2]), (q[0], q[2], q[3])]
                else:
                    tris = [(q[0], q[1], q[3]), (q[1], q[2], q[3])]
                for tri in tris:
                    if mirrored:  # the back chart's u runs against a: flip to stay CCW in UV / outward in 3D
                        tri = (tri[0], tri[2], tri[1])
                    faces.append([vid[rc] for rc in tri])
                    face_uvs.append([uid[rc] for rc in tri])
    return vertices, uvs, np.asarray(faces, dtype=np.int64), np.asarray(face_uvs, dtype=np.int64)


def write_obj(path: Path, vertices: np.ndarray, uvs: np.ndarray, faces: np.ndarray, face_uvs: np.ndarray) -> None:
    lines = [
        "# FlexAvatar Runtime default head template (generated by flexrt.model.make_default_template; do not edit)",
        "# metres, +y up, +z forward; two UV charts: front hemisphere u in [0, 0.5], back hemisphere u in [0.5, 1]",
    ]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices]
    lines += [f"vt {u:.6f} {v:.6f}" for u, v in uvs]
    for fv, ft in zip(faces.tolist(), face_uvs.tolist()):
        lines.append("f " + " ".join(f"{vi + 1}/{ti + 1}" for vi, ti in zip(fv, ft)))
    text = "\n".join(lines) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.replace("-0.000000", "0.000000"), encoding="utf-8")


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--grid", type=int, default=DEFAULT_GRID, help="quads per chart side")
    args = parser.parse_args(argv)
    write_obj(args.out, *build_default_head(args.grid))
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    return args.out


if __name__ == "__main__":
    main()
