// Cross-entropy of the LM head's logits, forward and backward in one pass.
//
// Memory: logits (rows, V) bf16 and labels (rows,) u32 in; dlogits (rows, V) bf16 and
// nll (rows,) f32 written with =. One block per row.
// Accumulation: max and sum of exponentials in f32, reduced over the block
// (block_max/block_sum in common.cuh); the gradient is scaled by `scale` (1 / targets of
// the step) before its single bf16 rounding.
#include "common.cuh"

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
