// The llama-family transformer block (see llama_block.h).
#include "model/llama_block.h"

#include "backend/cpu/ops.h"

namespace sdtp {

void BlockScratch::ensure(const ModelConfig& c, int64_t rows) {
  const auto grow = [rows](std::vector<float>& b, int64_t width) {
    if (static_cast<int64_t>(b.size()) < rows * width) b.resize(static_cast<size_t>(rows * width));
  };
  const int64_t q_dim = static_cast<int64_t>(c.n_head) * c.head_dim;
  const int64_t kv_dim = static_cast<int64_t>(c.n_head_kv) * c.head_dim;
  grow(norm, c.n_embd);
  grow(q, q_dim);
  grow(k, kv_dim);
  grow(v, kv_dim);
  grow(attn, q_dim);
  grow(proj, c.n_embd);
  grow(gate, c.n_ff);
  grow(up, c.n_ff);
}

namespace {

// y = x W^T (+ b), on the 8-bit copy when there is one and few rows run.
void project(const float* x, int64_t n, const Tensor& w, const cpu::QuantMatrix* q8, const Tensor& b, float* y) {
  const float* bias = b.empty() ? nullptr : b.ptr();
  if (q8 && !q8->empty() && n <= kQ8MaxRows) {
    cpu::matmul_quant(x, n, *q8, bias, y);
  } else {
    cpu::matmul(x, n, w.dim(1), w.ptr(), w.dim(0), bias, y);
  }
}

const Tensor kNoBias;

}  // namespace

cpu::QuantMatrix decode_matrix(const Tensor& t) {
  const int64_t m = t.dim(0), k = t.dim(1);
  // The file's own blocks when the kernels read them (exact weights), else Q8_0 of the floats.
  if (t.file_quant == "Q4_1") return cpu::q4_1_from_blocks(t.file_blocks.data(), m, k);
  if (t.file_quant == "Q8_0") return cpu::q8_0_from_blocks(t.file_blocks.data(), m, k);
  return cpu::quantize_q8(t.ptr(), m, k);
}

LayerQ8 quantize_layer_q8(const ModelConfig& c, const LayerWeights& w) {
  LayerQ8 q;
  if (!cpu::q8_supported(c.n_embd) || !cpu::q8_supported(static_cast<int64_t>(c.n_head) * c.head_dim) ||
      !cpu::q8_supported(c.n_ff)) {
    return q;
  }
  const auto quant = [](const Tensor& t) { return decode_matrix(t); };
  q.wq = quant(w.wq);
  q.wk = quant(w.wk);
  q.wv = quant(w.wv);
  q.wo = quant(w.wo);
  q.w_gate = quant(w.w_gate);
  q.w_up = quant(w.w_up);
  q.w_down = quant(w.w_down);
  return q;
}

void llama_block(const ModelConfig& c, const LayerWeights& w, const std::vector<float>& inv_freq, float* x,
                 const int32_t* positions, int64_t n, LayerKV& kv, BlockScratch& s, const LayerQ8* q8,
                 std::vector<float>* last_attn) {
  const int64_t d = c.n_embd;
  const int64_t q_dim = static_cast<int64_t>(c.n_head) * c.head_dim;
  const int64_t kv_dim = static_cast<int64_t>(c.n_head_kv) * c.head_dim;
  s.ensure(c, n);

  // Attention.
  cpu::rmsnorm(x, w.attn_norm.ptr(), n, d, c.rms_eps, s.norm.data());
  project(s.norm.data(), n, w.wq, q8 ? &q8->wq : nullptr, w.bq, s.q.data());
  project(s.norm.data(), n, w.wk, q8 ? &q8->wk : nullptr, w.bk, s.k.data());
  project(s.norm.data(), n, w.wv, q8 ? &q8->wv : nullptr, w.bv, s.v.data());
  cpu::rope(s.q.data(), n, q_dim, c.n_head, c.head_dim, positions, inv_freq.data());
  cpu::rope(s.k.data(), n, kv_dim, c.n_head_kv, c.head_dim, positions, inv_freq.data());
  kv.append(s.k.data(), s.v.data(), positions, n);
  if (last_attn) s.head_probs.assign(static_cast<size_t>(c.n_head * kv.n), 0.0f);
  cpu::attention(s.q.data(), positions, n, kv.k.data(), kv.v.data(), kv.pos.data(), kv.n, c.n_head, c.n_head_kv,
                 c.head_dim, s.attn.data(), last_attn ? s.head_probs.data() : nullptr);
  if (last_attn) {
    last_attn->assign(static_cast<size_t>(kv.n), 0.0f);
    for (int h = 0; h < c.n_head; ++h)
      for (int64_t j = 0; j < kv.n; ++j) (*last_attn)[j] += s.head_probs[h * kv.n + j] / static_cast<float>(c.n_head);
  }
  project(s.attn.data(), n, w.wo, q8 ? &q8->wo : nullptr, kNoBias, s.proj.data());
  cpu::add(x, s.proj.data(), n * d);

  // SwiGLU MLP.
  cpu::rmsnorm(x, w.ffn_norm.ptr(), n, d, c.rms_eps, s.norm.data());
  project(s.norm.data(), n, w.w_gate, q8 ? &q8->w_gate : nullptr, kNoBias, s.gate.data());
  project(s.norm.data(), n, w.w_up, q8 ? &q8->w_up : nullptr, kNoBias, s.up.data());
  cpu::swiglu(s.gate.data(), s.up.data(), n * c.n_ff, s.gate.data());
  project(s.gate.data(), n, w.w_down, q8 ? &q8->w_down : nullptr, kNoBias, s.proj.data());
  cpu::add(x, s.proj.data(), n * d);
}

double block_matmul_flops_per_row(const ModelConfig& c) {
  const double d = c.n_embd;
  const double q_dim = static_cast<double>(c.n_head) * c.head_dim;
  const double kv_dim = static_cast<double>(c.n_head_kv) * c.head_dim;
  return 2.0 * (d * q_dim + 2.0 * d * kv_dim + q_dim * d + 3.0 * d * c.n_ff);
}

}  // namespace sdtp
