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
