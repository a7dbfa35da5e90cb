// The naive double-precision llama reference (see naive_llama.h).
#include "testing/naive_llama.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "testing/fixtures.h"

namespace sdtp::testing {
namespace {

using Vec = std::vector<double>;

// y = W x (+ b), W in PyTorch layout {out, in}.
Vec matvec(const Tensor& w, const Vec& x, const Tensor* b = nullptr) {
  const int64_t out = w.dim(0), in = w.dim(1);
  Vec y(out);
  for (int64_t o = 0; o < out; ++o) {
    double s = b && !b->empty() ? b->data[o] : 0.0;
    for (int64_t i = 0; i < in; ++i) s += w.data[o * in + i] * x[i];
    y[o] = s;
  }
  return y;
}

Vec rmsnorm(const Vec& x, const Tensor& w, double eps) {
  double ss = 0;
  for (double v : x) ss += v * v;
  const double r = 1.0 / std::sqrt(ss / x.size() + eps);
  Vec y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = w.data[i] * x[i] * r;
  return y;
}

// Rotate-half (NeoX / Hugging Face) RoPE at position pos, every head of v.
void rope(Vec& v, int heads, int hd, int pos, double theta) {
  for (int h = 0; h < heads; ++h)
    for (int i = 0; i < hd / 2; ++i) {
      const double ang = pos * std::pow(theta, -2.0 * i / hd);
      double& a = v[h * hd + i];
      double& b = v[h * hd + i + hd / 2];
      const double a0 = a, b0 = b;
      a = a0 * std::cos(ang) - b0 * std::sin(ang);
      b = b0 * std::cos(ang) + a0 * std::sin(ang);
    }
}

[[noreturn]] void fail(const std::string& what) {
  throw std::logic_error("NaiveLlama: " + what);
}

}  // namespace

std::unique_ptr<Model> six_layer_model() {
  auto m = load_model(fixture_path("tiny/llama_gqa"));
  const auto base = m->weights.layers;
  while (m->weights.layers.size() < 6)
    m->weights.layers.push_back(base[m->weights.layers.size() % base.size()]);
  m->config.n_layer = 6;
  return m;
}

NaiveLlama::NaiveLlama(const Model& model)
    : model_(model),
      entries_(model.config.n_layer),
      hidden_(model.config.n_layer + 1),
      last_attention_(model.config.n_layer) {
  if (model.config.rope_scaling.type != "none") fail("RoPE scaling is not implemented");
  if (model.weights.layers.size() != static_cast<size_t>(model.config.n_layer))
    fail("the model has no host weights");
}

std::vector<int32_t> NaiveLlama::positions(int layer) const {
  std::vector<int32_t> out;
  for (const auto& [pos, e] : entries_.at(layer)) out.push_back(pos);
  return out;
}

std::vector<double> NaiveLlama::forward(const std::vector<int32_t>& ids,
                                        const std::vector<std::vector<int32_t>>& computed) {
  const ModelConfig& c = model_.config;
  const int hd = c.head_dim, nh = c.n_head, nkv = c.n_head_kv;
  if (ids.empty()) fail("no tokens");
  if (computed.size() != static_cast<size_t>(c.n_layer))
    fail("computed has " + std::to_string(computed.size()) + " layers");
  const int first = n_past_, last = n_past_ + static_cast<int>(ids.size()) - 1;
  for (size_t t = 0; t < ids.size(); ++t) {
    const auto e = model_.weights.tok_embd.data.begin() + static_cast<int64_t>(ids[t]) * c.n_embd;
    hidden_[0][first + static_cast<int>(t)] = Vec(e, e + c.n_embd);
  }
  n_past_ = last + 1;
  for (int p = first; p <= last; ++p)
    if (!std::binary_search(computed[0].begin(), computed[0].end(), p))
      fail("new token at position " + std::to_string(p) + " is not computed at layer 0");

  for (int l = 0; l < c.n_layer; ++l) {
    const LayerWeights& w = model_.weights.layers[l];
    const auto& rows = computed[l];
    const std::string at = " at layer " + std::to_string(l);
    if (!std::is_sorted(rows.begin(), rows.end()) ||
        std::adjacent_find(rows.begin(), rows.end()) != rows.end())
      fail("positions not strictly ascending" + at);
    if (rows.empty() || rows.back() != last) fail("the last new token is not computed" + at);
    // q, k, v of every row; all their K/V join the layer's entries before any row attends.
    std::vector<Vec> q(rows.size());
    for (size_t r = 0; r < rows.size(); ++r) {
      const int32_t pos = rows[r];
      const auto in = hidden_[l].find(pos);
      if (in == hidden_[l].end())
        fail("position " + std::to_string(pos) + " has no hidden state entering layer " + std::to_string(l) +
             " (not computed at the layer before: pruning is not progressive)");
      if (entries_[l].count(pos)) fail("position " + std::to_string(pos) + " computed twice" + at);
      const Vec h = rmsnorm(in->second, w.attn_norm, c.rms_eps);
      q[r] = matvec(w.wq, h, &w.bq);
      Entry e{matvec(w.wk, h, &w.bk), matvec(w.wv, h, &w.bv)};
      rope(q[r], nh, hd, pos, c.rope_theta);
      rope(e.k, nkv, hd, pos, c.rope_theta);
      entries_[l].emplace(pos, std::move(e));
    }
    for (size_t r = 0; r < rows.size(); ++r) {
      const int32_t pos = rows[r];
      // Causal by original position: the entries of layer l at positions <= pos.
      std::vector<const Entry*> keys;
      RowAttention att;
      for (const auto& [kp, e] : entries_[l]) {
        if (kp > pos) break;
        keys.push_back(&e);
        att.positions.push_back(kp);
      }
      att.probs.assign(keys.size(), 0.0);
      Vec out(static_cast<size_t>(nh) * hd, 0.0);
      for (int h = 0; h < nh; ++h) {
        const int g = h / (nh / nkv);
        Vec s(keys.size());
        double mx = -1e300, z = 0;
        for (size_t j = 0; j < keys.size(); ++j) {
          double dot = 0;
          for (int t = 0; t < hd; ++t) dot += q[r][h * hd + t] * keys[j]->k[g * hd + t];
          s[j] = dot / std::sqrt(double(hd));
          mx = std::max(mx, s[j]);
        }
        for (double& e : s) z += (e = std::exp(e - mx));
        for (size_t j = 0; j < keys.size(); ++j) {
          att.probs[j] += s[j] / z / nh;
          for (int t = 0; t < hd; ++t) out[h * hd + t] += s[j] / z * keys[j]->v[g * hd + t];
        }
      }
      if (pos == last) last_attention_[l] = std::move(att);
      Vec x = hidden_[l][pos];
      const Vec o = matvec(w.wo, out);
      for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];
      const Vec hn = rmsnorm(x, w.ffn_norm, c.rms_eps);
      const Vec gate = matvec(w.w_gate, hn), up = matvec(w.w_up, hn);
      Vec a(gate.size());
      for (size_t i = 0; i < gate.size(); ++i) a[i] = gate[i] / (1.0 + std::exp(-gate[i])) * up[i];
      const Vec dn = matvec(w.w_down, a);
      for (size_t i = 0; i < x.size(); ++i) x[i] += dn[i];
      hidden_[l + 1][pos] = std::move(x);
    }
  }
  return matvec(model_.weights.lm_head(),
                rmsnorm(hidden_[c.n_layer].at(last), model_.weights.output_norm, c.rms_eps));
}

}  // namespace sdtp::testing
