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

void llama_block(const ModelConfig& c, const LayerWeights& w, const std::vector<float>& inv_freq, float* x,
                 const int32_t* positions, int64_t n, LayerKV& kv, BlockScratch& s) {
  const int64_t d = c.n_embd;
  const int64_t q_dim = static_cast<int64_t>(c.n_head) * c.head_dim;
  const int64_t kv_dim = static_cast<int64_t>(c.n_head_kv) * c.head_dim;
  s.ensure(c, n);

  // Attention.
  cpu::rmsnorm(x, w.attn_norm.ptr(), n, d, c.rms_eps, s.norm.data());
  cpu::matmul(s.norm.data(), n, d, w.wq.ptr(), q_dim, w.bq.empty() ? nullptr : w.bq.ptr(), s.q.data());
  cpu::matmul(s.norm.data(), n, d, w.wk.ptr(), kv_dim, w.bk.empty() ? nullptr : w.bk.ptr(), s.k.data());
  cpu::matmul(s.norm.data(), n, d, w.wv.ptr(), kv_dim, w.bv.empty() ? nullptr : w.bv.ptr(), s.v.data());
  cpu::rope(s.q.data(), n, q_dim, c.n_head, c.head_dim, positions, inv_freq.data());
  cpu::rope(s.k.data(), n, kv_dim, c.n_head_kv, c.head_dim, positions, inv_freq.data());
  kv.append(s.k.data(), s.v.data(), positions, n);
  cpu::attention(s.q.data(), positions, n, kv.k.data(), kv.v.data(), kv.pos.data(), kv.n, c.n_head, c.n_head_kv,
                 c.head_dim, s.attn.data());
  cpu::matmul(s.attn.data(), n, q_dim, w.wo.ptr(), d, nullptr, s.proj.data());
  cpu::add(x, s.proj.data(), n * d);

  // SwiGLU MLP.
  cpu::rmsnorm(x, w.ffn_norm.ptr(), n, d, c.rms_eps, s.norm.data());
  cpu::matmul(s.norm.data(), n, d, w.w_gate.ptr(), c.n_ff, nullptr, s.gate.data());
  cpu::matmul(s.norm.data(), n, d, w.w_up.ptr(), c.n_ff, nullptr, s.up.data());
  cpu::swiglu(s.gate.data(), s.up.data(), n * c.n_ff, s.gate.data());
  cpu::matmul(s.gate.data(), n, c.n_ff, w.w_down.ptr(), d, nullptr, s.proj.data());
  cpu::add(x, s.proj.data(), n * d);
}

double block_matmul_flops_per_row(const ModelConfig& c) {
  const double d = c.n_embd;
  const double q_dim = static_cast<double>(c.n_head) * c.head_dim;
  const double kv_dim = static_cast<double>(c.n_head_kv) * c.head_dim;
  return 2.0 * (d * q_dim + 2.0 * d * kv_dim + q_dim * d + 3.0 * d * c.n_ff);
}

}  // namespace sdtp
