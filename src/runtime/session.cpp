// Session: embeddings → blocks (with the KV cache) → final norm → lm head, on the CPU backend.
#include "sdtp/session.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>

#include "backend/cpu/ops.h"
#include "backend/cpu/q8.h"
#include "kv/kv_cache.h"
#include "model/llama_block.h"
#include "model/rope.h"
#include "prune/selector.h"
#include "sdtp/error.h"
#include "sdtp/predictor.h"

namespace sdtp {

namespace {

// FLOPs of one layer on `rows` new rows appended after kv_before cached ones: the projections, and
// causal attention where new row i sees kv_before + i + 1 keys at 2·head_dim FLOPs each for QK^T
// and for PV, per head.
double layer_flops(const ModelConfig& c, int64_t kv_before, int64_t rows) {
  const double pairs = static_cast<double>(rows) * kv_before + static_cast<double>(rows) * (rows + 1) / 2.0;
  return block_matmul_flops_per_row(c) * static_cast<double>(rows) + 4.0 * c.head_dim * c.n_head * pairs;
}

}  // namespace

struct Session::Impl {
  const Model& model;
  int n_ctx = 0;
  int n_threads = 0;
  int n_past = 0;
  std::vector<float> inv_freq;
  KVCache kv;
  std::vector<LayerQ8> q8_layers;  // 8-bit weights for decode, built on the first decode step
  cpu::QuantMatrix q8_lm_head;
  bool use_q8 = false;
  BlockScratch scratch;
  std::vector<float> x;       // hidden rows [n x n_embd]
  std::vector<int32_t> pos;   // their positions
  std::vector<float> logits;  // [rows x n_vocab]
  ForwardStats stats;
  PrunePlan plan;
  std::unique_ptr<TokenSelector> selector;
  std::vector<float> scores, last_attn;

  Impl(const Model& m, const SessionOptions& o) : model(m) {
    const ModelConfig& c = m.config;
    n_ctx = o.n_ctx > 0 ? o.n_ctx : std::min(c.n_ctx_train > 0 ? c.n_ctx_train : 8192, 8192);
    if (o.n_ctx < 0) throw UsageError("context size must be positive, got " + std::to_string(o.n_ctx));
    cpu::set_num_threads(o.n_threads);
    n_threads = cpu::num_threads();
    inv_freq = rope_inv_freq(c);
    kv = KVCache(c.n_layer, static_cast<int64_t>(c.n_head_kv) * c.head_dim);
    use_q8 = o.decode_q8;
    plan = o.prune;
    plan.validate(c);
    if (plan.method == "sdtp") {
      if (!plan.predictor) throw UsageError("pruning method 'sdtp' needs a predictor (--predictor FILE)");
      plan.predictor->model.check_matches(ModelIdentity::of(m), "the predictor");
      plan.predictor->check_plan(plan);
    }
    if (plan.enabled()) selector = make_selector(plan);
  }

  void build_q8() {
    const ModelConfig& c = model.config;
    q8_layers.reserve(c.n_layer);
    for (const LayerWeights& lw : model.weights.layers) q8_layers.push_back(quantize_layer_q8(c, lw));
    const Tensor& head = model.weights.lm_head();
    if (cpu::q8_supported(c.n_embd)) q8_lm_head = decode_matrix(head);
  }

  const std::vector<float>& forward(const std::vector<int32_t>& ids, bool all_logits, bool decoding) {
    const ModelConfig& c = model.config;
    const ModelWeights& w = model.weights;
    const auto t0 = std::chrono::steady_clock::now();
    const int64_t n = static_cast<int64_t>(ids.size());
    if (n == 0) throw UsageError("no tokens to process");
    if (n_past + n > n_ctx) {
      throw UsageError("prompt of " + std::to_string(n_past + n) + " tokens does not fit in the context of " +
                       std::to_string(n_ctx) + " tokens");
    }
    const int64_t d = c.n_embd;
    x.resize(static_cast<size_t>(n * d));
    pos.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      const int32_t id = ids[i];
      if (id < 0 || id >= c.n_vocab) {
        throw UsageError("token id " + std::to_string(id) + " is outside the vocabulary (size " +
                         std::to_string(c.n_vocab) + ")");
      }
      std::memcpy(x.data() + i * d, w.tok_embd.ptr() + static_cast<int64_t>(id) * d, sizeof(float) * d);
      pos[i] = n_past + static_cast<int32_t>(i);
    }

    const bool q8 = decoding && use_q8;
    if (q8 && q8_layers.empty()) build_q8();
    const bool prune = plan.enabled() && !decoding && n > 1;
    if (prune && all_logits) throw UsageError("all-position logits are not available with a pruning plan");
    if (prune) selector->begin_prefill(model, ids, n_past);
    stats = ForwardStats{};
    stats.n_tokens = static_cast<int>(n);
    stats.dense_flops = dense_forward_flops(c, n_past, n, all_logits ? n : 1);
    int64_t alive = n;
    size_t stage = 0;
    double flops = 0;
    for (int l = 0; l < c.n_layer; ++l) {
      if (prune && stage < plan.layers.size() && l == plan.layers[stage]) {
        alive = prune_rows(l, stage, alive);
        ++stage;
      }
      const bool record_attn = prune && stage < plan.layers.size() && plan.layers[stage] == l + 1 &&
                               selector->needs_last_attention();
      const int64_t kv_before = kv.layer(l).n;
      llama_block(c, w.layers[l], inv_freq, x.data(), pos.data(), alive, kv.layer(l), scratch,
                  q8 ? &q8_layers[l] : nullptr, record_attn ? &last_attn : nullptr);
      stats.alive_per_layer.push_back(static_cast<int>(alive));
      flops += layer_flops(c, kv_before, alive);
    }
    const int64_t n_out = alive;

    // Final norm and lm head on the rows whose logits were asked for.
    const int64_t rows = all_logits ? n_out : 1;
    const float* first = x.data() + (n_out - rows) * d;
    std::vector<float>& normed = scratch.norm;
    cpu::rmsnorm(first, w.output_norm.ptr(), rows, d, c.rms_eps, normed.data());
    logits.resize(static_cast<size_t>(rows * c.n_vocab));
    if (q8 && !q8_lm_head.empty()) {
      cpu::matmul_quant(normed.data(), rows, q8_lm_head, nullptr, logits.data());
    } else {
      cpu::matmul(normed.data(), rows, d, w.lm_head().ptr(), c.n_vocab, nullptr, logits.data());
    }

    stats.flops = flops + 2.0 * static_cast<double>(rows) * c.n_embd * c.n_vocab;
    n_past += static_cast<int>(n);
    stats.elapsed_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    return logits;
  }

  // Scores the `alive` rows entering pruning layer l, keeps the top ones (with their positions),
  // compacting x and pos in place; returns the new row count.
  int64_t prune_rows(int l, size_t stage, int64_t alive) {
    const int64_t d = model.config.n_embd;
    SelectorInput in;
    in.stage = static_cast<int>(stage);
    in.layer = l;
    in.hidden = x.data();
    in.n = alive;
    in.d = d;
    in.positions = pos.data();
    if (selector->needs_last_attention()) {
      const LayerKV& prev = kv.layer(l - 1);
      in.last_attn = last_attn.data();
      in.kv_pos = prev.pos.data();
      in.n_kv = prev.n;
    }
    selector->score(in, scores);
    const std::vector<int64_t> keep = select_rows(scores, pos.data(), alive, plan.keep_ratios[stage], plan.keep_first);
    // keep is ascending and keep[j] >= j, so compacting front to back never overwrites a row still needed.
    for (size_t j = 0; j < keep.size(); ++j) {
      if (static_cast<int64_t>(j) == keep[j]) continue;
      std::memcpy(x.data() + j * d, x.data() + keep[j] * d, sizeof(float) * d);
      pos[j] = pos[keep[j]];
    }
    stats.kept_positions.emplace_back(pos.begin(), pos.begin() + static_cast<std::ptrdiff_t>(keep.size()));
    return static_cast<int64_t>(keep.size());
  }
};

Session::Session(const Model& model, const SessionOptions& options) : impl_(std::make_unique<Impl>(model, options)) {}
Session::~Session() = default;

const std::vector<float>& Session::prefill(const std::vector<int32_t>& ids, bool all_logits) {
  return impl_->forward(ids, all_logits, false);
}

const std::vector<float>& Session::decode(int32_t id) { return impl_->forward({id}, false, true); }

void Session::reset() {
  impl_->kv.clear();
  impl_->n_past = 0;
}

int Session::n_past() const { return impl_->n_past; }
int Session::n_ctx() const { return impl_->n_ctx; }
int Session::n_threads() const { return impl_->n_threads; }
size_t Session::kv_bytes() const { return impl_->kv.bytes(); }
std::vector<int32_t> Session::cached_positions(int layer) const {
  if (layer < 0 || layer >= impl_->kv.n_layer()) throw UsageError("layer " + std::to_string(layer) + " out of range");
  const LayerKV& l = impl_->kv.layer(layer);
  return std::vector<int32_t>(l.pos.begin(), l.pos.begin() + l.n);
}
const ForwardStats& Session::last_stats() const { return impl_->stats; }
const Model& Session::model() const { return impl_->model; }

double dense_forward_flops(const ModelConfig& c, int64_t n_past, int64_t n, int64_t n_logits) {
  return c.n_layer * layer_flops(c, n_past, n) + 2.0 * static_cast<double>(n_logits) * c.n_embd * c.n_vocab;
}

}  // namespace sdtp
