// RMSNorm of the training step: forward, forward fused with the residual add before it,
// and backward with the residual gradient folded in.
//
// Memory: bf16 rows (N, H) in and out, H even (bf16 pairs); rstd (N,) f32 saved by the
// forward for the backward. Every output is written with = (fresh tensors from the
// launcher), never accumulated into. One block per row.
// Accumulation: sums of squares and the backward's dot product in f32, reduced over the
// block (block_sum in common.cuh); bf16 rounding exactly where HF's LlamaRMSNorm rounds.
#include "common.cuh"

// RMSNorm forward, one block per row. x: (N, H), w: (H,) -> y (N, H), rstd (N,) f32.
// y = bf16(bf16(x * rstd) * w), rounding where HF's LlamaRMSNorm does.
extern "C" __global__ void rms_norm_fwd_bf16(const bf16* __restrict__ x, const bf16* __restrict__ w, bf16* __restrict__ y,
                                             float* __restrict__ rstd, int H, float eps) {
    __shared__ float scratch[32];
    const size_t row = blockIdx.x;
    const __nv_bfloat162* xr = reinterpret_cast<const __nv_bfloat162*>(x + row * H);
    const __nv_bfloat162* wr = reinterpret_cast<const __nv_bfloat162*>(w);
    __nv_bfloat162* yr = reinterpret_cast<__nv_bfloat162*>(y + row * H);
    float ss = 0.f;
    for (int i = threadIdx.x; i < H / 2; i += blockDim.x) {
        float2 v = __bfloat1622float2(xr[i]);
        ss += v.x * v.x + v.y * v.y;
    }
    ss = block_sum(ss, scratch);
    const float r = 1.f / sqrtf(ss / H + eps);
    if (threadIdx.x == 0) rstd[row] = r;
    for (int i = threadIdx.x; i < H / 2; i += blockDim.x) {
        float2 v = __bfloat1622float2(xr[i]);
        float2 n = __bfloat1622float2(__floats2bfloat162_rn(v.x * r, v.y * r));
        float2 g = __bfloat1622float2(wr[i]);
        yr[i] = __floats2bfloat162_rn(n.x * g.x, n.y * g.y);
    }
}

// Residual add fused with the next RMSNorm, one block per row:
// s = bf16(a + b); y = bf16(bf16(s * rstd) * w), rstd = 1/sqrt(mean(s^2) + eps).
extern "C" __global__ void add_rms_norm_fwd_bf16(const bf16* __restrict__ a, const bf16* __restrict__ b, const bf16* __restrict__ w,
                                                 bf16* __restrict__ sum, bf16* __restrict__ y, float* __restrict__ rstd, int H,
                                                 float eps) {
    __shared__ float scratch[32];
    const size_t row = blockIdx.x;
    const __nv_bfloat162* ar = reinterpret_cast<const __nv_bfloat162*>(a + row * H);
    const __nv_bfloat162* br = reinterpret_cast<const __nv_bfloat162*>(b + row * H);
    const __nv_bfloat162* wr = reinterpret_cast<const __nv_bfloat162*>(w);
    __nv_bfloat162* sr = reinterpret_cast<__nv_bfloat162*>(sum + row * H);
    __nv_bfloat162* yr = reinterpret_cast<__nv_bfloat162*>(y + row * H);
    float ss = 0.f;
    for (int i = threadIdx.x; i < H / 2; i += blockDim.x) {
        float2 fa = __bfloat1622float2(ar[i]), fb = __bfloat1622float2(br[i]);
        __nv_bfloat162 sv = __floats2bfloat162_rn(fa.x + fb.x, fa.y + fb.y);
        sr[i] = sv;
        float2 v = __bfloat1622float2(sv);
        ss += v.x * v.x + v.y * v.y;
    }
    ss = block_sum(ss, scratch);
    const float r = 1.f / sqrtf(ss / H + eps);
    if (threadIdx.x == 0) rstd[row] = r;
    for (int i = threadIdx.x; i < H / 2; i += blockDim.x) {
        float2 v = __bfloat1622float2(sr[i]);  // this thread's own writes above
        float2 nv = __bfloat1622float2(__floats2bfloat162_rn(v.x * r, v.y * r));
        float2 g = __bfloat1622float2(wr[i]);
        yr[i] = __floats2bfloat162_rn(nv.x * g.x, nv.y * g.y);
    }
}

// RMSNorm backward plus the residual gradient, one block per row:
// dx = dres + rstd * (gw - xhat * mean(gw * xhat)), gw = dy * w, xhat = x * rstd.
// dres is read only when has_res (it may alias nothing else).
extern "C" __global__ void rms_norm_bwd_bf16(const bf16* __restrict__ dy, const bf16* __restrict__ x, const bf16* __restrict__ w,
                                             const float* __restrict__ rstd, const bf16* __restrict__ dres, bf16* __restrict__ dx,
                                             int H, int has_res) {
    __shared__ float scratch[32];
    const size_t row = blockIdx.x;
    const __nv_bfloat162* dyr = reinterpret_cast<const __nv_bfloat162*>(dy + row * H);
    const __nv_bfloat162* xr = reinterpret_cast<const __nv_bfloat162*>(x + row * H);
    const __nv_bfloat162* wr = reinterpret_cast<const __nv_bfloat162*>(w);
    const __nv_bfloat162* rr = reinterpret_cast<const __nv_bfloat162*>(dres + row * H);
    __nv_bfloat162* dxr = reinterpret_cast<__nv_bfloat162*>(dx + row * H);
    const float r = rstd[row];
    float dot = 0.f;
    for (int i = threadIdx.x; i < H / 2; i += blockDim.x) {
        float2 d = __bfloat1622float2(dyr[i]), xv = __bfloat1622float2(xr[i]), g = __bfloat1622float2(wr[i]);
        dot += d.x * g.x * xv.x * r + d.y * g.y * xv.y * r;
    }
    const float mean = block_sum(dot, scratch) / H;
    for (int i = threadIdx.x; i < H / 2; i += blockDim.x) {
        float2 d = __bfloat1622float2(dyr[i]), xv = __bfloat1622float2(xr[i]), g = __bfloat1622float2(wr[i]);
        float ox = r * (d.x * g.x - xv.x * r * mean);
        float oy = r * (d.y * g.y - xv.y * r * mean);
        if (has_res) {
            float2 res = __bfloat1622float2(rr[i]);
            ox += res.x;
            oy += res.y;
        }
        dxr[i] = __floats2bfloat162_rn(ox, oy);
    }
}
