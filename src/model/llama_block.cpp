// The llama-family transformer block (see llama_block.h).
#include "model/llama_block.h"

#include "sdtp/error.h"

namespace sdtp {

void BlockBuffers::ensure(Backend& be, const ModelConfig& c, int64_t n) {
  if (n <= rows) return;
  const int64_t q_dim = static_cast<int64_t>(c.n_head) * c.head_dim;
  const int64_t kv_dim = static_cast<int64_t>(c.n_head_kv) * c.head_dim;
  for (DeviceTensor* t : {&xn, &qkv, &q, &att, &gu, &act}) *t = DeviceTensor();
  const ElemType a = be.activation_type();
  const std::string what = "activations for " + std::to_string(n) + " rows";
  xn = be.alloc(a, n, c.n_embd, what);
  qkv = be.alloc(a, n, q_dim + 2 * kv_dim, what);
  q = be.alloc(a, n, q_dim, what);
  att = be.alloc(a, n, q_dim, what);
  gu = be.alloc(a, n, 2 * static_cast<int64_t>(c.n_ff), what);
  act = be.alloc(a, n, c.n_ff, what);
  rows = n;
}

namespace {

void read_back(Backend& be, const DeviceTensor& t, std::vector<float>& out) {
  out.resize(static_cast<size_t>(t.numel()));
  be.download(out.data(), t, ElemType::f32);
}

}  // namespace

void llama_block(Backend& be, const ModelConfig& c, const DeviceLayer& w, const DeviceTensor& inv_freq,
                 const DeviceTensor& x, const DeviceTensor& positions, const KVView& cache, BlockBuffers& b,
                 AttentionStats* stats, BlockTrace* trace, const std::function<void()>& placed) {
  const int64_t n = x.rows();
  const DeviceTensor xn = b.xn.rows(0, n), qkv = b.qkv.rows(0, n), q = b.q.rows(0, n), att = b.att.rows(0, n),
                     gu = b.gu.rows(0, n), act = b.act.rows(0, n);
  if (trace) read_back(be, x, trace->x_in);

  // Attention.
  be.rmsnorm(x, w.attn_norm, c.rms_eps, xn);
  be.matmul(xn, *w.wqkv, qkv);
  be.qkv_rope_append(qkv, positions, inv_freq, c.n_head, c.n_head_kv, c.head_dim, q, cache);
  if (placed) placed();
  be.attention(q, positions, cache, n, c.n_head, c.n_head_kv, c.head_dim, att, stats);
  if (trace) {
    const int64_t row = cache.n.empty() ? 0 : cache.n[0];
    for (int64_t h : cache.n)
      if (h != row) throw Error("llama_block: a trace needs every KV head to hold the same entries");
    read_back(be, xn, trace->attn_norm);
    read_back(be, q, trace->q);
    read_back(be, cache.k.rows(row, n), trace->k);
    read_back(be, cache.v.rows(row, n), trace->v);
    read_back(be, att, trace->att);
  }
  be.matmul(att, *w.wo, x, /*accumulate=*/true);

  // SwiGLU MLP.
  if (trace) read_back(be, x, trace->x_mid);
  be.rmsnorm(x, w.ffn_norm, c.rms_eps, xn);
  be.matmul(xn, *w.wgu, gu);
  be.swiglu(gu, act);
  if (trace) {
    read_back(be, xn, trace->ffn_norm);
    read_back(be, gu, trace->gu);
    read_back(be, act, trace->act);
  }
  be.matmul(act, *w.wdown, x, /*accumulate=*/true);
}

double block_matmul_flops_per_row(const ModelConfig& c) {
  const double d = c.n_embd;
  const double q_dim = static_cast<double>(c.n_head) * c.head_dim;
  const double kv_dim = static_cast<double>(c.n_head_kv) * c.head_dim;
  return 2.0 * (d * q_dim + 2.0 * d * kv_dim + q_dim * d + 3.0 * d * c.n_ff);
}

}  // namespace sdtp
