// Fused element-wise kernels of the training step on bf16 activations, f32 statistics.
// Each replaces a chain of candle ops that made one device-memory pass per op (the CUDA
// profile of the step had element-wise work at 14-32% of its time).
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

// Cross-entropy of bf16 logits rows (len, V) against labels, one block per row, in f32:
// nll[row] = logsumexp(x) - x[label]; dlogits = (softmax(x) - onehot(label)) * scale.
extern "C" __global__ void cross_entropy_bf16(const bf16* __restrict__ logits, const unsigned int* __restrict__ labels,
                                              bf16* __restrict__ dlogits, float* __restrict__ nll, int V, float scale) {
    __shared__ float scratch[32];
    const size_t row = blockIdx.x;
    const bf16* xr = logits + row * V;
    bf16* dr = dlogits + row * V;
    const unsigned int label = labels[row];
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, __bfloat162float(xr[j]));
    mx = block_max(mx, scratch);
    float sum = 0.f;
    for (int j = threadIdx.x; j < V; j += blockDim.x) sum += __expf(__bfloat162float(xr[j]) - mx);
    sum = block_sum(sum, scratch);
    const float inv = 1.f / sum;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float p = __expf(__bfloat162float(xr[j]) - mx) * inv;
        dr[j] = __float2bfloat16((p - (j == (int)label ? 1.f : 0.f)) * scale);
    }
    if (threadIdx.x == 0) nll[row] = logf(sum) + mx - __bfloat162float(xr[label]);
}

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
