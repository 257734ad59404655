"""CPU tests of flexrt.kernels: analytic cases, blending rules, batching, culling, validation.

Tolerances: float32 arithmetic end to end, so analytic comparisons use rtol=1e-5, atol=1e-6 unless stated.
The last tests run the CUDA source itself on the CPU through a host emulation (needs g++; skipped otherwise).
"""
from __future__ import annotations

import math

import pytest
import torch

from flexrt.kernels import SH_C0, rasterize, sh_dc_to_rgb
from flexrt.kernels._torch_ref import project, rasterize_torch
from flexrt.kernels.scenes import head_cameras, head_scene

THR = 1.0 / 255.0
TOL = dict(rtol=1e-5, atol=1e-6)


def _camera(width, height, fx, cx, cy):
    """Identity world-to-camera (camera at origin looking down +z) and pixel intrinsics, C = 1."""
    view = torch.eye(4)[None]
    K = torch.tensor([[fx, 0.0, cx], [0.0, fx, cy], [0.0, 0.0, 1.0]])[None]
    return view, K


def _gaussians(pos, scale, opac, color, quat=(1.0, 0.0, 0.0, 0.0)):
    """Lists per Gaussian -> rasterize keyword tensors [N, ...]."""
    n = len(pos)
    scale = [s if isinstance(s, (list, tuple)) else (s, s, s) for s in scale]
    quat = list(quat) if isinstance(quat[0], (list, tuple)) else [quat] * n
    return dict(
        means=torch.tensor(pos, dtype=torch.float32),
        quats=torch.tensor(quat, dtype=torch.float32),
        scales=torch.tensor(scale, dtype=torch.float32),
        opacities=torch.tensor(opac, dtype=torch.float32),
        colors=torch.tensor(color, dtype=torch.float32),
    )


def _pixel_grid(width, height):
    y, x = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                          indexing="ij")
    return x + 0.5, y + 0.5


def _analytic_single(width, height, mean2d, cov2d, opac, color, bg):
    """Expected image of ONE Gaussian with the given blurred 2D covariance (float64)."""
    px, py = _pixel_grid(width, height)
    a, b, c = cov2d[1][1], -cov2d[0][1], cov2d[0][0]
    det = cov2d[0][0] * cov2d[1][1] - cov2d[0][1] ** 2
    a, b, c = a / det, b / det, c / det
    dx, dy = mean2d[0] - px, mean2d[1] - py
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    alpha = torch.clamp(opac * torch.exp(-sigma), max=0.999)
    alpha = torch.where(alpha >= THR, alpha, 0.0)
    rgb = alpha[..., None] * torch.tensor(color, dtype=torch.float64) + (1 - alpha[..., None]) * torch.tensor(bg, dtype=torch.float64)
    return rgb.float(), alpha[..., None].float()


# ------------------------------------------------------------------------------------------------------------
# analytic single Gaussians
# ------------------------------------------------------------------------------------------------------------
def test_isotropic_gaussian_matches_closed_form():
    W, H, fx, z, s, o = 24, 16, 200.0, 2.0, 0.01, 0.7
    color, bg = (0.2, 0.5, 0.9), (0.1, 0.3, 0.05)
    view, K = _camera(W, H, fx, cx=10.5, cy=7.5)  # the Gaussian projects onto the centre of pixel (x=10, y=7)
    g = _gaussians([(0.0, 0.0, z)], [s], [o], [color], quat=(2.0, 0.0, 0.0, 0.0))  # unnormalised identity
    rgb, alpha = rasterize(**g, viewmats=view, Ks=K, width=W, height=H, background=torch.tensor(bg))
    assert rgb.shape == (1, H, W, 3) and alpha.shape == (1, H, W, 1)
    # centre pixel: o * color + (1 - o) * bg
    torch.testing.assert_close(rgb[0, 7, 10], torch.tensor([o * c + (1 - o) * b for c, b in zip(color, bg)]), **TOL)
    torch.testing.assert_close(alpha[0, 7, 10, 0], torch.tensor(o), **TOL)
    # falloff at pixel distance 3 along x: exp(-d^2 / (2 (s_px^2 + 0.3))), s_px = fx s / z = 1
    s_px = fx * s / z
    expect = o * math.exp(-9.0 / (2.0 * (s_px**2 + 0.3)))
    torch.testing.assert_close(alpha[0, 7, 13, 0], torch.tensor(expect, dtype=torch.float32), **TOL)
    torch.testing.assert_close(alpha[0, 7, 7, 0], torch.tensor(expect, dtype=torch.float32), **TOL)
    # whole image, including the exact zeros beyond the 1/255 cut
    v = s_px**2 + 0.3
    e_rgb, e_alpha = _analytic_single(W, H, (10.5, 7.5), [[v, 0.0], [0.0, v]], o, color, bg)
    torch.testing.assert_close(rgb[0], e_rgb, **TOL)
    torch.testing.assert_close(alpha[0], e_alpha, **TOL)
    assert alpha[0, 0, 23, 0] == 0 and torch.equal(rgb[0, 0, 23], torch.tensor(bg))


def test_anisotropic_rotated_gaussian_matches_closed_form():
    # rotation +30 deg about the view axis (wxyz, scaled by 3: must be normalised), sx=0.02, sy=0.006
    W, H, fx, z, o = 32, 32, 200.0, 2.0, 0.9
    th = math.radians(30.0)
    q = (3 * math.cos(th / 2), 0.0, 0.0, 3 * math.sin(th / 2))
    view, K = _camera(W, H, fx, cx=16.5, cy=15.5)
    g = _gaussians([(0.0, 0.0, z)], [(0.02, 0.006, 0.01)], [o], [(1.0, 0.5, 0.25)], quat=q)
    rgb, alpha = rasterize(**g, viewmats=view, Ks=K, width=W, height=H)
    a2, b2 = (fx * 0.02 / z) ** 2, (fx * 0.006 / z) ** 2
    cs, sn = math.cos(th), math.sin(th)
    cov = [[cs * cs * a2 + sn * sn * b2 + 0.3, cs * sn * (a2 - b2)], [cs * sn * (a2 - b2), sn * sn * a2 + cs * cs * b2 + 0.3]]
    e_rgb, e_alpha = _analytic_single(W, H, (16.5, 15.5), cov, o, (1.0, 0.5, 0.25), (0.0, 0.0, 0.0))
    torch.testing.assert_close(rgb[0], e_rgb, **TOL)
    torch.testing.assert_close(alpha[0], e_alpha, **TOL)
    # the major axis runs down-right (+x, +y in image coordinates): (2, 1) is brighter than (2, -1)
    assert alpha[0, 16, 18, 0] > 2 * alpha[0, 14, 18, 0]


# ------------------------------------------------------------------------------------------------------------
# depth order and transmittance
# ------------------------------------------------------------------------------------------------------------
def test_two_gaussians_depth_order_not_input_order():
    W = H = 17
    view, K = _camera(W, H, 100.0, 8.5, 8.5)
    red, green, bg = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)
    o1, o2 = 0.8, 0.6
    front_red = _gaussians([(0, 0, 2.0), (0, 0, 3.0)], [0.03, 0.045], [o1, o2], [red, green])
    back_first = {k: v.flip(0) for k, v in front_red.items()}
    rgb1, a1 = rasterize(**front_red, viewmats=view, Ks=K, width=W, height=H, background=torch.tensor(bg))
    rgb2, a2 = rasterize(**back_first, viewmats=view, Ks=K, width=W, height=H, background=torch.tensor(bg))
    torch.testing.assert_close(rgb1, rgb2, rtol=0, atol=0)
    torch.testing.assert_close(a1, a2, rtol=0, atol=0)
    expect = torch.tensor([o1, (1 - o1) * o2, (1 - o1) * (1 - o2)])
    torch.testing.assert_close(rgb1[0, 8, 8], expect, **TOL)
    torch.testing.assert_close(a1[0, 8, 8, 0], torch.tensor(1 - (1 - o1) * (1 - o2)), **TOL)
    # swap the depths: green in front now dominates
    swapped = dict(front_red, means=torch.tensor([[0, 0, 3.0], [0, 0, 2.0]]), scales=torch.tensor([[0.045] * 3, [0.03] * 3]))
    rgb3, _ = rasterize(**swapped, viewmats=view, Ks=K, width=W, height=H, background=torch.tensor(bg))
    torch.testing.assert_close(rgb3[0, 8, 8], torch.tensor([(1 - o2) * o1, o2, (1 - o1) * (1 - o2)]), **TOL)


def test_transmittance_early_stop_is_exclusive():
    # six opaque Gaussians on the axis, o = 0.95: T = 0.05, 0.0025, 1.25e-4, then 6.25e-6 <= 1e-4 -> the 4th is
    # NOT blended and the pixel stops: the 4th..6th (colour 1000) contribute nothing
    W = H = 9
    view, K = _camera(W, H, 100.0, 4.5, 4.5)
    cols = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1000, 1000, 1000), (1000, 0, 0), (0, 1000, 0)]
    pos = [(0, 0, 2.0 + i) for i in range(6)]
    g = _gaussians(pos, [0.02 * (2.0 + i) for i in range(6)], [0.95] * 6, cols)
    bg = torch.tensor([0.5, 0.5, 0.5])
    rgb, alpha = rasterize(**g, viewmats=view, Ks=K, width=W, height=H, background=bg)
    T3 = 0.05**3
    expect = 0.95 * torch.tensor([1.0, 0.05, 0.0025]) + T3 * bg
    torch.testing.assert_close(rgb[0, 4, 4], expect, **TOL)
    torch.testing.assert_close(alpha[0, 4, 4, 0], torch.tensor(1 - T3), **TOL)
    # identical to rendering the first three only, at the centre
    g3 = {k: v[:3] for k, v in g.items()}
    rgb3, alpha3 = rasterize(**g3, viewmats=view, Ks=K, width=W, height=H, background=bg)
    torch.testing.assert_close(rgb[0, 4, 4], rgb3[0, 4, 4], rtol=0, atol=0)
    assert rgb[0, 4, 4].max() < 1.0  # no trace of the 1000-valued colours


def test_behind_camera_and_near_plane_culled():
    W = H = 16
    view, K = _camera(W, H, 50.0, 8.0, 8.0)
    bg = torch.tensor([0.25, 0.5, 0.75])
    culled = _gaussians([(0, 0, -2.0), (0.01, 0, 0.005)], [0.5, 0.5], [0.99, 0.99], [(9, 9, 9), (9, 9, 9)])
    rgb, alpha = rasterize(**culled, viewmats=view, Ks=K, width=W, height=H, background=bg)
    torch.testing.assert_close(rgb[0], bg.expand(H, W, 3), rtol=0, atol=0)
    assert torch.count_nonzero(alpha) == 0
    visible = _gaussians([(0, 0, 2.0)], [0.05], [0.99], [(9, 9, 9)])
    both = {k: torch.cat([culled[k], visible[k]]) for k in culled}
    rgb_b, _ = rasterize(**both, viewmats=view, Ks=K, width=W, height=H, background=bg)
    rgb_v, _ = rasterize(**visible, viewmats=view, Ks=K, width=W, height=H, background=bg)
    torch.testing.assert_close(rgb_b, rgb_v, rtol=0, atol=0)
    assert rgb_v[0, 8, 8, 0] > 5.0


# ------------------------------------------------------------------------------------------------------------
# the tiled reference against a brute-force sequential blend (gsplat's per-pixel loop, written plainly)
# ------------------------------------------------------------------------------------------------------------
def _brute_force(scene, view, K, W, H, bg):
    p = project(scene["means"][None], scene["quats"][None], scene["scales"][None], scene["opacities"][None],
                scene["colors"][None], view[None, None], K[None, None], W, H, 0.01, 1e10, 0.3)
    valid = p["valid"][0, 0]
    ids = valid.nonzero()[:, 0]
    ids = ids[torch.sort(p["depth"][0, 0][ids], stable=True).indices]
    px, py = _pixel_grid(W, H)
    px, py = px.float(), py.float()
    T = torch.ones(H, W)
    acc = torch.zeros(H, W, 3)
    done = torch.zeros(H, W, dtype=torch.bool)
    for g in ids.tolist():  # test oracle: a plain loop over Gaussians
        (mx, my), (a, b, c) = p["mean2d"][0, 0, g], p["conic"][0, 0, g]
        dx, dy = mx - px, my - py
        sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
        alpha = torch.clamp(p["opacity"][0, 0, g] * torch.exp(-sigma), max=0.999)
        live = ~done & (sigma >= 0) & (alpha >= THR)
        next_T = T * (1 - alpha)
        stop = live & (next_T <= 1e-4)
        blend = live & ~stop
        acc = acc + torch.where(blend[..., None], (alpha * T)[..., None] * scene["colors"][g], 0.0)
        T = torch.where(blend, next_T, T)
        done = done | stop
    return acc + T[..., None] * bg, (1 - T)[..., None]


@pytest.mark.parametrize("seed", [0, 1])
def test_reference_matches_brute_force_blend(seed):
    W, H = 40, 29  # not multiples of the 16-px tile
    scene = head_scene(150, seed)
    view, K = head_cameras(1, W, H, fx512=1500.0 * 0.25)
    bg = torch.tensor([0.3, 0.6, 0.9])
    rgb, alpha = rasterize(**scene, viewmats=view, Ks=K, width=W, height=H, background=bg)
    e_rgb, e_alpha = _brute_force(scene, view[0], K[0], W, H, bg)
    assert alpha.max() > 0.9 and (alpha == 0).any()  # the scene covers part of the image, densely
    torch.testing.assert_close(rgb[0], e_rgb, rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(alpha[0], e_alpha, rtol=1e-5, atol=2e-6)


def test_input_order_does_not_matter():
    scene = head_scene(400, 3)
    view, K = head_cameras(2, 48, 48, fx512=1500.0 * 48 / 512 * 4)
    perm = torch.randperm(400, generator=torch.Generator().manual_seed(0))
    shuffled = {k: v[perm] for k, v in scene.items()}
    rgb1, a1 = rasterize(**scene, viewmats=view, Ks=K, width=48, height=48)
    rgb2, a2 = rasterize(**shuffled, viewmats=view, Ks=K, width=48, height=48)
    torch.testing.assert_close(rgb1, rgb2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a1, a2, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------------------
# projection details
# ------------------------------------------------------------------------------------------------------------
def test_projection_matches_autograd_jacobian_and_clamps_outside_fov():
    torch.manual_seed(0)
    W, H, fx, fy, cx, cy = 64, 48, 80.0, 90.0, 30.0, 20.0
    view = head_cameras(1, 64, 64)[0][0].double()  # a rotated, translated camera
    means = torch.tensor([[0.02, -0.05, 0.01], [-0.03, 0.04, -0.02]], dtype=torch.float64)
    quats = torch.randn(2, 4, dtype=torch.float64)
    scales = torch.tensor([[0.01, 0.02, 0.005], [0.03, 0.002, 0.01]], dtype=torch.float64)
    K = torch.tensor([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=torch.float64)
    p = project(means[None], quats[None], scales[None], torch.ones(1, 2, dtype=torch.float64),
                torch.zeros(1, 2, 3, dtype=torch.float64), view[None, None], K[None, None], W, H, 0.01, 1e10, 0.3)
    from flexrt.kernels._torch_ref import quat_scale_to_covar

    cov = quat_scale_to_covar(quats, scales)
    for i in range(2):
        pc = view[:3, :3] @ means[i] + view[:3, 3]
        J = torch.autograd.functional.jacobian(
            lambda q: torch.stack([fx * q[0] / q[2] + cx, fy * q[1] / q[2] + cy]), pc)
        cov2d = J @ view[:3, :3] @ cov[i] @ view[:3, :3].T @ J.T + 0.3 * torch.eye(2, dtype=torch.float64)
        torch.testing.assert_close(p["cov2d"][0, 0, i], torch.stack([cov2d[0, 0], cov2d[0, 1], cov2d[1, 1]]),
                                   rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(p["mean2d"][0, 0, i], torch.stack([fx * pc[0] / pc[2] + cx, fy * pc[1] / pc[2] + cy]))
    # far outside the field of view, the Jacobian uses x/z clamped to (W - cx)/fx + 0.3 * W / (2 fx)
    pc = torch.tensor([3.0, 0.0, 1.0], dtype=torch.float64)
    p = project(pc[None, None], torch.tensor([[[1.0, 0, 0, 0]]], dtype=torch.float64),
                torch.full((1, 1, 3), 0.01, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64),
                torch.zeros(1, 1, 3, dtype=torch.float64), torch.eye(4, dtype=torch.float64)[None, None], K[None, None],
                W, H, 0.01, 1e10, 0.3)
    lim = (W - cx) / fx + 0.3 * 0.5 * W / fx
    J = torch.tensor([[fx, 0.0, -fx * lim], [0.0, fy, 0.0]], dtype=torch.float64)
    cov2d = 1e-4 * J @ J.T + 0.3 * torch.eye(2, dtype=torch.float64)
    torch.testing.assert_close(p["cov2d"][0, 0, 0], torch.stack([cov2d[0, 0], cov2d[0, 1], cov2d[1, 1]]))


# ------------------------------------------------------------------------------------------------------------
# batching, dtype, non-finite input
# ------------------------------------------------------------------------------------------------------------
def test_batched_equals_unbatched():
    W = H = 40
    scene = head_scene(300, 5, batch=(2,))
    view, K = head_cameras(3, W, H, fx512=1500.0 * 40 / 512 * 3, batch=(2,))
    bg = torch.rand(2, 3, 3, generator=torch.Generator().manual_seed(1))
    rgb, alpha = rasterize(**scene, viewmats=view, Ks=K, width=W, height=H, background=bg)
    assert rgb.shape == (2, 3, H, W, 3) and alpha.shape == (2, 3, H, W, 1)
    for b in range(2):
        for c in range(3):
            one = {k: v[b] for k, v in scene.items()}
            r1, a1 = rasterize(**one, viewmats=view[b, c:c + 1], Ks=K[b, c:c + 1], width=W, height=H,
                               background=bg[b, c:c + 1])
            torch.testing.assert_close(rgb[b, c], r1[0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(alpha[b, c], a1[0], rtol=1e-5, atol=1e-5)
    # two leading dims
    scene2 = {k: v[:, None] for k, v in scene.items()}
    rgb2, _ = rasterize(**scene2, viewmats=view[:, None], Ks=K[:, None], width=W, height=H, background=bg[:, None])
    assert rgb2.shape == (2, 1, 3, H, W, 3)
    torch.testing.assert_close(rgb2[:, 0], rgb, rtol=0, atol=0)
    assert not torch.equal(rgb[0, 0], rgb[1, 0])  # different scenes really differ


def test_float16_output():
    scene = head_scene(200, 2)
    view, K = head_cameras(1, 32, 32, fx512=1500.0 * 32 / 512 * 3)
    r32, a32 = rasterize(**scene, viewmats=view, Ks=K, width=32, height=32)
    r16, a16 = rasterize(**scene, viewmats=view, Ks=K, width=32, height=32, out_dtype=torch.float16)
    assert r16.dtype == torch.float16 and a16.dtype == torch.float16
    torch.testing.assert_close(r16.float(), r32, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(a16.float(), a32, rtol=1e-3, atol=1e-3)


def test_non_finite_gaussians_are_culled():
    W = H = 32
    scene = head_scene(200, 4)
    view, K = head_cameras(1, W, H, fx512=1500.0 * 32 / 512 * 3)
    bad = torch.zeros(200, dtype=torch.bool)
    corrupt = scene.copy()
    corrupt = {k: v.clone() for k, v in scene.items()}
    for field, rows, val in [("means", slice(0, 200, 9), float("nan")), ("scales", slice(1, 200, 11), float("inf")),
                             ("quats", slice(2, 200, 13), float("nan")), ("opacities", slice(3, 200, 17), float("nan")),
                             ("colors", slice(4, 200, 19), float("-inf")), ("quats", slice(5, 200, 23), 0.0)]:
        t = corrupt[field]
        if t.ndim == 1:
            t[rows] = val
        else:
            t[rows, -1 if field != "quats" or val != 0.0 else slice(None)] = val
        bad[rows] = True
    rgb, alpha = rasterize(**corrupt, viewmats=view, Ks=K, width=W, height=H, background=torch.ones(3))
    assert torch.isfinite(rgb).all() and torch.isfinite(alpha).all()
    clean = {k: v[~bad] for k, v in scene.items()}
    rgb_c, alpha_c = rasterize(**clean, viewmats=view, Ks=K, width=W, height=H, background=torch.ones(3))
    torch.testing.assert_close(rgb, rgb_c, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(alpha, alpha_c, rtol=1e-6, atol=1e-6)
    assert alpha_c.max() > 0.5


# ------------------------------------------------------------------------------------------------------------
# validation and helpers
# ------------------------------------------------------------------------------------------------------------
def _ok_inputs(N=5, C=2, batch=()):
    g = torch.Generator().manual_seed(0)
    return dict(
        means=torch.randn(batch + (N, 3), generator=g), quats=torch.randn(batch + (N, 4), generator=g),
        scales=torch.rand(batch + (N, 3), generator=g), opacities=torch.rand(batch + (N,), generator=g),
        colors=torch.rand(batch + (N, 3), generator=g), viewmats=torch.eye(4).expand(batch + (C, 4, 4)),
        Ks=torch.eye(3).expand(batch + (C, 3, 3)), width=8, height=8,
    )


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(quats=torch.randn(4, 4)), "mismatched number of Gaussians"),
        (dict(opacities=torch.rand(6)), "mismatched number of Gaussians"),
        (dict(colors=torch.rand(5, 4)), r"colors must be \[\.\.\., N, 3\]"),
        (dict(width=0), "width must be positive"),
        (dict(height=-3), "height must be positive"),
        (dict(width=8.0), "width must be an int"),
        (dict(viewmats=torch.eye(4)[:3].expand(2, 3, 4)), r"viewmats must be \[\.\.\., C, 4, 4\]"),
        (dict(Ks=torch.eye(4).expand(2, 4, 4)), r"Ks must be \[\.\.\., C, 3, 3\]"),
        (dict(Ks=torch.eye(3).expand(3, 3, 3)), "mismatched number of cameras"),
        (dict(viewmats=torch.eye(4).expand(1, 2, 4, 4)), "mismatched batch dims"),
        (dict(background=torch.rand(4)), "background must be"),
        (dict(backend="vulkan"), "unknown backend"),
        (dict(out_dtype=torch.float64), "out_dtype"),
    ],
)
def test_bad_input_raises_value_error(change, match):
    kw = _ok_inputs()
    kw.update(change)
    with pytest.raises(ValueError, match=match):
        rasterize(**kw)


def test_batch_dims_mismatch_between_gaussians():
    kw = _ok_inputs(batch=(2,))
    kw["scales"] = kw["scales"][:1]
    with pytest.raises(ValueError, match="mismatched batch dims"):
        rasterize(**kw)


def test_cupy_backend_without_cupy_or_cuda_is_a_clear_runtime_error():
    try:
        import cupy  # noqa: F401

        have = torch.cuda.is_available()
    except Exception:
        have = False
    if have:
        pytest.skip("CuPy and CUDA are present: covered by tests/test_rasterizer_gpu.py")
    with pytest.raises(RuntimeError, match="CuPy|CUDA"):
        rasterize(**_ok_inputs(), backend="cupy")


def test_sh_dc_to_rgb_values():
    c = torch.tensor([[0.0, 1.0, -1.0], [-10.0, 2.5, -0.5 / SH_C0]])
    expect = torch.tensor([[0.5, 0.5 + SH_C0, 0.5 - SH_C0], [0.0, 0.5 + 2.5 * SH_C0, 0.0]])
    torch.testing.assert_close(sh_dc_to_rgb(c), expect, rtol=0, atol=1e-7)
    assert SH_C0 == 0.28209479177387814
    with pytest.raises(ValueError):
        sh_dc_to_rgb(torch.zeros(4, 2))
    # into a caller's buffer: bit-identical to the allocating form
    big = torch.randn(2, 1000, 3, generator=torch.Generator().manual_seed(0)) * 3
    buf = torch.full_like(big, float("nan"))
    assert sh_dc_to_rgb(big, out=buf) is buf and torch.equal(buf, sh_dc_to_rgb(big))
    with pytest.raises(ValueError, match="out has shape"):
        sh_dc_to_rgb(big, out=torch.empty(2, 999, 3))


# ------------------------------------------------------------------------------------------------------------
# the CUDA source itself, run on the CPU (kernels/_host_emu.py)
# ------------------------------------------------------------------------------------------------------------
def _emu_or_skip():
    from flexrt.kernels import _host_emu

    if _host_emu.compiler() is None:
        pytest.skip("host emulation of the CUDA source needs g++")
    try:
        _host_emu.load()
    except Exception as exc:  # pragma: no cover - toolchain problem, not a rasterizer bug
        pytest.skip(f"host emulation could not be built: {exc}")
    return _host_emu


@pytest.mark.parametrize("chunked, out_dtype", [(False, torch.float32), (True, torch.float32),
                                               (False, torch.float16), (False, torch.uint8)])
def test_cuda_source_emulated_on_cpu_matches_reference(chunked, out_dtype):
    """The CUDA pipeline (project, depth sort, bitmaps, sub-tile blend) on the CPU vs the reference: 4 images,
    sizes that are not multiples of the tile, NaN Gaussians, N above one bitmap pass (2048 ranks)."""
    emu = _emu_or_skip()
    import flexrt.kernels._cupy_backend as cb

    W, H = 40, 36
    N = 2300
    scene = head_scene(N, 7, batch=(2,))
    scene["means"][0, ::37, 1] = float("nan")  # culled, never smeared
    view, K = head_cameras(2, W, H, fx512=2000.0, batch=(2,))  # the head fills most of the frame
    bg = torch.rand(2, 2, 3, generator=torch.Generator().manual_seed(2))
    args = [scene[k].contiguous() for k in ("means", "quats", "scales", "opacities", "colors")] + [view, K]
    n_tiles = 3 * 3
    per_image = n_tiles * cb.bitmap_words(N) * 4
    budget = per_image * 3 if chunked else None  # chunked: 4 images in passes of 3 + 1
    if chunked:  # and one background colour for every image ([3]: the kernel reads it with stride 0)
        bg = torch.tensor([0.3, 0.6, 0.9])
    stats = {}
    rgb, alpha = emu.rasterize_host_emu(*args, W, H, bg, out_dtype=out_dtype, max_bitmap_bytes=budget, stats=stats)
    bg = bg.expand(2, 2, 3).contiguous()
    assert stats["n_isect"] > 0 and stats["chunk"] == (3 if chunked else 4)
    assert cb.bitmap_words(N) == 128  # two warp passes per tile row
    assert not torch.isnan(rgb.float()).any() and not torch.isnan(alpha.float()).any()  # outputs were poisoned
    e_rgb, e_alpha = rasterize_torch(*args, W, H, bg)
    if out_dtype == torch.uint8:  # the kernel's rounding of its fp32 result: within one step of the reference's
        from flexrt.kernels import rgb_to_uint8
        for out, ref in ((rgb, e_rgb), (alpha, e_alpha)):
            diff = (out.int() - rgb_to_uint8(ref).int()).abs()
            assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 1e-3
        return
    tol = dict(rtol=1e-5, atol=2e-6) if out_dtype == torch.float32 else dict(rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(rgb.float(), e_rgb, **tol)
    torch.testing.assert_close(alpha.float(), e_alpha, **tol)
    # a head in the frame, background around it, saturated pixels inside it
    assert e_alpha.mean() > 0.2 and (e_alpha == 0).any() and (e_alpha > 1 - 1e-3).float().mean() > 0.3


def test_bitmap_layout_sizes():
    import flexrt.kernels._cupy_backend as cb

    assert cb.bitmap_words(0) == 0 and cb.bitmap_words(1) == 64 and cb.bitmap_words(2048) == 64
    assert cb.bitmap_words(2049) == 128 and cb.bitmap_words(58361) == 29 * 64
    # FLEX-1 at 512²: 1024 tiles x 1856 words x 4 B = 7.6 MB per image; a 256 MiB budget holds 35 images
    assert cb.images_per_chunk(64, 58361, 1024, 256 * 2**20) == 35
    assert cb.images_per_chunk(8, 58361, 1024, 1) == 1  # never zero
