// Baseline JPEG entropy coding on the GPU (flexrt.kernels.jpeg, backend "cuda").
//
// Input: quantised coefficients of every 8x8 block of a batch, in scan order (frame, macroblock, Y00 Y01 Y10 Y11
// Cb Cr), zig-zag order, slot 0 holding the DC *difference* (T.81 F.1.2.1). Two kernels, no barriers, no host sync:
//
//   jpeg_block_bits  one thread per block: its Huffman-coded bit string (T.81 F.1.2), MSB first, left-aligned in
//                    32-bit words, and its length in bits
//   jpeg_pack        one thread per (block, word): OR the word into the frame's bit stream at the block's bit
//                    offset (an exclusive prefix sum of the lengths, computed in between by torch.cumsum)
//
// Byte order, the 1-bit padding of the last byte, byte stuffing and the header are done by the caller in torch.
typedef unsigned int u32;
typedef unsigned long long u64;

#define JPEG_BLOCK_WORDS 56  // >= (11 + 11 + 63 * (16 + 10) + 4) / 32: a block's longest bit string

struct JpegBits {
    u32* out;
    u64 acc;   // pending bits in the low `nacc` positions
    int nacc;  // < 32 between calls
    int nw;    // words written
    int total; // bits written
};

__device__ __forceinline__ void jpeg_put(JpegBits& b, u32 bits, int n) {  // append n <= 32 bits, MSB first
    if (n == 0) return;
    b.acc = (b.acc << n) | (u64)(bits & (n == 32 ? 0xffffffffu : ((1u << n) - 1u)));
    b.nacc += n;
    b.total += n;
    if (b.nacc >= 32) {
        b.nacc -= 32;
        b.out[b.nw++] = (u32)(b.acc >> b.nacc);
        b.acc &= (b.nacc == 0) ? 0ull : ((1ull << b.nacc) - 1ull);
    }
}

__device__ __forceinline__ int jpeg_bit_length(int v) {  // category: bits of |v| (0 for 0)
    u32 m = (u32)(v < 0 ? -v : v);
    int n = 0;
    while (m) { ++n; m >>= 1; }
    return n;
}

__device__ __forceinline__ u32 jpeg_amplitude(int v, int size) {  // T.81 F.1.2.1.1: negative -> v - 1 in `size` bits
    return (u32)(v >= 0 ? v : v + (1 << size) - 1);
}

extern "C" __global__ void jpeg_block_bits(
    const int* __restrict__ coef,     // [n_blocks, 64] zig-zag, slot 0 = DC difference
    long long n_blocks,
    const u32* __restrict__ dc_code,  // [2, 12]  table 0 luma, 1 chroma
    const int* __restrict__ dc_len,   // [2, 12]
    const u32* __restrict__ ac_code,  // [2, 256]
    const int* __restrict__ ac_len,   // [2, 256]
    u32* __restrict__ words,          // [n_blocks, JPEG_BLOCK_WORDS]
    int* __restrict__ nbits)          // [n_blocks]
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_blocks) return;
    const int t = (i % 6) >= 4 ? 1 : 0;  // blocks 4, 5 of a macroblock are Cb, Cr
    const int* c = coef + i * 64;
    JpegBits b{words + i * JPEG_BLOCK_WORDS, 0ull, 0, 0, 0};
    const int dc = c[0];
    const int ds = jpeg_bit_length(dc);
    jpeg_put(b, dc_code[t * 12 + ds], dc_len[t * 12 + ds]);
    jpeg_put(b, jpeg_amplitude(dc, ds), ds);
    int run = 0;
    for (int k = 1; k < 64; ++k) {
        const int v = c[k];
        if (v == 0) { ++run; continue; }
        while (run >= 16) {  // ZRL: 16 zeros
            jpeg_put(b, ac_code[t * 256 + 0xF0], ac_len[t * 256 + 0xF0]);
            run -= 16;
        }
        const int s = jpeg_bit_length(v);
        const int sym = run * 16 + s;
        jpeg_put(b, ac_code[t * 256 + sym], ac_len[t * 256 + sym]);
        jpeg_put(b, jpeg_amplitude(v, s), s);
        run = 0;
    }
    if (run > 0) jpeg_put(b, ac_code[t * 256 + 0x00], ac_len[t * 256 + 0x00]);  // EOB
    if (b.nacc > 0) b.out[b.nw++] = (u32)(b.acc << (32 - b.nacc));  // left-align the last partial word
    nbits[i] = b.total;
}

extern "C" __global__ void jpeg_pack(
    const u32* __restrict__ words,        // [n_blocks, JPEG_BLOCK_WORDS]
    const int* __restrict__ nbits,        // [n_blocks]
    const long long* __restrict__ offset, // [n_blocks] bit offset of each block within its frame's stream
    long long n_items,                    // n_blocks * JPEG_BLOCK_WORDS
    int blocks_per_frame,
    int words_per_frame,                  // output capacity in words; bits beyond it are dropped
    u32* __restrict__ out)                // [frames, words_per_frame], zeroed, bit stream MSB first per word
{
    const long long item = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (item >= n_items) return;
    const long long blk = item / JPEG_BLOCK_WORDS;
    const int w = (int)(item % JPEG_BLOCK_WORDS);
    const int n = nbits[blk];
    if (w * 32 >= n) return;
    const u32 bits = words[item];
    const long long o = offset[blk] + 32ll * w;
    const long long W = o >> 5;
    const int sh = (int)(o & 31);
    u32* dst = out + (blk / blocks_per_frame) * (long long)words_per_frame;
    if (W < words_per_frame) atomicOr(dst + W, bits >> sh);
    if (sh != 0 && W + 1 < words_per_frame) atomicOr(dst + W + 1, bits << (32 - sh));
}

// ---- colour conversion, 4:2:0, DCT and quantisation: one thread per 8x8 block ----------------------------------
// The same function as JpegEncoder.coefficients in torch (float32, each product and sum rounded as torch rounds
// them: no fused multiply-adds; the DCT's 64-term sums in a fixed order, so a coefficient can differ from torch's
// matmul by one where its quotient lies within float32 error of a rounding boundary).

__device__ __forceinline__ int jpeg_clampi(int v, int hi) { return v < 0 ? 0 : (v > hi ? hi : v); }

__device__ __forceinline__ void jpeg_pixel(const unsigned char* img, int height, int width, int y, int x,
                                           float& r, float& g, float& b) {
    const unsigned char* p = img + ((long long)jpeg_clampi(y, height - 1) * width + jpeg_clampi(x, width - 1)) * 3;
    r = (float)p[0]; g = (float)p[1]; b = (float)p[2];  // replicate padding past the last row / column
}

extern "C" __global__ void jpeg_coefficients(
    const unsigned char* __restrict__ rgb,  // [frames, height, width, 3]
    long long n_blocks,                     // frames * num_mcus * 6, scan order (frame, MCU, Y00 Y01 Y10 Y11 Cb Cr)
    int height, int width, int mcu_cols, int num_mcus,
    const float* __restrict__ dct,          // [64 pixels, 64 coefficients], coefficient columns in zig-zag order
    const float* __restrict__ qz,           // [6, 64] quantisation divisors per block of an MCU, zig-zag order
    int* __restrict__ coef)                 // [n_blocks, 64] quantised, zig-zag; slot 0 the DC itself
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_blocks) return;
    const int k = (int)(i % 6);
    const int m = (int)((i / 6) % num_mcus);
    const long long f = i / (6ll * num_mcus);
    const int mr = m / mcu_cols, mc = m % mcu_cols;
    const unsigned char* img = rgb + f * (long long)height * width * 3;
    float pix[64];
    for (int p = 0; p < 64; ++p) {
        const int py = p >> 3, px = p & 7;
        float r, g, b;
        if (k < 4) {  // luma, level-shifted: round(0.299 r + 0.587 g + 0.114 b) - 128
            jpeg_pixel(img, height, width, mr * 16 + (k >> 1) * 8 + py, mc * 16 + (k & 1) * 8 + px, r, g, b);
            const float s = __fadd_rn(__fadd_rn(__fmul_rn(0.299f, r), __fmul_rn(0.587f, g)), __fmul_rn(0.114f, b));
            pix[p] = __fsub_rn(rintf(s), 128.0f);
        } else {  // chroma: the mean of the 2x2 rounded values (integers: the sum is exact)
            float sum = 0.0f;
            for (int d = 0; d < 4; ++d) {
                jpeg_pixel(img, height, width, 2 * (mr * 8 + py) + (d >> 1), 2 * (mc * 8 + px) + (d & 1), r, g, b);
                float s;
                if (k == 4)  // Cb = -0.168735892 r - 0.331264108 g + 0.5 b
                    s = __fadd_rn(__fsub_rn(__fmul_rn(-0.168735892f, r), __fmul_rn(0.331264108f, g)), __fmul_rn(0.5f, b));
                else         // Cr = 0.5 r - 0.418687589 g - 0.081312411 b
                    s = __fsub_rn(__fsub_rn(__fmul_rn(0.5f, r), __fmul_rn(0.418687589f, g)), __fmul_rn(0.081312411f, b));
                sum = __fadd_rn(sum, rintf(s));
            }
            pix[p] = __fdiv_rn(sum, 4.0f);
        }
    }
    int* out = coef + i * 64;
    for (int j = 0; j < 64; ++j) {
        float acc = 0.0f;
        for (int p = 0; p < 64; ++p) acc = __fadd_rn(acc, __fmul_rn(pix[p], dct[p * 64 + j]));
        const float q = __fdiv_rn(acc, qz[k * 64 + j]);
        // round half away from zero (libjpeg), +1e-3 as the torch path; baseline amplitudes: at most 10 bits
        float a = floorf(__fadd_rn(fabsf(q), 0.501f));
        a = a > 1023.0f ? 1023.0f : a;
        out[j] = q < 0.0f ? -(int)a : (int)a;
    }
}
