// GGUF quantized blocks -> bf16, for QLoRA: the frozen base stays in its blocks in device
// memory and each projection is expanded just before its GEMM, then freed.
// Block layouts (ggml): a row of `cols` values is cols / QK blocks, rows one after
// another, so element e of the (rows, cols) matrix lives in block e / QK at position
// e % QK. Each thread expands 8 consecutive values (always inside one block) and writes
// them as one 16-byte store; the launcher guarantees n % 8 == 0 and n < 2^32.
//
// Memory: blocks (u8) in; out (rows, cols) bf16 written with =, into a caller's scratch
// buffer or a fresh tensor. Accumulation: scale * quant (+ min) in f32, rounded once.
#include "common.cuh"
#include <cuda_fp16.h>

__device__ __forceinline__ float half_at(const uint8_t* p) {
    return __half2float(*reinterpret_cast<const __half*>(p));
}

__device__ __forceinline__ void store8(bf16* out, unsigned e, const float v[8]) {
    uint4 packed;
    packed.x = pack_bf16(v[0], v[1]);
    packed.y = pack_bf16(v[2], v[3]);
    packed.z = pack_bf16(v[4], v[5]);
    packed.w = pack_bf16(v[6], v[7]);
    *reinterpret_cast<uint4*>(out + e) = packed;
}

// Q4_0 (18 bytes: f16 d, 16 bytes of nibbles; value j is the low nibble of byte j for
// j < 16, the high nibble of byte j - 16 otherwise): x = (q - 8) d.
// Q4_1 (20 bytes: f16 d, f16 m, nibbles as Q4_0): x = q d + m.
template <int BYTES, bool HAS_MIN>
__device__ __forceinline__ void dequant_q4_32(const uint8_t* __restrict__ blocks, bf16* __restrict__ out, unsigned n8) {
    const unsigned t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n8) return;
    const unsigned e = t * 8, j0 = e % 32;
    const uint8_t* b = blocks + (size_t)(e / 32) * BYTES;
    const uint8_t* qs = b + (HAS_MIN ? 4 : 2) + (j0 & 15);
    const float d = half_at(b), m = HAS_MIN ? half_at(b + 2) : -8.f * d;
    float v[8];
#pragma unroll
    for (int k = 0; k < 8; k++) {
        const int q = j0 < 16 ? (qs[k] & 0xF) : (qs[k] >> 4);
        v[k] = (float)q * d + m;
    }
    store8(out, e, v);
}

extern "C" __global__ void dequant_q4_0_bf16(const uint8_t* __restrict__ blocks, bf16* __restrict__ out, unsigned n8) {
    dequant_q4_32<18, false>(blocks, out, n8);
}

extern "C" __global__ void dequant_q4_1_bf16(const uint8_t* __restrict__ blocks, bf16* __restrict__ out, unsigned n8) {
    dequant_q4_32<20, true>(blocks, out, n8);
}

// Q8_0: 32 values, 34 bytes: f16 d, 32 int8. x = q d.
extern "C" __global__ void dequant_q8_0_bf16(const uint8_t* __restrict__ blocks, bf16* __restrict__ out, unsigned n8) {
    const unsigned t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n8) return;
    const unsigned e = t * 8;
    const uint8_t* b = blocks + (size_t)(e / 32) * 34;
    const int8_t* qs = reinterpret_cast<const int8_t*>(b + 2 + e % 32);
    const float d = half_at(b);
    float v[8];
#pragma unroll
    for (int k = 0; k < 8; k++) v[k] = (float)qs[k] * d;
    store8(out, e, v);
}

// Q4_K: 256 values, 144 bytes: f16 d, f16 dmin, 12 bytes of 6-bit (scale, min) pairs for
// 8 sub-blocks of 32, 128 bytes of nibbles. Value j: group g = j / 64 owns 32 bytes; its
// first 32 values are their low nibbles (sub-block 2g), the next 32 the high ones (2g+1).
// x = d scale q - dmin min.
extern "C" __global__ void dequant_q4_k_bf16(const uint8_t* __restrict__ blocks, bf16* __restrict__ out, unsigned n8) {
    const unsigned t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n8) return;
    const unsigned e = t * 8, j = e % 256;
    const uint8_t* b = blocks + (size_t)(e / 256) * 144;
    const unsigned g = j / 64, hi = (j % 64) / 32, l0 = j % 32, sub = 2 * g + hi;
    const uint8_t* sc = b + 4;
    int scale, mn;
    if (sub < 4) {
        scale = sc[sub] & 63;
        mn = sc[sub + 4] & 63;
    } else {
        scale = (sc[sub + 4] & 0xF) | ((sc[sub - 4] >> 6) << 4);
        mn = (sc[sub + 4] >> 4) | ((sc[sub] >> 6) << 4);
    }
    const float d = half_at(b) * (float)scale, m = half_at(b + 2) * (float)mn;
    const uint8_t* qs = b + 16 + 32 * g + l0;
    float v[8];
#pragma unroll
    for (int k = 0; k < 8; k++) {
        const int q = hi ? (qs[k] >> 4) : (qs[k] & 0xF);
        v[k] = d * (float)q - m;
    }
    store8(out, e, v);
}
