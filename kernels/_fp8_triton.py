"""Triton kernels of kernels/fp8_gemm.py and kernels/fp8_conv.py (imported by them on first use; Triton resolves
the helpers a kernel calls as module globals, so they live here at module level). Shapes, operands and the
autotuning configs are those modules'."""
import triton
import triton.language as tl
import triton.testing


def quick_bench(kernel_call, quantiles):
    """The autotuners' timing: short (5 ms warm-up, 20 ms of repetitions), a handful of configs a shape at warm-up."""
    return triton.testing.do_bench(kernel_call, warmup=5, rep=20, quantiles=quantiles)


@triton.jit
def _tile(tile, grid_m, grid_n, GROUP_M: tl.constexpr):
    # tile -> (pid_m, pid_n) in grouped order: GROUP_M consecutive tiles share rows of x (L2 reuse)
    group = GROUP_M * grid_n
    first_m = (tile // group) * GROUP_M
    rows = min(grid_m - first_m, GROUP_M)
    return first_m + (tile % group) % rows, (tile % group) // rows


@triton.jit
def _epilogue(acc, offs_m, offs_n, M, N, w_scale_ptr, bias_ptr, x_scale, out_ptr, out_scale_ptr, res_ptr,
              stride_om, stride_on, RESIDUAL: tl.constexpr):
    # fp32: dequantise (tensor-wise x scale, per-channel w scale), bias, then the residual add (bf16 out) or
    # tanh GELU and the next GEMM's quantisation (e4m3 out, saturating)
    n_ok = offs_n < N
    out_mask = (offs_m[:, None] < M) & n_ok[None, :]
    w_scale = tl.load(w_scale_ptr + offs_n, mask=n_ok, other=0.0)
    bias = tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
    y = acc * (x_scale * w_scale)[None, :] + bias[None, :]
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
    if RESIDUAL:
        res = tl.load(res_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on, mask=out_mask, other=0.0)
        tl.store(out_ptrs, (res.to(tl.float32) + y).to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        # tanh GELU (Hendrycks & Gimpel 2016), tanh(z) = 2 sigmoid(2z) - 1, sqrt(2/pi) = 0.79788...
        g = y * tl.sigmoid(2.0 * 0.7978845608028654 * (y + 0.044715 * y * y * y)) / tl.load(out_scale_ptr)
        q = tl.minimum(tl.maximum(g, -448.0), 448.0)  # FP8_MAX (no globals in jit)
        tl.store(out_ptrs, q.to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _gelu_tanh_quantize(y, inv_scale, HW_TANH: tl.constexpr):
    # e4m3( clamp( gelu_tanh(y) / scale, +-448 ) ), gelu_tanh(y) = y/2 (1 + tanh(sqrt(2/pi) (y + 0.044715 y^3)))
    # (Hendrycks & Gimpel 2016). HW_TANH: the tanh as one tanh.approx.f32 (sm_75+, relative error 2^-11; the e4m3
    # result keeps 3 mantissa bits) -- ~9 instructions a value instead of the exp2 + division form's ~22, which
    # matters because the epilogue does not overlap the MMAs (2026-12-03, session 17); without it (Triton's
    # interpreter runs no PTX) tanh(u) = 2 sigmoid(2u) - 1.
    u = y * (0.7978845608028654 + 0.035677408136300125 * (y * y))
    if HW_TANH:
        t = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [u], dtype=tl.float32, is_pure=True,
                                      pack=1)
    else:
        t = 2.0 * tl.sigmoid(2.0 * u) - 1.0
    hy = y * (0.5 * inv_scale)
    return tl.minimum(tl.maximum(hy * t + hy, -448.0), 448.0)  # FP8_MAX (no globals in jit)


@triton.jit
def fp8_gemm_epilogue(x_ptr, w_ptr, w_scale_ptr, bias_ptr, out_ptr, x_scale_ptr, out_scale_ptr, res_ptr,
                      M, N, K, M_CLASS, stride_xm, stride_xk, stride_wn, stride_wk, stride_om, stride_on,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                      RESIDUAL: tl.constexpr):
    # pointer loads, one tile a program (any GPU with FP8 tensor cores, and Triton's interpreter)
    pid_m, pid_n = _tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # acc [BM,BN] fp32 = x8 tile @ w8^T tile (w is [N,K], K contiguous: the K-major B operand FP8 MMAs want)
    x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk  # [BM,BK]
    w_ptrs = w_ptr + offs_n[None, :] * stride_wn + offs_k[:, None] * stride_wk  # [BK,BN]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        a = tl.load(x_ptrs, mask=(offs_m[:, None] < M) & (offs_k[None, :] < k_left), other=0.0)
        b = tl.load(w_ptrs, mask=(offs_n[None, :] < N) & (offs_k[:, None] < k_left), other=0.0)
        acc = tl.dot(a, b, acc)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk
    _epilogue(acc, offs_m, offs_n, M, N, w_scale_ptr, bias_ptr, tl.load(x_scale_ptr), out_ptr, out_scale_ptr,
              res_ptr, stride_om, stride_on, RESIDUAL)


@triton.jit
def fp8_gemm_epilogue_tma(x_desc, w_desc, w_scale_ptr, bias_ptr, out_desc, x_scale_ptr, out_scale_ptr, res_desc,
                          M, N, K, M_CLASS,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                          GROUP_M: tl.constexpr, NUM_SMS: tl.constexpr, CTAS: tl.constexpr, FLATTEN: tl.constexpr,
                          RESIDUAL: tl.constexpr, HW_TANH: tl.constexpr):
    # Hopper: operands, residual and output through TMA descriptors (zero-filled loads and clipped stores past the
    # edges: no masks, no per-element addresses), a persistent grid of CTAS programs per SM walking the tiles (2: one
    # program's epilogue runs while the other's MMAs do); flattened, the next tile's loads overlap this epilogue
    grid_m, grid_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    x_scale = tl.load(x_scale_ptr)
    for tile in tl.range(tl.program_id(0), grid_m * grid_n, CTAS * NUM_SMS, flatten=FLATTEN):
        pid_m, pid_n = _tile(tile, grid_m, grid_n, GROUP_M)
        off_m, off_n = pid_m * BLOCK_M, pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            a = x_desc.load([off_m, k * BLOCK_K])  # [BM,BK]
            b = w_desc.load([off_n, k * BLOCK_K])  # [BN,BK]
            acc = tl.dot(a, b.T, acc)
        # epilogue in fp32: dequantise, bias, residual add or GELU + quantise
        offs_n = off_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N
        w_scale = tl.load(w_scale_ptr + offs_n, mask=n_ok, other=0.0)
        bias = tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
        y = acc * (x_scale * w_scale)[None, :] + bias[None, :]
        if RESIDUAL:
            out_desc.store([off_m, off_n], (res_desc.load([off_m, off_n]).to(tl.float32) + y).to(tl.bfloat16))
        else:
            q = _gelu_tanh_quantize(y, 1.0 / tl.load(out_scale_ptr), HW_TANH)
            out_desc.store([off_m, off_n], q.to(tl.float8e4nv))


@triton.jit
def _head_chunk(acc, offs_c, w_scale_ptr, bias_ptr, x_scale):
    w_scale = tl.load(w_scale_ptr + offs_c)
    return acc * (x_scale * w_scale)[None, :] + tl.load(bias_ptr + offs_c).to(tl.float32)[None, :]


@triton.jit
def fp8_qkv_rmsnorm_tma(x_desc, w_desc, w_scale_ptr, bias_ptr, x_scale_ptr, gain_ptr, out_ptr,
                        M, K, M_CLASS, N_TOKENS, N_JOINT, N_HEADS, eps,
                        SUB: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                        NUM_SMS: tl.constexpr, CTAS: tl.constexpr, FLATTEN: tl.constexpr):
    # One tile = BLOCK_M tokens x one head (3 * SUB channels, as three SUB-wide MMAs sharing the x tile), so the
    # head's RMS norm (q and k heads; v heads pass) runs in the epilogue. Output [3, B, N_JOINT, H, 3*SUB] bf16:
    # token m = b * N_TOKENS + t goes to row b * N_JOINT + t of plane q / k / v (the context rows are the
    # caller's).
    HD: tl.constexpr = 3 * SUB
    grid_m, grid_n = tl.cdiv(M, BLOCK_M), 3 * N_HEADS
    x_scale = tl.load(x_scale_ptr)
    d = N_HEADS * HD
    plane = (M // N_TOKENS) * N_JOINT * d
    for tile in tl.range(tl.program_id(0), grid_m * grid_n, CTAS * NUM_SMS, flatten=FLATTEN):
        pid_m, head = _tile(tile, grid_m, grid_n, GROUP_M)  # head: 0 .. 3H-1 over q|k|v
        n0 = head * HD
        acc0 = tl.zeros((BLOCK_M, SUB), dtype=tl.float32)
        acc1 = tl.zeros((BLOCK_M, SUB), dtype=tl.float32)
        acc2 = tl.zeros((BLOCK_M, SUB), dtype=tl.float32)
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            a = x_desc.load([pid_m * BLOCK_M, k * BLOCK_K])  # [BM,BK]
            acc0 = tl.dot(a, w_desc.load([n0, k * BLOCK_K]).T, acc0)
            acc1 = tl.dot(a, w_desc.load([n0 + SUB, k * BLOCK_K]).T, acc1)
            acc2 = tl.dot(a, w_desc.load([n0 + 2 * SUB, k * BLOCK_K]).T, acc2)
        offs_c = tl.arange(0, SUB)
        y0 = _head_chunk(acc0, n0 + offs_c, w_scale_ptr, bias_ptr, x_scale)
        y1 = _head_chunk(acc1, n0 + SUB + offs_c, w_scale_ptr, bias_ptr, x_scale)
        y2 = _head_chunk(acc2, n0 + 2 * SUB + offs_c, w_scale_ptr, bias_ptr, x_scale)
        which = head // N_HEADS  # 0 q, 1 k, 2 v
        if which < 2:  # x rsqrt(mean(x^2) + eps) g over the head's channels, fp32 (spec 5.3 step 3)
            ss = tl.sum(y0 * y0, 1) + tl.sum(y1 * y1, 1) + tl.sum(y2 * y2, 1)
            r = tl.rsqrt(ss * (1.0 / HD) + eps)[:, None]
            g = gain_ptr + which * HD + offs_c
            y0 = y0 * r * tl.load(g)[None, :]
            y1 = y1 * r * tl.load(g + SUB)[None, :]
            y2 = y2 * r * tl.load(g + 2 * SUB)[None, :]
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        row = (offs_m // N_TOKENS) * N_JOINT + offs_m % N_TOKENS
        ptrs = out_ptr + which * plane + row[:, None] * d + ((head % N_HEADS) * HD + offs_c)[None, :]
        m_ok = (offs_m < M)[:, None]
        tl.store(ptrs, y0.to(out_ptr.dtype.element_ty), mask=m_ok)
        tl.store(ptrs + SUB, y1.to(out_ptr.dtype.element_ty), mask=m_ok)
        tl.store(ptrs + 2 * SUB, y2.to(out_ptr.dtype.element_ty), mask=m_ok)


@triton.jit
def fp8_conv3x3_kernel(x_ptr, w_ptr, w_scale_ptr, bias_ptr, out_ptr, x_scale_ptr, out_scale_ptr, B, H, W, C, N,
                       N_OUT, B_CLASS, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       GROUP_M: tl.constexpr, SHUFFLE: tl.constexpr):
    # x [B,H,W,C] e4m3, w [N,3,3,C] e4m3, all contiguous; out [B,H,W,N] bf16 (SHUFFLE 0), or [B,2H,2W,N_OUT] e4m3
    # with N = 4 N_OUT and the weight's output channels phase-major (SHUFFLE 1, any N_OUT; 2: N_OUT a multiple of
    # BLOCK_N, so that one tile is one phase and its rows are contiguous runs of channels)
    # 1. the tile: BLOCK_M output pixels x BLOCK_N channels, grouped order (neighbouring programs share pixels)
    m_total = B * H * W
    pid_m, pid_n = _tile(tl.program_id(0), tl.cdiv(m_total, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (b, h, w) flattened
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < m_total
    n_ok = offs_n < N
    w_pix = offs_m % W
    h_pix = (offs_m // W) % H
    # 2. implicit GEMM: K = 9 taps x C channels, one loop over (tap, channel block) pairs so that the software
    # pipeliner keeps the next steps' loads in flight across taps (a loop nest restarts its pipeline at every tap:
    # C = 256 is two BLOCK_K steps a tap); a tap reads the pixel shifted by (dy, dx), zero outside the image
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    c_blocks = tl.cdiv(C, BLOCK_K)
    for step in range(9 * c_blocks):
        tap = step // c_blocks
        c0 = (step - tap * c_blocks) * BLOCK_K
        dy = tap // 3 - 1
        dx = tap % 3 - 1
        hs = h_pix + dy
        ws = w_pix + dx
        inside = m_ok & (hs >= 0) & (hs < H) & (ws >= 0) & (ws < W)
        src = (offs_m + dy * W + dx) * C  # same image: the shifted row / column
        c_ok = (c0 + offs_k) < C
        a = tl.load(x_ptr + src[:, None] + (c0 + offs_k)[None, :], mask=inside[:, None] & c_ok[None, :], other=0.0)
        b = tl.load(w_ptr + offs_n[None, :] * (9 * C) + tap * C + (c0 + offs_k)[:, None],
                    mask=n_ok[None, :] & c_ok[:, None], other=0.0)
        acc = tl.dot(a, b, acc)
    # 3. epilogue in fp32: dequantise, bias, leaky ReLU x sqrt(2), clamp +-256, one rounding to bf16
    w_scale = tl.load(w_scale_ptr + offs_n, mask=n_ok, other=0.0)
    bias = tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0)
    y = acc * (tl.load(x_scale_ptr) * w_scale)[None, :] + bias[None, :]
    y = tl.where(y >= 0, y, 0.2 * y) * 1.4142135623730951  # LRELU_SLOPE, LRELU_GAIN (no globals in jit)
    y = tl.minimum(tl.maximum(y, -256.0), 256.0)  # CONV_CLAMP
    if SHUFFLE:
        # 4. the next convolution's input: PixelShuffle(2) and e4m3 with its input scale, so no bf16 image and no
        #    shuffle kernel in between. Channel p N_OUT + o (phase p = 2i + j) of pixel (h, w) -> channel o of pixel
        #    (2h + i, 2w + j) of [B,2H,2W,N_OUT]
        q = tl.minimum(tl.maximum(y * (1.0 / tl.load(out_scale_ptr)), -448.0), 448.0)  # FP8_MAX
        row = (offs_m // W) * (4 * W) + 2 * w_pix  # sub-pixel (0, 0) of (b, h, w), in pixels of the output
        if SHUFFLE == 2:  # one phase a tile: the offsets are a row base plus BLOCK_N consecutive channels
            n0 = pid_n * BLOCK_N
            phase = n0 // N_OUT
            o = (n0 - phase * N_OUT) + tl.arange(0, BLOCK_N)
            ptrs = out_ptr + ((row + (phase // 2) * (2 * W) + phase % 2) * N_OUT)[:, None] + o[None, :]
        else:
            phase = offs_n // N_OUT
            col = ((phase // 2) * (2 * W) + phase % 2) * N_OUT + (offs_n - phase * N_OUT)
            ptrs = out_ptr + (row * N_OUT)[:, None] + col[None, :]
        tl.store(ptrs, q.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])
    else:
        tl.store(out_ptr + offs_m[:, None] * N + offs_n[None, :], y.to(out_ptr.dtype.element_ty),
                 mask=m_ok[:, None] & n_ok[None, :])
