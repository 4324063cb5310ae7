// AdamW on the LoRA parameters, one thread per element.
//
// Memory: p, g, m, v (n,) f32 in; p_out, m_out, v_out (n,) f32 written with = (fresh
// tensors: the launcher swaps them in).
// Accumulation: f32 throughout, torch's order of operations.
#include "common.cuh"

// AdamW on f32 tensors, torch's order of operations (see optimizer.rs):
// p' = p (1 - lr wd) - lr/bc1 * m' / (sqrt(v')/sqrt(bc2) + eps).
extern "C" __global__ void adamw_f32(const float* __restrict__ p, const float* __restrict__ g, const float* __restrict__ m,
                                     const float* __restrict__ v, float* __restrict__ p_out, float* __restrict__ m_out,
                                     float* __restrict__ v_out, int n, float lr, float beta1, float beta2, float eps, float wd,
                                     float bc1, float bc2_sqrt) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float gi = g[i];
    const float mi = beta1 * m[i] + (1.f - beta1) * gi;
    const float vi = beta2 * v[i] + (1.f - beta2) * gi * gi;
    const float denom = sqrtf(vi) / bc2_sqrt + eps;
    p_out[i] = p[i] * (1.f - lr * wd) - (lr / bc1) * (mi / denom);
    m_out[i] = mi;
    v_out[i] = vi;
}
