// Weights kept in their GGUF blocks (LoadOptions::keep_quantized, the default) against the same
// file loaded with float32 copies: the CPU prefill (float32 rows dequantised a chunk at a time for
// sgemm) gives the float load's logits, and decode (the 8-bit kernels on the very same blocks)
// gives the same tokens. Fixtures: tests/fixtures/loader/tiny_llama.gguf (Q8_0, Q4_1, F16, F32),
// and a one-layer llama of width 256 written here with random Q4_K / Q6_K / Q4_0 weights.
#include <gtest/gtest.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "sdtp/model.h"
#include "sdtp/session.h"
#include "formats/gguf_test_writer.h"
#include "formats/safetensors_writer.h"
#include "testing/fixtures.h"

namespace sdtp {
namespace {

double max_rel(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, std::fabs(static_cast<double>(a[i]) - b[i]));
    den = std::max(den, std::fabs(static_cast<double>(b[i])));
  }
  return den > 0 ? num / den : num;
}

int32_t argmax(const std::vector<float>& v) {
  return static_cast<int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

struct Lockstep {
  double prefill = 0.0, decode = 0.0;  // max rel diff of the prefill logits, and the worst decode step's
};

// Runs session a (model ma, options oa) and b beside each other on one prompt, then `steps` decode
// steps on b's greedy tokens; returns how far a's logits are from b's.
Lockstep lockstep(const Model& ma, const SessionOptions& oa, const Model& mb, const SessionOptions& ob,
                  const std::vector<int32_t>& ids, int steps) {
  Session sa(ma, oa), sb(mb, ob);
  std::vector<float> la = sa.prefill(ids), lb = sb.prefill(ids);
  Lockstep r;
  r.prefill = max_rel(la, lb);
  for (int step = 0; step < steps; ++step) {
    const int32_t t = argmax(lb);
    la = sa.decode(t);
    lb = sb.decode(t);
    r.decode = std::max(r.decode, max_rel(la, lb));
  }
  return r;
}

TEST(QuantizedWeights, BlocksOnlyLoadMatchesTheFloatLoadInPrefillAndDecode) {
  const std::string path = testing::fixture_path("loader/tiny_llama.gguf");
  auto q = load_model(path);
  LoadOptions lo;
  lo.keep_quantized = false;
  auto f = load_model(path, lo);
  ASSERT_TRUE(q->weights.layers[0].wq.quantized_only() || q->weights.layers[0].w_gate.quantized_only() ||
              q->weights.tok_embd.quantized_only());
  std::vector<int32_t> ids;
  for (int i = 0; i < 40; ++i) ids.push_back((i * 7 + 3) % q->config.n_vocab);
  for (bool q8 : {false, true}) {
    SessionOptions o;
    o.decode_q8 = q8;
    const Lockstep r = lockstep(*q, o, *f, o, ids, 8);
    std::printf("[quantized] decode_q8=%d prefill of %zu tokens, 8 decode steps: max rel diff %.3e, %.3e\n", q8,
                ids.size(), r.prefill, r.decode);
    EXPECT_LE(r.prefill, 1e-5);
    EXPECT_LE(r.decode, 1e-5);
  }
  // For scale: the int8-activation error of 8-bit decode against float32 decode on this model.
  SessionOptions a8, a32;
  a32.decode_q8 = false;
  a32.kv_type = "f32";
  const double worst = lockstep(*q, a8, *q, a32, ids, 8).decode;
  std::printf("[quantized] tiny_llama: 8-bit decode vs float32 decode max rel diff %.3e\n", worst);
  // Random tiny models amplify the int8 rounding of the activations (about 1e-3 per dot product,
  // q8.h) to 4e-2 in the logits here; the kernels themselves are exact on int8 activations (CpuOps).
  EXPECT_LE(worst, 1e-1);
  EXPECT_GT(worst, 0.0);
}

// Random blocks of a ggml type: every byte random, then the f16 scales set to small sane values.
std::vector<uint8_t> random_blocks(uint32_t type, int64_t rows, int64_t k, std::mt19937& rng) {
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> u(2e-3f, 6e-3f);
  struct Layout {
    int64_t elems, bytes, d_at, dmin_at;
  };
  const Layout l = type == 12 ? Layout{256, 144, 0, 2} : type == 14 ? Layout{256, 210, 208, -1} : Layout{32, 18, 0, -1};
  std::vector<uint8_t> out(static_cast<size_t>(rows * k / l.elems * l.bytes));
  for (auto& b : out) b = static_cast<uint8_t>(byte(rng));
  for (size_t b = 0; b < out.size(); b += l.bytes) {
    const uint16_t d = _cvtss_sh(u(rng), 0);
    std::memcpy(&out[b + l.d_at], &d, 2);
    if (l.dmin_at >= 0) {
      const uint16_t dm = _cvtss_sh(u(rng) / 4, 0);
      std::memcpy(&out[b + l.dmin_at], &dm, 2);
    }
  }
  return out;
}

std::vector<uint8_t> f32_bytes(int64_t n, float value) {
  std::vector<uint8_t> out(static_cast<size_t>(n) * 4);
  for (int64_t i = 0; i < n; ++i) std::memcpy(&out[i * 4], &value, 4);
  return out;
}

// A one-layer llama of width 256 whose projections are Q4_K, Q6_K and Q4_0 (random blocks): loaded
// with blocks kept, its prefill equals the float32 load exactly and its 8-bit decode (the K-quant
// kernels on the blocks) stays within the int8-activation error of float32 decode.
TEST(QuantizedWeights, KQuantModelBlocksOnlyMatchesTheFloatLoad) {
  constexpr int64_t d = 256, ff = 512, vocab = 64;
  constexpr uint32_t kQ4_0 = 2, kQ4_K = 12, kQ6_K = 14, kF32 = 0;
  std::mt19937 rng(5);
  testing::GGUFTestWriter g;
  g.add_string("general.architecture", "llama");
  g.add_u32("llama.context_length", 128);
  g.add_u32("llama.embedding_length", d);
  g.add_u32("llama.block_count", 1);
  g.add_u32("llama.feed_forward_length", ff);
  g.add_u32("llama.attention.head_count", 4);
  g.add_u32("llama.attention.head_count_kv", 2);
  g.add_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  g.add_u32("llama.vocab_size", vocab);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<uint8_t> embd(static_cast<size_t>(vocab * d) * 4);
  for (int64_t i = 0; i < vocab * d; ++i) {
    const float v = nd(rng);
    std::memcpy(&embd[i * 4], &v, 4);
  }
  g.add_tensor("token_embd.weight", kF32, {d, vocab}, embd);
  g.add_tensor("output_norm.weight", kF32, {d}, f32_bytes(d, 1.0f));
  g.add_tensor("output.weight", kQ6_K, {d, vocab}, random_blocks(kQ6_K, vocab, d, rng));
  g.add_tensor("blk.0.attn_norm.weight", kF32, {d}, f32_bytes(d, 1.0f));
  g.add_tensor("blk.0.ffn_norm.weight", kF32, {d}, f32_bytes(d, 1.0f));
  g.add_tensor("blk.0.attn_q.weight", kQ4_K, {d, d}, random_blocks(kQ4_K, d, d, rng));
  g.add_tensor("blk.0.attn_k.weight", kQ4_K, {d, 128}, random_blocks(kQ4_K, 128, d, rng));
  g.add_tensor("blk.0.attn_v.weight", kQ6_K, {d, 128}, random_blocks(kQ6_K, 128, d, rng));
  g.add_tensor("blk.0.attn_output.weight", kQ4_0, {d, d}, random_blocks(kQ4_0, d, d, rng));
  g.add_tensor("blk.0.ffn_gate.weight", kQ4_K, {d, ff}, random_blocks(kQ4_K, ff, d, rng));
  g.add_tensor("blk.0.ffn_up.weight", kQ4_K, {d, ff}, random_blocks(kQ4_K, ff, d, rng));
  g.add_tensor("blk.0.ffn_down.weight", kQ6_K, {ff, d}, random_blocks(kQ6_K, d, ff, rng));
  const std::string path = testing::scratch_dir("quantized_kquant") + "/kquant.gguf";
  testing::write_file(path, g.build());

  auto q = load_model(path);
  LoadOptions lo;
  lo.keep_quantized = false;
  auto f = load_model(path, lo);
  const LayerWeights& l = q->weights.layers[0];
  for (const Tensor* t : std::initializer_list<const Tensor*>{&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down,
                                                             &q->weights.output})
    EXPECT_TRUE(t->quantized_only()) << t->file_quant;
  EXPECT_LT(weight_host_bytes(q->weights), weight_host_bytes(f->weights) / 3);
  std::vector<int32_t> ids;
  for (int i = 0; i < 24; ++i) ids.push_back((i * 11 + 5) % vocab);
  SessionOptions exact, q8;
  exact.decode_q8 = false;
  exact.kv_type = "f32";
  const Lockstep r = lockstep(*q, exact, *f, exact, ids, 4);
  std::printf("[quantized] K-quant model: prefill max rel diff %.3e, float32 decode %.3e\n", r.prefill, r.decode);
  EXPECT_LE(r.prefill, 1e-5);
  EXPECT_LE(r.decode, 1e-5);
  // The 8-bit decode against float32 decode of the same prompt, step by step on the same tokens.
  const double worst = lockstep(*q, q8, *q, exact, ids, 4).decode;
  std::printf("[quantized] K-quant model: 8-bit decode vs float32 decode max rel diff %.3e\n", worst);
  EXPECT_LE(worst, 1e-1);  // the int8 activations' error on random weights, as tiny_llama's above
  EXPECT_GT(worst, 0.0);  // the 8-bit kernels ran
}

}  // namespace
}  // namespace sdtp
