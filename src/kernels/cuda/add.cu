// The residual add on bf16 activations.
//
// Memory: a, b, out of n8 * 8 bf16, 16-byte aligned (uint4 accesses); out written with =.
// Accumulation: each sum in f32, rounded once to bf16, as candle's add rounds.
#include "common.cuh"

// out = a + b over n8 groups of 8 bf16 (16-byte accesses), rounding once as candle's add.
extern "C" __global__ void add_bf16(const bf16* __restrict__ a, const bf16* __restrict__ b, bf16* __restrict__ out, int n8) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n8) return;
    uint4 va = reinterpret_cast<const uint4*>(a)[i], vb = reinterpret_cast<const uint4*>(b)[i], vo;
    const __nv_bfloat162* pa = reinterpret_cast<const __nv_bfloat162*>(&va);
    const __nv_bfloat162* pb = reinterpret_cast<const __nv_bfloat162*>(&vb);
    __nv_bfloat162* po = reinterpret_cast<__nv_bfloat162*>(&vo);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        float2 fa = __bfloat1622float2(pa[k]), fb = __bfloat1622float2(pb[k]);
        po[k] = __floats2bfloat162_rn(fa.x + fb.x, fa.y + fb.y);
    }
    reinterpret_cast<uint4*>(out)[i] = vo;
}
