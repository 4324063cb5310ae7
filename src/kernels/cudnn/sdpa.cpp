// cuDNN's fused attention (SDPA forward and backward) behind a small C interface for
// src/kernels/cudnn.rs.
//
// Why cuDNN: on Hopper its fused attention runs at 520-640 TFLOP/s forward (H200, T 4k-32k,
// measured), against about 150 for our sm_80 flash kernels and 316 for FlashAttention-2;
// writing a wgmma/TMA kernel of that class is a project of its own. cuDNN is loaded at run
// time (the frontend's dynamic loading), so the binary still starts, and falls back to the
// flash kernels, where no cuDNN 9 is installed.
//
// Layout: every tensor is token-major as the training step keeps it, q/o (N, NH*D) and k/v
// (N, NKV*D) bf16, stats (N, NH) f32, N = B*T. Attention runs per *segment*: a run of tokens
// that see each other causally (one packed example, or one row's padding tail). Segments are
// described to cuDNN as a ragged batch: seq_len (S,) and per-tensor start offsets (S+1,) in
// elements, so packed examples never attend across each other and nothing is padded.
//
// Graphs are built once per shape (segments, longest segment, heads, head dim) and cached;
// building takes milliseconds to a second, executing microseconds.
#define NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING
#include <cudnn_frontend.h>
#include <dlfcn.h>

#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>

namespace cudnn_frontend {
void *cudnn_dlhandle = nullptr;
}

namespace fe = cudnn_frontend::graph;

extern "C" {
// One attention call's shape: `segments` ragged sequences of at most `max_len` tokens,
// `tokens` in all, nh query and nkv kv heads of dim d.
struct LtSdpaShape {
    int64_t segments;
    int64_t max_len;
    int64_t tokens;
    int64_t nh;
    int64_t nkv;
    int64_t d;
    float scale;
};

// Device pointers of one call. seq_len: (S,) i32; off_*: (S+1,) i32 element offsets of each
// segment's first token in q/o (start*NH*D), k/v (start*NKV*D) and stats (start*NH).
struct LtSdpaPtrs {
    const void *q, *k, *v;
    void *o;      // forward: written; backward: read
    void *stats;  // forward: written; backward: read
    const void *d_o;
    void *dq, *dk, *dv;
    const void *seq_len, *off_q, *off_kv, *off_stats;
    void *workspace;
};
}

namespace {

enum Uid : int64_t { Q = 1, K, V, O, STATS, DO, DQ, DK, DV, SEQ_Q, SEQ_KV, OFF_Q, OFF_KV, OFF_O, OFF_STATS };

std::mutex g_lock;
cudnnHandle_t g_handle = nullptr;
std::string g_error;

using Key = std::tuple<bool, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, float>;
std::map<Key, std::shared_ptr<fe::Graph>> g_graphs;

int fail(const std::string &msg) {
    g_error = msg;
    return -1;
}

std::shared_ptr<fe::Tensor_attributes> index_tensor(fe::Graph &g, const char *name, Uid uid, int64_t n) {
    return g.tensor(fe::Tensor_attributes()
                        .set_name(name)
                        .set_uid(uid)
                        .set_dim({n, 1, 1, 1})
                        .set_stride({1, 1, 1, 1})
                        .set_data_type(cudnn_frontend::DataType_t::INT32));
}

// A token-major (N, heads*D) tensor seen as the ragged (S, heads, max_len, D) cuDNN expects.
fe::Tensor_attributes rows(const char *name, Uid uid, const LtSdpaShape &s, int64_t heads) {
    return fe::Tensor_attributes()
        .set_name(name)
        .set_uid(uid)
        .set_dim({s.segments, heads, s.max_len, s.d})
        .set_stride({s.max_len * heads * s.d, s.d, heads * s.d, 1})
        .set_data_type(cudnn_frontend::DataType_t::BFLOAT16);
}

// The (N, NH) f32 log-sum-exp, ragged like the rows.
fe::Tensor_attributes stats_rows(const LtSdpaShape &s) {
    return fe::Tensor_attributes()
        .set_name("stats")
        .set_uid(STATS)
        .set_dim({s.segments, s.nh, s.max_len, 1})
        .set_stride({s.max_len * s.nh, 1, s.nh, 1})
        .set_data_type(cudnn_frontend::DataType_t::FLOAT);
}

std::shared_ptr<fe::Graph> new_graph() {
    auto g = std::make_shared<fe::Graph>();
    g->set_io_data_type(cudnn_frontend::DataType_t::BFLOAT16)
        .set_intermediate_data_type(cudnn_frontend::DataType_t::FLOAT)
        .set_compute_data_type(cudnn_frontend::DataType_t::FLOAT);
    return g;
}

using TensorPtr = std::shared_ptr<fe::Tensor_attributes>;

// What both graphs start from: the graph, the four ragged offset tensors and q, k, v.
struct RaggedInputs {
    std::shared_ptr<fe::Graph> g;
    TensorPtr off_q, off_kv, off_o, off_stats, q, k, v;
};

RaggedInputs ragged_inputs(const LtSdpaShape &s) {
    RaggedInputs r;
    r.g = new_graph();
    r.off_q = index_tensor(*r.g, "off_q", OFF_Q, s.segments + 1);
    r.off_kv = index_tensor(*r.g, "off_kv", OFF_KV, s.segments + 1);
    r.off_o = index_tensor(*r.g, "off_o", OFF_O, s.segments + 1);
    r.off_stats = index_tensor(*r.g, "off_stats", OFF_STATS, s.segments + 1);
    r.q = r.g->tensor(rows("q", Q, s, s.nh).set_ragged_offset(r.off_q));
    r.k = r.g->tensor(rows("k", K, s, s.nkv).set_ragged_offset(r.off_kv));
    r.v = r.g->tensor(rows("v", V, s, s.nkv).set_ragged_offset(r.off_kv));
    return r;
}

// Makes an operation's result a graph output laid out as `layout`, ragged by `off`.
void mark_output(const TensorPtr &t, Uid uid, const fe::Tensor_attributes &layout, const TensorPtr &off) {
    t->set_output(true).set_uid(uid).set_dim(layout.get_dim()).set_stride(layout.get_stride()).set_ragged_offset(off);
}

std::shared_ptr<fe::Graph> forward_graph(const LtSdpaShape &s) {
    auto r = ragged_inputs(s);
    auto &g = r.g;
    auto opts = fe::SDPA_attributes()
                    .set_name("sdpa")
                    .set_generate_stats(true)
                    .set_causal_mask(true)
                    .set_attn_scale(s.scale)
                    .set_padding_mask(true)
                    .set_seq_len_q(index_tensor(*g, "seq_q", SEQ_Q, s.segments))
                    .set_seq_len_kv(index_tensor(*g, "seq_kv", SEQ_KV, s.segments))
                    .set_max_total_seq_len_q(s.tokens)
                    .set_max_total_seq_len_kv(s.tokens);
    auto [o, stats] = g->sdpa(r.q, r.k, r.v, opts);
    mark_output(o, O, rows("o", O, s, s.nh), r.off_o);
    mark_output(stats, STATS, stats_rows(s), r.off_stats);
    stats->set_data_type(cudnn_frontend::DataType_t::FLOAT);
    return g;
}

std::shared_ptr<fe::Graph> backward_graph(const LtSdpaShape &s) {
    auto r = ragged_inputs(s);
    auto &g = r.g;
    auto o = g->tensor(rows("o", O, s, s.nh).set_ragged_offset(r.off_o));
    auto d_o = g->tensor(rows("d_o", DO, s, s.nh).set_ragged_offset(r.off_o));
    auto stats = g->tensor(stats_rows(s).set_ragged_offset(r.off_stats));
    auto opts = fe::SDPA_backward_attributes()
                    .set_name("sdpa_backward")
                    .set_causal_mask(true)
                    .set_attn_scale(s.scale)
                    .set_padding_mask(true)
                    .set_seq_len_q(index_tensor(*g, "seq_q", SEQ_Q, s.segments))
                    .set_seq_len_kv(index_tensor(*g, "seq_kv", SEQ_KV, s.segments))
                    .set_max_total_seq_len_q(s.tokens)
                    .set_max_total_seq_len_kv(s.tokens);
    auto [dq, dk, dv] = g->sdpa_backward(r.q, r.k, r.v, o, d_o, stats, opts);
    mark_output(dq, DQ, rows("dq", DQ, s, s.nh), r.off_q);
    mark_output(dk, DK, rows("dk", DK, s, s.nkv), r.off_kv);
    mark_output(dv, DV, rows("dv", DV, s, s.nkv), r.off_kv);
    return g;
}

#define TRY(what, call)                                                              \
    do {                                                                             \
        auto status_ = (call);                                                       \
        if (status_.is_bad()) return fail(std::string(what) + ": " + status_.get_message()); \
    } while (0)

// The graph for this shape, built on first use. Caller holds g_lock.
int graph_for(bool backward, const LtSdpaShape &s, std::shared_ptr<fe::Graph> &out) {
    Key key{backward, s.segments, s.max_len, s.tokens, s.nh, s.nkv, s.d, s.scale};
    auto it = g_graphs.find(key);
    if (it != g_graphs.end()) {
        out = it->second;
        return 0;
    }
    if (g_handle == nullptr) return fail("cuDNN is not loaded");
    std::shared_ptr<fe::Graph> g;
    try {
        g = backward ? backward_graph(s) : forward_graph(s);
    } catch (const std::exception &e) {
        return fail(std::string("describing the attention graph: ") + e.what());
    }
    TRY("validating the attention graph", g->validate());
    TRY("building the operation graph", g->build_operation_graph(g_handle));
    TRY("choosing an engine", g->create_execution_plans({cudnn_frontend::HeurMode_t::A}));
    TRY("checking support", g->check_support(g_handle));
    TRY("building the plan", g->build_plans(g_handle));
    // Shapes come in few kinds per run (one per packing pattern); bound the cache anyway.
    if (g_graphs.size() >= 256) g_graphs.clear();
    g_graphs.emplace(key, g);
    out = g;
    return 0;
}

}  // namespace

extern "C" {

const char *lt_cudnn_last_error() { return g_error.c_str(); }

// Loads cuDNN 9 (`lib`, or "libcudnn.so.9" from the loader's path when null) and creates a
// handle on the current device. 0 on success; on failure see lt_cudnn_last_error().
int lt_cudnn_load(const char *lib) {
    std::lock_guard<std::mutex> guard(g_lock);
    if (g_handle != nullptr) return 0;
    const char *name = lib ? lib : "libcudnn.so.9";
    if (cudnn_frontend::cudnn_dlhandle == nullptr) {
        cudnn_frontend::cudnn_dlhandle = dlopen(name, RTLD_NOW | RTLD_GLOBAL);
        if (cudnn_frontend::cudnn_dlhandle == nullptr) {
            const char *e = dlerror();
            return fail(std::string("cannot load ") + name + ": " + (e ? e : "unknown error"));
        }
    }
    try {
        auto st = cudnn_frontend::detail::create_handle(&g_handle);
        if (st != CUDNN_STATUS_SUCCESS) {
            g_handle = nullptr;
            return fail("cudnnCreate failed with status " + std::to_string(static_cast<int>(st)));
        }
    } catch (const std::exception &e) {
        g_handle = nullptr;
        return fail(std::string("cudnnCreate: ") + e.what());
    }
    return 0;
}

// cuDNN's version as an integer (9.19.0 -> 91900), 0 when not loaded.
int64_t lt_cudnn_version() {
    std::lock_guard<std::mutex> guard(g_lock);
    if (g_handle == nullptr) return 0;
    return cudnn_frontend::detail::get_backend_version();
}

// Workspace bytes the forward (backward = 0) or backward graph of this shape needs; builds
// and caches the graph. -1 on failure.
int64_t lt_sdpa_workspace(int backward, const LtSdpaShape *s) {
    std::lock_guard<std::mutex> guard(g_lock);
    std::shared_ptr<fe::Graph> g;
    if (graph_for(backward != 0, *s, g) != 0) return -1;
    return g->get_workspace_size();
}

// Runs the forward (backward = 0: q,k,v -> o, stats) or backward (q,k,v,o,d_o,stats ->
// dq,dk,dv) on `stream`. 0 on success.
int lt_sdpa_run(int backward, const LtSdpaShape *s, const LtSdpaPtrs *p, void *stream) {
    std::lock_guard<std::mutex> guard(g_lock);
    std::shared_ptr<fe::Graph> g;
    if (graph_for(backward != 0, *s, g) != 0) return -1;
    if (cudnn_frontend::detail::set_stream(g_handle, static_cast<cudaStream_t>(stream)) != CUDNN_STATUS_SUCCESS)
        return fail("cudnnSetStream failed");
    auto c = [](const void *ptr) { return const_cast<void *>(ptr); };
    std::unordered_map<int64_t, void *> pack{
        {Q, c(p->q)},           {K, c(p->k)},           {V, c(p->v)},         {O, p->o},
        {STATS, p->stats},      {SEQ_Q, c(p->seq_len)}, {SEQ_KV, c(p->seq_len)}, {OFF_Q, c(p->off_q)},
        {OFF_KV, c(p->off_kv)}, {OFF_O, c(p->off_q)},   {OFF_STATS, c(p->off_stats)},
    };
    if (backward) {
        pack.emplace(DO, c(p->d_o));
        pack.emplace(DQ, p->dq);
        pack.emplace(DK, p->dk);
        pack.emplace(DV, p->dv);
    }
    TRY("executing attention", g->execute(g_handle, pack, p->workspace));
    return 0;
}

}  // extern "C"
