// Gradient saliency (see saliency.h): a checkpointed float32 forward of the model's own block
// (model/llama_block.h, run by the CPU backend), each block's activations recomputed by that same
// block with a BlockTrace, and the hand-written backward of the block (train/backward_ops.h).
//
// Choices where the paper (arXiv 2504.04514, method section: π̂ = (∂T(x)/∂x)·x, "T(x) is the output
// of the entire network") leaves room:
//  * T. A causal LM's "output" is a distribution per position; a scalar is needed. The pruned
//    prefill's job is the next-token distribution at the last position (the only logits it
//    returns, and the pruned tokens are gone for every later position), so the default T is the
//    log-probability the model gives to its own prediction there (kLastTokenLogProb). The raw top
//    logit and the mean teacher-forced log-likelihood over the prompt are offered for comparison.
//  * Reduction over the hidden dimension. "·" between the per-token gradient and hidden vectors is
//    read as their inner product, Σ_d g_d x_d (kSum, signed): it is also exactly the directional
//    derivative dT/dα of scaling the token's hidden state by (1+α), i.e. the first-order effect of
//    that token's state on T. kAbsSum is offered.
//  * x is the residual stream entering the pruning layer's block (what the predictor scores), of
//    the dense model (no earlier stage pruned).
#include "train/saliency.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <memory>
#include <numeric>
#include <string>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/ops.h"
#include "kv/kv_cache.h"
#include "model/llama_block.h"
#include "model/rope.h"
#include "sdtp/error.h"
#include "sdtp/train.h"
#include "train/backward_ops.h"

namespace sdtp {

namespace {

struct Dims {
  int64_t d, q_dim, kv_dim, ff;
  explicit Dims(const ModelConfig& c)
      : d(c.n_embd),
        q_dim(static_cast<int64_t>(c.n_head) * c.head_dim),
        kv_dim(static_cast<int64_t>(c.n_head_kv) * c.head_dim),
        ff(c.n_ff) {}
};

// The backward's buffers for one block (its activations come from the block's BlockTrace).
struct BackwardBuffers {
  std::vector<float> d_act, d_gate, d_up, d_norm, d_attn, dq, dk, dv;
  std::vector<float> w[7];  // scratch for blocks-only weights of the layer being run
  void ensure(const Dims& s, int64_t n) {
    const auto grow = [n](std::vector<float>& b, int64_t width) {
      if (static_cast<int64_t>(b.size()) < n * width) b.resize(static_cast<size_t>(n * width));
    };
    grow(d_act, s.ff), grow(d_gate, s.ff), grow(d_up, s.ff), grow(d_norm, s.d), grow(d_attn, s.q_dim);
    grow(dq, s.q_dim), grow(dk, s.kv_dim), grow(dv, s.kv_dim);
  }
};

// The model's blocks over one prompt of n tokens at positions 0..n-1, run by the CPU backend
// (float32, the reference) on a residual stream x [n x n_embd] held there. Every block call writes
// its K/V to rows [0, n) of one layer's cache and attends over them: the prompt's own keys only.
// The backend keeps the thread count in force (the saliency selector runs inside a Session, which
// may have set it).
class PromptBlocks {
 public:
  PromptBlocks(const Model& m, int64_t n)
      : c_(m.config),
        n_(n),
        be_(cpu::make_cpu_backend({.decode_q8 = false, .n_threads = cpu::num_threads()})),
        w_(be_->upload_model(m)),
        kv_(*be_, 1, m.config.n_head_kv, m.config.head_dim, n) {
    kv_.reserve(n);
    buf_.ensure(*be_, c_, n);
    x_ = be_->alloc(ElemType::f32, n, c_.n_embd, "saliency residual stream");
    pos_ = be_->alloc(ElemType::i32, n, 1, "saliency positions");
    std::vector<int32_t> pos(static_cast<size_t>(n));
    std::iota(pos.begin(), pos.end(), 0);
    be_->upload(pos_, pos.data(), ElemType::i32);
    be_->begin_forward(n, /*decode_step=*/false);
  }

  // x = the token embeddings of ids.
  void embed(const std::vector<int32_t>& ids) {
    const DeviceTensor t = be_->alloc(ElemType::i32, n_, 1, "saliency token ids");
    be_->upload(t, ids.data(), ElemType::i32);
    be_->embedding(*w_->tok_embd, t, x_);
  }
  void set(const float* x) { be_->upload(x_, x, ElemType::f32); }
  void get(float* x) const { be_->download(x, x_, ElemType::f32); }

  // x = block l (x), recording the block's activations into `trace` when not null.
  void block(int l, BlockTrace* trace) {
    // One layer's cache, empty before each block: every block attends to its own rows only.
    llama_block(*be_, c_, w_->layers[l], w_->inv_freq, x_, pos_, kv_.layer(0), buf_, nullptr, trace);
  }

 private:
  const ModelConfig& c_;
  int64_t n_;
  std::shared_ptr<Backend> be_;
  std::shared_ptr<const DeviceWeights> w_;
  KVCache kv_;
  BlockBuffers buf_;
  DeviceTensor x_, pos_;
};

// g: ∂T/∂(block output) on entry, ∂T/∂(block input) on return. `t` is llama_block's trace of the
// block on its input (x_in, x_mid, q and k after RoPE, v, gate | up). The residual adds pass g
// through unchanged and add each branch's part:
//   x_mid = x_in + Wo·attn(norm(x_in)),  x_out = x_mid + Wdown·swiglu(norm(x_mid)).
void block_backward(const ModelConfig& c, const LayerWeights& w, const std::vector<float>& inv_freq,
                    const BlockTrace& t, const int32_t* pos, int64_t n, BackwardBuffers& a, float* g) {
  const Dims s(c);
  // Blocks-only weights are dequantised for this layer into a.w (float32 only while it runs).
  const auto values = [&](const Tensor& t, size_t i) { return weight_values(t, a.w[i]); };
  // MLP branch; row r of gu is gate (n_ff floats) then up.
  train::linear_backward(g, n, s.d, values(w.w_down, 0), s.ff, a.d_act.data(), false);
#pragma omp parallel for if (n * s.ff > 65536)
  for (int64_t r = 0; r < n; ++r) {
    const float* gu = t.gu.data() + r * 2 * s.ff;
    train::swiglu_backward(gu, gu + s.ff, a.d_act.data() + r * s.ff, s.ff, a.d_gate.data() + r * s.ff,
                           a.d_up.data() + r * s.ff);
  }
  train::linear_backward(a.d_gate.data(), n, s.ff, values(w.w_gate, 1), s.d, a.d_norm.data(), false);
  train::linear_backward(a.d_up.data(), n, s.ff, values(w.w_up, 2), s.d, a.d_norm.data(), true);
  train::rmsnorm_backward_add(t.x_mid.data(), w.ffn_norm.ptr(), a.d_norm.data(), n, s.d, c.rms_eps, g);

  // Attention branch.
  train::linear_backward(g, n, s.d, values(w.wo, 3), s.q_dim, a.d_attn.data(), false);
  train::attention_backward(t.q.data(), t.k.data(), t.v.data(), a.d_attn.data(), pos, n, c.n_head, c.n_head_kv,
                            c.head_dim, a.dq.data(), a.dk.data(), a.dv.data());
  train::rope_backward(a.dq.data(), n, s.q_dim, c.n_head, c.head_dim, pos, inv_freq.data());
  train::rope_backward(a.dk.data(), n, s.kv_dim, c.n_head_kv, c.head_dim, pos, inv_freq.data());
  train::linear_backward(a.dq.data(), n, s.q_dim, values(w.wq, 4), s.d, a.d_norm.data(), false);
  train::linear_backward(a.dk.data(), n, s.kv_dim, values(w.wk, 5), s.d, a.d_norm.data(), true);
  train::linear_backward(a.dv.data(), n, s.kv_dim, values(w.wv, 6), s.d, a.d_norm.data(), true);
  train::rmsnorm_backward_add(t.x_in.data(), w.attn_norm.ptr(), a.d_norm.data(), n, s.d, c.rms_eps, g);
}

struct HeadResult {
  double objective = 0.0;
  int32_t predicted = -1;
};

// log Σ exp(z) over a row, in double.
double log_sum_exp(const float* z, int64_t count) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < count; ++i) mx = std::max(mx, z[i]);
  double sum = 0.0;
  for (int64_t i = 0; i < count; ++i) sum += std::exp(static_cast<double>(z[i]) - mx);
  return mx + std::log(sum);
}

// Final norm, lm head and objective on the last block's output x [n x n_embd]. When g is not
// null, writes ∂T/∂x into it ([n x n_embd]).
HeadResult head_forward_backward(const Model& m, const std::vector<int32_t>& ids, const float* x, int64_t n,
                                 SaliencyObjective obj, int32_t predicted, float* g) {
  const ModelConfig& c = m.config;
  const int64_t d = c.n_embd, vocab = c.n_vocab;
  std::vector<float> lm_scratch;  // the lm head dequantised when it holds only blocks
  const float* lm = weight_values(m.weights.lm_head(), lm_scratch);
  HeadResult r;
  if (g) std::fill(g, g + n * d, 0.0f);

  if (obj == SaliencyObjective::kLastTokenLogProb || obj == SaliencyObjective::kLastTokenLogit) {
    const float* xl = x + (n - 1) * d;
    std::vector<float> h(static_cast<size_t>(d)), z(static_cast<size_t>(vocab));
    cpu::rmsnorm(xl, m.weights.output_norm.ptr(), 1, d, c.rms_eps, h.data());
    cpu::matmul(h.data(), 1, d, lm, vocab, nullptr, z.data());
    r.predicted = predicted >= 0 ? predicted : static_cast<int32_t>(std::max_element(z.begin(), z.end()) - z.begin());
    const double lse = log_sum_exp(z.data(), vocab);
    const bool log_prob = obj == SaliencyObjective::kLastTokenLogProb;
    r.objective = log_prob ? z[r.predicted] - lse : z[r.predicted];
    if (!g) return r;
    // ∂T/∂z = onehot(a) − softmax(z) for the log-probability, onehot(a) for the logit.
    std::vector<float> dz(static_cast<size_t>(vocab), 0.0f), dh(static_cast<size_t>(d));
    // 1 − p_a as −expm1(log p_a): no cancellation when the model is confident (p_a → 1).
    if (log_prob) {
      for (int64_t i = 0; i < vocab; ++i) dz[i] = static_cast<float>(-std::exp(static_cast<double>(z[i]) - lse));
      dz[r.predicted] = static_cast<float>(-std::expm1(static_cast<double>(z[r.predicted]) - lse));
    } else {
      dz[r.predicted] = 1.0f;
    }
    train::linear_backward(dz.data(), 1, vocab, lm, d, dh.data(), false);
    train::rmsnorm_backward_add(xl, m.weights.output_norm.ptr(), dh.data(), 1, d, c.rms_eps, g + (n - 1) * d);
    return r;
  }

  // Mean teacher-forced log-likelihood: rows 0..n-2 predict ids[1..n-1]; row n-1 predicts nothing.
  // Logits in chunks of rows so memory stays chunk·n_vocab.
  const int64_t rows = n - 1;
  const double inv_rows = 1.0 / static_cast<double>(rows);
  constexpr int64_t kChunk = 128;
  std::vector<float> h, z, dh;
  double total = 0.0;
  for (int64_t r0 = 0; r0 < rows; r0 += kChunk) {
    const int64_t cr = std::min(kChunk, rows - r0);
    h.resize(static_cast<size_t>(cr * d));
    z.resize(static_cast<size_t>(cr * vocab));
    cpu::rmsnorm(x + r0 * d, m.weights.output_norm.ptr(), cr, d, c.rms_eps, h.data());
    cpu::matmul(h.data(), cr, d, lm, vocab, nullptr, z.data());
    double chunk_total = 0.0;
#pragma omp parallel for reduction(+ : chunk_total)
    for (int64_t i = 0; i < cr; ++i) {
      float* zi = z.data() + i * vocab;
      const int32_t target = ids[static_cast<size_t>(r0 + i + 1)];
      const double lse = log_sum_exp(zi, vocab);
      chunk_total += zi[target] - lse;
      if (g) {
        // ∂T/∂z_i = (onehot(target) − softmax(z_i)) / (n−1), written over the logits.
        const double target_logp = zi[target] - lse;
        for (int64_t j = 0; j < vocab; ++j) zi[j] = static_cast<float>(-std::exp(zi[j] - lse) * inv_rows);
        zi[target] = static_cast<float>(-std::expm1(target_logp) * inv_rows);
      }
    }
    total += chunk_total;
    if (!g) continue;
    dh.resize(static_cast<size_t>(cr * d));
    train::linear_backward(z.data(), cr, vocab, lm, d, dh.data(), false);
    train::rmsnorm_backward_add(x + r0 * d, m.weights.output_norm.ptr(), dh.data(), cr, d, c.rms_eps, g + r0 * d);
  }
  r.objective = total * inv_rows;
  return r;
}

void validate_prompt(const Model& m, const std::vector<int32_t>& ids, SaliencyObjective obj) {
  const ModelConfig& c = m.config;
  if (m.random_weights) {
    throw UsageError("token_saliency: model '" + m.path +
                     "' has random weights drawn on the device; the backward pass needs host weights (a model file)");
  }
  if (ids.empty()) throw UsageError("token_saliency: the prompt is empty");
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= c.n_vocab) {
      throw UsageError("token_saliency: token id " + std::to_string(ids[i]) + " at position " + std::to_string(i) +
                       " is outside the vocabulary [0, " + std::to_string(c.n_vocab) + ")");
    }
  }
  if (c.n_ctx_train > 0 && static_cast<int64_t>(ids.size()) > c.n_ctx_train) {
    throw UsageError("token_saliency: prompt of " + std::to_string(ids.size()) +
                     " tokens is longer than the model's training context (" + std::to_string(c.n_ctx_train) + ")");
  }
  if (obj == SaliencyObjective::kLmLogLikelihood && ids.size() < 2) {
    throw UsageError("token_saliency: the LM log-likelihood objective needs at least 2 tokens, got 1");
  }
}

}  // namespace

SaliencyResult token_saliency(const Model& m, const std::vector<int32_t>& ids, const std::vector<int>& layers,
                              const SaliencyOptions& options) {
  const auto t0 = std::chrono::steady_clock::now();
  const ModelConfig& c = m.config;
  const LayerWeights* lw = m.weights.layers.data();
  validate_prompt(m, ids, options.objective);
  if (layers.empty()) throw UsageError("token_saliency: no layers requested");

  for (int l : layers) {
    if (l < 0 || l >= c.n_layer) {
      throw UsageError("token_saliency: layer " + std::to_string(l) + " is out of range [0, " +
                       std::to_string(c.n_layer) + ")");
    }
  }
  SaliencyResult res;
  res.layers = layers;
  std::sort(res.layers.begin(), res.layers.end());
  res.layers.erase(std::unique(res.layers.begin(), res.layers.end()), res.layers.end());

  const Dims s(c);
  const int64_t n = static_cast<int64_t>(ids.size());
  const int lo = res.layers.front();
  const std::vector<float> inv_freq = rope_inv_freq(c);
  std::vector<int32_t> pos(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) pos[i] = static_cast<int32_t>(i);

  // Forward, keeping the input of every block from `lo` up.
  PromptBlocks blocks(m, n);
  blocks.embed(ids);
  std::vector<std::vector<float>> checkpoint(static_cast<size_t>(c.n_layer - lo));
  for (int l = 0; l < c.n_layer; ++l) {
    if (l >= lo) {
      checkpoint[l - lo].resize(static_cast<size_t>(n * s.d));
      blocks.get(checkpoint[l - lo].data());
    }
    blocks.block(l, nullptr);
  }
  std::vector<float> cur(static_cast<size_t>(n * s.d));
  blocks.get(cur.data());

  // Objective and its gradient w.r.t. the last block's output.
  std::vector<float> g(static_cast<size_t>(n * s.d));
  const HeadResult head = head_forward_backward(m, ids, cur.data(), n, options.objective, -1, g.data());
  res.objective = head.objective;
  res.predicted_token = head.predicted;
  cur = {};

  // Backward, block by block, recomputing each block's activations from its checkpoint.
  BackwardBuffers buf;
  buf.ensure(s, n);
  BlockTrace trace;
  res.per_token.assign(res.layers.size(), {});
  if (options.keep_gradients || options.keep_hidden) res.hidden.assign(res.layers.size(), {});
  if (options.keep_gradients) res.gradient.assign(res.layers.size(), {});
  size_t want = res.layers.size();  // index of the next requested layer going down, +1
  for (int l = c.n_layer - 1; l >= lo; --l) {
    const std::vector<float>& x_in = checkpoint[l - lo];
    blocks.set(x_in.data());
    blocks.block(l, &trace);
    block_backward(c, lw[l], inv_freq, trace, pos.data(), n, buf, g.data());
    if (want > 0 && res.layers[want - 1] == l) {
      --want;
      std::vector<float>& out = res.per_token[want];
      out.resize(static_cast<size_t>(n));
      const bool abs_sum = options.reduction == SaliencyReduction::kAbsSum;
#pragma omp parallel for if (n > 64)
      for (int64_t i = 0; i < n; ++i) {
        const float* gi = g.data() + i * s.d;
        const float* xi = x_in.data() + i * s.d;
        double acc = 0.0;
        for (int64_t j = 0; j < s.d; ++j) {
          const double p = static_cast<double>(gi[j]) * xi[j];
          acc += abs_sum ? std::fabs(p) : p;
        }
        out[i] = static_cast<float>(acc);
      }
      if (options.keep_gradients || options.keep_hidden) res.hidden[want] = x_in;
      if (options.keep_gradients) res.gradient[want] = g;
    }
    checkpoint[l - lo] = {};
  }
  res.elapsed_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return res;
}

SaliencyResult token_saliency(const Model& m, const std::vector<int32_t>& ids, const std::vector<int>& layers,
                              SaliencyObjective obj) {
  SaliencyOptions o;
  o.objective = obj;
  return token_saliency(m, ids, layers, o);
}

SaliencyOracle make_saliency_oracle(const Model& model) {
  return [&model](const std::vector<int32_t>& ids, const std::vector<int>& layers) {
    SaliencyResult r = token_saliency(model, ids, layers);
    // token_saliency's layers are ascending without duplicates: hand them back in the order asked.
    std::vector<std::vector<float>> per_layer;
    per_layer.reserve(layers.size());
    for (int l : layers) {
      const auto at = std::find(r.layers.begin(), r.layers.end(), l);
      per_layer.push_back(r.per_token[static_cast<size_t>(at - r.layers.begin())]);
    }
    return per_layer;
  };
}

double saliency_objective_from_layer(const Model& m, const std::vector<int32_t>& ids, int layer,
                                     const std::vector<float>& hidden, SaliencyObjective obj,
                                     int32_t predicted_token) {
  const ModelConfig& c = m.config;
  validate_prompt(m, ids, obj);
  if (layer < 0 || layer >= c.n_layer) {
    throw UsageError("saliency_objective_from_layer: layer " + std::to_string(layer) + " is out of range [0, " +
                     std::to_string(c.n_layer) + ")");
  }
  const Dims s(c);
  const int64_t n = static_cast<int64_t>(ids.size());
  if (static_cast<int64_t>(hidden.size()) != n * s.d) {
    throw UsageError("saliency_objective_from_layer: hidden has " + std::to_string(hidden.size()) +
                     " floats, expected " + std::to_string(n * s.d));
  }
  if (predicted_token >= c.n_vocab) {
    throw UsageError("saliency_objective_from_layer: predicted token " + std::to_string(predicted_token) +
                     " is outside the vocabulary");
  }
  PromptBlocks blocks(m, n);
  blocks.set(hidden.data());
  for (int l = layer; l < c.n_layer; ++l) blocks.block(l, nullptr);
  std::vector<float> cur(hidden.size());
  blocks.get(cur.data());
  return head_forward_backward(m, ids, cur.data(), n, obj, predicted_token, nullptr).objective;
}

}  // namespace sdtp
