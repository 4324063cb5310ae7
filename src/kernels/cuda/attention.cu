// Flash-style causal attention for training: forward, and backward as dQ and dK/dV kernels.
//
// Layout (no head transposes): q, o, dout, dq are (N, NH*D) with N = B*T token rows; k, v,
// dk, dv are (N, NKV*D). Query head h reads kv head h / (NH/NKV) (GQA). lse and dsum are
// (B, NH, T) f32. kstart (N,) is the first key a query may attend to, so query i sees
// keys kstart[i] <= j <= i: causal attention inside each packed example (padding queries
// have kstart = i and see only themselves). kstart is non-decreasing along a row, which
// bounds the key tiles a query block visits and the query tiles a key block visits.
//
// Scores stay in registers: S = Q K^T per 64-key tile, online softmax in base 2 (scores
// scaled by scale*log2(e)), and lse stored as m + log2(l) in that base, which is what the
// backward kernels read back. Nothing O(T^2) touches device memory.
//
// Memory: every output (o, lse; dq; dk, dv; dsum) is written with =, once, by the block
// that owns its rows: fresh tensors from the launcher, no atomics, no accumulation into
// existing buffers. Accumulation: the tensor-core MMA accumulates in f32 registers;
// softmax statistics and dsum are f32; outputs are rounded once to bf16.
//
// Each block is WARPS warps (4 or 8, a template parameter); a warp owns 16 rows (queries in
// forward and dQ, keys in dK/dV) and drives the m16n8k16 bf16 tensor-core MMA (common.cuh
// documents the fragment layouts). kstart is read as int; the host passes it as u32.
#include "common.cuh"

#define TILE 64

// Copies `rows` rows (from row `first`, stride `ld`) of D bf16 into shared memory with row
// stride D + 8 (the padding spreads a warp's fragment loads over all 32 banks). Rows past
// T are zero.
template <int D>
__device__ __forceinline__ void load_tile(bf16* dst, const bf16* src, int first, int rows, int T, int ld) {
    constexpr int LDS = D + 8;
    constexpr int CHUNKS = D / 8;  // 16-byte pieces per row
    for (int idx = threadIdx.x; idx < rows * CHUNKS; idx += blockDim.x) {
        int r = idx / CHUNKS, c = (idx % CHUNKS) * 8;
        int row = first + r;
        uint4 val = make_uint4(0, 0, 0, 0);
        if (row < T) val = *reinterpret_cast<const uint4*>(src + (size_t)row * ld + c);
        *reinterpret_cast<uint4*>(dst + r * LDS + c) = val;
    }
}

// Per-lane ldmatrix row/column offsets inside a 16x16 block (ldsm_x4 in common.cuh):
//  - n-major B (stored [n][k], e.g. K for S = Q K^T): matrices (n lo, k lo), (n lo, k hi),
//    (n hi, k lo), (n hi, k hi), so r[0..1] are one n-tile's b0/b1 and r[2..3] the next's;
//  - k-major B (stored [k][n], e.g. V for O = P V, with .trans) and row-major A: matrices
//    (rows lo, cols lo), (rows hi, cols lo), (rows lo, cols hi), (rows hi, cols hi).
struct LaneOffsets {
    int nmaj_row, nmaj_col, kmaj_row, kmaj_col;
    __device__ LaneOffsets(int lane) {
        int m = lane >> 3, r = lane & 7;
        nmaj_row = (m >> 1) * 8 + r;
        nmaj_col = (m & 1) * 8;
        kmaj_row = (m & 1) * 8 + r;
        kmaj_col = (m >> 1) * 8;
    }
};

// load_tile through cp.async: returns at once; the copy lands by the next cp_async_wait.
template <int D>
__device__ __forceinline__ void load_tile_async(bf16* dst, const bf16* src, int first, int T, int ld) {
    constexpr int LDS = D + 8;
    constexpr int CHUNKS = D / 8;
    for (int idx = threadIdx.x; idx < TILE * CHUNKS; idx += blockDim.x) {
        int r = idx / CHUNKS, c = (idx % CHUNKS) * 8;
        int row = first + r;
        bool valid = row < T;
        cp_async16(dst + r * LDS + c, src + (valid ? (size_t)row * ld + c : 0), valid);
    }
}

// A fragments (16 rows x D, row-major in global memory with stride ld) of rows r0 and
// r1 = r0 + 8 for every 16-wide k-step; rows past T read as zeros.
template <int D>
__device__ __forceinline__ void load_a_rows(uint32_t frag[D / 16][4], const bf16* base, int ld, int r0, int r1, int T, int t) {
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
        int c = ks * 16 + 2 * t;
        frag[ks][0] = r0 < T ? ld32(base + (size_t)r0 * ld + c) : 0u;
        frag[ks][1] = r1 < T ? ld32(base + (size_t)r1 * ld + c) : 0u;
        frag[ks][2] = r0 < T ? ld32(base + (size_t)r0 * ld + c + 8) : 0u;
        frag[ks][3] = r1 < T ? ld32(base + (size_t)r1 * ld + c + 8) : 0u;
    }
}

// The 16 query rows a warp owns (from rw) and which 64-key tiles they see.
struct QueryRows {
    int rw, last, kst_min, kst_max;
    __device__ QueryRows(int rw_, int T, const int* ksb) : rw(rw_) {
        last = min(rw + 15, T - 1);
        kst_min = rw < T ? ksb[rw] : T;
        kst_max = rw < T ? ksb[last] : T;  // kstart is non-decreasing
    }
    // Some row sees some key of the tile at kbase.
    __device__ bool sees(int kbase, int T) const { return rw < T && kbase <= last && kst_min <= kbase + TILE - 1; }
    // Every row sees every key of the tile: no mask needed.
    __device__ bool sees_all(int kbase, int T) const { return rw + 15 < T && kbase + TILE - 1 <= rw && kbase >= kst_max; }
};

// Walks the K/V tiles tile_begin..=tile_end of one kv head through a two-stage cp.async
// pipeline (tile kt+1 in flight while tile kt is used), calling body(kbase, Ks, Vs) for each
// between barriers. Kbuf and Vbuf hold two stages of TILE rows of stride D + 8.
template <int D, typename Body>
__device__ __forceinline__ void for_each_kv_tile(bf16* Kbuf, bf16* Vbuf, const bf16* kb, const bf16* vb, int T, int ldk,
                                                 int tile_begin, int tile_end, Body&& body) {
    constexpr int LDS = D + 8;
    load_tile_async<D>(Kbuf, kb, tile_begin * TILE, T, ldk);
    load_tile_async<D>(Vbuf, vb, tile_begin * TILE, T, ldk);
    cp_async_commit();
    for (int kt = tile_begin; kt <= tile_end; ++kt) {
        const int kbase = kt * TILE;
        const int stage = (kt - tile_begin) & 1;
        if (kt < tile_end) {
            load_tile_async<D>(Kbuf + (stage ^ 1) * TILE * LDS, kb, kbase + TILE, T, ldk);
            load_tile_async<D>(Vbuf + (stage ^ 1) * TILE * LDS, vb, kbase + TILE, T, ldk);
        }
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        body(kbase, Kbuf + stage * TILE * LDS, Vbuf + stage * TILE * LDS);
        __syncthreads();  // this stage is refilled next iteration
    }
}

// grid (ceil(T/(16*WARPS)), B*NH), 32*WARPS threads, dynamic shared memory: K and V tiles, two stages
// each. o: (N, NH*D) bf16, lse: (B, NH, T) f32.
template <int D, int WARPS>
__device__ void flash_fwd(const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,
                          const int* __restrict__ kstart, bf16* __restrict__ o, float* __restrict__ lse,
                          int T, int NH, int NKV, float scale_log2) {
    constexpr int LDS = D + 8;
    extern __shared__ __align__(16) unsigned char smem[];
    bf16* Kbuf = reinterpret_cast<bf16*>(smem);  // [2][TILE * LDS]
    bf16* Vbuf = Kbuf + 2 * TILE * LDS;          // [2][TILE * LDS]
    const int b = blockIdx.y / NH, h = blockIdx.y % NH, hk = h / (NH / NKV);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const LaneOffsets lo(lane);
    const int ldq = NH * D, ldk = NKV * D;
    const int q0 = blockIdx.x * (16 * WARPS);
    const int rw = q0 + warp * 16;
    const int r0 = rw + g, r1 = rw + g + 8;
    const bf16* qb = q + (size_t)b * T * ldq + h * D;
    const bf16* kb = k + (size_t)b * T * ldk + hk * D;
    const bf16* vb = v + (size_t)b * T * ldk + hk * D;
    const int* ksb = kstart + (size_t)b * T;

    uint32_t qa[D / 16][4];
    load_a_rows<D>(qa, qb, ldq, r0, r1, T, t);
    const int kst0 = r0 < T ? ksb[r0] : 0, kst1 = r1 < T ? ksb[r1] : 0;
    const QueryRows rows(rw, T, ksb);

    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
    float acc[D / 8][4];
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) acc[dt][0] = acc[dt][1] = acc[dt][2] = acc[dt][3] = 0.f;

    const int last = min(q0 + (16 * WARPS), T) - 1;
    const int tile_begin = ksb[q0] / TILE, tile_end = last / TILE;
    for_each_kv_tile<D>(Kbuf, Vbuf, kb, vb, T, ldk, tile_begin, tile_end, [&](int kbase, const bf16* Ks, const bf16* Vs) {
        if (!rows.sees(kbase, T)) return;
        const bool full = rows.sees_all(kbase, T);

        float s[TILE / 8][4];
#pragma unroll
        for (int nt = 0; nt < TILE / 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
        for (int ks = 0; ks < D / 16; ++ks) {
#pragma unroll
            for (int np = 0; np < TILE / 16; ++np) {
                uint32_t kb4[4];
                ldsm_x4(kb4, Ks + (np * 16 + lo.nmaj_row) * LDS + ks * 16 + lo.nmaj_col);
                mma_bf16(s[2 * np], qa[ks], kb4[0], kb4[1]);
                mma_bf16(s[2 * np + 1], qa[ks], kb4[2], kb4[3]);
            }
        }
        float mx[2] = {m[0], m[1]};
#pragma unroll
        for (int nt = 0; nt < TILE / 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                int row = e < 2 ? r0 : r1, kst = e < 2 ? kst0 : kst1;
                int j = kbase + nt * 8 + 2 * t + (e & 1);
                float x = s[nt][e] * scale_log2;
                if (!full && (j > row || j < kst || j >= T)) x = -INFINITY;
                s[nt][e] = x;
                mx[e >> 1] = fmaxf(mx[e >> 1], x);
            }
        }
        float base[2], alpha[2], rs[2] = {0.f, 0.f};
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffff, mx[i], 1));
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffff, mx[i], 2));
            base[i] = mx[i] == -INFINITY ? 0.f : mx[i];  // a row with nothing visible yet
            alpha[i] = exp2f(m[i] - base[i]);
            m[i] = mx[i];
        }
#pragma unroll
        for (int nt = 0; nt < TILE / 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float p = exp2f(s[nt][e] - base[e >> 1]);
                s[nt][e] = p;
                rs[e >> 1] += p;
            }
        }
        l[0] = l[0] * alpha[0] + rs[0];
        l[1] = l[1] * alpha[1] + rs[1];
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt) {
            acc[dt][0] *= alpha[0];
            acc[dt][1] *= alpha[0];
            acc[dt][2] *= alpha[1];
            acc[dt][3] *= alpha[1];
        }
        // O += P V: P's accumulator registers are already the A operand's layout.
#pragma unroll
        for (int kk = 0; kk < TILE / 16; ++kk) {
            uint32_t pa[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]), pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                              pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int dp = 0; dp < D / 16; ++dp) {
                uint32_t vb4[4];
                ldsm_x4_t(vb4, Vs + (kk * 16 + lo.kmaj_row) * LDS + dp * 16 + lo.kmaj_col);
                mma_bf16(acc[2 * dp], pa, vb4[0], vb4[1]);
                mma_bf16(acc[2 * dp + 1], pa, vb4[2], vb4[3]);
            }
        }
    });
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        l[i] += __shfl_xor_sync(0xffffffff, l[i], 1);
        l[i] += __shfl_xor_sync(0xffffffff, l[i], 2);
    }
    const float inv0 = 1.f / l[0], inv1 = 1.f / l[1];
    bf16* ob = o + (size_t)b * T * ldq + h * D;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
        int c = dt * 8 + 2 * t;
        if (r0 < T) *reinterpret_cast<uint32_t*>(ob + (size_t)r0 * ldq + c) = pack_bf16(acc[dt][0] * inv0, acc[dt][1] * inv0);
        if (r1 < T) *reinterpret_cast<uint32_t*>(ob + (size_t)r1 * ldq + c) = pack_bf16(acc[dt][2] * inv1, acc[dt][3] * inv1);
    }
    if (t == 0) {
        float* lb = lse + ((size_t)b * NH + h) * T;
        if (r0 < T) lb[r0] = m[0] + log2f(l[0]);
        if (r1 < T) lb[r1] = m[1] + log2f(l[1]);
    }
}

// dsum[b, h, i] = sum_d dout[i, h, d] * o[i, h, d] (FA2's D term). One warp per (row, head).
// grid ceil(N*NH/4), 128 threads.
extern "C" __global__ void flash_bwd_dsum(const bf16* __restrict__ o, const bf16* __restrict__ dout, float* __restrict__ dsum,
                                          int N, int T, int NH, int D) {
    int wid = blockIdx.x * 4 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (wid >= N * NH) return;
    int n = wid / NH, h = wid % NH;
    const bf16* op = o + (size_t)n * NH * D + h * D;
    const bf16* dp = dout + (size_t)n * NH * D + h * D;
    float acc = 0.f;
    for (int c = 2 * lane; c < D; c += 64) {
        float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(op + c));
        float2 d = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(dp + c));
        acc += a.x * d.x + a.y * d.y;
    }
    acc = warp_sum(acc);
    int b = n / T, i = n % T;
    if (lane == 0) dsum[((size_t)b * NH + h) * T + i] = acc;
}

// dQ = scale * dS K, dS = P * (dP - dsum), dP = dO V^T, P recomputed from lse.
// grid (ceil(T/(16*WARPS)), B*NH), 32*WARPS threads, dynamic shared memory as the forward's.
template <int D, int WARPS>
__device__ void flash_bwd_dq(const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,
                             const bf16* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ dsum,
                             const int* __restrict__ kstart, bf16* __restrict__ dq, int T, int NH, int NKV, float scale_log2,
                             float scale) {
    constexpr int LDS = D + 8;
    extern __shared__ __align__(16) unsigned char smem[];
    bf16* Kbuf = reinterpret_cast<bf16*>(smem);  // [2][TILE * LDS]
    bf16* Vbuf = Kbuf + 2 * TILE * LDS;          // [2][TILE * LDS]
    const int b = blockIdx.y / NH, h = blockIdx.y % NH, hk = h / (NH / NKV);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const LaneOffsets lo(lane);
    const int ldq = NH * D, ldk = NKV * D;
    const int q0 = blockIdx.x * (16 * WARPS);
    const int rw = q0 + warp * 16;
    const int r0 = rw + g, r1 = rw + g + 8;
    const bf16* qb = q + (size_t)b * T * ldq + h * D;
    const bf16* dob = dout + (size_t)b * T * ldq + h * D;
    const bf16* kb = k + (size_t)b * T * ldk + hk * D;
    const bf16* vb = v + (size_t)b * T * ldk + hk * D;
    const int* ksb = kstart + (size_t)b * T;
    const float* lb = lse + ((size_t)b * NH + h) * T;
    const float* sb = dsum + ((size_t)b * NH + h) * T;

    uint32_t qa[D / 16][4], da[D / 16][4];
    load_a_rows<D>(qa, qb, ldq, r0, r1, T, t);
    load_a_rows<D>(da, dob, ldq, r0, r1, T, t);
    const int kst[2] = {r0 < T ? ksb[r0] : 0, r1 < T ? ksb[r1] : 0};
    const float lrow[2] = {r0 < T ? lb[r0] : 0.f, r1 < T ? lb[r1] : 0.f};
    const float drow[2] = {r0 < T ? sb[r0] : 0.f, r1 < T ? sb[r1] : 0.f};
    const int row[2] = {r0, r1};
    const QueryRows rows(rw, T, ksb);

    float acc[D / 8][4];
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) acc[dt][0] = acc[dt][1] = acc[dt][2] = acc[dt][3] = 0.f;

    const int last = min(q0 + (16 * WARPS), T) - 1;
    const int tile_begin = ksb[q0] / TILE, tile_end = last / TILE;
    for_each_kv_tile<D>(Kbuf, Vbuf, kb, vb, T, ldk, tile_begin, tile_end, [&](int kbase, const bf16* Ks, const bf16* Vs) {
        if (!rows.sees(kbase, T)) return;
        const bool full = rows.sees_all(kbase, T);
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            float s[4][4], dp[4][4];
#pragma unroll
            for (int nt = 0; nt < 4; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) s[nt][e] = dp[nt][e] = 0.f;
#pragma unroll
            for (int ks = 0; ks < D / 16; ++ks) {
#pragma unroll
                for (int np = 0; np < 2; ++np) {
                    const int off = (half * 32 + np * 16 + lo.nmaj_row) * LDS + ks * 16 + lo.nmaj_col;
                    uint32_t kb4[4], vb4[4];
                    ldsm_x4(kb4, Ks + off);
                    ldsm_x4(vb4, Vs + off);
                    mma_bf16(s[2 * np], qa[ks], kb4[0], kb4[1]);
                    mma_bf16(s[2 * np + 1], qa[ks], kb4[2], kb4[3]);
                    mma_bf16(dp[2 * np], da[ks], vb4[0], vb4[1]);
                    mma_bf16(dp[2 * np + 1], da[ks], vb4[2], vb4[3]);
                }
            }
#pragma unroll
            for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    int i = e >> 1;
                    int j = kbase + half * 32 + nt * 8 + 2 * t + (e & 1);
                    bool masked = !full && (j > row[i] || j < kst[i] || j >= T || row[i] >= T);
                    float p = masked ? 0.f : exp2f(s[nt][e] * scale_log2 - lrow[i]);
                    s[nt][e] = p * (dp[nt][e] - drow[i]);
                }
            }
#pragma unroll
            for (int kk = 0; kk < 2; ++kk) {
                uint32_t pa[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]), pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                                  pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
                for (int dp2 = 0; dp2 < D / 16; ++dp2) {
                    uint32_t kb4[4];
                    ldsm_x4_t(kb4, Ks + (half * 32 + kk * 16 + lo.kmaj_row) * LDS + dp2 * 16 + lo.kmaj_col);
                    mma_bf16(acc[2 * dp2], pa, kb4[0], kb4[1]);
                    mma_bf16(acc[2 * dp2 + 1], pa, kb4[2], kb4[3]);
                }
            }
        }
    });
    bf16* qo = dq + (size_t)b * T * ldq + h * D;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
        int c = dt * 8 + 2 * t;
        if (r0 < T) *reinterpret_cast<uint32_t*>(qo + (size_t)r0 * ldq + c) = pack_bf16(acc[dt][0] * scale, acc[dt][1] * scale);
        if (r1 < T) *reinterpret_cast<uint32_t*>(qo + (size_t)r1 * ldq + c) = pack_bf16(acc[dt][2] * scale, acc[dt][3] * scale);
    }
}

// dV = sum over the group's query heads of P^T dO; dK = scale * sum of dS^T Q. A block owns
// 16*WARPS keys of one kv head and walks the 64-query tiles that can see them, so no atomics.
// grid (ceil(T/(16*WARPS)), B*NKV), 32*WARPS threads, dynamic shared memory: K and V tiles, two stages
// of Q and dO tiles and of 64 lse, dsum and kstart values.
template <int D, int WARPS>
__device__ void flash_bwd_dkdv(const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,
                               const bf16* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ dsum,
                               const int* __restrict__ kstart, bf16* __restrict__ dk, bf16* __restrict__ dv, int T, int NH,
                               int NKV, float scale_log2, float scale) {
    constexpr int LDS = D + 8;
    extern __shared__ __align__(16) unsigned char smem[];
    bf16* Ks = reinterpret_cast<bf16*>(smem);
    bf16* Vs = Ks + 16 * WARPS * LDS;
    bf16* Qbuf = Vs + 16 * WARPS * LDS;       // [2][TILE * LDS]: two pipeline stages
    bf16* Obuf = Qbuf + 2 * TILE * LDS;  // [2][TILE * LDS]: dO
    float* lse_buf = reinterpret_cast<float*>(Obuf + 2 * TILE * LDS);  // [2][TILE]
    float* dsum_buf = lse_buf + 2 * TILE;                               // [2][TILE]
    int* kst_buf = reinterpret_cast<int*>(dsum_buf + 2 * TILE);         // [2][TILE]

    const int b = blockIdx.y / NKV, hk = blockIdx.y % NKV, rep = NH / NKV;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const LaneOffsets lo(lane);
    const int ldq = NH * D, ldk = NKV * D;
    constexpr int KB = 16 * WARPS;  // keys per block
    const int kbase = blockIdx.x * KB;
    const int kw = kbase + warp * 16;  // this warp's first key
    const int kend = min(kbase + KB, T) - 1;
    const int* ksb = kstart + (size_t)b * T;
    load_tile<D>(Ks, k + (size_t)b * T * ldk + hk * D, kbase, KB, T, ldk);
    load_tile<D>(Vs, v + (size_t)b * T * ldk + hk * D, kbase, KB, T, ldk);

    float dka[D / 8][4], dva[D / 8][4];
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt)
#pragma unroll
        for (int e = 0; e < 4; ++e) dka[dt][e] = dva[dt][e] = 0.f;

    // The query tiles that can see these keys: from the diagonal until kstart passes the
    // block's last key (kstart only grows along a row), for each query head of the group.
    const int qt_begin = kbase / TILE;
    int qt_stop = qt_begin;
    while (qt_stop < (T + TILE - 1) / TILE && ksb[qt_stop * TILE] <= kend) ++qt_stop;
    const int nq = qt_stop - qt_begin, iters = rep * nq;
    // Stage `st` <- query tile `it` (head hk*rep + it/nq): Q and dO by cp.async, the row
    // statistics by plain loads (visible after the next barrier).
    auto prefetch = [&](int it, int st) {
        const int h = hk * rep + it / nq, qbase = (qt_begin + it % nq) * TILE;
        load_tile_async<D>(Qbuf + st * TILE * LDS, q + (size_t)b * T * ldq + h * D, qbase, T, ldq);
        load_tile_async<D>(Obuf + st * TILE * LDS, dout + (size_t)b * T * ldq + h * D, qbase, T, ldq);
        const float* lb = lse + ((size_t)b * NH + h) * T;
        const float* sb = dsum + ((size_t)b * NH + h) * T;
        for (int r = threadIdx.x; r < TILE; r += blockDim.x) {
            int i = qbase + r;
            lse_buf[st * TILE + r] = i < T ? lb[i] : 0.f;
            dsum_buf[st * TILE + r] = i < T ? sb[i] : 0.f;
            kst_buf[st * TILE + r] = i < T ? ksb[i] : 0x7fffffff;
        }
    };
    if (iters > 0) prefetch(0, 0);
    cp_async_commit();
    for (int it = 0; it < iters; ++it) {
        const int st = it & 1;
        const int qbase = (qt_begin + it % nq) * TILE;
        const bf16* Qs = Qbuf + st * TILE * LDS;
        const bf16* Os = Obuf + st * TILE * LDS;
        const float* lse_s = lse_buf + st * TILE;
        const float* dsum_s = dsum_buf + st * TILE;
        const int* kst_s = kst_buf + st * TILE;
        if (it + 1 < iters) prefetch(it + 1, st ^ 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        if (kw < T && qbase + TILE - 1 >= kw) {
        // Every query of the tile sees every key of this warp: no mask.
        const bool full = kw + 15 < T && qbase + TILE - 1 < T && kw + 15 <= qbase && kst_s[TILE - 1] <= kw;
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                float s[4][4], dp[4][4];
#pragma unroll
                for (int nt = 0; nt < 4; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) s[nt][e] = dp[nt][e] = 0.f;
#pragma unroll
                for (int ks = 0; ks < D / 16; ++ks) {
                    const int aoff = (warp * 16 + lo.kmaj_row) * LDS + ks * 16 + lo.kmaj_col;
                    uint32_t ka[4], va[4];
                    ldsm_x4(ka, Ks + aoff);
                    ldsm_x4(va, Vs + aoff);
#pragma unroll
                    for (int np = 0; np < 2; ++np) {
                        const int boff = (half * 32 + np * 16 + lo.nmaj_row) * LDS + ks * 16 + lo.nmaj_col;
                        uint32_t qb4[4], ob4[4];
                        ldsm_x4(qb4, Qs + boff);
                        ldsm_x4(ob4, Os + boff);
                        mma_bf16(s[2 * np], ka, qb4[0], qb4[1]);  // S^T = K Q^T
                        mma_bf16(s[2 * np + 1], ka, qb4[2], qb4[3]);
                        mma_bf16(dp[2 * np], va, ob4[0], ob4[1]);  // dP^T = V dO^T
                        mma_bf16(dp[2 * np + 1], va, ob4[2], ob4[3]);
                    }
                }
#pragma unroll
                for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        int j = kw + g + 8 * (e >> 1);
                        int il = half * 32 + nt * 8 + 2 * t + (e & 1);
                        int i = qbase + il;
                        bool masked = !full && (i >= T || j > i || j < kst_s[il]);
                        float p = masked ? 0.f : exp2f(s[nt][e] * scale_log2 - lse_s[il]);
                        s[nt][e] = p;
                        dp[nt][e] = p * (dp[nt][e] - dsum_s[il]);
                    }
                }
#pragma unroll
                for (int kk = 0; kk < 2; ++kk) {
                    uint32_t pa[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]), pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                                      pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
                    uint32_t sa[4] = {pack_bf16(dp[2 * kk][0], dp[2 * kk][1]), pack_bf16(dp[2 * kk][2], dp[2 * kk][3]),
                                      pack_bf16(dp[2 * kk + 1][0], dp[2 * kk + 1][1]), pack_bf16(dp[2 * kk + 1][2], dp[2 * kk + 1][3])};
#pragma unroll
                    for (int dp2 = 0; dp2 < D / 16; ++dp2) {
                        const int off = (half * 32 + kk * 16 + lo.kmaj_row) * LDS + dp2 * 16 + lo.kmaj_col;
                        uint32_t ob4[4], qb4[4];
                        ldsm_x4_t(ob4, Os + off);
                        ldsm_x4_t(qb4, Qs + off);
                        mma_bf16(dva[2 * dp2], pa, ob4[0], ob4[1]);  // dV += P^T dO
                        mma_bf16(dva[2 * dp2 + 1], pa, ob4[2], ob4[3]);
                        mma_bf16(dka[2 * dp2], sa, qb4[0], qb4[1]);  // dK += dS^T Q
                        mma_bf16(dka[2 * dp2 + 1], sa, qb4[2], qb4[3]);
                    }
                }
            }
        }
        __syncthreads();  // this stage is refilled next iteration
    }
    const int j0 = kw + g, j1 = kw + g + 8;
    bf16* kd = dk + (size_t)b * T * ldk + hk * D;
    bf16* vd = dv + (size_t)b * T * ldk + hk * D;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
        int c = dt * 8 + 2 * t;
        if (j0 < T) {
            *reinterpret_cast<uint32_t*>(kd + (size_t)j0 * ldk + c) = pack_bf16(dka[dt][0] * scale, dka[dt][1] * scale);
            *reinterpret_cast<uint32_t*>(vd + (size_t)j0 * ldk + c) = pack_bf16(dva[dt][0], dva[dt][1]);
        }
        if (j1 < T) {
            *reinterpret_cast<uint32_t*>(kd + (size_t)j1 * ldk + c) = pack_bf16(dka[dt][2] * scale, dka[dt][3] * scale);
            *reinterpret_cast<uint32_t*>(vd + (size_t)j1 * ldk + c) = pack_bf16(dva[dt][2], dva[dt][3]);
        }
    }
}

// Entry points per head dim D and warps per block W (16*W query rows, or keys, a block).
#define ATTENTION_ENTRY_POINTS(D, W)                                                                                           \
    extern "C" __global__ void __launch_bounds__(32 * W) flash_fwd_d##D##_w##W(                                               \
        const bf16* q, const bf16* k, const bf16* v, const int* kstart, bf16* o, float* lse, int T, int NH, int NKV,          \
        float scale_log2) {                                                                                                    \
        flash_fwd<D, W>(q, k, v, kstart, o, lse, T, NH, NKV, scale_log2);                                                      \
    }                                                                                                                          \
    extern "C" __global__ void __launch_bounds__(32 * W) flash_bwd_dq_d##D##_w##W(                                            \
        const bf16* q, const bf16* k, const bf16* v, const bf16* dout, const float* lse, const float* dsum, const int* kstart, \
        bf16* dq, int T, int NH, int NKV, float scale_log2, float scale) {                                                    \
        flash_bwd_dq<D, W>(q, k, v, dout, lse, dsum, kstart, dq, T, NH, NKV, scale_log2, scale);                               \
    }                                                                                                                          \
    extern "C" __global__ void __launch_bounds__(32 * W) flash_bwd_dkdv_d##D##_w##W(                                          \
        const bf16* q, const bf16* k, const bf16* v, const bf16* dout, const float* lse, const float* dsum, const int* kstart, \
        bf16* dk, bf16* dv, int T, int NH, int NKV, float scale_log2, float scale) {                                          \
        flash_bwd_dkdv<D, W>(q, k, v, dout, lse, dsum, kstart, dk, dv, T, NH, NKV, scale_log2, scale);                         \
    }

ATTENTION_ENTRY_POINTS(64, 4)
ATTENTION_ENTRY_POINTS(128, 4)
ATTENTION_ENTRY_POINTS(64, 8)
ATTENTION_ENTRY_POINTS(128, 8)
