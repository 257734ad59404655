"""CuPy/CUDA backend (``backend="cupy"``): NVRTC-compiled kernels from ``cuda/rasterize.cu``.

Per frame (all B*C images in one pass, on torch's current CUDA stream; CuPy and torch share memory by pointer,
no copies, **no host synchronisation**):

1. ``fr_project``: EWA projection and culling -> ellipse parameters and a depth key (+inf when culled).
2. ``torch.sort(stable=True)`` of the depth keys per image -> ``order[image, rank]``.
3. clear the tile bitmaps (one bit per (tile, depth rank); rows padded to whole warp passes).
4. ``fr_emit``: the depth-ordered blend records and, with the exact ellipse vs tile-row test, one ``atomicOr``
   per touched tile. A tile's bitmap read in word order is its depth-ordered list: no key buffer to size, so
   nothing has to come back to the host, and no (tile, depth) sort.
5. ``fr_blend_f32`` / ``fr_blend_f16``: 4 independent warps per 16x16 tile, one per 8x8 sub-tile, each culling
   the tile's records against its sub-tile before blending; fp32 or fp16 output written by the kernel.

Bitmap memory is ``images x tiles x ceil(N / 2048) x 256`` bytes (7.6 MB for 58k Gaussians at 512²); when a
batch would need more than ``MAX_BITMAP_BYTES`` the images go through steps 3-5 in chunks (same results).
Work buffers are cached per (device, stream) and only grow.
"""
from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

import numpy as np
import torch

TILE = 16
PASS_RANKS = 2048  # ranks per warp pass over a bitmap row (FR_PASS_RANKS in rasterize.cu)
_SRC = Path(__file__).with_name("cuda") / "rasterize.cu"
_BLOCK = 256
_BLEND_THREADS = 128  # 4 warps: one per 8x8 sub-tile of a 16x16 tile
# bitmap budget per pass over the images (FLEXRT_RASTER_BITMAP_MB overrides at import)
MAX_BITMAP_BYTES = int(float(os.environ.get("FLEXRT_RASTER_BITMAP_MB", "256")) * 2**20)


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
        self.cp = cupy
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
        self.host_u64 = np.ndarray((1,), dtype=np.uint64, buffer=self.pinned)

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

    _TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.int64): torch.int64,
                     np.dtype(np.uint32): torch.int32, np.dtype(np.uint64): torch.int64}

    def empty(self, n: int, dtype) -> torch.Tensor:
        """Work buffer from torch's caching allocator (torch.sort writes into some of them)."""
        return torch.empty((max(int(n), 1),), dtype=self._TORCH_DTYPES[np.dtype(dtype)],
                           device=torch.device("cuda", self.device.id))

    @staticmethod
    def ptr(a) -> int:
        return int(a.data_ptr())

    def memset0(self, a, nbytes: int):
        self.cp.cuda.runtime.memsetAsync(int(a.data_ptr()), 0, int(nbytes), self.stream_ptr)

    def launch(self, name: str, grid: tuple, block: int, args: tuple):
        fn = self._fns.get(name)
        if fn is None:
            fn = self._fns[name] = self.module.get_function(name)
        fn(grid, (block,), args)

    def sort_rows(self, keys, sorted_keys, order, rows: int, n: int):
        """Stable ascending sort of each row of keys[:rows*n] viewed [rows, n]; order = int64 indices per row."""
        m = rows * n
        torch.sort(keys[:m].view(rows, n), dim=-1, stable=True,
                   out=(sorted_keys[:m].view(rows, n), order[:m].view(rows, n)))

    def event(self):
        ev = self.cp.cuda.Event()
        ev.record(self.stream)
        return ev

    def elapsed_ms(self, e0, e1) -> float:
        e1.synchronize()
        return float(self.cp.cuda.get_elapsed_time(e0, e1))

    def read_u64(self, a) -> int:
        """a[0] (8 bytes) to the host. Statistics only: synchronises the stream."""
        self.cp.cuda.runtime.memcpyAsync(self.pinned.ptr, int(a.data_ptr()), 8, 2, self.stream_ptr)
        self.stream.synchronize()
        return int(self.host_u64[0])


# ------------------------------------------------------------------------------------------------------------
# orchestration
# ------------------------------------------------------------------------------------------------------------
class Workspace:
    """Grow-only work buffers, keyed by name (the buffers come from ``ops.empty``)."""

    def __init__(self):
        self.bufs: dict[str, tuple[object, int, np.dtype]] = {}

    def get(self, ops, name: str, n: int, dtype):
        n = max(int(n), 1)
        dtype = np.dtype(dtype)
        hit = self.bufs.get(name)
        if hit is None or hit[1] < n or hit[2] != dtype:
            size = n if hit is None else max(n, int(hit[1] * 1.25) + 1)
            hit = (ops.empty(size, dtype), size, dtype)
            self.bufs[name] = hit
        return hit[0]


def _p(x) -> np.uint64:
    return np.uint64(x)


def bitmap_words(N: int) -> int:
    """32-bit words per tile bitmap row: N ranks, padded to whole warp passes (PASS_RANKS ranks each)."""
    return -(-max(int(N), 0) // PASS_RANKS) * (PASS_RANKS // 32)


def images_per_chunk(I: int, N: int, n_tiles: int, max_bitmap_bytes: int) -> int:
    """How many images share one bitmap pass: all of them unless the bitmaps would exceed the budget (or the
    blend grid's y limit of 65535)."""
    per_image = max(1, n_tiles * bitmap_words(N) * 4)
    return max(1, min(I, 65535, int(max_bitmap_bytes) // per_image))


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
    background: torch.Tensor | None,  # [B, C, 3], [3] (every image) or None (black)
    out_rgb: torch.Tensor,  # [B, C, H, W, 3] float32 / float16 / uint8, contiguous
    out_alpha: torch.Tensor,  # [B, C, H, W, 1]
    near_plane: float,
    far_plane: float,
    eps2d: float,
    max_bitmap_bytes: int = MAX_BITMAP_BYTES,
    stats: dict | None = None,
) -> None:
    """Enqueue one frame on ops' stream; all tensors float32 contiguous on ops' device (outputs excepted)."""
    B, N = means.shape[:2]
    C = viewmats.shape[1]
    I = B * C
    tiles_x = (width + TILE - 1) // TILE
    tiles_y = (height + TILE - 1) // TILE
    n_tiles = tiles_x * tiles_y
    IN = I * N
    words = bitmap_words(N)
    chunk = images_per_chunk(I, N, n_tiles, max_bitmap_bytes)
    if N >= 2**31 or n_tiles >= 2**31:
        raise ValueError(f"too many Gaussians ({N}) or tiles ({n_tiles}) for one call")
    marks = [] if (stats is not None and stats.get("profile")) else None

    def mark(tag):
        if marks is not None:
            marks.append((tag, ops.event()))

    mark("start")
    if IN > 0:
        geo0 = ws.get(ops, "geo0", 4 * IN, np.float32)
        geo1 = ws.get(ops, "geo1", 4 * IN, np.float32)
        zkey = ws.get(ops, "zkey", IN, np.float32)
        zsorted = ws.get(ops, "zsorted", IN, np.float32)
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
                np.float32(near_plane), np.float32(far_plane), np.float32(eps2d),
                _p(ops.ptr(geo0)), _p(ops.ptr(geo1)), _p(ops.ptr(zkey)),
            ),
        )
        mark("project")
        ops.sort_rows(zkey, zsorted, order, I, N)  # stable: ties keep the Gaussian index order
        mark("depth_sort")
        rec_ptrs = (ops.ptr(recA), ops.ptr(recB), ops.ptr(recC))
    else:
        rec_ptrs = (0, 0, 0)
    bitmap = ws.get(ops, "bitmap", chunk * n_tiles * words, np.uint32)
    counter = ws.get(ops, "counter", 1, np.uint64) if stats is not None else None
    if counter is not None:
        ops.memset0(counter, 8)
    blend = {torch.float32: "fr_blend_f32", torch.float16: "fr_blend_f16", torch.uint8: "fr_blend_u8"}[out_rgb.dtype]
    bg_ptr = 0 if background is None else background.data_ptr()
    bg_stride = 3 if background is not None and background.ndim == 3 else 0
    for i0 in range(0, I, chunk):
        ic = min(chunk, I - i0)
        ops.memset0(bitmap, ic * n_tiles * words * 4)
        mark("clear")
        if IN > 0:
            r_lo, r_hi = i0 * N, (i0 + ic) * N
            ops.launch(
                "fr_emit", ((r_hi - r_lo + _BLOCK - 1) // _BLOCK,), _BLOCK,
                (
                    _p(ops.ptr(order)), _p(ops.ptr(geo0)), _p(ops.ptr(geo1)), _p(colors.data_ptr()),
                    np.int32(C), np.int32(N), np.int64(r_lo), np.int64(r_hi), np.int64(i0),
                    np.int32(tiles_x), np.int32(tiles_y), np.int32(words),
                    _p(rec_ptrs[0]), _p(rec_ptrs[1]), _p(rec_ptrs[2]), _p(ops.ptr(bitmap)),
                ),
            )
            mark("emit")
        ops.launch(
            blend, (n_tiles, ic), _BLEND_THREADS,
            (
                _p(ops.ptr(bitmap)), _p(rec_ptrs[0]), _p(rec_ptrs[1]), _p(rec_ptrs[2]),
                np.int32(N), np.int32(words), np.int32(width), np.int32(height), np.int32(tiles_x), np.int64(i0),
                _p(bg_ptr), np.int32(bg_stride), _p(out_rgb.data_ptr()), _p(out_alpha.data_ptr()),
            ),
        )
        mark("blend")
        if counter is not None and words > 0:
            nw = ic * n_tiles * words
            ops.launch("fr_count_bits", ((nw + _BLOCK - 1) // _BLOCK,), _BLOCK,
                       (_p(ops.ptr(bitmap)), np.int64(nw), _p(ops.ptr(counter))))
    if stats is not None:
        stats.update(n_isect=ops.read_u64(counter), I=I, N=N, n_tiles=n_tiles, words=words, chunk=chunk,
                     bitmap_bytes=chunk * n_tiles * words * 4)
    if marks is not None:
        stage = {}
        for i, (tag, ev) in enumerate(marks[1:]):
            stage[tag] = stage.get(tag, 0.0) + ops.elapsed_ms(marks[i][1], ev)
        stats["stage_ms"] = stage


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
    background: torch.Tensor | None,  # [B, C, 3], [3] or None (black)
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    out_dtype: torch.dtype = torch.float32,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
    max_bitmap_bytes: int | None = None,
    stats: dict | None = None,
    workspace: Workspace | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened-batch CUDA entry point -> (rgb [B, C, H, W, 3], alpha [B, C, H, W, 1]) in out_dtype.

    ``out``: optional preallocated contiguous outputs (tests poison them to prove every pixel is written).
    ``max_bitmap_bytes``: bitmap budget per pass (default ``MAX_BITMAP_BYTES``). ``stats``: a dict to fill with
    the pair count and sizes (``{"profile": True}`` adds per-stage GPU times); only then does the call
    synchronise. Otherwise nothing waits on the GPU: the outputs are ready in stream order.
    ``workspace``: the work buffers to use (default: a grow-only set per thread and stream). A caller that
    captures frames in a CUDA graph passes one of its own per captured frame, so the graph's buffers are its own.
    """
    require_cupy()
    B, N = means.shape[:2]
    C = viewmats.shape[1]
    dev = means.device
    if out is not None:
        for t, tail in ((out[0], 3), (out[1], 1)):
            if tuple(t.shape) != (B, C, height, width, tail) or t.dtype != out_dtype or not t.is_contiguous():
                raise ValueError(f"out tensor {tuple(t.shape)} {t.dtype} does not match "
                                 f"{(B, C, height, width, tail)} {out_dtype} contiguous")
    else:
        out = (torch.empty(B, C, height, width, 3, dtype=out_dtype, device=dev),
               torch.empty(B, C, height, width, 1, dtype=out_dtype, device=dev))
    ops, ws = _ops_and_ws(dev)
    with ops:
        render(ops, workspace if workspace is not None else ws, means, quats, scales, opacities, colors, viewmats,
               Ks, width, height, background, out[0], out[1], near_plane, far_plane, eps2d,
               MAX_BITMAP_BYTES if max_bitmap_bytes is None else max_bitmap_bytes, stats=stats)
    return out


__all__ = ["rasterize_cupy", "require_cupy", "render", "Workspace", "CupyOps", "bitmap_words", "images_per_chunk"]
