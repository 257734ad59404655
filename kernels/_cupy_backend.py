"""CuPy/CUDA backend (``backend="cupy"``): NVRTC-compiled kernels from ``cuda/rasterize.cu``.

Per frame (all B*C images in one pass, on torch's current CUDA stream; CuPy and torch share memory by pointer,
no copies):

1. ``fr_project``: EWA projection, culling, exact ellipse-vs-tile-row count, warp-aggregated atomic slot
   offsets, depth keys.
2. thrust ``argsort`` of the depth keys (image, depth, index) -> depth order.
3. **One host synchronisation**: read the total number of (tile, Gaussian) intersections (4 bytes) to size the
   key buffer (grow-only) and the sort. Everything else is asynchronous.
4. ``fr_emit``: depth-ordered blend records + keys ``(image*n_tiles + tile) << rbits | depth_rank`` (32-bit
   keys when they fit, else 64-bit); ``rank`` indexes the depth-ordered records, so no value array is sorted.
5. thrust radix ``sort`` of the keys (keys only), 6. ``fr_ranges`` per-tile ranges, 7. ``fr_blend_*``.

Work buffers are cached per (device, stream) and only grow. Output: float32 or float16 (written by the
kernel directly).
"""
from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

import numpy as np
import torch

TILE = 16
_SRC = Path(__file__).with_name("cuda") / "rasterize.cu"
_BLOCK = 256
# pixels per thread in the blend kernel (1 or 2): 2 was faster in all 12 benchmark configurations (H100,
# 2026-11-24, docs/RASTERIZER.md); FLEXRT_RASTER_PPT overrides at import
DEFAULT_PPT = int(os.environ.get("FLEXRT_RASTER_PPT", "2"))


_checked = False


def require_cupy():
    """Import CuPy and check for a CUDA device; RuntimeError (no fallback) otherwise."""
    global _checked
    if _checked:
        import cupy

        return cupy
    try:
        import cupy  # noqa: F401
    except Exception as exc:  # ImportError or a broken CUDA install
        raise RuntimeError(
            "backend='cupy' needs CuPy (e.g. pip install cupy-cuda12x / cupy-cuda13x) and a CUDA GPU; "
            f"importing cupy failed: {exc}"
        ) from exc
    if not torch.cuda.is_available():
        raise RuntimeError("backend='cupy' needs a CUDA GPU visible to torch; torch.cuda.is_available() is False")
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        raise RuntimeError(f"backend='cupy': CuPy cannot reach a CUDA device: {exc}") from exc
    if n < 1:
        raise RuntimeError("backend='cupy': CuPy sees no CUDA device")
    _checked = True
    return cupy


# ------------------------------------------------------------------------------------------------------------
# device operations (CuPy); tests can drive the same orchestration with another implementation
# ------------------------------------------------------------------------------------------------------------
class CupyOps:
    """The handful of device operations the orchestration needs, on one device and one (torch) stream."""

    _modules: dict[int, object] = {}
    _lock = threading.Lock()

    def __init__(self, device_index: int, stream_ptr: int):
        import cupy
        from cupy.cuda import thrust

        self.cp = cupy
        self.thrust = thrust
        self.device = cupy.cuda.Device(device_index)
        # torch's default stream is the legacy null stream (pointer 0). ExternalStream is deprecated in CuPy 14
        # (in favour of Stream.from_external) but is what was tested on the GPU; silence its warning.
        if stream_ptr == 0:
            self.stream = cupy.cuda.Stream.null
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                self.stream = cupy.cuda.ExternalStream(stream_ptr, device_index)
        self.stream_ptr = stream_ptr
        with self.device:
            self.module = self._module(device_index)
        self._fns: dict[str, object] = {}
        self.pinned = cupy.cuda.alloc_pinned_memory(8)
        self.host_u32 = np.ndarray((1,), dtype=np.uint32, buffer=self.pinned)

    @classmethod
    def _module(cls, device_index: int):
        with cls._lock:
            mod = cls._modules.get(device_index)
            if mod is None:
                import cupy

                mod = cupy.RawModule(code=_SRC.read_text())  # NVRTC, -arch of the current device
                mod.compile()
                cls._modules[device_index] = mod
            return mod

    def __enter__(self):
        self.device.__enter__()
        self.stream.__enter__()
        return self

    def __exit__(self, *exc):
        self.stream.__exit__(*exc)
        self.device.__exit__(*exc)

    def empty(self, n: int, dtype) -> object:
        return self.cp.empty((max(int(n), 1),), dtype=dtype)

    @staticmethod
    def ptr(a) -> int:
        return int(a.data.ptr)

    def memset0(self, a, nbytes: int):
        self.cp.cuda.runtime.memsetAsync(int(a.data.ptr), 0, int(nbytes), self.stream_ptr)

    def launch(self, name: str, grid: tuple, block: int, args: tuple):
        fn = self._fns.get(name)
        if fn is None:
            fn = self._fns[name] = self.module.get_function(name)
        fn(grid, (block,), args)

    def argsort(self, keys, idx, n: int):
        """Stable ascending sort of keys[:n] in place; idx[:n] (int64) = the permutation."""
        self.thrust.argsort(keys.dtype, int(idx.data.ptr), int(keys.data.ptr), 0, (int(n),))

    def sort(self, keys, n: int):
        self.thrust.sort(keys.dtype, int(keys.data.ptr), 0, (int(n),))

    def event(self):
        ev = self.cp.cuda.Event()
        ev.record(self.stream)
        return ev

    def elapsed_ms(self, e0, e1) -> float:
        e1.synchronize()
        return float(self.cp.cuda.get_elapsed_time(e0, e1))

    def read_u32(self, a, index: int) -> int:
        """a[index] (4-byte element) to the host: the one host synchronisation of a frame."""
        self.cp.cuda.runtime.memcpyAsync(self.pinned.ptr, int(a.data.ptr) + 4 * int(index), 4, 2, self.stream_ptr)
        self.stream.synchronize()
        return int(self.host_u32[0])


# ------------------------------------------------------------------------------------------------------------
# orchestration
# ------------------------------------------------------------------------------------------------------------
class Workspace:
    """Grow-only work buffers, keyed by name."""

    def __init__(self):
        self.bufs: dict[str, object] = {}

    def get(self, ops, name: str, n: int, dtype):
        a = self.bufs.get(name)
        if a is None or a.size < n or a.dtype != np.dtype(dtype):
            a = ops.empty(max(int(n), 1) if a is None else max(int(n), int(a.size * 1.25) + 1), dtype)
            self.bufs[name] = a
        return a


def _p(x) -> np.uint64:
    return np.uint64(x)


def key_layout(I: int, N: int, tiles_x: int, tiles_y: int) -> tuple[int, bool]:
    """(rbits, wide): rank bits and whether tile keys need 64 bits (the all-ones key is the sentinel)."""
    rbits = max(1, (N - 1).bit_length())
    n_all = I * tiles_x * tiles_y
    max_key = ((n_all - 1) << rbits) | (N - 1)
    wide = max_key >= (1 << 32) - 1
    if max_key >= (1 << 64) - 1:
        raise ValueError(f"too many images x tiles x Gaussians for 64-bit keys: I={I}, N={N}, tiles={n_all // I}")
    return rbits, wide


def render(
    ops,
    ws: Workspace,
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
    out_rgb: torch.Tensor,  # [B, C, H, W, 3] float32 / float16, contiguous
    out_alpha: torch.Tensor,  # [B, C, H, W, 1]
    near_plane: float,
    far_plane: float,
    eps2d: float,
    ppt: int = DEFAULT_PPT,
    stats: dict | None = None,
) -> None:
    """Enqueue one frame on ops' stream; all tensors float32 contiguous on ops' device (outputs excepted)."""
    B, N = means.shape[:2]
    C = viewmats.shape[1]
    I = B * C
    tiles_x = (width + TILE - 1) // TILE
    tiles_y = (height + TILE - 1) // TILE
    n_tiles = tiles_x * tiles_y
    n_all = I * n_tiles
    IN = I * N
    if I > 65535:
        raise ValueError(f"at most 65535 images (batch x cameras) per call, got {I}")
    if ppt not in (1, 2):
        raise ValueError(f"ppt must be 1 or 2, got {ppt}")
    rbits, wide_keys = key_layout(I, max(N, 1), tiles_x, tiles_y)
    wide_depth = I > 1
    half = out_rgb.dtype == torch.float16
    marks = [] if (stats is not None and stats.get("profile")) else None

    def mark(tag):
        if marks is not None:
            marks.append((tag, ops.event()))

    mark("start")
    ctrl = ws.get(ops, "ctrl", 2 * n_all + 2, np.int32)  # ranges [n_all] int2, then the total counter
    ops.memset0(ctrl, (2 * n_all + 2) * 4)
    total_ptr = ops.ptr(ctrl) + 2 * n_all * 4
    if IN > 0:
        geo0 = ws.get(ops, "geo0", 4 * IN, np.float32)
        geo1 = ws.get(ops, "geo1", 4 * IN, np.float32)
        dkey = ws.get(ops, "dkey64" if wide_depth else "dkey32", IN, np.uint64 if wide_depth else np.uint32)
        counts = ws.get(ops, "counts", IN, np.int32)
        offsets = ws.get(ops, "offsets", IN, np.int32)
        order = ws.get(ops, "order", IN, np.int64)
        recA = ws.get(ops, "recA", 4 * IN, np.float32)
        recB = ws.get(ops, "recB", 4 * IN, np.float32)
        recC = ws.get(ops, "recC", IN, np.float32)
        ops.launch(
            "fr_project", ((IN + _BLOCK - 1) // _BLOCK,), _BLOCK,
            (
                _p(means.data_ptr()), _p(quats.data_ptr()), _p(scales.data_ptr()), _p(opacities.data_ptr()),
                _p(colors.data_ptr()), _p(viewmats.data_ptr()), _p(Ks.data_ptr()),
                np.int32(C), np.int32(N), np.int64(IN), np.int32(width), np.int32(height),
                np.int32(tiles_x), np.int32(tiles_y),
                np.float32(near_plane), np.float32(far_plane), np.float32(eps2d), np.int32(wide_depth),
                _p(ops.ptr(geo0)), _p(ops.ptr(geo1)),
                _p(0 if wide_depth else ops.ptr(dkey)), _p(ops.ptr(dkey) if wide_depth else 0),
                _p(ops.ptr(counts)), _p(ops.ptr(offsets)), _p(total_ptr),
            ),
        )
        mark("project")
        ops.argsort(dkey, order, IN)
        mark("depth_sort")
        n_isect = ops.read_u32(ctrl, 2 * n_all)  # the one host synchronisation
        mark("sync")
    else:
        n_isect = 0
    if n_isect >= 2**31 - 1:
        raise ValueError(f"{n_isect} tile intersections exceed the int32 range of the tile ranges")
    if stats is not None:
        stats.update(n_isect=n_isect, wide_keys=wide_keys, rbits=rbits, I=I, N=N, n_tiles=n_tiles)

    kdtype = np.uint64 if wide_keys else np.uint32
    keys = ws.get(ops, "keys64" if wide_keys else "keys32", max(n_isect, 1), kdtype)
    if n_isect > 0:
        ops.launch(
            "fr_emit", ((IN + _BLOCK - 1) // _BLOCK,), _BLOCK,
            (
                _p(ops.ptr(order)), _p(ops.ptr(geo0)), _p(ops.ptr(geo1)), _p(ops.ptr(counts)),
                _p(ops.ptr(offsets)), _p(colors.data_ptr()),
                np.int32(C), np.int32(N), np.int64(IN), np.int32(tiles_x), np.int32(tiles_y),
                np.int32(rbits), np.int32(wide_keys),
                _p(ops.ptr(recA)), _p(ops.ptr(recB)), _p(ops.ptr(recC)),
                _p(0 if wide_keys else ops.ptr(keys)), _p(ops.ptr(keys) if wide_keys else 0),
            ),
        )
        mark("emit")
        ops.sort(keys, n_isect)
        mark("key_sort")
        ops.launch(
            "fr_ranges", ((n_isect + _BLOCK - 1) // _BLOCK,), _BLOCK,
            (
                _p(0 if wide_keys else ops.ptr(keys)), _p(ops.ptr(keys) if wide_keys else 0), np.int32(wide_keys),
                np.int64(n_isect), np.int32(rbits), np.int64(n_all), _p(ops.ptr(ctrl)),
            ),
        )
        rec_ptrs = (ops.ptr(recA), ops.ptr(recB), ops.ptr(recC))
        mark("ranges")
    else:
        rec_ptrs = (0, 0, 0)
    name = f"fr_blend_k{64 if wide_keys else 32}_f{16 if half else 32}_p{ppt}"
    ops.launch(
        name, (n_tiles, I), (TILE * TILE) // ppt,
        (
            _p(ops.ptr(keys)), _p(ops.ptr(ctrl)), _p(rec_ptrs[0]), _p(rec_ptrs[1]), _p(rec_ptrs[2]),
            np.int32(N), np.int32(rbits), np.int32(width), np.int32(height), np.int32(tiles_x),
            _p(0 if background is None else background.data_ptr()),
            _p(out_rgb.data_ptr()), _p(out_alpha.data_ptr()),
        ),
    )
    mark("blend")
    if marks is not None:
        stats["stage_ms"] = {tag: ops.elapsed_ms(marks[i][1], ev) for i, (tag, ev) in enumerate(marks[1:])}


# ------------------------------------------------------------------------------------------------------------
# entry point used by flexrt.kernels.rasterize
# ------------------------------------------------------------------------------------------------------------
_state = threading.local()


def _ops_and_ws(device: torch.device) -> tuple[CupyOps, Workspace]:
    idx = device.index if device.index is not None else torch.cuda.current_device()
    stream_ptr = torch.cuda.current_stream(idx).cuda_stream
    cache = getattr(_state, "cache", None)
    if cache is None:
        cache = _state.cache = {}
    key = (idx, stream_ptr)
    hit = cache.get(key)
    if hit is None:
        hit = cache[key] = (CupyOps(idx, stream_ptr), Workspace())
    return hit


def rasterize_cupy(
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
    out_dtype: torch.dtype = torch.float32,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
    ppt: int | None = None,
    stats: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened-batch CUDA entry point -> (rgb [B, C, H, W, 3], alpha [B, C, H, W, 1]) in out_dtype.

    ``out``: optional preallocated contiguous outputs (tests poison them to prove every pixel is written).
    Synchronises the host once (the intersection count); see the module docstring.
    """
    require_cupy()
    B, N = means.shape[:2]
    C = viewmats.shape[1]
    dev = means.device
    if out is None:
        out_rgb = torch.empty(B, C, height, width, 3, dtype=out_dtype, device=dev)
        out_alpha = torch.empty(B, C, height, width, 1, dtype=out_dtype, device=dev)
    else:
        out_rgb, out_alpha = out
        for t, tail in ((out_rgb, 3), (out_alpha, 1)):
            if tuple(t.shape) != (B, C, height, width, tail) or t.dtype != out_dtype or not t.is_contiguous():
                raise ValueError(f"out tensor {tuple(t.shape)} {t.dtype} does not match "
                                 f"{(B, C, height, width, tail)} {out_dtype} contiguous")
    if ppt is None:
        ppt = DEFAULT_PPT
    ops, ws = _ops_and_ws(dev)
    with ops:
        render(ops, ws, means, quats, scales, opacities, colors, viewmats, Ks, width, height, background,
               out_rgb, out_alpha, near_plane, far_plane, eps2d, ppt=ppt, stats=stats)
    return out_rgb, out_alpha


__all__ = ["rasterize_cupy", "require_cupy", "render", "Workspace", "CupyOps", "key_layout"]
