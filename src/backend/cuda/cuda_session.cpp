// CudaSession: the forward pass of the llama block on the CUDA ops, with the semantics of the CPU
// Session (src/runtime/session.cpp): rows carry their original positions; at the start of pruning
// layer plan.layers[s] the alive rows are scored, the top ceil(ratio·alive) (always counting the
// last row and positions < keep_first) are gathered, and every later layer, and its KV cache, holds
// those rows only. Every row count is known on the host before the layer loop, so the loop queues
// work on the one stream without waiting for the device; the call ends with the logits copy.
// Decode steps (one row, head sizes of the split decode attention) run as one CUDA graph: the values
// that change from step to step (token id, position, each layer's cache row and length) are read
// by the kernels from small device buffers, uploaded before the launch, so one captured graph
// serves every step until a layer's split count or a buffer address changes; then the step is
// captured again and the graph updated in place (cudaGraphExecUpdate), or instantiated anew.
// SDTP_CUDA_GRAPHS=0 in the environment queues the kernels one by one instead.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

#include <cuda_runtime.h>

#include "backend/cuda/cuda_model.h"
#include "backend/cuda/model_ops.h"
#include "backend/cuda/ops.h"
#include "model/llama_block.h"
#include "sdtp/error.h"

namespace sdtp::cuda {

namespace {

// As the CPU session counts (session.cpp): projections, and causal attention where new row i sees
// kv_before + i + 1 keys at 2·head_dim FLOPs each for QK^T and for PV, per head.
double layer_flops(const ModelConfig& c, int64_t kv_before, int64_t rows) {
  const double pairs = static_cast<double>(rows) * kv_before + static_cast<double>(rows) * (rows + 1) / 2.0;
  return block_matmul_flops_per_row(c) * static_cast<double>(rows) + 4.0 * c.head_dim * c.n_head * pairs;
}

// select_rows' count (prune/selector.cpp): ceil(ratio·n), at least 1, at most n.
int64_t keep_count(float ratio, int64_t n) {
  const double want = std::ceil(static_cast<double>(ratio) * static_cast<double>(n) - 1e-4);
  return std::min<int64_t>(n, std::max<int64_t>(1, static_cast<int64_t>(want)));
}

std::string gib(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f GiB", bytes / (1024.0 * 1024.0 * 1024.0));
  return buf;
}

void check_rt(cudaError_t e, const char* op, const char* call) {
  if (e != cudaSuccess)
    throw CudaError(std::string("cuda: ") + op + ": " + call + " failed: " + cudaGetErrorName(e) + " (" +
                    cudaGetErrorString(e) + ")");
}

void copy_async(void* dst, const void* src, size_t bytes, Context& ctx, const char* what) {
  if (bytes == 0) return;
  check_rt(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, ctx.stream()), what, "cudaMemcpyAsync");
}

// With SDTP_CUDA_PROFILE=1 in the environment, events are recorded between the op groups of each
// forward pass and the device time of each group is printed to stderr after the call (the
// events add no host synchronisation inside the layer loop).
class OpProfile {
 public:
  OpProfile() {
    const char* env = std::getenv("SDTP_CUDA_PROFILE");
    on_ = env && *env && std::string(env) != "0";
  }
  ~OpProfile() {
    for (cudaEvent_t e : pool_) cudaEventDestroy(e);
  }
  bool on() const { return on_; }
  void begin(Context& ctx) {
    if (!on_) return;
    used_ = 0;
    groups_.clear();
    record(ctx);
  }
  // The work queued since the last mark belongs to `group`.
  void mark(Context& ctx, const char* group) {
    if (!on_) return;
    groups_.push_back(group);
    record(ctx);
  }
  void report(int64_t n_tokens) {
    if (!on_ || used_ < 2) return;
    check_rt(cudaEventSynchronize(pool_[used_ - 1]), "profile", "cudaEventSynchronize");
    std::vector<std::pair<std::string, double>> total;
    double all = 0;
    for (size_t i = 0; i + 1 < used_; ++i) {
      float ms = 0;
      check_rt(cudaEventElapsedTime(&ms, pool_[i], pool_[i + 1]), "profile", "cudaEventElapsedTime");
      auto it = std::find_if(total.begin(), total.end(), [&](const auto& t) { return t.first == groups_[i]; });
      if (it == total.end()) total.emplace_back(groups_[i], ms);
      else it->second += ms;
      all += ms;
    }
    std::fprintf(stderr, "[cuda-profile] %lld tokens, %.2f ms on the device:", static_cast<long long>(n_tokens), all);
    for (const auto& [name, ms] : total) std::fprintf(stderr, " %s %.2f (%.0f%%);", name.c_str(), ms, 100 * ms / all);
    std::fprintf(stderr, "\n");
  }

 private:
  void record(Context& ctx) {
    if (used_ == pool_.size()) {
      cudaEvent_t e;
      check_rt(cudaEventCreate(&e), "profile", "cudaEventCreate");
      pool_.push_back(e);
    }
    check_rt(cudaEventRecord(pool_[used_++], ctx.stream()), "profile", "cudaEventRecord");
  }
  bool on_ = false;
  std::vector<cudaEvent_t> pool_;
  size_t used_ = 0;
  std::vector<const char*> groups_;
};

constexpr bool kGraphsDefault = true;  // decode steps through CUDA graphs unless SDTP_CUDA_GRAPHS=0

struct DeviceStage {  // one SDTP prediction module on the device
  int layer = 0;
  int n_hidden = 0;
  DeviceArray<bf16> w1, b1;
  DeviceArray<float> w2;
  float b2 = 0.0f;
};

}  // namespace

struct CudaSession::Impl {
  std::shared_ptr<const CudaModel> model_ref;
  const CudaModel::Impl& m;
  const ModelConfig& c;
  Context& ctx;
  int n_ctx = 0;
  int n_past = 0;
  int64_t q_dim = 0, kv_dim = 0;

  // KV cache: [K of every layer][V of every layer][positions of every layer], n_ctx rows each.
  DeviceBuffer kv;
  std::vector<int64_t> kv_n;  // entries held per layer

  PrunePlan plan;
  std::vector<DeviceStage> stages;  // per plan stage, for "sdtp"
  DeviceArray<float> ones;          // weight of the predictor's parameter-free rmsnorm
  std::mt19937_64 rng;              // "random": the CPU RandomSelector's draws, in the same order
  std::vector<float> rand_host;

  // Activations, sized for cap rows.
  int64_t cap = 0;
  DeviceArray<bf16> x, x_alt, xn, qkv, q, att, gu, act, h1;
  DeviceArray<int32_t> ids, pos, pos_alt, idx, stage_pos;
  DeviceArray<float> scores, rand_scores, probs, logits;
  DeviceArray<float> decode_scratch;
  std::vector<float> host_logits;
  ForwardStats stats;
  OpProfile prof;
  int attn_variant = 0;  // $SDTP_CUDA_ATTN_VARIANT: the flash kernel's shape (ops.h), 0 = default
  bool graphs = kGraphsDefault;  // $SDTP_CUDA_GRAPHS: decode steps through a CUDA graph
  cudaGraphExec_t graph_exec = nullptr;
  std::vector<uintptr_t> graph_key;  // what graph_exec was captured for (addresses, split counts)
  DeviceArray<int32_t> step_rows;    // per decode step: [cache row of layer l][cache length of layer l]
  bool graphed = false;              // block() is being captured for a decode graph

  Impl(std::shared_ptr<const CudaModel> model, const CudaSessionOptions& o)
      : model_ref(std::move(model)), m(model_ref->impl()), c(m.config), ctx(*m.ctx) {
    if (o.n_ctx < 0) throw UsageError("context size must be positive, got " + std::to_string(o.n_ctx));
    n_ctx = o.n_ctx > 0 ? o.n_ctx : std::min(c.n_ctx_train > 0 ? c.n_ctx_train : 8192, 8192);
    q_dim = int64_t(c.n_head) * c.head_dim;
    kv_dim = int64_t(c.n_head_kv) * c.head_dim;
    allocate_kv();
    if (attention_decode_supported(c.head_dim))
      decode_scratch = DeviceArray<float>(static_cast<size_t>(attention_decode_scratch(c.n_head, c.head_dim)),
                                          "decode attention scratch");
    set_prune(o.prune);
    if (const char* v = std::getenv("SDTP_CUDA_ATTN_VARIANT")) attn_variant = std::atoi(v);
    if (const char* v = std::getenv("SDTP_CUDA_GRAPHS"); v && *v) graphs = std::string(v) != "0";
  }
  ~Impl() {
    if (graph_exec) cudaGraphExecDestroy(graph_exec);
  }

  bool decode_graph_usable() const {
    const bool flash_forced = attn_variant >= 1 && attn_variant <= kAttentionVariants;
    return graphs && attention_decode_supported(c.head_dim) && !flash_forced && !prof.on() && !ctx.sync_each_op();
  }

  // Queues one decode step (ids, pos and step_rows on the device) from a graph: captured when
  // graph_key differs from this step's, else launched as it is. Host state (kv_n) is left as it was.
  void decode_graph_step() {
    const int L = c.n_layer;
    std::vector<int32_t> rows(static_cast<size_t>(2 * L));
    for (int l = 0; l < L; ++l) {
      rows[l] = static_cast<int32_t>(kv_n[l]);
      rows[L + l] = static_cast<int32_t>(kv_n[l] + 1);
    }
    if (step_rows.size() != rows.size()) step_rows = DeviceArray<int32_t>(rows.size(), "decode step rows");
    copy_to_device(step_rows.data(), rows.data(), sizeof(int32_t) * rows.size(), "decode step rows");
    std::vector<uintptr_t> key;
    for (const void* p : {static_cast<const void*>(x.data()), static_cast<const void*>(xn.data()),
                          static_cast<const void*>(qkv.data()), static_cast<const void*>(q.data()),
                          static_cast<const void*>(att.data()), static_cast<const void*>(gu.data()),
                          static_cast<const void*>(act.data()), static_cast<const void*>(ids.data()),
                          static_cast<const void*>(pos.data()), static_cast<const void*>(logits.data()),
                          static_cast<const void*>(kv.data()), static_cast<const void*>(step_rows.data()),
                          static_cast<const void*>(decode_scratch.data())})
      key.push_back(reinterpret_cast<uintptr_t>(p));
    for (int l = 0; l < L; ++l) key.push_back(static_cast<uintptr_t>(attention_decode_splits(ctx, kv_n[l] + 1, c.n_head)));
    cudaStream_t s = ctx.stream();
    if (!graph_exec || key != graph_key) {
      graph_key.clear();
      const std::vector<int64_t> saved = kv_n;
      check_rt(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed), "decode graph", "cudaStreamBeginCapture");
      cudaGraph_t g = nullptr;
      graphed = true;
      try {
        embedding(ctx, m.tok_embd.data(), c.n_vocab, c.n_embd, ids.data(), 1, x.data());
        for (int l = 0; l < L; ++l) block(l, 1, 0);
        rmsnorm(ctx, x.data(), m.output_norm.data(), 1, c.n_embd, c.rms_eps, xn.data());
        matmul_f32(ctx, xn.data(), 1, c.n_embd, m.lm_head(), c.n_vocab, nullptr, logits.data());
      } catch (...) {
        graphed = false;
        kv_n = saved;
        cudaStreamEndCapture(s, &g);
        if (g) cudaGraphDestroy(g);
        (void)cudaGetLastError();
        throw;
      }
      graphed = false;
      kv_n = saved;
      check_rt(cudaStreamEndCapture(s, &g), "decode graph", "cudaStreamEndCapture");
      bool updated = false;
      if (graph_exec) {
        cudaGraphExecUpdateResultInfo info{};
        updated = cudaGraphExecUpdate(graph_exec, g, &info) == cudaSuccess;
        if (!updated) {
          (void)cudaGetLastError();
          cudaGraphExecDestroy(graph_exec);
          graph_exec = nullptr;
        }
      }
      if (!updated) {
        const cudaError_t e = cudaGraphInstantiate(&graph_exec, g, 0);
        if (e != cudaSuccess) {
          graph_exec = nullptr;
          cudaGraphDestroy(g);
          check_rt(e, "decode graph", "cudaGraphInstantiate");
        }
      }
      cudaGraphDestroy(g);
      graph_key = std::move(key);
    }
    check_rt(cudaGraphLaunch(graph_exec, s), "decode graph", "cudaGraphLaunch");
  }

  bf16* k_cache(int l) const { return static_cast<bf16*>(kv.data()) + int64_t(l) * n_ctx * kv_dim; }
  bf16* v_cache(int l) const { return k_cache(c.n_layer) + int64_t(l) * n_ctx * kv_dim; }
  int32_t* pos_cache(int l) const {
    return reinterpret_cast<int32_t*>(k_cache(2 * c.n_layer)) + int64_t(l) * n_ctx;
  }
  size_t bytes_per_entry() const { return 2 * sizeof(bf16) * static_cast<size_t>(kv_dim) + sizeof(int32_t); }

  void allocate_kv() {
    const size_t bytes = static_cast<size_t>(c.n_layer) * static_cast<size_t>(n_ctx) * bytes_per_entry();
    size_t free_b = 0, total_b = 0;
    check_rt(cudaMemGetInfo(&free_b, &total_b), "KV cache", "cudaMemGetInfo");
    const auto fail = [&]() {
      DeviceOutOfMemoryError e("cuda: KV cache for " + std::to_string(n_ctx) + " tokens needs " +
                               gib(static_cast<double>(bytes)) + ", " + gib(static_cast<double>(free_b)) +
                               " free of " + gib(static_cast<double>(total_b)) + " on the device (" +
                               std::to_string(c.n_layer) + " layers x " + std::to_string(bytes_per_entry()) +
                               " bytes per token; use a smaller context)");
      e.bytes_requested = bytes;
      return e;
    };
    if (bytes > free_b) throw fail();
    try {
      kv = DeviceBuffer(bytes, "KV cache");
    } catch (const DeviceOutOfMemoryError&) {
      throw fail();
    }
    kv_n.assign(static_cast<size_t>(c.n_layer), 0);
  }

  void set_prune(const PrunePlan& p) {
    p.validate(c);
    std::vector<DeviceStage> new_stages;
    if (p.enabled() && p.method == "saliency")
      throw UnsupportedError("pruning method 'saliency' is not available on the GPU (it runs a backward pass on the CPU)");
    if (p.enabled() && p.method == "sdtp") {
      if (!p.predictor) throw UsageError("pruning method 'sdtp' needs a predictor (--predictor FILE)");
      const Predictor& pr = *p.predictor;
      if (m.identity && !pr.model.arch.empty() && !pr.model.fingerprint.empty())
        pr.model.check_matches(*m.identity, "the predictor");
      pr.check_plan(p);
      if (pr.n_embd != c.n_embd)
        throw UsageError("the predictor expects hidden states of " + std::to_string(pr.n_embd) + " values, the model has " +
                         std::to_string(c.n_embd));
      for (int layer : p.layers) {
        const auto it = std::find_if(pr.stages.begin(), pr.stages.end(),
                                     [layer](const PredictorStage& s) { return s.layer == layer; });
        const PredictorStage& s = *it;  // check_plan found it
        const size_t h = static_cast<size_t>(pr.n_hidden);
        if (s.w1.size() != h * static_cast<size_t>(c.n_embd) || s.b1.size() != h || s.w2.size() != h)
          throw UsageError("the predictor's module for layer " + std::to_string(layer) + " has the wrong shape");
        DeviceStage ds;
        ds.layer = layer;
        ds.n_hidden = pr.n_hidden;
        ds.w1 = upload(to_bf16(s.w1), "predictor fc1");
        ds.b1 = upload(to_bf16(s.b1), "predictor fc1 bias");
        ds.w2 = upload(s.w2, "predictor fc2");
        ds.b2 = s.b2;
        new_stages.push_back(std::move(ds));
      }
      if (!ones.size()) {
        ones = DeviceArray<float>(static_cast<size_t>(c.n_embd), "ones");
        fill_value(ctx, ones.data(), c.n_embd, 1.0f);
      }
    }
    plan = p;
    stages = std::move(new_stages);
    rng.seed(p.seed);
    // Buffers whose size depends on the plan are made again on the next prefill.
    cap = 0;
  }

  // Activation buffers for up to `rows` rows (grown, never shrunk; freed before reallocating).
  void ensure(int64_t rows) {
    if (rows <= cap) return;
    for (auto* a : {&x, &x_alt, &xn, &qkv, &q, &att, &gu, &act, &h1}) *a = DeviceArray<bf16>();
    for (auto* a : {&ids, &pos, &pos_alt, &idx, &stage_pos}) *a = DeviceArray<int32_t>();
    for (auto* a : {&scores, &rand_scores, &probs}) *a = DeviceArray<float>();
    const auto n = static_cast<size_t>(rows);
    const std::string what = "activations for " + std::to_string(rows) + " rows";
    const auto d = static_cast<size_t>(c.n_embd), ff = static_cast<size_t>(c.n_ff);
    x = DeviceArray<bf16>(n * d, what);
    x_alt = DeviceArray<bf16>(n * d, what);
    xn = DeviceArray<bf16>(n * d, what);
    qkv = DeviceArray<bf16>(n * static_cast<size_t>(q_dim + 2 * kv_dim), what);
    q = DeviceArray<bf16>(n * static_cast<size_t>(q_dim), what);
    att = DeviceArray<bf16>(n * static_cast<size_t>(q_dim), what);
    gu = DeviceArray<bf16>(n * 2 * ff, what);
    act = DeviceArray<bf16>(n * ff, what);
    ids = DeviceArray<int32_t>(n, what);
    pos = DeviceArray<int32_t>(n, what);
    pos_alt = DeviceArray<int32_t>(n, what);
    if (plan.enabled()) {
      const size_t n_stages = plan.layers.size();
      idx = DeviceArray<int32_t>(n, what);
      stage_pos = DeviceArray<int32_t>(n * n_stages, what);
      scores = DeviceArray<float>(n, what);
      if (plan.method == "sdtp") {
        int hmax = 1;
        for (const DeviceStage& s : stages) hmax = std::max(hmax, s.n_hidden);
        h1 = DeviceArray<bf16>(n * static_cast<size_t>(hmax), what);
      }
      if (plan.method == "random") rand_scores = DeviceArray<float>(n * n_stages, what);
      if (plan.method == "attn") probs = DeviceArray<float>(static_cast<size_t>(c.n_head) * n_ctx, what);
    }
    if (!logits.size()) logits = DeviceArray<float>(static_cast<size_t>(c.n_vocab), "logits");
    cap = rows;
  }

  // One row (a decode step; or a prefill pruned down to its last row) at position last_pos: split
  // over the cache. More rows: the wgmma kernel on Hopper for head_dim 128, else the mma.sync flash
  // kernel (head_dim 64/128), else the generic one. $SDTP_CUDA_ATTN_VARIANT picks a kernel for
  // measurements: 1-4 the flash kernel's shapes (for every row count), 10-12 the wgmma kernel's.
  void attention_op(int l, int64_t rows, int64_t n_kv, int32_t last_pos) {
    const bool flash_forced = attn_variant >= 1 && attn_variant <= kAttentionVariants;
    if (rows == 1 && !flash_forced && attention_decode_supported(c.head_dim)) {
      // In a decode graph the position and this layer's cache length come from the device.
      attention_decode(ctx, q.data(), last_pos, k_cache(l), v_cache(l), pos_cache(l), n_kv, c.n_head, c.n_head_kv,
                       c.head_dim, att.data(), decode_scratch.data(), graphed ? pos.data() : nullptr,
                       graphed ? step_rows.data() + c.n_layer + l : nullptr);
    } else if (!flash_forced && attention_wgmma_supported(c.head_dim)) {
      attention_wgmma(ctx, q.data(), pos.data(), rows, k_cache(l), v_cache(l), pos_cache(l), n_kv, c.n_head,
                      c.n_head_kv, c.head_dim, att.data(), attn_variant >= 10 ? attn_variant - 10 : 0);
    } else if (c.head_dim == 64 || c.head_dim == 128) {
      attention(ctx, q.data(), pos.data(), rows, k_cache(l), v_cache(l), pos_cache(l), n_kv, c.n_head, c.n_head_kv,
                c.head_dim, att.data(), flash_forced ? attn_variant : 0);
    } else {
      attention_generic(ctx, q.data(), pos.data(), rows, k_cache(l), v_cache(l), pos_cache(l), n_kv, c.n_head,
                        c.n_head_kv, c.head_dim, att.data());
    }
  }

  // Block l on rows x [rows x n_embd] at positions pos (the last one last_pos), appending their
  // K/V to layer l's cache.
  void block(int l, int64_t rows, int32_t last_pos) {
    const DeviceLayer& w = m.layers[l];
    const int64_t d = c.n_embd, kv_before = kv_n[l];
    rmsnorm(ctx, x.data(), w.attn_norm.data(), rows, d, c.rms_eps, xn.data());
    prof.mark(ctx, "norm");
    matmul(ctx, xn.data(), rows, d, w.wqkv.data(), q_dim + 2 * kv_dim, w.bqkv.size() ? w.bqkv.data() : nullptr,
           qkv.data());
    prof.mark(ctx, "qkv");
    if (graphed) {  // the cache row comes from the device (step_rows)
      qkv_rope_append(ctx, qkv.data(), c.n_head, c.n_head_kv, c.head_dim, pos.data(), m.inv_freq.data(), q.data(),
                      k_cache(l), v_cache(l), pos_cache(l), step_rows.data() + l);
    } else {
      qkv_rope_split(ctx, qkv.data(), rows, c.n_head, c.n_head_kv, c.head_dim, pos.data(), m.inv_freq.data(),
                     q.data(), k_cache(l) + kv_before * kv_dim, v_cache(l) + kv_before * kv_dim);
      copy_async(pos_cache(l) + kv_before, pos.data(), sizeof(int32_t) * rows, ctx, "KV cache positions");
    }
    kv_n[l] = kv_before + rows;
    prof.mark(ctx, "rope+cache");
    attention_op(l, rows, kv_n[l], last_pos);
    prof.mark(ctx, "attention");
    matmul_residual(ctx, att.data(), rows, q_dim, w.wo.data(), d, x.data());
    prof.mark(ctx, "wo");
    rmsnorm(ctx, x.data(), w.ffn_norm.data(), rows, d, c.rms_eps, xn.data());
    prof.mark(ctx, "norm");
    matmul(ctx, xn.data(), rows, d, w.wgu.data(), 2 * int64_t(c.n_ff), nullptr, gu.data());
    prof.mark(ctx, "gate|up");
    swiglu_fused(ctx, gu.data(), rows, c.n_ff, act.data());
    prof.mark(ctx, "swiglu");
    matmul_residual(ctx, act.data(), rows, c.n_ff, w.wdown.data(), d, x.data());
    prof.mark(ctx, "down");
  }

  // Scores the `alive` rows entering pruning layer plan.layers[s], keeps `kept` of them.
  void prune_rows(size_t s, int64_t alive, int64_t kept) {
    const int64_t d = c.n_embd;
    float* sc = scores.data();
    if (plan.method == "sdtp") {
      const DeviceStage& st = stages[s];
      // score = fc2(GELU(fc1(h / rms(h)))) (include/sdtp/predictor.h), eps 1e-6.
      rmsnorm(ctx, x.data(), ones.data(), alive, d, 1e-6f, xn.data());
      matmul(ctx, xn.data(), alive, d, st.w1.data(), st.n_hidden, st.b1.data(), h1.data());
      gelu_dot(ctx, h1.data(), alive, st.n_hidden, st.w2.data(), st.b2, sc);
      force_rows(ctx, sc, alive, pos.data(), plan.keep_first);
    } else {
      if (plan.method == "random") sc = rand_scores.data() + static_cast<int64_t>(s) * cap;
      // "attn": scores were written after the layer before this one.
      force_rows(ctx, sc, alive, pos.data(), plan.keep_first);
    }
    top_k(ctx, sc, alive, kept, idx.data());
    gather_rows(ctx, x.data(), alive, d * int64_t(sizeof(bf16)), idx.data(), kept, x_alt.data());
    gather_rows(ctx, pos.data(), alive, int64_t(sizeof(int32_t)), idx.data(), kept, pos_alt.data());
    std::swap(x, x_alt);
    std::swap(pos, pos_alt);
    copy_async(stage_pos.data() + static_cast<int64_t>(s) * cap, pos.data(), sizeof(int32_t) * kept, ctx,
               "kept positions");
    prof.mark(ctx, "prune");
  }

  const std::vector<float>& forward(const std::vector<int32_t>& tokens, bool decoding) {
    const auto t0 = std::chrono::steady_clock::now();
    const int64_t n = static_cast<int64_t>(tokens.size());
    if (n == 0) throw UsageError("no tokens to process");
    if (n_past + n > n_ctx)
      throw UsageError("prompt of " + std::to_string(n_past + n) + " tokens does not fit in the context of " +
                       std::to_string(n_ctx) + " tokens");
    for (int32_t id : tokens)
      if (id < 0 || id >= c.n_vocab)
        throw UsageError("token id " + std::to_string(id) + " is outside the vocabulary (size " +
                         std::to_string(c.n_vocab) + ")");
    ensure(n);
    std::vector<int32_t> host_pos(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) host_pos[i] = n_past + static_cast<int32_t>(i);
    copy_to_device(ids.data(), tokens.data(), sizeof(int32_t) * n, "token ids");
    copy_to_device(pos.data(), host_pos.data(), sizeof(int32_t) * n, "positions");

    const bool prune = plan.enabled() && !decoding && n > 1;
    stats = ForwardStats{};
    stats.n_tokens = static_cast<int>(n);
    stats.dense_flops = dense_forward_flops(c, n_past, n, 1);

    // Rows kept at each stage, known here: the forced rows (positions < keep_first, and the last
    // row) survive every stage, so their count is fixed by the first.
    std::vector<int64_t> kept_at;
    if (prune) {
      const int64_t first = std::clamp<int64_t>(int64_t(plan.keep_first) - n_past, 0, n);
      const int64_t forced = first + (first < n ? 1 : 0);
      int64_t alive = n;
      for (float r : plan.keep_ratios) {
        alive = std::max(keep_count(r, alive), forced);
        kept_at.push_back(alive);
      }
      if (plan.method == "random") {
        // The CPU RandomSelector's draws, stage by stage, uploaded once.
        std::uniform_real_distribution<float> u(0.0f, 1.0f);
        rand_host.assign(static_cast<size_t>(cap * kept_at.size()), 0.0f);
        int64_t a = n;
        for (size_t s = 0; s < kept_at.size(); ++s) {
          for (int64_t i = 0; i < a; ++i) rand_host[s * cap + i] = u(rng);
          a = kept_at[s];
        }
        copy_to_device(rand_scores.data(), rand_host.data(), sizeof(float) * rand_host.size(), "random scores");
      }
    }

    const int64_t d = c.n_embd;
    int64_t alive = n;
    double flops = 0;
    const auto queue = [&]() {
      prof.begin(ctx);
      embedding(ctx, m.tok_embd.data(), c.n_vocab, d, ids.data(), n, x.data());
      prof.mark(ctx, "embedding");
      size_t stage = 0;
      for (int l = 0; l < c.n_layer; ++l) {
        if (prune && stage < plan.layers.size() && l == plan.layers[stage]) {
          prune_rows(stage, alive, kept_at[stage]);
          alive = kept_at[stage];
          ++stage;
        }
        const int64_t kv_before = kv_n[l];
        block(l, alive, n_past + static_cast<int32_t>(n - 1));
        if (prune && plan.method == "attn" && stage < plan.layers.size() && plan.layers[stage] == l + 1) {
          // The attention the last row (always kept, at position n_past + n - 1) pays over this
          // layer's cache, averaged over heads, for the rows alive now (the entries from kv_before on).
          attention_row_probs(ctx, q.data() + (alive - 1) * q_dim, n_past + static_cast<int32_t>(n - 1), k_cache(l),
                              pos_cache(l), kv_n[l], c.n_head, c.n_head_kv, c.head_dim, probs.data());
          mean_over_heads(ctx, probs.data(), c.n_head, kv_n[l], kv_before, alive, scores.data());
          prof.mark(ctx, "prune");
        }
        stats.alive_per_layer.push_back(static_cast<int>(alive));
        flops += layer_flops(c, kv_before, alive);
      }

      // Final norm and lm head on the last row.
      rmsnorm(ctx, x.data() + (alive - 1) * d, m.output_norm.data(), 1, d, c.rms_eps, xn.data());
      matmul_f32(ctx, xn.data(), 1, d, m.lm_head(), c.n_vocab, nullptr, logits.data());
      prof.mark(ctx, "lm head");
    };
    // Graphs for decode steps only; not under the profiler's events or SDTP_CUDA_SYNC's per-op
    // synchronisation, which a capture cannot hold.
    if (decoding && n == 1 && decode_graph_usable()) {
      decode_graph_step();
      for (int l = 0; l < c.n_layer; ++l) {
        stats.alive_per_layer.push_back(1);
        flops += layer_flops(c, kv_n[l], 1);
        ++kv_n[l];
      }
    } else {
      queue();
    }
    host_logits.resize(static_cast<size_t>(c.n_vocab));
    copy_to_host(host_logits.data(), logits.data(), sizeof(float) * c.n_vocab, "logits");
    ctx.synchronize("forward");
    for (size_t s = 0; s < kept_at.size(); ++s) {
      std::vector<int32_t> kp(static_cast<size_t>(kept_at[s]));
      copy_to_host(kp.data(), stage_pos.data() + static_cast<int64_t>(s) * cap, sizeof(int32_t) * kp.size(),
                   "kept positions");
      stats.kept_positions.push_back(std::move(kp));
    }
    prof.report(n);
    stats.flops = flops + 2.0 * c.n_embd * c.n_vocab;
    n_past += static_cast<int>(n);
    stats.elapsed_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    return host_logits;
  }
};

CudaSession::CudaSession(std::shared_ptr<const CudaModel> model, const CudaSessionOptions& options) {
  if (!model) throw UsageError("CudaSession: no model");
  impl_ = std::make_unique<Impl>(std::move(model), options);
}
CudaSession::~CudaSession() = default;

const std::vector<float>& CudaSession::prefill(const std::vector<int32_t>& ids) { return impl_->forward(ids, false); }
const std::vector<float>& CudaSession::decode(int32_t id) { return impl_->forward({id}, true); }
void CudaSession::set_prune(const PrunePlan& plan) { impl_->set_prune(plan); }
const PrunePlan& CudaSession::prune() const { return impl_->plan; }

void CudaSession::reset() {
  std::fill(impl_->kv_n.begin(), impl_->kv_n.end(), 0);
  impl_->n_past = 0;
}

int CudaSession::n_past() const { return impl_->n_past; }
int CudaSession::n_ctx() const { return impl_->n_ctx; }
size_t CudaSession::kv_bytes() const {
  size_t entries = 0;
  for (int64_t e : impl_->kv_n) entries += static_cast<size_t>(e);
  return entries * impl_->bytes_per_entry();
}

std::vector<int32_t> CudaSession::cached_positions(int layer) const {
  if (layer < 0 || layer >= impl_->c.n_layer) throw UsageError("layer " + std::to_string(layer) + " out of range");
  std::vector<int32_t> p(static_cast<size_t>(impl_->kv_n[layer]));
  if (!p.empty()) copy_to_host(p.data(), impl_->pos_cache(layer), sizeof(int32_t) * p.size(), "cached positions");
  return p;
}

const ForwardStats& CudaSession::last_stats() const { return impl_->stats; }
const ModelConfig& CudaSession::config() const { return impl_->c; }

}  // namespace sdtp::cuda
