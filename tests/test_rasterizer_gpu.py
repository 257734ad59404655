"""GPU tests of the CuPy/CUDA rasterizer against the PyTorch reference (CPU) and gsplat 1.5.3.

Marked ``gpu`` (tests/conftest.py skips them without CUDA). Accuracy bars against the reference: PSNR >= 50 dB
on rgb (data range 1); |alpha difference| <= 1e-3 everywhere except at isolated pixels where the two fp32
implementations land on opposite sides of the 1/255 alpha cut for one Gaussian (ulp-level differences in the
conic / exp): such a flip moves alpha by at most 1/255, so no pixel may differ by more than 1/255 and at most
0.1 % of pixels by more than 1e-3. (Measured 2026-11-24, H100: max |dalpha| 2.3e-3 .. 3.5e-3 vs the reference;
the reference itself differs from gsplat 1.5.3 by 2.6e-3 at such pixels, PSNR 105-110 dB.) PSNR >= 50 dB
against gsplat.
"""
from __future__ import annotations

import math

import pytest
import torch

from flexrt.kernels import rasterize
from flexrt.kernels.scenes import head_cameras, head_scene

pytestmark = pytest.mark.gpu

FIELDS = ("means", "quats", "scales", "opacities", "colors")


@pytest.fixture(scope="module")
def cuda_backend():
    try:
        import cupy  # noqa: F401
    except Exception as exc:
        pytest.skip(f"CuPy not importable on this GPU host: {exc}")
    from flexrt.kernels import _cupy_backend

    return _cupy_backend


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.double().cpu() - b.double().cpu()) ** 2).item()
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def _check_alpha(alpha: torch.Tensor, alpha_ref: torch.Tensor) -> None:
    """|dalpha| <= 1e-3 except isolated 1/255-cut flips (module docstring)."""
    d = (alpha.float().cpu() - alpha_ref.float().cpu()).abs()
    assert d.max().item() <= 1.0 / 255.0 + 1e-5, f"max |dalpha| {d.max().item():.3e} exceeds one 1/255 cut"
    frac = (d > 1e-3).double().mean().item()
    assert frac <= 1e-3, f"{frac:.2e} of the pixels differ by more than 1e-3 in alpha"


def _scene(G, seed, W, cams, batch=(), device="cuda"):
    s = head_scene(G, seed, device=device, batch=batch)
    view, K = head_cameras(cams, W, W, device=device, batch=batch)
    return s, view, K


@pytest.mark.parametrize("G, W, cams, seed", [(3405, 512, 1, 0), (14241, 512, 2, 1), (58361, 512, 1, 2),
                                              (58361, 256, 3, 3)])
def test_cupy_matches_cpu_reference(cuda_backend, G, W, cams, seed):
    s, view, K = _scene(G, seed, W, cams)
    bg = torch.tensor([1.0, 1.0, 1.0], device="cuda")
    rgb, alpha = rasterize(**s, viewmats=view, Ks=K, width=W, height=W, background=bg, backend="cupy")
    torch.cuda.synchronize()
    cpu = {k: v.cpu() for k, v in s.items()}
    rgb_r, alpha_r = rasterize(**cpu, viewmats=view.cpu(), Ks=K.cpu(), width=W, height=W, background=bg.cpu())
    p = psnr(rgb, rgb_r)
    dalpha = (alpha.cpu() - alpha_r).abs()
    da = dalpha.max().item()
    frac = (dalpha > 1e-3).double().mean().item()
    print(f"G={G} W={W} cams={cams}: PSNR {p:.1f} dB, max|dalpha| {da:.2e}, "
          f"pixels with |dalpha| > 1e-3: {frac:.2e}, mean alpha {alpha_r.mean().item():.3f}")
    assert alpha_r.mean() > 0.2  # the head covers the image: a real test
    assert p >= 50.0
    _check_alpha(alpha, alpha_r)


@pytest.mark.parametrize("W, H", [(512, 512), (500, 300), (17, 33)])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16])
def test_poisoned_outputs_are_fully_written(cuda_backend, W, H, out_dtype):
    s, view, K = _scene(20000, 4, 512, 2, batch=(2,))
    K = K.clone()  # keep the head inside the frame at every size
    K[..., 0, 0] = K[..., 1, 1] = 1500.0 * min(W, H) / 512
    K[..., 0, 2] = W / 2
    K[..., 1, 2] = H / 2
    B, C = 2, 2
    flat = [s[k].reshape((B,) + s[k].shape[1:]).contiguous() for k in FIELDS]
    bg = torch.rand(B, C, 3, device="cuda")
    for trial in range(2):  # twice: the second run reuses the cached work buffers
        out = (torch.full((B, C, H, W, 3), float("nan"), device="cuda", dtype=out_dtype),
               torch.full((B, C, H, W, 1), float("nan"), device="cuda", dtype=out_dtype))
        rgb, alpha = cuda_backend.rasterize_cupy(*flat, view, K, W, H, bg, out_dtype=out_dtype, out=out)
        assert rgb.data_ptr() == out[0].data_ptr()
        assert not torch.isnan(rgb).any(), "unwritten rgb pixels"
        assert not torch.isnan(alpha).any(), "unwritten alpha pixels"
        assert (alpha == 0).any() and (alpha > 0.5).any()


def test_batched_equals_per_scene(cuda_backend):
    B, C, W = 3, 4, 256
    s, view, K = _scene(14241, 5, W, C, batch=(B,))
    bg = torch.rand(B, C, 3, device="cuda")
    rgb, alpha = rasterize(**s, viewmats=view, Ks=K, width=W, height=W, background=bg, backend="cupy")
    for b in range(B):
        for c in range(C):
            one = {k: v[b] for k, v in s.items()}
            r1, a1 = rasterize(**one, viewmats=view[b, c:c + 1], Ks=K[b, c:c + 1], width=W, height=W,
                               background=bg[b, c:c + 1], backend="cupy")
            torch.testing.assert_close(rgb[b, c], r1[0], rtol=0, atol=1e-6)
            torch.testing.assert_close(alpha[b, c], a1[0], rtol=0, atol=1e-6)
    assert psnr(rgb[0, 0], rgb[1, 0]) < 30  # different scenes differ


def test_fp16_output_close_to_fp32(cuda_backend):
    s, view, K = _scene(58361, 6, 512, 1)
    r32, a32 = rasterize(**s, viewmats=view, Ks=K, width=512, height=512, backend="cupy")
    r16, a16 = rasterize(**s, viewmats=view, Ks=K, width=512, height=512, backend="cupy", out_dtype=torch.float16)
    assert r16.dtype == torch.float16 and a16.dtype == torch.float16
    torch.testing.assert_close(r16.float(), r32, rtol=0, atol=1e-3)
    torch.testing.assert_close(a16.float(), a32, rtol=0, atol=1e-3)


def test_uint8_output_is_the_fp32_output_rounded(cuda_backend):
    """out_dtype=torch.uint8 (the server's frames): exactly kernels.rgb_to_uint8 of the fp32 output, every
    pixel (the same blend, then clamp, x 255, + 0.5, truncated), with a background colour and across images."""
    from flexrt.kernels import rgb_to_uint8

    s, view, K = _scene(58361, 6, 512, 2, batch=(2,))
    bg = torch.tensor([[0.2, 0.5, 1.0], [1.0, 1.0, 1.0]], device="cuda")[:, None].expand(2, 2, 3)
    r32, a32 = rasterize(**s, viewmats=view, Ks=K, width=512, height=512, background=bg, backend="cupy")
    r8, a8 = rasterize(**s, viewmats=view, Ks=K, width=512, height=512, background=bg, backend="cupy",
                       out_dtype=torch.uint8)
    assert r8.dtype == torch.uint8 and r8.shape == r32.shape and a8.shape == a32.shape
    assert torch.equal(r8, rgb_to_uint8(r32)) and torch.equal(a8, rgb_to_uint8(a32))
    assert 0 < int((r8 == 255).sum()) < r8.numel() and int(r8.float().std()) > 10  # a real image, not a constant


def test_bitmap_chunks_give_identical_images(cuda_backend):
    """A bitmap budget that forces one image per pass gives bit-identical results to one pass for all."""
    B, C, W = 2, 3, 320
    s, view, K = _scene(14241, 7, W, C, batch=(B,))
    flat = [s[k].contiguous() for k in FIELDS]
    st_all, st_one = {}, {}
    ref = cuda_backend.rasterize_cupy(*flat, view, K, W, W, None, stats=st_all)
    one = cuda_backend.rasterize_cupy(*flat, view, K, W, W, None, max_bitmap_bytes=1, stats=st_one)
    assert st_all["chunk"] == B * C and st_one["chunk"] == 1
    assert st_all["n_isect"] == st_one["n_isect"] > 0
    assert torch.equal(one[0], ref[0]) and torch.equal(one[1], ref[1])


def _captured(cuda_backend, flat, view, K, W, bg):
    """A frame captured in a CUDA graph with its own work buffers (the caller owns graph, buffers, outputs)."""
    from flexrt.kernels import Workspace, capture_graph

    ws = Workspace()
    graph, out = capture_graph(lambda: cuda_backend.rasterize_cupy(*flat, view, K, W, W, bg, workspace=ws))
    return graph, out, ws


@pytest.mark.parametrize("graphs", [False, True])
def test_no_host_synchronisation_in_a_frame(cuda_backend, graphs):
    """A frame is only enqueued: with the stream held busy by a long kernel, the call returns before it ends
    (eager launches, and replays of a captured frame)."""
    import time

    s, view, K = _scene(58361, 11, 512, 1)
    flat = [s[k][None].contiguous() for k in FIELDS]
    if graphs:
        graph, out, _ws = _captured(cuda_backend, flat, view[None], K[None], 512, None)
        frame = lambda: (graph.replay(), out)[1]  # noqa: E731
    else:
        frame = lambda: cuda_backend.rasterize_cupy(*flat, view[None], K[None], 512, 512, None)  # noqa: E731
    for _ in range(2):
        frame()
    torch.cuda.synchronize()
    torch.cuda._sleep(2_000_000_000)  # ~1 s of GPU time on the current stream
    t0 = time.perf_counter()
    rgb, alpha = frame()
    host_s = time.perf_counter() - t0
    busy = not torch.cuda.current_stream().query()
    torch.cuda.synchronize()
    assert busy, "the stream drained during the call: something in it waited for the GPU"
    assert host_s < 0.25, f"the call took {host_s:.3f} s of host time behind a busy stream"
    assert alpha.mean() > 0.2


def test_graph_replays_equal_eager_and_follow_input_contents(cuda_backend):
    """A frame captured with kernels.capture_graph (caller-owned workspace) replays the eager result bit for bit
    and follows in-place changes of its inputs; two captured frames do not share buffers."""
    s, view, K = _scene(14241, 12, 384, 2)
    flat = [s[k][None].clone().contiguous() for k in FIELDS]
    bg = torch.rand(1, 2, 3, device="cuda")
    eager = cuda_backend.rasterize_cupy(*flat, view[None], K[None], 384, 384, bg)
    graph, out, ws = _captured(cuda_backend, flat, view[None], K[None], 384, bg)
    other_graph, other_out, other_ws = _captured(cuda_backend, flat, view[None], K[None], 384, bg)
    assert not {b.data_ptr() for b, _, _ in ws.bufs.values()} & {b.data_ptr() for b, _, _ in other_ws.bufs.values()}
    for _ in range(3):
        out[0].fill_(float("nan"))
        out[1].fill_(float("nan"))
        graph.replay()
        assert torch.equal(out[0], eager[0]) and torch.equal(out[1], eager[1])
    # new contents at the same addresses: the replay follows them
    flat[0].add_(torch.tensor([0.02, 0.0, 0.0], device="cuda"))
    flat[4].copy_(flat[4].flip(-1))
    graph.replay()
    moved_eager = cuda_backend.rasterize_cupy(*flat, view[None], K[None], 384, 384, bg)
    assert torch.equal(out[0], moved_eager[0]) and not torch.equal(out[0], eager[0])
    other_graph.replay()
    assert torch.equal(other_out[0], moved_eager[0])


def test_culling_and_degenerate_inputs(cuda_backend):
    s, view, K = _scene(5000, 8, 256, 1)
    dirty = {k: v.clone() for k, v in s.items()}
    bad = torch.zeros(5000, dtype=torch.bool, device="cuda")
    dirty["means"][::7, 0] = float("nan")
    dirty["scales"][1::11, 2] = float("inf")
    dirty["quats"][2::13] = 0.0
    dirty["opacities"][3::17] = float("nan")
    dirty["colors"][4::19, 1] = float("nan")
    for sl in (slice(None, None, 7), slice(1, None, 11), slice(2, None, 13), slice(3, None, 17), slice(4, None, 19)):
        bad[sl] = True
    rgb, alpha = rasterize(**dirty, viewmats=view, Ks=K, width=256, height=256, backend="cupy")
    clean = {k: v[~bad] for k, v in s.items()}
    rgb_c, alpha_c = rasterize(**clean, viewmats=view, Ks=K, width=256, height=256, backend="cupy")
    assert torch.isfinite(rgb).all()
    torch.testing.assert_close(rgb, rgb_c, rtol=0, atol=1e-6)
    torch.testing.assert_close(alpha, alpha_c, rtol=0, atol=1e-6)
    # everything behind the camera -> background; no Gaussians at all -> background
    behind = dict(s, means=s["means"] + torch.tensor([0.0, 0.0, 5.0], device="cuda"))  # camera at z = 1
    bg = torch.tensor([0.2, 0.4, 0.6], device="cuda")
    r, a = rasterize(**behind, viewmats=view, Ks=K, width=256, height=256, background=bg, backend="cupy")
    assert torch.equal(r[0], bg.expand(256, 256, 3)) and torch.count_nonzero(a) == 0
    empty = {k: v[:0] for k, v in s.items()}
    r, a = rasterize(**empty, viewmats=view, Ks=K, width=256, height=256, background=bg, backend="cupy")
    assert torch.equal(r[0], bg.expand(256, 256, 3)) and torch.count_nonzero(a) == 0
    # one huge Gaussian covering every tile, on top of the head
    big = {k: torch.cat([v, v[:1]]) for k, v in s.items()}
    big["means"][-1] = torch.tensor([0.0, -0.03, 0.2], device="cuda")
    big["scales"][-1] = 0.3
    big["opacities"][-1] = 0.5
    r, a = rasterize(**big, viewmats=view, Ks=K, width=256, height=256, background=bg, backend="cupy")
    cpu = {k: v.cpu() for k, v in big.items()}
    r_r, a_r = rasterize(**cpu, viewmats=view.cpu(), Ks=K.cpu(), width=256, height=256, background=bg.cpu())
    assert psnr(r, r_r) >= 50
    _check_alpha(a, a_r)


def test_runs_on_a_side_stream(cuda_backend):
    s, view, K = _scene(14241, 9, 256, 1)
    ref = rasterize(**s, viewmats=view, Ks=K, width=256, height=256, backend="cupy")[0]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = rasterize(**s, viewmats=view, Ks=K, width=256, height=256, backend="cupy")[0]
        out = out.clone()
    torch.cuda.current_stream().wait_stream(side)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_matches_gsplat(cuda_backend):
    try:
        from gsplat import rasterization
    except Exception as exc:
        pytest.skip(f"gsplat not importable: {exc}")
    G, W = 58361, 512
    s, view, K = _scene(G, 10, W, 1)
    bg = torch.ones(1, 3, device="cuda")
    ours, ours_a = rasterize(**s, viewmats=view, Ks=K, width=W, height=W, background=bg[0], backend="cupy")
    ref, ref_a, _ = rasterization(
        s["means"], s["quats"], s["scales"], s["opacities"], s["colors"], view, K, W, W, near_plane=0.01,
        far_plane=1e10, eps2d=0.3, radius_clip=0.0, sh_degree=None, packed=False, tile_size=16, backgrounds=bg,
        rasterize_mode="classic",
    )
    cpu = {k: v.cpu() for k, v in s.items()}
    cpu_rgb, cpu_a = rasterize(**cpu, viewmats=view.cpu(), Ks=K.cpu(), width=W, height=W, background=bg[0].cpu())
    p, p_cpu = psnr(ours, ref), psnr(cpu_rgb, ref)
    da, da_cpu = (ours_a - ref_a).abs().max().item(), (cpu_a - ref_a.cpu()).abs().max().item()
    print(f"vs gsplat 1.5.3 (G={G}, {W}x{W}): cupy PSNR {p:.1f} dB max|dalpha| {da:.2e}; "
          f"cpu reference PSNR {p_cpu:.1f} dB max|dalpha| {da_cpu:.2e}")
    assert p >= 50.0
    assert p_cpu >= 50.0
