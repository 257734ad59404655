"""Run ``cuda/rasterize.cu`` on the CPU (test tool, no GPU needed).

The CUDA source is compiled as C++20 by g++ with a small prelude: one OS thread per CUDA thread, one block at
a time, ``std::barrier`` for ``__syncthreads``/``__syncthreads_count`` and warp shuffles, ``__shared__`` as
function statics. The host orchestration is the real one (``_cupy_backend.render``) with numpy standing in
for CuPy/torch.sort. Slow (thousands of threads), meant for small scenes in CPU CI: it checks the kernels' logic
(binning, keys, ranges, blending, batching) against the PyTorch reference. It says nothing about GPU-only
behaviour (races between real warps, memory model, NVRTC).
"""
from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch

from . import _cupy_backend as cb

_PRELUDE = r"""
#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>
#define FR_HOST_EMU 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ static
struct fr_dim3 { unsigned int x = 0, y = 0, z = 0; };
static thread_local fr_dim3 threadIdx, blockIdx;
static fr_dim3 blockDim, gridDim;
struct float4 { float x, y, z, w; };
struct uint2 { unsigned int x, y; };
static inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
static inline uint2 make_uint2(unsigned int x, unsigned int y) { return uint2{x, y}; }
using std::max;
using std::min;
static inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
#define __expf(x) std::exp((float)(x))
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fdividef(float a, float b) { return a / b; }
static inline float __fsqrt_rn(float a) { return std::sqrt(a); }
static inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
static inline int __popc(unsigned int v) { return __builtin_popcount(v); }
static inline int __ffs(unsigned int v) { return __builtin_ffs((int)v); }
static inline unsigned short fr_emu_f2h(float f) {
    _Float16 h = (_Float16)f; unsigned short u; std::memcpy(&u, &h, 2); return u;
}
struct FrEmuBlock {
    std::unique_ptr<std::barrier<>> bar;
    std::vector<std::unique_ptr<std::barrier<>>> warp;
    std::atomic<int> count{0};
    long long sh[1024];
};
static FrEmuBlock* fr_emu_blk = nullptr;
static inline void __syncthreads() { fr_emu_blk->bar->arrive_and_wait(); }
static inline int __syncthreads_count(int pred) {
    FrEmuBlock* b = fr_emu_blk;
    b->count.fetch_add(pred ? 1 : 0);
    b->bar->arrive_and_wait();
    const int r = b->count.load();
    b->bar->arrive_and_wait();
    if (threadIdx.x == 0) b->count.store(0);
    b->bar->arrive_and_wait();
    return r;
}
template <typename T> static inline T fr_emu_shfl(T v, int src, bool take) {
    FrEmuBlock* b = fr_emu_blk;
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    b->sh[w * 32 + lane] = (long long)v;
    b->warp[w]->arrive_and_wait();
    const T r = take ? (T)b->sh[w * 32 + src] : v;
    b->warp[w]->arrive_and_wait();
    return r;
}
static inline int __shfl_up_sync(unsigned, int v, int o) {
    const int lane = threadIdx.x & 31;
    return fr_emu_shfl<int>(v, lane - o, lane >= o);
}
static inline int __shfl_sync(unsigned, int v, int src) { return fr_emu_shfl<int>(v, src, true); }
static inline void __syncwarp() { fr_emu_blk->warp[threadIdx.x >> 5]->arrive_and_wait(); }
static inline unsigned int __ballot_sync(unsigned, bool pred) {
    FrEmuBlock* b = fr_emu_blk;
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    b->sh[w * 32 + lane] = pred ? 1 : 0;
    b->warp[w]->arrive_and_wait();
    unsigned int m = 0;
    for (int i = 0; i < 32; ++i) m |= (b->sh[w * 32 + i] ? 1u : 0u) << i;
    b->warp[w]->arrive_and_wait();
    return m;
}
static inline bool __all_sync(unsigned mask, bool pred) { return __ballot_sync(mask, pred) == 0xffffffffu; }
static inline unsigned int atomicOr(unsigned int* p, unsigned int v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }
static inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
template <typename F> static void fr_emu_launch(unsigned gx, unsigned gy, unsigned bx, bool threads, F f) {
    gridDim = fr_dim3{gx, gy, 1};
    blockDim = fr_dim3{bx, 1, 1};
    for (unsigned by_ = 0; by_ < gy; ++by_)
        for (unsigned bx_ = 0; bx_ < gx; ++bx_) {
            if (!threads) {  // kernels without barriers or shuffles: run the threads one after another
                for (unsigned t = 0; t < bx; ++t) { threadIdx = fr_dim3{t, 0, 0}; blockIdx = fr_dim3{bx_, by_, 0}; f(); }
                continue;
            }
            FrEmuBlock blk;
            blk.bar = std::make_unique<std::barrier<>>(bx);
            for (unsigned w = 0; w < (bx + 31) / 32; ++w)
                blk.warp.push_back(std::make_unique<std::barrier<>>(std::min(32u, bx - 32 * w)));
            fr_emu_blk = &blk;
            std::vector<std::thread> ts;
            ts.reserve(bx);
            for (unsigned t = 0; t < bx; ++t)
                ts.emplace_back([&, t] { threadIdx = fr_dim3{t, 0, 0}; blockIdx = fr_dim3{bx_, by_, 0}; f(); });
            for (auto& th : ts) th.join();
            fr_emu_blk = nullptr;
        }
}
"""

_WRAPPERS = r"""
extern "C" void emu_fr_project(unsigned gx, unsigned gy, unsigned bx,
    const float* means, const float* quats, const float* scales, const float* opacities, const float* colors,
    const float* viewmats, const float* Ks, int C, int N, long long n_total, int width, int height,
    float near_plane, float far_plane, float eps2d, float4* geo0, float4* geo1, float* zkey) {
    fr_emu_launch(gx, gy, bx, false, [&] {
        fr_project(means, quats, scales, opacities, colors, viewmats, Ks, C, N, n_total, width, height,
                   near_plane, far_plane, eps2d, geo0, geo1, zkey);
    });
}
extern "C" void emu_fr_emit(unsigned gx, unsigned gy, unsigned bx,
    const long long* order, const float4* geo0, const float4* geo1, const float* colors, int C, int N,
    long long r_lo, long long r_hi, long long image0, int tiles_x, int tiles_y, int words,
    float4* recA, float4* recB, float* recC, u32* bitmap) {
    fr_emu_launch(gx, gy, bx, false, [&] {
        fr_emit(order, geo0, geo1, colors, C, N, r_lo, r_hi, image0, tiles_x, tiles_y, words, recA, recB, recC,
                bitmap);
    });
}
extern "C" void emu_fr_count_bits(unsigned gx, unsigned gy, unsigned bx, const u32* bitmap, long long n_words,
    u64* total) {
    fr_emu_launch(gx, gy, bx, false, [&] { fr_count_bits(bitmap, n_words, total); });
}
#define EMU_BLEND(NAME)                                                                                        \
    extern "C" void emu_##NAME(unsigned gx, unsigned gy, unsigned bx, const u32* bitmap, const float4* recA,  \
        const float4* recB, const float* recC, int N, int words, int width, int height, int tiles_x,            \
        long long image0, const float* bg, int bg_stride, void* out_rgb, void* out_alpha) {                    \
        fr_emu_launch(gx, gy, bx, true, [&] {                                                                  \
            NAME(bitmap, recA, recB, recC, N, words, width, height, tiles_x, image0, bg, bg_stride, out_rgb,        \
                 out_alpha);                                                                                   \
        });                                                                                                    \
    }
EMU_BLEND(fr_blend_f32)
EMU_BLEND(fr_blend_f16)
EMU_BLEND(fr_blend_u8)
"""

_lib = None
_lib_lock = threading.Lock()


def compiler() -> str | None:
    """Path of g++ if present (the emulation needs C++20 <barrier>)."""
    return shutil.which("g++")


def build(source: str, wrappers: str, tag: str) -> ctypes.CDLL:
    """Compile ``_PRELUDE + source + wrappers`` as C++20 (cached by hash in the temp folder) and load it."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("host emulation needs g++ (C++20)")
    src = _PRELUDE + "\n" + source + "\n" + wrappers
    digest = hashlib.sha256(src.encode()).hexdigest()[:16]
    out_dir = Path(tempfile.gettempdir()) / "flexrt_host_emu"
    out_dir.mkdir(exist_ok=True)
    so = out_dir / f"{tag}_{digest}.so"
    if not so.exists():
        cpp = out_dir / f"{tag}_{digest}.cpp"
        cpp.write_text(src)
        tmp = so.with_suffix(f".{threading.get_ident()}.tmp.so")
        subprocess.run([cxx, "-std=c++20", "-O1", "-fPIC", "-shared", "-pthread", "-x", "c++", str(cpp),
                        "-o", str(tmp)], check=True, capture_output=True, text=True)
        tmp.replace(so)
    return ctypes.CDLL(str(so))


def load() -> ctypes.CDLL:
    """Compile (cached by source hash) and load the rasterizer's emulation library."""
    global _lib
    with _lib_lock:
        if _lib is None:
            _lib = build(cb._SRC.read_text(), _WRAPPERS, "fr_emu")
        return _lib


_JPEG_WRAPPERS = r"""
extern "C" void emu_jpeg_coefficients(unsigned gx, unsigned bx, const unsigned char* rgb, long long n_blocks,
    int height, int width, int mcu_cols, int num_mcus, const float* dct, const float* qz, int* coef) {
    fr_emu_launch(gx, 1, bx, false, [&] { jpeg_coefficients(rgb, n_blocks, height, width, mcu_cols, num_mcus, dct, qz, coef); });
}
extern "C" void emu_jpeg_block_bits(unsigned gx, unsigned bx, const int* coef, long long n_blocks,
    const u32* dc_code, const int* dc_len, const u32* ac_code, const int* ac_len, u32* words, int* nbits) {
    fr_emu_launch(gx, 1, bx, false, [&] { jpeg_block_bits(coef, n_blocks, dc_code, dc_len, ac_code, ac_len, words, nbits); });
}
extern "C" void emu_jpeg_pack(unsigned gx, unsigned bx, const u32* words, const int* nbits, const long long* offset,
    long long n_items, int blocks_per_frame, int words_per_frame, u32* out) {
    fr_emu_launch(gx, 1, bx, false, [&] { jpeg_pack(words, nbits, offset, n_items, blocks_per_frame, words_per_frame, out); });
}
"""


class HostJpegKernels:
    """``kernels.jpeg`` kernel launches (``launch(name, threads, args)``) run on the CPU on CPU tensors."""

    def __init__(self):
        from . import jpeg

        self.lib = build(jpeg._CU_SRC.read_text(), _JPEG_WRAPPERS, "jpeg_emu")

    def launch(self, name: str, threads: int, args: tuple, block: int = 128) -> None:
        conv = []
        for a in args:
            if isinstance(a, torch.Tensor):
                conv.append(ctypes.c_void_p(a.data_ptr()))
            elif isinstance(a, np.int64):
                conv.append(ctypes.c_longlong(int(a)))
            else:
                conv.append(ctypes.c_int(int(a)))
        grid = (threads + block - 1) // block
        getattr(self.lib, f"emu_{name}")(ctypes.c_uint(grid), ctypes.c_uint(block), *conv)


class HostOps:
    """``_cupy_backend`` device operations on the CPU: numpy buffers, emulated kernels, numpy sorts."""

    _conv = {np.uint64: ctypes.c_uint64, np.int64: ctypes.c_int64, np.int32: ctypes.c_int32,
             np.float32: ctypes.c_float, np.uint32: ctypes.c_uint32}

    def __init__(self):
        self.lib = load()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def empty(n, dtype):
        return np.empty(max(int(n), 1), dtype=dtype)

    @staticmethod
    def ptr(a) -> int:
        return int(a.ctypes.data)

    @staticmethod
    def memset0(a, nbytes):
        a.view(np.uint8)[: int(nbytes)] = 0

    def launch(self, name, grid, block, args):
        gx, gy = (tuple(grid) + (1,))[:2]
        bx = block if isinstance(block, int) else block[0]
        cargs = [self._conv[type(a)](a.item()) for a in args]
        getattr(self.lib, "emu_" + name)(ctypes.c_uint(gx), ctypes.c_uint(gy), ctypes.c_uint(bx), *cargs)

    @staticmethod
    def sort_rows(keys, sorted_keys, order, rows, n):
        m = rows * n
        k = keys[:m].reshape(rows, n)
        o = np.argsort(k, axis=-1, kind="stable")
        order[:m] = o.reshape(-1)
        sorted_keys[:m] = np.take_along_axis(k, o, axis=-1).reshape(-1)

    @staticmethod
    def event():
        return None

    @staticmethod
    def elapsed_ms(e0, e1):
        return float("nan")

    @staticmethod
    def read_u64(a):
        return int(a.view(np.uint64)[0])


def rasterize_host_emu(
    means, quats, scales, opacities, colors, viewmats, Ks,  # [B, N, *] / [B, C, *] float32 CPU, contiguous
    width: int, height: int, background=None, near_plane=0.01, far_plane=1e10, eps2d=0.3,
    out_dtype=torch.float32, max_bitmap_bytes: int | None = None, stats: dict | None = None, poison: bool = True,
):
    """The CUDA pipeline on the CPU -> (rgb [B, C, H, W, 3], alpha [B, C, H, W, 1]); outputs NaN-poisoned first."""
    B, N = means.shape[:2]
    C = viewmats.shape[1]
    rgb = torch.empty(B, C, height, width, 3, dtype=out_dtype)
    alpha = torch.empty(B, C, height, width, 1, dtype=out_dtype)
    if poison:  # NaN; uint8 outputs: 0xAB (a value the tests do not expect at every pixel)
        rgb.fill_(0xAB if out_dtype == torch.uint8 else float("nan"))
        alpha.fill_(0xAB if out_dtype == torch.uint8 else float("nan"))
    ops = HostOps()
    ws = cb.Workspace()
    cb.render(ops, ws, means, quats, scales, opacities, colors, viewmats, Ks, width, height, background, rgb, alpha,
              near_plane, far_plane, eps2d, stats=stats,
              max_bitmap_bytes=cb.MAX_BITMAP_BYTES if max_bitmap_bytes is None else max_bitmap_bytes)
    return rgb, alpha


__all__ = ["compiler", "load", "HostOps", "rasterize_host_emu"]
