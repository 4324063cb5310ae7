// SwiGLU, the MLP's activation: a = silu(gate) * up, and its backward.
//
// Memory: bf16 (n,) with n even (bf16 pairs). The forward writes a fresh tensor; the
// backward writes dg over da and du over u (each element read before it is written, by
// the same thread), so it needs no new buffers.
// Accumulation: f32 per element, rounded once to bf16.
#include "common.cuh"

__device__ __forceinline__ float sigmoidf(float v) { return 1.f / (1.f + __expf(-v)); }

// a = silu(g) * u over n elements (n even), two per thread.
extern "C" __global__ void swiglu_fwd_bf16(const bf16* __restrict__ g, const bf16* __restrict__ u, bf16* __restrict__ a, int n2) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n2) return;
    float2 gv = __bfloat1622float2(reinterpret_cast<const __nv_bfloat162*>(g)[i]);
    float2 uv = __bfloat1622float2(reinterpret_cast<const __nv_bfloat162*>(u)[i]);
    reinterpret_cast<__nv_bfloat162*>(a)[i] = __floats2bfloat162_rn(gv.x * sigmoidf(gv.x) * uv.x, gv.y * sigmoidf(gv.y) * uv.y);
}

// dg = da * u * silu'(g), du = da * silu(g); silu'(g) = sig(g) (1 + g (1 - sig(g))).
// dg may be da itself and du may be u (each element is read before it is written, by the
// same thread).
extern "C" __global__ void swiglu_bwd_bf16(const bf16* da, const bf16* __restrict__ g, const bf16* u, bf16* dg, bf16* du,
                                           int n2) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n2) return;
    float2 dv = __bfloat1622float2(reinterpret_cast<const __nv_bfloat162*>(da)[i]);
    float2 gv = __bfloat1622float2(reinterpret_cast<const __nv_bfloat162*>(g)[i]);
    float2 uv = __bfloat1622float2(reinterpret_cast<const __nv_bfloat162*>(u)[i]);
    float sx = sigmoidf(gv.x), sy = sigmoidf(gv.y);
    reinterpret_cast<__nv_bfloat162*>(du)[i] = __floats2bfloat162_rn(dv.x * gv.x * sx, dv.y * gv.y * sy);
    reinterpret_cast<__nv_bfloat162*>(dg)[i] =
        __floats2bfloat162_rn(dv.x * uv.x * sx * (1.f + gv.x * (1.f - sx)), dv.y * uv.y * sy * (1.f + gv.y * (1.f - sy)));
}
