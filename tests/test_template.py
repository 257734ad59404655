"""Template OBJ loading and UV sampling (spec §6, pitfall 16).

Exactness: against the official outputs the maps are compared with ``np.array_equal`` (bit-identical, tolerance 0).
"""
from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest
import torch

from flexrt.model import make_default_template
from flexrt.model.template import (
    TemplateSamples,
    default_template_path,
    load_obj,
    load_template,
    parse_obj_text,
    rasterize_uv,
    sample_template,
    template_sha256,
)

FLAME_BOX_MIN = np.array([-0.105, -0.19, -0.14])
FLAME_BOX_MAX = np.array([0.105, 0.13, 0.076])


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


@pytest.fixture(scope="module")
def gghead_mesh(shared_dir):
    return load_obj(shared_dir / "reference" / "assets" / "gghead_template.obj")


@pytest.fixture(scope="module")
def flex1_samples(gghead_mesh):
    start = time.perf_counter()
    samples = sample_template(gghead_mesh, res_head_tokens=32, res_gaussians=256)
    return samples, time.perf_counter() - start


# ------------------------------------------------------------------------------------------------------------------
# Official template: exact parity


def test_gghead_raw_parse_counts(gghead_mesh):
    assert gghead_mesh.vertices.shape == (3553, 3) and gghead_mesh.vertices.dtype == np.float64
    assert gghead_mesh.uvs.shape == (3660, 2) and gghead_mesh.uvs.dtype == np.float32
    assert gghead_mesh.faces.shape == (7004, 3) and gghead_mesh.faces.dtype == np.int64
    assert gghead_mesh.face_uvs.shape == (7004, 3) and gghead_mesh.face_uvs.dtype == np.int64


def test_flex1_samples_bit_identical(shared_dir, flex1_samples):
    samples, _ = flex1_samples
    ref = np.load(shared_dir / "reference" / "flex1" / "template_samples.npz")
    assert samples.num_gaussians == int(ref["G"]) == 58361
    pairs = {
        "initial_head_xyz": samples.initial_head_xyz,  # [1, 1024, 3]
        "initial_gaussian_positions": samples.initial_gaussian_positions,  # [1, G, 3]
        "uv_samples": samples.uv_samples,  # [1, G, 1, 2]
        "position_map_256": samples.position_map,  # [256, 256, 3]
        "head_position_map_32": samples.head_position_map,  # [32, 32, 3]
    }
    for key, ours in pairs.items():
        assert ours.dtype == torch.float32, key
        assert np.array_equal(_np(ours), ref[key]), f"{key}: max |diff| {np.abs(_np(ours) - ref[key]).max()}"
    # 943 of the 32x32 head texels are covered, 81 are zero rows (spec §6.3).
    assert int((samples.head_position_map.abs().sum(-1) > 0).sum()) == 943


def test_flex1_sampling_time(flex1_samples):
    _, seconds = flex1_samples
    assert seconds < 3.0, f"FLEX-1 template sampling took {seconds:.2f} s"


def test_gghead_other_resolutions(shared_dir, gghead_mesh):
    ref = np.load(shared_dir / "reference" / "flex1" / "template_samples.npz")
    s32 = sample_template(gghead_mesh, res_head_tokens=4, res_gaussians=32)
    assert s32.num_gaussians == 791
    assert np.array_equal(_np(s32.uv_samples).reshape(-1, 2), ref["head_uv_samples_32"])
    assert np.array_equal(_np(s32.initial_gaussian_positions)[0], ref["head_sampled_positions_32"])


def test_golden_reduced_config_bit_identical(shared_dir, gghead_mesh):
    golden = np.load(shared_dir / "reference" / "golden" / "outputs.npz")
    s = sample_template(gghead_mesh, res_head_tokens=8, res_gaussians=64)
    assert s.num_gaussians == 3405
    assert np.array_equal(_np(s.initial_head_xyz), golden["initial_head_xyz"])  # [1, 64, 3]
    assert np.array_equal(_np(s.initial_gaussian_positions), golden["initial_gaussian_positions"])  # [1, 3405, 3]
    assert np.array_equal(_np(s.uv_samples), golden["uv_samples"])  # [1, 3405, 1, 2]


def test_uv_samples_are_row_major_grid_points(flex1_samples):
    samples, _ = flex1_samples
    uv = _np(samples.uv_samples).reshape(-1, 2)  # [G, 2] (x, y)
    grid = _np(torch.linspace(-1.0, 1.0, 256))  # [256] float32, as the sampler builds it
    col = np.searchsorted(grid, uv[:, 0])
    row = np.searchsorted(grid, uv[:, 1])
    assert np.array_equal(grid[col], uv[:, 0]) and np.array_equal(grid[row], uv[:, 1])
    flat = row * 256 + col
    assert np.all(np.diff(flat) > 0)  # strictly increasing: row-major, no duplicates
    assert row.min() > 0 and col.min() > 0 and row.max() < 255 and col.max() < 255  # border samples fail


# ------------------------------------------------------------------------------------------------------------------
# OBJ parsing and errors


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_obj(tmp_path / "nope.obj")
    with pytest.raises(FileNotFoundError):
        load_template(tmp_path / "nope.obj")
    with pytest.raises(FileNotFoundError):
        template_sha256(tmp_path / "nope.obj")


def test_obj_without_uvs_raises(tmp_path):
    path = tmp_path / "no_uv.obj"
    path.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    with pytest.raises(ValueError, match="UV"):
        load_obj(path)


def test_faces_without_uv_indices_raise():
    with pytest.raises(ValueError, match="UV"):
        parse_obj_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\nf 1 2 3\n")
    with pytest.raises(ValueError, match="UV"):
        parse_obj_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\nf 1//1 2//1 3//1\n")


def test_no_faces_and_bad_indices_raise():
    head = "v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\n"
    with pytest.raises(ValueError, match="no faces"):
        parse_obj_text(head)
    with pytest.raises(ValueError, match="out of range"):
        parse_obj_text(head + "f 1/1 2/2 4/3\n")
    with pytest.raises(ValueError, match="out of range"):
        parse_obj_text(head + "f 1/1 2/2 3/7\n")
    with pytest.raises(ValueError, match="index 0"):
        parse_obj_text(head + "f 0/1 2/2 3/3\n")
    with pytest.raises(ValueError, match="bad"):
        parse_obj_text(head + "f 1/x 2/2 3/3\n")


def test_polygon_fan_and_relative_indices():
    text = (
        "v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\n"
        "vt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\n"
        "f 1/1/1 2/2/1 3/3/1 4/4/1\n"  # quad -> (1,2,3), (1,3,4)
        "f -4/-4 -3/-3 -1/-1\n"  # relative indices -> (1,2,4)
    )
    mesh = parse_obj_text(text)
    assert mesh.faces.tolist() == [[0, 1, 2], [0, 2, 3], [0, 1, 3]]
    assert mesh.face_uvs.tolist() == [[0, 1, 2], [0, 2, 3], [0, 1, 3]]


def test_rasterize_lowest_face_wins_and_no_v_flip():
    # Two identical triangles covering the lower-left half (v small = low rows) with different vertices.
    text = (
        "v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 5\nv 1 0 5\nv 0 1 5\n"
        "vt 0 0\nvt 1 0\nvt 0 1\n"
        "f 1/1 2/2 3/3\nf 4/1 5/2 6/3\n"
    )
    mesh = parse_obj_text(text)
    face_index, bary = rasterize_uv(mesh, 4)  # [4, 4], [4, 4, 3]
    assert face_index[0, 0] == 0 and face_index[3, 3] == -1  # row 0 = v near 0 is covered; no flip
    assert set(np.unique(face_index).tolist()) == {-1, 0}  # lowest face index wins everywhere
    s = sample_template(mesh, res_head_tokens=4, res_gaussians=8)
    assert torch.all(s.head_position_map[..., 2] == 0)  # z = 0: positions come from face 0
    # Texel (row 0, col 1): center (u, v) = (0.375, 0.125) -> position (0.375, 0.125, 0).
    assert torch.allclose(s.head_position_map[0, 1], torch.tensor([0.375, 0.125, 0.0]))


# ------------------------------------------------------------------------------------------------------------------
# Default template and cached loading

# Measured with the shipped asset (grid 30): every texel center of the unit square is covered, so G = (R - 2)^2,
# the maximum possible (the border samples always fail the 0.99 test).
DEFAULT_G = {(8, 64): 3844, (32, 256): 64516}


def test_default_template_is_closed_head_in_flame_box():
    path = default_template_path()
    assert path.is_file() and path.name == "default_head.obj"
    assert path.stat().st_size < 300_000
    mesh = load_obj(path)
    edges = np.sort(mesh.faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)  # [3F, 2] undirected
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert np.all(counts == 2), "default template must be closed: every edge shared by exactly 2 faces"
    directed = mesh.faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    assert len(np.unique(directed, axis=0)) == len(directed), "faces must be consistently oriented"
    v, f = mesh.vertices, mesh.faces
    volume = np.einsum("ij,ij->i", v[f[:, 0]], np.cross(v[f[:, 1]], v[f[:, 2]])).sum() / 6
    assert volume > 0, "faces must point outward"
    assert np.all(v.min(axis=0) >= FLAME_BOX_MIN - 0.01) and np.all(v.max(axis=0) <= FLAME_BOX_MAX + 0.01)
    # Seams are UV-only: more vt than v, and at least one vertex used with two different UVs.
    assert mesh.uvs.shape[0] > mesh.vertices.shape[0]
    pairs = np.unique(np.stack([mesh.faces.ravel(), mesh.face_uvs.ravel()], axis=1), axis=0)  # [(v, vt)]
    assert len(pairs) > len(np.unique(pairs[:, 0]))


@pytest.mark.parametrize("res", sorted(DEFAULT_G))
def test_default_template_gaussian_counts(res):
    r, big_r = res
    s = load_template(None, r, big_r)
    assert isinstance(s, TemplateSamples)
    assert s.num_gaussians >= DEFAULT_G[res]
    assert s.initial_head_xyz.shape == (1, r * r, 3)
    assert s.initial_gaussian_positions.shape == (1, s.num_gaussians, 3)
    assert s.uv_samples.shape == (1, s.num_gaussians, 1, 2)
    assert s.head_position_map.shape == (r, r, 3) and s.position_map.shape == (big_r, big_r, 3)
    assert bool((s.head_position_map.abs().sum(-1) > 0).all())  # every head texel covered


def test_default_template_generator_matches_asset(tmp_path):
    # Same topology and UVs, same positions to the 6 printed decimals (libm may differ by an ulp across platforms).
    out = tmp_path / "head.obj"
    make_default_template.write_obj(out, *make_default_template.build_default_head())
    regenerated, shipped = load_obj(out), load_obj(default_template_path())
    hint = "regenerate the asset: python -m flexrt.model.make_default_template"
    assert np.array_equal(regenerated.faces, shipped.faces), hint
    assert np.array_equal(regenerated.face_uvs, shipped.face_uvs), hint
    assert np.array_equal(regenerated.uvs, shipped.uvs), hint
    assert np.abs(regenerated.vertices - shipped.vertices).max() <= 1.5e-6, hint


def test_load_template_cache_returns_copies_and_sha(tmp_path):
    path = default_template_path()
    assert template_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    a = load_template(None, 8, 64)
    b = load_template(path, 8, 64)
    assert a.initial_gaussian_positions is not b.initial_gaussian_positions
    assert torch.equal(a.initial_gaussian_positions, b.initial_gaussian_positions)
    a.initial_gaussian_positions.zero_()  # callers' edits do not leak into the cache
    assert not torch.equal(load_template(path, 8, 64).initial_gaussian_positions, a.initial_gaussian_positions)
    copy = tmp_path / "same.obj"  # identical bytes at another path hit the same cache entry
    copy.write_bytes(path.read_bytes())
    assert torch.equal(load_template(copy, 8, 64).uv_samples, b.uv_samples)
