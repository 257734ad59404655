// FlexAvatar Runtime: inference-only 3D Gaussian rasterizer (gsplat 1.5.3 "classic" semantics).
// Compiled at run time by NVRTC through cupy.RawModule (kernels/_cupy_backend.py); no includes needed.
//
// One frame, I = B*C images of W x H, N Gaussians per batch element, 16x16 tiles (binning), 8x8 sub-tiles
// (blending, one warp each). No sort of (tile, depth) keys and no host synchronisation: each tile owns a bitmap
// over depth ranks, so reading a tile's bitmap in word order IS its depth-ordered list.
//   fr_project   [I*N threads]   EWA projection + culling -> ellipse parameters, depth key (+inf when culled)
//   (host)       per-image stable sort of the depth keys (torch.sort) -> order[image, rank] = Gaussian
//   fr_emit      [I*N threads]   in rank order: the blend record at its rank, and one bit (tile, rank) per tile
//                                touched (exact ellipse vs tile-row test) with atomicOr
//   fr_blend_*   [n_tiles, I]    4 warps per tile, one per 8x8 sub-tile: walk the tile's bitmap in rank order,
//                                drop records whose alpha stays below 1/255 at every pixel centre of the
//                                sub-tile (exact ellipse vs rectangle test, one ballot per 32 candidates),
//                                blend the rest front to back with gsplat's alpha and transmittance rules,
//                                early exit per warp; fp32, fp16 or uint8 outputs
//   fr_count_bits                (statistics only) total number of (tile, Gaussian) pairs
//
// Numerics follow kernels/_torch_ref.py (the oracle) operation by operation where it matters.

#define FR_TILE 16
#define FR_SUB 8
#define FR_ALPHA_THRESHOLD (1.f / 255.f)
#define FR_T_STOP 1e-4f
#define FR_ALPHA_MAX 0.999f
#define FR_EXTEND_CAP 3.33f
#define FR_FLT_MAX 3.402823466e+38f
#define FR_LOG2E 1.4426950408889634f
#define FR_LOG2_255 7.994353436858858f  // alpha >= 1/255  <=>  log2(o) - s >= -log2(255)
#define FR_CULL_MARGIN 1e-3f            // in s (log2 units): the sub-tile test keeps records within it
#define FR_FULL 0xffffffffu
// ranks covered by one bitmap pass of a warp: 32 lanes x 2 words x 32 bits; bitmap rows are padded to it
#define FR_PASS_RANKS 2048

typedef unsigned int u32;
typedef unsigned long long u64;
typedef unsigned short u16;

__device__ __forceinline__ bool fr_finite(const float x) { return fabsf(x) <= FR_FLT_MAX; }  // false for NaN/Inf

// ---------------------------------------------------------------------------------------------------------
// Exact ellipse vs tile-row test. The ellipse {d : d^T Sigma^-1 d <= r^2} (Sigma = blurred 2D covariance,
// r = min(3.33, sqrt(2 ln(255 o))) as gsplat's opacity-aware extent) contains every pixel centre with
// alpha >= 1/255. For the band of tile row ty, its x-extent is [min xl(v), max xr(v)] over the band's
// v = y - my, with xr/xl(v) = (sxy/syy) v +/- sqrt(det (syy r^2 - v^2)) / syy (concave / convex in v): the
// extremes sit at v = +/- r sxy / sqrt(sxx) clamped into the band. Tiles are whole 16-px squares, so pixel
// centres keep a 0.5 px margin.
// ---------------------------------------------------------------------------------------------------------
struct FrEll {
    float mx, my, sxx, sxy, syy, det, r;
};

// rows [ty0, ty1] touched by the ellipse; false if none
__device__ __forceinline__ bool fr_rows(const FrEll e, const int tiles_y, int* ty0, int* ty1) {
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
__device__ __forceinline__ bool fr_row_span(const FrEll e, const int ty, const int tiles_x, int* tx0, int* tx1) {
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
    const int width, const int height,
    const float near_plane, const float far_plane, const float eps2d,
    float4* __restrict__ geo0,            // [I*N] (mx, my, opacity, r); r = 0 when culled
    float4* __restrict__ geo1,            // [I*N] (sxx, sxy, syy, det), blurred 2D covariance
    float* __restrict__ zkey              // [I*N] camera depth, +inf when culled (sorts last)
) {
    const long long flat = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (flat >= n_total) return;
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
        valid = (det > 0.f) && (sxx > 0.f) && (syy > 0.f) && fr_finite(det) && fr_finite(sxx) && fr_finite(syy) &&
                fr_finite(sxy) && fr_finite(mx) && fr_finite(my) && fr_finite(1.f / det);
        r = fminf(FR_EXTEND_CAP, sqrtf(2.f * logf(opac / FR_ALPHA_THRESHOLD)));
        valid = valid && (r > 0.f);
    }
    geo0[flat] = make_float4(mx, my, opac, valid ? r : 0.f);
    geo1[flat] = make_float4(sxx, sxy, syy, det);
    zkey[flat] = valid ? z : __int_as_float(0x7f800000);  // +inf: culled Gaussians sort last
}

// ---------------------------------------------------------------------------------------------------------
// 2. depth-ordered records + tile bitmaps: one thread per rank position r = image*N + rank in [r_lo, r_hi)
// ---------------------------------------------------------------------------------------------------------
extern "C" __global__ void __launch_bounds__(256) fr_emit(
    const long long* __restrict__ order,  // [I, N] Gaussian index (within its image) at each depth rank
    const float4* __restrict__ geo0,      // [I*N]
    const float4* __restrict__ geo1,      // [I*N]
    const float* __restrict__ colors,     // [B, N, 3]
    const int C, const int N, const long long r_lo, const long long r_hi, const long long image0,
    const int tiles_x, const int tiles_y, const int words,  // words = 32-bit words per bitmap row
    float4* __restrict__ recA,            // [I*N] (mx, my, a2, b2) at r   (the blend's conic form, below)
    float4* __restrict__ recB,            // [I*N] (c2, log2 opacity, red, green) at r
    float* __restrict__ recC,             // [I*N] blue at r
    u32* __restrict__ bitmap              // [images of this chunk, n_tiles, words], zero on entry
) {
    const long long r = r_lo + (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= r_hi) return;
    const long long image = r / N;
    const int rank = (int)(r - image * N);
    const int g = (int)order[r];
    const long long flat = image * N + g;
    const float4 g0 = geo0[flat];
    if (!(g0.w > 0.f)) return;  // culled (all culled Gaussians rank after the valid ones)
    const float4 g1 = geo1[flat];
    const FrEll e = {g0.x, g0.y, g1.x, g1.y, g1.z, g1.w, g0.w};
    int ty0, ty1;
    if (!fr_rows(e, tiles_y, &ty0, &ty1)) return;  // misses the image
    const long long bg = (image / C) * N + g;
    // the conic (a, b, c) = (syy, -sxy, sxx) / det as the blend uses it: s = a2 dx^2 + b2 dx dy + c2 dy^2 is
    // log2(e) * sigma (gsplat's sigma = (a dx^2 + c dy^2) / 2 + b dx dy), so alpha = o exp(-sigma) = 2^(log2 o - s)
    const float inv_det = 1.f / g1.w;
    recA[r] = make_float4(g0.x, g0.y, 0.5f * FR_LOG2E * g1.z * inv_det, -FR_LOG2E * g1.y * inv_det);
    recB[r] = make_float4(0.5f * FR_LOG2E * g1.x * inv_det, log2f(g0.z), colors[bg * 3 + 0], colors[bg * 3 + 1]);
    recC[r] = colors[bg * 3 + 2];

    const long long n_tiles = (long long)tiles_x * tiles_y;
    u32* row0 = bitmap + (image - image0) * n_tiles * (long long)words + (rank >> 5);
    const u32 bit = 1u << (rank & 31);
    for (int ty = ty0; ty <= ty1; ++ty) {
        int tx0, tx1;
        if (!fr_row_span(e, ty, tiles_x, &tx0, &tx1)) continue;
        for (int tx = tx0; tx <= tx1; ++tx) atomicOr(row0 + ((long long)ty * tiles_x + tx) * words, bit);
    }
}

// ---------------------------------------------------------------------------------------------------------
// 3. blending: one block of 4 warps per (tile, image); warp w owns the 8x8 sub-tile (w & 1, w >> 1), each lane
//    the pixels (lane & 7, lane >> 3) and (lane & 7, (lane >> 3) + 4) of it. Warps never wait for each other.
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

__device__ __forceinline__ float fr_ex2(const float x) {  // 2^x, the SFU's approximation (as __expf uses)
#ifdef FR_HOST_EMU
    return std::exp2(x);
#else
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#endif
}

// The smallest s = a2 dx^2 + b2 dx dy + c2 dy^2 (d = p - m, A = (mx, my, a2, b2)) over the rectangle of pixel
// centres [x0, x1] x [y0, y1]: 0 if m lies inside; else its minimum lies on an edge that faces m (from any other
// boundary point the segment towards m enters the rectangle, where s is lower), found in closed form along it.
__device__ __forceinline__ float fr_s_min(const float4 A, const float c2, const float x0, const float x1,
                                          const float y0, const float y1) {
    const float ex = fminf(fmaxf(A.x, x0), x1), ey = fminf(fmaxf(A.y, y0), y1);
    float best = (ex == A.x && ey == A.y) ? 0.f : FR_FLT_MAX;
    if (ex != A.x) {  // the edge x = ex: s(dy) is smallest at dy = -b2 dx / (2 c2), clamped into the edge
        const float dx = ex - A.x;
        const float dy = fminf(fmaxf(__fdividef(-A.w * dx, 2.f * c2), y0 - A.y), y1 - A.y);
        best = fminf(best, fmaf(fmaf(c2, dy, A.w * dx), dy, A.z * dx * dx));
    }
    if (ey != A.y) {  // the edge y = ey
        const float dy = ey - A.y;
        const float dx = fminf(fmaxf(__fdividef(-A.w * dy, 2.f * A.z), x0 - A.x), x1 - A.x);
        best = fminf(best, fmaf(fmaf(A.z, dx, A.w * dy), dx, c2 * dy * dy));
    }
    return best;
}

// front to back over nk records in shared memory, for one lane's two pixels. Branch-free: a record that does
// not count (done pixel, s < 0, alpha < 1/255) has alpha = 0, which leaves T and the colour bit-identical, so
// consecutive records overlap (ILP). Per record and pixel: two FMAs for s, one SFU 2^x for alpha.
__device__ __forceinline__ void fr_blend_records(const float4* __restrict__ sA, const float4* __restrict__ sB,
                                                 const float* __restrict__ sC, const int nk, const float px,
                                                 const float py[2], float T[2], float acc[2][3], bool done[2]) {
#pragma unroll 4
    for (int k = 0; k < nk; ++k) {
        const float4 A = sA[k];
        const float4 Bv = sB[k];
        const float cb = sC[k];
        const float dx = A.x - px;
        const float sx = A.z * dx * dx, bx = A.w * dx;  // shared by the lane's two pixels (same column)
#pragma unroll
        for (int p = 0; p < 2; ++p) {
            const float dy = A.y - py[p];
            const float s = fmaf(fmaf(Bv.x, dy, bx), dy, sx);  // log2(e) * sigma
            const float alpha = fminf(FR_ALPHA_MAX, fr_ex2(Bv.y - s));
            const bool hit = !done[p] && s >= 0.f && alpha >= FR_ALPHA_THRESHOLD;
            const float next_T = T[p] * (1.f - (hit ? alpha : 0.f));
            const bool stop = hit && next_T <= FR_T_STOP;  // exclusive: this Gaussian is not blended
            const bool use = hit && !stop;
            const float vis = use ? alpha * T[p] : 0.f;
            acc[p][0] += Bv.z * vis;
            acc[p][1] += Bv.w * vis;
            acc[p][2] += cb * vis;
            T[p] = use ? next_T : T[p];
            done[p] = done[p] || stop;
        }
    }
}

// the output's type: fp32, fp16, or uint8 (clamp to [0,1], x 255, + 0.5, truncated: kernels/rasterize.py's
// rgb_to_uint8 of the fp32 output, as two IEEE roundings without contraction into an FMA)
enum FrOut { FR_OUT_F32 = 0, FR_OUT_F16 = 1, FR_OUT_U8 = 2 };

__device__ __forceinline__ unsigned char fr_f2u8(const float f) {
    return (unsigned char)__fadd_rn(__fmul_rn(fminf(fmaxf(f, 0.f), 1.f), 255.f), 0.5f);
}

template <int OUT>
__device__ __forceinline__ void fr_blend_impl(
    const u32* __restrict__ bitmap,       // [images of this chunk, n_tiles, words]
    const float4* __restrict__ recA, const float4* __restrict__ recB, const float* __restrict__ recC,
    const int N, const int words, const int width, const int height, const int tiles_x, const long long image0,
    const float* __restrict__ bg,         // [I, 3] (bg_stride 3) or [3] (bg_stride 0) or null (black)
    const int bg_stride,
    void* __restrict__ out_rgb,           // [I, H, W, 3] float or half
    void* __restrict__ out_alpha          // [I, H, W, 1] float or half
) {
    constexpr int WARPS = (FR_TILE / FR_SUB) * (FR_TILE / FR_SUB);
    __shared__ u16 s_list[WARPS][FR_PASS_RANKS];  // ranks of one bitmap pass, in order (offset from the pass)
    __shared__ float4 sA[WARPS][32];
    __shared__ float4 sB[WARPS][32];
    __shared__ float sC[WARPS][32];

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int tile = blockIdx.x;
    const long long li = blockIdx.y;  // image within the chunk
    const long long image = image0 + li;
    const int n_tiles = gridDim.x;
    const int tx = tile % tiles_x, ty = tile / tiles_x;
    const int sx0 = tx * FR_TILE + (warp & 1) * FR_SUB, sy0 = ty * FR_TILE + (warp >> 1) * FR_SUB;
    const int px_i = sx0 + (lane & 7);
    const float px = (float)px_i + 0.5f;
    int py_i[2];
    float py[2], T[2], acc[2][3];
    bool inside[2], done[2];
#pragma unroll
    for (int p = 0; p < 2; ++p) {
        py_i[p] = sy0 + (lane >> 3) + 4 * p;
        py[p] = (float)py_i[p] + 0.5f;
        inside[p] = px_i < width && py_i[p] < height;
        done[p] = !inside[p];
        T[p] = 1.f;
        acc[p][0] = acc[p][1] = acc[p][2] = 0.f;
    }
    // the sub-tile's pixel centres, for the cull test
    const float cx0 = sx0 + 0.5f, cx1 = sx0 + FR_SUB - 0.5f, cy0 = sy0 + 0.5f, cy1 = sy0 + FR_SUB - 0.5f;
    const u32 lt_mask = (1u << lane) - 1u;
    const u32* row = bitmap + (li * n_tiles + tile) * (long long)words;
    const long long rec0 = image * N;
    bool wdone = __all_sync(FR_FULL, done[0] && done[1]);

    uint2 next = make_uint2(0u, 0u);
    if (words > 0) next = reinterpret_cast<const uint2*>(row)[lane];
    for (int w0 = 0; w0 < words && !wdone; w0 += 64) {
        const uint2 cur = next;
        if (w0 + 64 < words) next = reinterpret_cast<const uint2*>(row + w0 + 64)[lane];  // prefetch
        // compact this pass's set bits into s_list, in rank order
        const int cnt = __popc(cur.x) + __popc(cur.y);
        int incl = cnt;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const int v = __shfl_up_sync(FR_FULL, incl, o);
            if (lane >= o) incl += v;
        }
        const int total = __shfl_sync(FR_FULL, incl, 31);
        if (total == 0) continue;
        int pos = incl - cnt;
        u32 bits = cur.x;
        while (bits) {
            s_list[warp][pos++] = (u16)(lane * 64 + __ffs(bits) - 1);
            bits &= bits - 1u;
        }
        bits = cur.y;
        while (bits) {
            s_list[warp][pos++] = (u16)(lane * 64 + 32 + __ffs(bits) - 1);
            bits &= bits - 1u;
        }
        __syncwarp();
        const long long pass0 = rec0 + (long long)w0 * 32;
        // 32 candidates at a time, one per lane: does alpha reach 1/255 at a pixel centre of this sub-tile
        // (the ellipse test; the tile's bitmap came from the 16-px tile's) + ballot, the kept ones blended at
        // once; the next 32 are loaded meanwhile
        float4 a = make_float4(0.f, 0.f, 1.f, 0.f), bb = make_float4(1.f, 0.f, 0.f, 0.f);
        float c = 0.f;
        if (lane < total) {
            const long long rr = pass0 + s_list[warp][lane];
            a = recA[rr];
            bb = recB[rr];
            c = recC[rr];
        }
        for (int j0 = 0; j0 < total && !wdone; j0 += 32) {
            const bool keep = (j0 + lane < total) &&
                              fr_s_min(a, bb.x, cx0, cx1, cy0, cy1) <= bb.y + (FR_LOG2_255 + FR_CULL_MARGIN);
            const u32 m = __ballot_sync(FR_FULL, keep);
            if (keep) {
                const int q = __popc(m & lt_mask);
                sA[warp][q] = a;
                sB[warp][q] = bb;
                sC[warp][q] = c;
            }
            __syncwarp();
            if (j0 + 32 + lane < total) {  // prefetch
                const long long rr = pass0 + s_list[warp][j0 + 32 + lane];
                a = recA[rr];
                bb = recB[rr];
                c = recC[rr];
            }
            fr_blend_records(sA[warp], sB[warp], sC[warp], __popc(m), px, py, T, acc, done);
            wdone = __all_sync(FR_FULL, done[0] && done[1]);
            __syncwarp();  // every lane is done reading sA/sB/sC
        }
        __syncwarp();  // every lane is done reading s_list
    }

    float b0 = 0.f, b1 = 0.f, b2 = 0.f;
    if (bg != nullptr) {
        b0 = bg[image * bg_stride + 0];
        b1 = bg[image * bg_stride + 1];
        b2 = bg[image * bg_stride + 2];
    }
#pragma unroll
    for (int p = 0; p < 2; ++p) {
        if (!inside[p]) continue;
        const long long pix = (image * height + py_i[p]) * (long long)width + px_i;
        const float o0 = acc[p][0] + T[p] * b0, o1 = acc[p][1] + T[p] * b1, o2 = acc[p][2] + T[p] * b2;
        const float oa = 1.f - T[p];
        if (OUT == FR_OUT_U8) {
            unsigned char* rgb = (unsigned char*)out_rgb;
            rgb[pix * 3 + 0] = fr_f2u8(o0);
            rgb[pix * 3 + 1] = fr_f2u8(o1);
            rgb[pix * 3 + 2] = fr_f2u8(o2);
            ((unsigned char*)out_alpha)[pix] = fr_f2u8(oa);
        } else if (OUT == FR_OUT_F16) {
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

#define FR_BLEND(NAME, OUT)                                                                                    \
    extern "C" __global__ void __launch_bounds__(128) NAME(                                                    \
        const u32* __restrict__ bitmap, const float4* __restrict__ recA, const float4* __restrict__ recB,      \
        const float* __restrict__ recC, const int N, const int words,                                          \
        const int width, const int height, const int tiles_x, const long long image0,                          \
        const float* __restrict__ bg, const int bg_stride, void* __restrict__ out_rgb,                         \
        void* __restrict__ out_alpha) {                                                                        \
        fr_blend_impl<OUT>(bitmap, recA, recB, recC, N, words, width, height, tiles_x, image0, bg,              \
                            bg_stride, out_rgb, out_alpha);                                                    \
    }

FR_BLEND(fr_blend_f32, FR_OUT_F32)
FR_BLEND(fr_blend_f16, FR_OUT_F16)
FR_BLEND(fr_blend_u8, FR_OUT_U8)

// ---------------------------------------------------------------------------------------------------------
// 4. statistics only: number of set bits (tile, Gaussian pairs) in bitmap[0, n_words)
// ---------------------------------------------------------------------------------------------------------
extern "C" __global__ void __launch_bounds__(256) fr_count_bits(const u32* __restrict__ bitmap, const long long n_words,
                                                                 u64* __restrict__ total) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n_words) {
        const u32 v = bitmap[i];
        if (v) atomicAdd(total, (u64)__popc(v));
    }
}
