// FlexAvatar Runtime: inference-only 3D Gaussian rasterizer (gsplat 1.5.3 "classic" semantics).
// Compiled at run time by NVRTC through cupy.RawModule (kernels/_cupy_backend.py); no includes needed.
//
// One frame, I = B*C images of W x H, N Gaussians per batch element, 16x16 tiles:
//   fr_project   [I*N threads]  EWA projection + culling, exact ellipse/tile-row test -> per-Gaussian tile
//                               count, warp-aggregated atomic offsets, depth sort keys
//   (host)       argsort of the depth keys (image, depth, index) via thrust; read the intersection total
//   fr_emit      [I*N threads]  in depth order: write the blend record (mean2d, conic, opacity, colour) at its
//                               rank and emit one key (image*n_tiles + tile) << rbits | rank per touched tile
//   (host)       radix sort of the keys (thrust, keys only)
//   fr_ranges    [n_isect]      per-tile [start, end) in the sorted keys
//   fr_blend_*   [n_tiles, I]   one block per tile: shared-memory batches, front-to-back blending, early exit
//
// Numerics follow kernels/_torch_ref.py (the oracle) operation by operation where it matters.

#define FR_TILE 16
#define FR_ALPHA_THRESHOLD (1.f / 255.f)
#define FR_T_STOP 1e-4f
#define FR_ALPHA_MAX 0.999f
#define FR_EXTEND_CAP 3.33f
#define FR_FLT_MAX 3.402823466e+38f

typedef unsigned int u32;
typedef unsigned long long u64;

__device__ __forceinline__ bool fr_finite(const float x) { return fabsf(x) <= FR_FLT_MAX; }  // false for NaN/Inf

// ---------------------------------------------------------------------------------------------------------
// Exact ellipse vs tile-row test. The ellipse {d : d^T Sigma^-1 d <= r^2} (Sigma = blurred 2D covariance,
// r = min(3.33, sqrt(2 ln(255 o))) as gsplat's opacity-aware extent) contains every pixel centre with
// alpha >= 1/255. For the band of tile row ty, its x-extent is [min xl(v), max xr(v)] over the band's
// v = y - my, with xr/xl(v) = (sxy/syy) v +/- sqrt(det (syy r^2 - v^2)) / syy (concave / convex in v): the
// extremes sit at v = +/- r sxy / sqrt(sxx) clamped into the band. Tiles are whole 16-px squares, so pixel
// centres keep a 0.5 px margin.
// __noinline__ and round-to-nearest intrinsics: fr_project (count) and fr_emit (write) run the same compiled
// body on the same inputs, so they agree bit for bit (no FMA contraction differences between call sites).
// ---------------------------------------------------------------------------------------------------------
struct FrEll {
    float mx, my, sxx, sxy, syy, det, r;
};

// rows [ty0, ty1] touched by the ellipse; false if none
__device__ __noinline__ bool fr_rows(const FrEll e, const int tiles_y, int* ty0, int* ty1) {
    const float hy = __fmul_rn(e.r, __fsqrt_rn(e.syy));
    const float lo = __fsub_rn(e.my, hy);
    const float hi = __fadd_rn(e.my, hy);
    const float lim = (float)(tiles_y * FR_TILE);
    if (!(hi >= 0.f) || !(lo < lim)) return false;
    *ty0 = max(0, (int)floorf(__fdiv_rn(fmaxf(lo, 0.f), (float)FR_TILE)));
    *ty1 = min(tiles_y - 1, (int)floorf(__fdiv_rn(fminf(hi, lim - 1.f), (float)FR_TILE)));
    return *ty0 <= *ty1;
}

// columns [tx0, tx1] of tile row ty touched by the ellipse; false if none
__device__ __noinline__ bool fr_row_span(const FrEll e, const int ty, const int tiles_x, int* tx0, int* tx1) {
    const float hy = __fmul_rn(e.r, __fsqrt_rn(e.syy));
    const float v0 = fmaxf(__fsub_rn((float)(ty * FR_TILE), e.my), -hy);
    const float v1 = fminf(__fsub_rn((float)((ty + 1) * FR_TILE), e.my), hy);
    if (!(v0 <= v1)) return false;
    const float k = __fdiv_rn(e.sxy, e.syy);
    const float vs = __fdiv_rn(__fmul_rn(e.r, e.sxy), __fsqrt_rn(e.sxx));
    const float r2syy = __fmul_rn(__fmul_rn(e.r, e.r), e.syy);
    const float va = fminf(fmaxf(vs, v0), v1);   // argmax of xr over the band
    const float vb = fminf(fmaxf(-vs, v0), v1);  // argmin of xl over the band
    const float ha = __fdiv_rn(__fsqrt_rn(fmaxf(__fmul_rn(e.det, __fsub_rn(r2syy, __fmul_rn(va, va))), 0.f)), e.syy);
    const float hb = __fdiv_rn(__fsqrt_rn(fmaxf(__fmul_rn(e.det, __fsub_rn(r2syy, __fmul_rn(vb, vb))), 0.f)), e.syy);
    const float hi = __fadd_rn(e.mx, __fadd_rn(__fmul_rn(k, va), ha));
    const float lo = __fadd_rn(e.mx, __fsub_rn(__fmul_rn(k, vb), hb));
    const float lim = (float)(tiles_x * FR_TILE);
    if (!(hi >= 0.f) || !(lo < lim)) return false;
    *tx0 = max(0, (int)floorf(__fdiv_rn(fmaxf(lo, 0.f), (float)FR_TILE)));
    *tx1 = min(tiles_x - 1, (int)floorf(__fdiv_rn(fminf(hi, lim - 1.f), (float)FR_TILE)));
    return *tx0 <= *tx1;
}

// ---------------------------------------------------------------------------------------------------------
// 1. projection: one thread per (image, Gaussian); image = b*C + c, flat = image*N + g
// ---------------------------------------------------------------------------------------------------------
extern "C" __global__ void __launch_bounds__(256) fr_project(
    const float* __restrict__ means,      // [B, N, 3]
    const float* __restrict__ quats,      // [B, N, 4] wxyz
    const float* __restrict__ scales,     // [B, N, 3]
    const float* __restrict__ opacities,  // [B, N]
    const float* __restrict__ colors,     // [B, N, 3] (finiteness check only)
    const float* __restrict__ viewmats,   // [B, C, 4, 4]
    const float* __restrict__ Ks,         // [B, C, 3, 3]
    const int C, const int N, const long long n_total,  // n_total = B*C*N
    const int width, const int height, const int tiles_x, const int tiles_y,
    const float near_plane, const float far_plane, const float eps2d,
    const int wide,                       // 0: u32 depth keys (I == 1); 1: u64 (image << 32 | depth)
    float4* __restrict__ geo0,            // [I*N] (mx, my, opacity, r)
    float4* __restrict__ geo1,            // [I*N] (sxx, sxy, syy, det), blurred 2D covariance
    u32* __restrict__ dkey32,             // [I*N]
    u64* __restrict__ dkey64,             // [I*N]
    int* __restrict__ counts,             // [I*N] touched tiles
    int* __restrict__ offsets,            // [I*N] first slot in the key buffer
    u32* __restrict__ total               // [1], zero on entry: total intersections
) {
    const long long flat = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const bool in = flat < n_total;
    int count = 0;
    if (in) {
        const long long image = flat / N;
        const int g = (int)(flat - image * N);
        const long long b = image / C;
        const long long bg = b * N + g;
        const float* vm = viewmats + image * 16;
        const float* K = Ks + image * 9;
        const float m0 = means[bg * 3 + 0], m1 = means[bg * 3 + 1], m2 = means[bg * 3 + 2];
        float qw = quats[bg * 4 + 0], qx = quats[bg * 4 + 1], qy = quats[bg * 4 + 2], qz = quats[bg * 4 + 3];
        const float s0 = scales[bg * 3 + 0], s1 = scales[bg * 3 + 1], s2 = scales[bg * 3 + 2];
        const float opac = opacities[bg];
        const float c0 = colors[bg * 3 + 0], c1 = colors[bg * 3 + 1], c2 = colors[bg * 3 + 2];
        bool valid = fr_finite(m0) && fr_finite(m1) && fr_finite(m2) && fr_finite(qw) && fr_finite(qx) &&
                     fr_finite(qy) && fr_finite(qz) && fr_finite(s0) && fr_finite(s1) && fr_finite(s2) &&
                     fr_finite(opac) && fr_finite(c0) && fr_finite(c1) && fr_finite(c2);
        // camera-space mean
        const float r00 = vm[0], r01 = vm[1], r02 = vm[2], t0 = vm[3];
        const float r10 = vm[4], r11 = vm[5], r12 = vm[6], t1 = vm[7];
        const float r20 = vm[8], r21 = vm[9], r22 = vm[10], t2 = vm[11];
        const float x = r00 * m0 + r01 * m1 + r02 * m2 + t0;
        const float y = r10 * m0 + r11 * m1 + r12 * m2 + t1;
        const float z = r20 * m0 + r21 * m1 + r22 * m2 + t2;
        valid = valid && (z >= near_plane) && (z <= far_plane) && (opac >= FR_ALPHA_THRESHOLD);
        float mx = 0.f, my = 0.f, sxx = 0.f, sxy = 0.f, syy = 0.f, det = 0.f, r = 0.f;
        if (valid) {
            // rotation from the normalised quaternion
            const float inv = rsqrtf(qw * qw + qx * qx + qy * qy + qz * qz);
            qw *= inv; qx *= inv; qy *= inv; qz *= inv;
            const float x2 = qx * qx, y2 = qy * qy, z2 = qz * qz;
            const float xy = qx * qy, xz = qx * qz, yz = qy * qz;
            const float wx = qw * qx, wy = qw * qy, wz = qw * qz;
            const float R[3][3] = {
                {1.f - 2.f * (y2 + z2), 2.f * (xy - wz), 2.f * (xz + wy)},
                {2.f * (xy + wz), 1.f - 2.f * (x2 + z2), 2.f * (yz - wx)},
                {2.f * (xz - wy), 2.f * (yz + wx), 1.f - 2.f * (x2 + y2)}};
            float M[3][3];
#pragma unroll
            for (int i = 0; i < 3; ++i) {
                M[i][0] = R[i][0] * s0;
                M[i][1] = R[i][1] * s1;
                M[i][2] = R[i][2] * s2;
            }
            float S[3][3];  // world covariance M M^T
#pragma unroll
            for (int i = 0; i < 3; ++i)
#pragma unroll
                for (int k = 0; k < 3; ++k) S[i][k] = M[i][0] * M[k][0] + M[i][1] * M[k][1] + M[i][2] * M[k][2];
            const float V[3][3] = {{r00, r01, r02}, {r10, r11, r12}, {r20, r21, r22}};
            float Tm[3][3];  // V S
#pragma unroll
            for (int i = 0; i < 3; ++i)
#pragma unroll
                for (int k = 0; k < 3; ++k) Tm[i][k] = V[i][0] * S[0][k] + V[i][1] * S[1][k] + V[i][2] * S[2][k];
            float Sc[3][3];  // V S V^T
#pragma unroll
            for (int i = 0; i < 3; ++i)
#pragma unroll
                for (int k = 0; k < 3; ++k) Sc[i][k] = Tm[i][0] * V[k][0] + Tm[i][1] * V[k][1] + Tm[i][2] * V[k][2];
            // pinhole Jacobian with gsplat's clamped x/z, y/z
            const float fx = K[0], cx = K[2], fy = K[4], cy = K[5];
            const float tan_fovx = 0.5f * width / fx, tan_fovy = 0.5f * height / fy;
            const float lim_x_pos = (width - cx) / fx + 0.3f * tan_fovx;
            const float lim_x_neg = cx / fx + 0.3f * tan_fovx;
            const float lim_y_pos = (height - cy) / fy + 0.3f * tan_fovy;
            const float lim_y_neg = cy / fy + 0.3f * tan_fovy;
            const float rz = 1.f / z, rz2 = rz * rz;
            const float tx = z * fminf(lim_x_pos, fmaxf(-lim_x_neg, x * rz));
            const float ty = z * fminf(lim_y_pos, fmaxf(-lim_y_neg, y * rz));
            const float j00 = fx * rz, j02 = -fx * tx * rz2, j11 = fy * rz, j12 = -fy * ty * rz2;
            // cov2d = J Sc J^T, J = [[j00, 0, j02], [0, j11, j12]]
            const float u00 = j00 * Sc[0][0] + j02 * Sc[2][0], u01 = j00 * Sc[0][1] + j02 * Sc[2][1],
                        u02 = j00 * Sc[0][2] + j02 * Sc[2][2];
            const float u11 = j11 * Sc[1][1] + j12 * Sc[2][1], u12 = j11 * Sc[1][2] + j12 * Sc[2][2];
            sxx = u00 * j00 + u02 * j02 + eps2d;
            sxy = u01 * j11 + u02 * j12;
            syy = u11 * j11 + u12 * j12 + eps2d;
            det = sxx * syy - sxy * sxy;
            mx = fx * x * rz + cx;
            my = fy * y * rz + cy;
            valid = (det > 0.f) && (sxx > 0.f) && (syy > 0.f) && fr_finite(det) && fr_finite(sxx) && fr_finite(syy) && fr_finite(sxy) &&
                    fr_finite(mx) && fr_finite(my) && fr_finite(1.f / det);
            r = fminf(FR_EXTEND_CAP, sqrtf(2.f * logf(opac / FR_ALPHA_THRESHOLD)));
            valid = valid && (r > 0.f);
        }
        if (valid) {
            const FrEll e = {mx, my, sxx, sxy, syy, det, r};
            int ty0, ty1;
            if (fr_rows(e, tiles_y, &ty0, &ty1)) {
                for (int ty = ty0; ty <= ty1; ++ty) {
                    int tx0, tx1;
                    if (fr_row_span(e, ty, tiles_x, &tx0, &tx1)) count += tx1 - tx0 + 1;
                }
            }
        }
        geo0[flat] = make_float4(mx, my, opac, r);
        geo1[flat] = make_float4(sxx, sxy, syy, det);
        const u32 dk = valid ? __float_as_uint(z) : 0xFFFFFFFFu;  // z >= near > 0: bits order like values
        if (wide) dkey64[flat] = ((u64)image << 32) | (u64)dk;
        else dkey32[flat] = dk;
    }
    // warp-aggregated slot allocation: one atomic per warp. Slot order is arbitrary, but every key is unique
    // (tile, rank) and gets sorted, so the result is deterministic.
    const int lane = threadIdx.x & 31;
    int incl = count;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const int v = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += v;
    }
    u32 base = 0;
    if (lane == 31 && incl > 0) base = atomicAdd(total, (u32)incl);
    base = __shfl_sync(0xffffffffu, base, 31);
    if (in) {
        counts[flat] = count;
        offsets[flat] = (int)(base + (u32)(incl - count));
    }
}

// ---------------------------------------------------------------------------------------------------------
// 2. depth-ordered records + tile keys: one thread per rank r (position in the (image, depth, index) order)
// ---------------------------------------------------------------------------------------------------------
extern "C" __global__ void __launch_bounds__(256) fr_emit(
    const long long* __restrict__ order,  // [I*N] flat index at rank position r (image-major)
    const float4* __restrict__ geo0,      // [I*N]
    const float4* __restrict__ geo1,      // [I*N]
    const int* __restrict__ counts,       // [I*N]
    const int* __restrict__ offsets,      // [I*N]
    const float* __restrict__ colors,     // [B, N, 3]
    const int C, const int N, const long long n_total, const int tiles_x, const int tiles_y,
    const int rbits, const int wide,
    float4* __restrict__ recA,            // [I*N] (mx, my, conic a, conic b) at r
    float4* __restrict__ recB,            // [I*N] (conic c, opacity, red, green) at r
    float* __restrict__ recC,             // [I*N] blue at r
    u32* __restrict__ keys32,             // [n_isect]
    u64* __restrict__ keys64              // [n_isect]
) {
    const long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= n_total) return;
    const long long flat = order[r];
    const int cnt = counts[flat];
    if (cnt == 0) return;
    const long long image = r / N;
    const long long rank = r - image * N;
    const int g = (int)(flat - image * N);
    const long long bg = (image / C) * N + g;
    const float4 g0 = geo0[flat];
    const float4 g1 = geo1[flat];
    const float inv_det = 1.f / g1.w;
    recA[r] = make_float4(g0.x, g0.y, g1.z * inv_det, -g1.y * inv_det);
    recB[r] = make_float4(g1.x * inv_det, g0.z, colors[bg * 3 + 0], colors[bg * 3 + 1]);
    recC[r] = colors[bg * 3 + 2];

    const FrEll e = {g0.x, g0.y, g1.x, g1.y, g1.z, g1.w, g0.w};
    const long long n_tiles = (long long)tiles_x * tiles_y;
    const long long off = offsets[flat];
    int k = 0;
    int ty0, ty1;
    if (fr_rows(e, tiles_y, &ty0, &ty1)) {
        for (int ty = ty0; ty <= ty1; ++ty) {
            int tx0, tx1;
            if (!fr_row_span(e, ty, tiles_x, &tx0, &tx1)) continue;
            for (int tx = tx0; tx <= tx1 && k < cnt; ++tx, ++k) {
                const u64 tile = (u64)(image * n_tiles + (long long)ty * tiles_x + tx);
                const u64 key = (tile << rbits) | (u64)rank;
                if (wide) keys64[off + k] = key;
                else keys32[off + k] = (u32)key;
            }
        }
    }
    // never reached when count and emit agree (same compiled tile walk); all-ones keys sort last, ignored
    for (; k < cnt; ++k) {
        if (wide) keys64[off + k] = ~0ull;
        else keys32[off + k] = ~0u;
    }
}

// ---------------------------------------------------------------------------------------------------------
// 3. per-tile ranges in the sorted keys; ranges zeroed before launch (empty tiles stay [0, 0))
// ---------------------------------------------------------------------------------------------------------
__device__ __forceinline__ long long fr_tile_of(const u32* k32, const u64* k64, const int wide, const long long i,
                                                const int rbits, const long long n_all_tiles) {
    if (wide) {
        const u64 k = k64[i];
        return k == ~0ull ? n_all_tiles : (long long)(k >> rbits);
    }
    const u32 k = k32[i];
    return k == ~0u ? n_all_tiles : (long long)(k >> rbits);
}

extern "C" __global__ void __launch_bounds__(256) fr_ranges(
    const u32* __restrict__ keys32, const u64* __restrict__ keys64, const int wide, const long long n,
    const int rbits, const long long n_all_tiles,
    int2* __restrict__ ranges  // [I * n_tiles]
) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const long long t = fr_tile_of(keys32, keys64, wide, i, rbits, n_all_tiles);
    if (t >= n_all_tiles) return;
    if (i == 0 || fr_tile_of(keys32, keys64, wide, i - 1, rbits, n_all_tiles) != t) ranges[t].x = (int)i;
    if (i == n - 1 || fr_tile_of(keys32, keys64, wide, i + 1, rbits, n_all_tiles) != t) ranges[t].y = (int)(i + 1);
}

// ---------------------------------------------------------------------------------------------------------
// 4. blending: one block per (tile, image); PPT pixels per thread (rows ly, ly + 16/PPT, ...)
// ---------------------------------------------------------------------------------------------------------
__device__ __forceinline__ unsigned short fr_f2h(const float f) {
#ifdef FR_HOST_EMU  // kernels/_host_emu.py runs this file on the CPU for tests
    return fr_emu_f2h(f);
#else
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
#endif
}

template <typename KeyT, bool HALF, int PPT>
__device__ __forceinline__ void fr_blend_impl(
    const KeyT* __restrict__ keys,        // [n_isect] sorted
    const int2* __restrict__ ranges,      // [I * n_tiles]
    const float4* __restrict__ recA, const float4* __restrict__ recB, const float* __restrict__ recC,
    const int N, const int rbits, const int width, const int height, const int tiles_x,
    const float* __restrict__ bg,         // [I, 3] or null (black)
    void* __restrict__ out_rgb,           // [I, H, W, 3] float or half
    void* __restrict__ out_alpha          // [I, H, W, 1] float or half
) {
    constexpr int NT = (FR_TILE * FR_TILE) / PPT;
    constexpr int ROWS = FR_TILE / PPT;
    __shared__ float4 sA[NT];
    __shared__ float4 sB[NT];
    __shared__ float sC[NT];

    const int tile = blockIdx.x;
    const long long image = blockIdx.y;
    const int n_tiles = gridDim.x;
    const int tx = tile % tiles_x, ty = tile / tiles_x;
    const int tid = threadIdx.x;
    const int px_i = tx * FR_TILE + (tid & (FR_TILE - 1));
    const float px = (float)px_i + 0.5f;
    int py_i[PPT];
    float py[PPT], T[PPT], acc[PPT][3];
    bool inside[PPT], done[PPT];
#pragma unroll
    for (int p = 0; p < PPT; ++p) {
        py_i[p] = ty * FR_TILE + tid / FR_TILE + p * ROWS;
        py[p] = (float)py_i[p] + 0.5f;
        inside[p] = px_i < width && py_i[p] < height;
        done[p] = !inside[p];
        T[p] = 1.f;
        acc[p][0] = acc[p][1] = acc[p][2] = 0.f;
    }
    bool tdone = true;
#pragma unroll
    for (int p = 0; p < PPT; ++p) tdone = tdone && done[p];

    const int2 range = ranges[image * n_tiles + tile];
    const KeyT rmask = (((KeyT)1) << rbits) - 1;
    const long long rec0 = image * N;
    for (int start = range.x; start < range.y; start += NT) {
        if (__syncthreads_count(tdone) == NT) break;  // also: everyone finished reading the last batch
        const int i = start + tid;
        if (i < range.y) {
            const long long rr = rec0 + (long long)(keys[i] & rmask);
            sA[tid] = recA[rr];
            sB[tid] = recB[rr];
            sC[tid] = recC[rr];
        }
        __syncthreads();
        const int nb = min(NT, range.y - start);
        for (int j = 0; j < nb && !tdone; ++j) {
            const float4 A = sA[j];
            const float4 Bv = sB[j];
            const float dx = A.x - px;
            bool all = true;
#pragma unroll
            for (int p = 0; p < PPT; ++p) {
                if (!done[p]) {
                    const float dy = A.y - py[p];
                    const float sigma = 0.5f * (A.z * dx * dx + Bv.x * dy * dy) + A.w * dx * dy;
                    const float alpha = fminf(FR_ALPHA_MAX, Bv.y * __expf(-sigma));
                    if (sigma >= 0.f && alpha >= FR_ALPHA_THRESHOLD) {
                        const float next_T = T[p] * (1.f - alpha);
                        if (next_T <= FR_T_STOP) {
                            done[p] = true;  // exclusive: this Gaussian is not blended
                        } else {
                            const float vis = alpha * T[p];
                            acc[p][0] += Bv.z * vis;
                            acc[p][1] += Bv.w * vis;
                            acc[p][2] += sC[j] * vis;
                            T[p] = next_T;
                        }
                    }
                }
                all = all && done[p];
            }
            tdone = all;
        }
    }

    float b0 = 0.f, b1 = 0.f, b2 = 0.f;
    if (bg != nullptr) {
        b0 = bg[image * 3 + 0];
        b1 = bg[image * 3 + 1];
        b2 = bg[image * 3 + 2];
    }
#pragma unroll
    for (int p = 0; p < PPT; ++p) {
        if (!inside[p]) continue;
        const long long pix = (image * height + py_i[p]) * (long long)width + px_i;
        const float o0 = acc[p][0] + T[p] * b0, o1 = acc[p][1] + T[p] * b1, o2 = acc[p][2] + T[p] * b2;
        const float oa = 1.f - T[p];
        if (HALF) {
            unsigned short* rgb = (unsigned short*)out_rgb;
            rgb[pix * 3 + 0] = fr_f2h(o0);
            rgb[pix * 3 + 1] = fr_f2h(o1);
            rgb[pix * 3 + 2] = fr_f2h(o2);
            ((unsigned short*)out_alpha)[pix] = fr_f2h(oa);
        } else {
            float* rgb = (float*)out_rgb;
            rgb[pix * 3 + 0] = o0;
            rgb[pix * 3 + 1] = o1;
            rgb[pix * 3 + 2] = o2;
            ((float*)out_alpha)[pix] = oa;
        }
    }
}

#define FR_BLEND(NAME, KEYT, HALF, PPT)                                                                        \
    extern "C" __global__ void __launch_bounds__((FR_TILE * FR_TILE) / PPT) NAME(                              \
        const KEYT* __restrict__ keys, const int2* __restrict__ ranges, const float4* __restrict__ recA,       \
        const float4* __restrict__ recB, const float* __restrict__ recC, const int N, const int rbits,         \
        const int width, const int height, const int tiles_x, const float* __restrict__ bg,                    \
        void* __restrict__ out_rgb, void* __restrict__ out_alpha) {                                            \
        fr_blend_impl<KEYT, HALF, PPT>(keys, ranges, recA, recB, recC, N, rbits, width, height, tiles_x, bg,   \
                                       out_rgb, out_alpha);                                                    \
    }

FR_BLEND(fr_blend_k32_f32_p1, u32, false, 1)
FR_BLEND(fr_blend_k32_f16_p1, u32, true, 1)
FR_BLEND(fr_blend_k64_f32_p1, u64, false, 1)
FR_BLEND(fr_blend_k64_f16_p1, u64, true, 1)
FR_BLEND(fr_blend_k32_f32_p2, u32, false, 2)
FR_BLEND(fr_blend_k32_f16_p2, u32, true, 2)
FR_BLEND(fr_blend_k64_f32_p2, u64, false, 2)
FR_BLEND(fr_blend_k64_f16_p2, u64, true, 2)
