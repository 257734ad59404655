"""Pure-PyTorch reference backend (``backend="cpu"``): the oracle the CUDA kernels are tested against.

Semantics are those of gsplat 1.5.3 ``rasterization(packed=False, rasterize_mode="classic")`` with RGB colours,
written per pixel:

* projection: camera-space mean ``R m + t``; culled unless ``near <= z <= far``; 3D covariance
  ``R(q) S S^T R(q)^T`` (q normalised, wxyz); EWA projection through the pinhole Jacobian whose x/y are clamped
  to ``(W - cx)/fx + 0.3 tan(fovx/2)`` etc. (gsplat ``persp_proj``); ``+eps2d`` on the 2D diagonal (classic:
  opacity not compensated); culled when ``det <= 0`` or ``opacity < 1/255`` or any attribute/projection is
  non-finite.
* blending, front to back in view depth (ties: lower Gaussian index first): ``sigma = 0.5 (a dx^2 + c dy^2) +
  b dx dy`` with ``d = mean2d - (x + 0.5, y + 0.5)``, ``alpha = min(0.999, o exp(-sigma))``; skipped when
  ``sigma < 0`` or ``alpha < 1/255``; the first Gaussian that would take the transmittance to ``<= 1e-4`` is
  NOT blended and ends the pixel; ``rgb = sum + T bg``, ``alpha = 1 - T``.

gsplat bins Gaussians into 16x16 tiles with an opacity-aware box (``3.33`` capped at ``sqrt(2 ln(255 o))``
sigmas per axis). For ``o <= 1`` every pixel with ``alpha >= 1/255`` lies inside that box, so the tile binning
is only an acceleration: this reference bins conservatively (+1 px) and decides per pixel.

Vectorised: no Python loop over Gaussians or pixels. Per image, Gaussians are depth-sorted and binned into
tiles; tiles are then processed in rounds of ``K`` depth-ordered candidates per tile, carrying the
transmittance and the "done" flag across rounds (a cumprod inside the round), and dropping tiles whose pixels
are all done. Peak memory is bounded by ``_ROUND_ELEMS`` floats per temporary.

Works on any torch device (the tensors' own); ``backend="cpu"`` is the name of this pure-PyTorch path.

Autograd: every operation here is differentiable w.r.t. means, quats, scales, opacities, colours and the
background (the discrete decisions -- culling, tile binning, depth order, the 1/255 and 1e-4 thresholds -- are
piecewise constant, as in gsplat). Computation follows the inputs' dtype (float32 from ``rasterize``; float64
works for gradient checks). With ``recompute=True`` each blend round runs under activation checkpointing: the
forward keeps only a round's inputs ([A, 256] transmittances and the [A, K] Gaussian attributes) and the
backward recomputes one round at a time, so peak memory is bounded by ``_ROUND_ELEMS`` per temporary instead of
growing with every round's [A, 256, K] temporaries (``flexrt.kernels.differentiable``).
"""
from __future__ import annotations

import torch

TILE = 16
ALPHA_THRESHOLD = 1.0 / 255.0
T_STOP = 1e-4
ALPHA_MAX = 0.999
EXTEND_CAP = 3.33  # gsplat's box cap in sigmas; only used for binning here
# elements of one [tiles, 256, K] temporary per round (bounds peak memory: ~12 such temporaries live at once)
_ROUND_ELEMS = 1 << 22


def quat_scale_to_covar(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """quats [..., 4] (wxyz, any norm), scales [..., 3] -> covariance R S S^T R^T [..., 3, 3]."""
    q = quats * torch.rsqrt((quats * quats).sum(-1, keepdim=True))
    w, x, y, z = q.unbind(-1)
    x2, y2, z2 = x * x, y * y, z * z
    xy, xz, yz = x * y, x * z, y * z
    wx, wy, wz = w * x, w * y, w * z
    rot = torch.stack(
        [
            1.0 - 2.0 * (y2 + z2), 2.0 * (xy - wz), 2.0 * (xz + wy),
            2.0 * (xy + wz), 1.0 - 2.0 * (x2 + z2), 2.0 * (yz - wx),
            2.0 * (xz - wy), 2.0 * (yz + wx), 1.0 - 2.0 * (x2 + y2),
        ],
        dim=-1,
    ).reshape(q.shape[:-1] + (3, 3))
    m = rot * scales[..., None, :]  # R S: column j scaled by s_j
    return m @ m.transpose(-1, -2)


def project(
    means: torch.Tensor,  # [B, N, 3]
    quats: torch.Tensor,  # [B, N, 4]
    scales: torch.Tensor,  # [B, N, 3]
    opacities: torch.Tensor,  # [B, N]
    colors: torch.Tensor,  # [B, N, 3]
    viewmats: torch.Tensor,  # [B, C, 4, 4]
    Ks: torch.Tensor,  # [B, C, 3, 3]
    width: int,
    height: int,
    near_plane: float,
    far_plane: float,
    eps2d: float,
) -> dict[str, torch.Tensor]:
    """EWA projection of every Gaussian into every camera. Returns [B, C, N] fields:
    mean2d [..,2], depth, cov2d (sxx, sxy, syy, blurred), conic (a, b, c), opacity, valid (bool)."""
    B, N = means.shape[:2]
    C = viewmats.shape[1]
    rot = viewmats[:, :, None, :3, :3]  # [B, C, 1, 3, 3]
    trans = viewmats[:, :, None, :3, 3]  # [B, C, 1, 3]
    mean_c = (rot @ means[:, None, :, :, None])[..., 0] + trans  # [B, C, N, 3]
    covar = quat_scale_to_covar(quats, scales)[:, None]  # [B, 1, N, 3, 3]
    covar_c = rot @ covar @ rot.transpose(-1, -2)  # [B, C, N, 3, 3]

    fx = Ks[:, :, None, 0, 0]
    fy = Ks[:, :, None, 1, 1]
    cx = Ks[:, :, None, 0, 2]
    cy = Ks[:, :, None, 1, 2]
    tan_fovx = 0.5 * width / fx
    tan_fovy = 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + 0.3 * tan_fovx
    lim_x_neg = cx / fx + 0.3 * tan_fovx
    lim_y_pos = (height - cy) / fy + 0.3 * tan_fovy
    lim_y_neg = cy / fy + 0.3 * tan_fovy

    x, y, z = mean_c.unbind(-1)
    rz = 1.0 / z
    rz2 = rz * rz
    tx = z * torch.minimum(lim_x_pos, torch.maximum(-lim_x_neg, x * rz))
    ty = z * torch.minimum(lim_y_pos, torch.maximum(-lim_y_neg, y * rz))
    zero = torch.zeros_like(z)
    jac = torch.stack(
        [fx * rz, zero, -fx * tx * rz2, zero, fy * rz, -fy * ty * rz2], dim=-1
    ).reshape(z.shape + (2, 3))  # [B, C, N, 2, 3]
    cov2d = jac @ covar_c @ jac.transpose(-1, -2)  # [B, C, N, 2, 2]
    sxx = cov2d[..., 0, 0] + eps2d
    sxy = cov2d[..., 0, 1]
    syy = cov2d[..., 1, 1] + eps2d
    det = sxx * syy - sxy * sxy
    inv_det = 1.0 / det
    conic = torch.stack([syy * inv_det, -sxy * inv_det, sxx * inv_det], dim=-1)
    mean2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], dim=-1)

    opac = opacities[:, None, :].expand(B, C, N)
    finite_in = (
        torch.isfinite(means).all(-1)
        & torch.isfinite(quats).all(-1)
        & torch.isfinite(scales).all(-1)
        & torch.isfinite(opacities)
        & torch.isfinite(colors).all(-1)
    )[:, None, :]
    valid = (
        finite_in
        & (z >= near_plane)
        & (z <= far_plane)
        & (det > 0)
        & (opac >= ALPHA_THRESHOLD)
        & torch.isfinite(mean2d).all(-1)
        & torch.isfinite(conic).all(-1)
        & torch.isfinite(sxx)
        & torch.isfinite(syy)
    )
    return {
        "mean2d": mean2d,
        "depth": z,
        "cov2d": torch.stack([sxx, sxy, syy], dim=-1),
        "conic": conic,
        "opacity": opac,
        "valid": valid,
    }


def _blend_round(
    t_in: torch.Tensor,  # [A, 256] transmittance entering the round
    d_in: torch.Tensor,  # [A, 256] bool: pixel already done
    inrange: torch.Tensor,  # [A, K] bool: candidate slot holds a Gaussian
    px: torch.Tensor,  # [A, 256] pixel centre x
    py: torch.Tensor,  # [A, 256] pixel centre y
    gx: torch.Tensor,  # [A, K] candidate mean2d x
    gy: torch.Tensor,  # [A, K] candidate mean2d y
    ga: torch.Tensor,  # [A, K] conic a
    gb: torch.Tensor,  # [A, K] conic b
    gc: torch.Tensor,  # [A, K] conic c
    go: torch.Tensor,  # [A, K] opacity
    gcol: torch.Tensor,  # [A, K, 3] colour
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One round of K depth-ordered candidates for A tiles -> (colour added [A, 256, 3], transmittance after the
    round [A, 256], done after the round [A, 256] bool). A pure function of its inputs (recomputable)."""
    dtype = t_in.dtype
    dx = gx[:, None, :] - px[:, :, None]  # [A, 256, K]
    dy = gy[:, None, :] - py[:, :, None]
    sigma = 0.5 * (ga[:, None, :] * dx * dx + gc[:, None, :] * dy * dy) + gb[:, None, :] * dx * dy
    alpha = torch.clamp_max(go[:, None, :] * torch.exp(-sigma), ALPHA_MAX)
    ok = inrange[:, None, :] & (sigma >= 0) & (alpha >= torch.tensor(ALPHA_THRESHOLD, dtype=dtype)) & ~d_in[:, :, None]
    alpha = torch.where(ok, alpha, 0.0)
    prod = torch.cumprod(torch.cat([t_in[:, :, None], 1.0 - alpha], dim=-1), dim=-1)  # [A, 256, K+1]
    t_excl, t_incl = prod[..., :-1], prod[..., 1:]
    include = ok & (t_incl > T_STOP)
    w = torch.where(include, alpha * t_excl, 0.0)
    contrib = torch.einsum("apk,akc->apc", w, gcol)
    t_last = torch.where(include, t_incl, torch.inf).amin(-1)
    t_out = torch.minimum(t_in, t_last)
    done = d_in | (prod[..., -1] <= T_STOP)
    return contrib, t_out, done


def _render_image(
    mean2d: torch.Tensor,  # [N, 2]
    depth: torch.Tensor,  # [N]
    cov2d: torch.Tensor,  # [N, 3]
    conic: torch.Tensor,  # [N, 3]
    opacity: torch.Tensor,  # [N]
    color: torch.Tensor,  # [N, 3]
    valid: torch.Tensor,  # [N] bool
    width: int,
    height: int,
    recompute: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One image -> (accumulated colour [H, W, 3] without background, final transmittance [H, W]).

    ``recompute``: run each blend round under activation checkpointing (bounded memory under autograd)."""
    dev = mean2d.device
    dtype = mean2d.dtype
    tiles_x = (width + TILE - 1) // TILE
    tiles_y = (height + TILE - 1) // TILE
    n_tiles = tiles_x * tiles_y
    npix = TILE * TILE

    # depth order, ties by index (stable sort of the index-ordered list), like gsplat's stable radix sort
    with torch.no_grad():
        idx = valid.nonzero()[:, 0]
        order = torch.sort(depth[idx], stable=True).indices
        idx = idx[order]
        m2 = mean2d[idx]
        cv = cov2d[idx]
        op = opacity[idx]

        # conservative per-axis box in pixels (+1 px): sqrt(2 ln(255 o)) sigmas contain every pixel with
        # alpha >= 1/255 (no 3.33 cap here: the decision is per pixel)
        ext = torch.sqrt(torch.clamp_min(2.0 * torch.log(op.double() * 255.0), 0.0))
        hx = ext * torch.sqrt(cv[:, 0].double()) + 1.0
        hy = ext * torch.sqrt(cv[:, 2].double()) + 1.0
        mx = m2[:, 0].double()
        my = m2[:, 1].double()
        on_img = (mx + hx >= 0) & (mx - hx <= width) & (my + hy >= 0) & (my - hy <= height)
        keep = on_img.nonzero()[:, 0]
        idx, mx, my, hx, hy = idx[keep], mx[keep], my[keep], hx[keep], hy[keep]
        tx0 = torch.floor((mx - hx) / TILE).clamp(0, tiles_x - 1).long()
        tx1 = torch.floor((mx + hx) / TILE).clamp(0, tiles_x - 1).long()
        ty0 = torch.floor((my - hy) / TILE).clamp(0, tiles_y - 1).long()
        ty1 = torch.floor((my + hy) / TILE).clamp(0, tiles_y - 1).long()
        wspan = tx1 - tx0 + 1
        counts = wspan * (ty1 - ty0 + 1)

    acc = torch.zeros(n_tiles, npix, 3, dtype=dtype, device=dev)
    trans = torch.ones(n_tiles, npix, dtype=dtype, device=dev)
    if idx.numel() > 0:
        with torch.no_grad():
            # (Gaussian, tile) pairs in depth order, then stably grouped by tile
            gpos = torch.repeat_interleave(torch.arange(idx.numel(), device=dev), counts)
            starts = torch.cumsum(counts, 0) - counts
            k = torch.arange(gpos.numel(), device=dev) - starts[gpos]
            tile_of = (ty0[gpos] + k // wspan[gpos]) * tiles_x + (tx0[gpos] + k % wspan[gpos])
            tile_sorted, perm = torch.sort(tile_of, stable=True)
            pair_g = idx[gpos[perm]]  # Gaussian index per pair, grouped by tile, depth-ordered inside
            tile_count = torch.bincount(tile_sorted, minlength=n_tiles)
            tile_start = torch.cumsum(tile_count, 0) - tile_count

            # pixel centres per tile [n_tiles, 256]
            ly = torch.arange(npix, device=dev) // TILE
            lx = torch.arange(npix, device=dev) % TILE
            tid = torch.arange(n_tiles, device=dev)
            px = ((tid % tiles_x)[:, None] * TILE + lx[None, :]).to(dtype) + 0.5
            py = ((tid // tiles_x)[:, None] * TILE + ly[None, :]).to(dtype) + 0.5
        done = torch.zeros(n_tiles, npix, dtype=torch.bool, device=dev)

        ga, gb, gc = conic[:, 0], conic[:, 1], conic[:, 2]
        gx, gy = mean2d[:, 0], mean2d[:, 1]
        use_checkpoint = recompute and torch.is_grad_enabled()
        k0 = 0
        max_count = int(tile_count.max())
        while k0 < max_count:
            act = ((tile_count > k0) & ~done.all(-1)).nonzero()[:, 0]
            if act.numel() == 0:
                break
            K = int(max(8, min(512, _ROUND_ELEMS // (act.numel() * npix))))
            j = k0 + torch.arange(K, device=dev)
            inrange = j[None, :] < tile_count[act, None]  # [A, K]
            pidx = torch.where(inrange, tile_start[act, None] + j[None, :], 0)
            g = pair_g[pidx]  # [A, K]
            args = (trans[act], done[act], inrange, px[act], py[act], gx[g], gy[g], ga[g], gb[g], gc[g],
                    opacity[g], color[g])
            if use_checkpoint:
                from torch.utils.checkpoint import checkpoint

                contrib, t_out, d_out = checkpoint(_blend_round, *args, use_reentrant=False)
            else:
                contrib, t_out, d_out = _blend_round(*args)
            acc[act] += contrib
            trans[act] = t_out
            done[act] = d_out
            k0 += K

    # tiles -> image
    acc = acc.reshape(tiles_y, tiles_x, TILE, TILE, 3).permute(0, 2, 1, 3, 4).reshape(tiles_y * TILE, tiles_x * TILE, 3)
    trans = trans.reshape(tiles_y, tiles_x, TILE, TILE).permute(0, 2, 1, 3).reshape(tiles_y * TILE, tiles_x * TILE)
    return acc[:height, :width], trans[:height, :width]


def rasterize_torch(
    means: torch.Tensor,  # [B, N, 3]
    quats: torch.Tensor,  # [B, N, 4]
    scales: torch.Tensor,  # [B, N, 3]
    opacities: torch.Tensor,  # [B, N]
    colors: torch.Tensor,  # [B, N, 3]
    viewmats: torch.Tensor,  # [B, C, 4, 4]
    Ks: torch.Tensor,  # [B, C, 3, 3]
    width: int,
    height: int,
    background: torch.Tensor | None,  # [B, C, 3] or None
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    recompute: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened-batch entry point (inputs of one float dtype, validated by the caller) -> rgb [B, C, H, W, 3],
    alpha [B, C, H, W, 1] in that dtype. ``recompute``: checkpoint the blend rounds (see the module docstring)."""
    B, N = means.shape[:2]
    C = viewmats.shape[1]
    proj = project(means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane, far_plane, eps2d)
    rgb = torch.empty(B, C, height, width, 3, dtype=means.dtype, device=means.device)
    alpha = torch.empty(B, C, height, width, 1, dtype=means.dtype, device=means.device)
    for b in range(B):
        for c in range(C):
            acc, trans = _render_image(
                proj["mean2d"][b, c], proj["depth"][b, c], proj["cov2d"][b, c], proj["conic"][b, c],
                proj["opacity"][b, c], colors[b], proj["valid"][b, c], width, height, recompute,
            )
            if background is not None:
                acc = acc + trans[..., None] * background[b, c]
            rgb[b, c] = acc
            alpha[b, c, ..., 0] = 1.0 - trans
    return rgb, alpha


__all__ = ["project", "quat_scale_to_covar", "rasterize_torch"]
