// Rotary position embedding (rotate-half, as HF Llama) and its transpose for backward.
//
// Memory: x and y (N, heads*D) bf16, cos/sin (N, D) bf16; y written with =, a fresh
// tensor. D divisible by 4 (each thread handles two bf16 pairs).
// Accumulation: none beyond one multiply-add per element, in f32, rounded once to bf16.
#include "common.cuh"

// Rotate-half RoPE on (N, heads*D) rows, cos/sin (N, D). Forward: y = x cos + rot(x) sin,
// rot([x1, x2]) = [-x2, x1]. Backward (transpose): dx = dy cos + rot^T(dy sin),
// rot^T([z1, z2]) = [z2, -z1]. One thread per (row, head, i) for an even i < D/2: the
// elements i, i+1 and i+D/2, i+D/2+1, as bf16 pairs.
extern "C" __global__ void rope_bf16(const bf16* __restrict__ x, const bf16* __restrict__ cosv, const bf16* __restrict__ sinv,
                                     bf16* __restrict__ y, int N, int heads, int D, int backward) {
    const int half = D / 2, quarter = D / 4;
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)N * heads * quarter) return;
    const int i = (idx % quarter) * 2;
    const size_t nh = idx / quarter;
    const size_t n = nh / heads;
    const size_t base = nh * D;  // (n, h) row start: n*heads*D + h*D
    auto pair = [](const bf16* p) { return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p)); };
    const float2 x1 = pair(x + base + i), x2 = pair(x + base + i + half);
    const float2 c1 = pair(cosv + n * D + i), c2 = pair(cosv + n * D + i + half);
    const float2 s1 = pair(sinv + n * D + i), s2 = pair(sinv + n * D + i + half);
    float2 y1, y2;
    if (backward) {
        y1 = make_float2(x1.x * c1.x + x2.x * s2.x, x1.y * c1.y + x2.y * s2.y);
        y2 = make_float2(x2.x * c2.x - x1.x * s1.x, x2.y * c2.y - x1.y * s1.y);
    } else {
        y1 = make_float2(x1.x * c1.x - x2.x * s1.x, x1.y * c1.y - x2.y * s1.y);
        y2 = make_float2(x2.x * c2.x + x1.x * s2.x, x2.y * c2.y + x1.y * s2.y);
    }
    *reinterpret_cast<__nv_bfloat162*>(y + base + i) = __floats2bfloat162_rn(y1.x, y1.y);
    *reinterpret_cast<__nv_bfloat162*>(y + base + i + half) = __floats2bfloat162_rn(y2.x, y2.y);
}
