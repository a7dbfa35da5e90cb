// Tests for load_model: hand-written Hugging Face folders, GGUF files written by llama.cpp's gguf-py
// (scripts/fixtures/gen_loader_fixtures.py, with llama.cpp's Q/K permutation), the transformers-made tiny
// models under tests/fixtures/tiny, and the real SmolLM2 GGUF (slow; skipped when absent).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>

#include "formats/quants.h"
#include "formats/safetensors.h"
#include "formats/safetensors_writer.h"
#include "sdtp/error.h"
#include "sdtp/model.h"
#include "testing/fixtures.h"

namespace sdtp {
namespace {

using namespace sdtp::testing;
using nlohmann::json;

// Every weight of a model, by its Hugging Face name.
std::vector<std::pair<std::string, const Tensor*>> hf_named(const Model& m) {
  std::vector<std::pair<std::string, const Tensor*>> out = {
      {"model.embed_tokens.weight", &m.weights.tok_embd}, {"model.norm.weight", &m.weights.output_norm}};
  if (!m.weights.output.empty()) out.emplace_back("lm_head.weight", &m.weights.output);
  for (size_t i = 0; i < m.weights.layers.size(); ++i) {
    const LayerWeights& l = m.weights.layers[i];
    const std::string p = "model.layers." + std::to_string(i) + ".";
    out.emplace_back(p + "input_layernorm.weight", &l.attn_norm);
    out.emplace_back(p + "self_attn.q_proj.weight", &l.wq);
    out.emplace_back(p + "self_attn.k_proj.weight", &l.wk);
    out.emplace_back(p + "self_attn.v_proj.weight", &l.wv);
    out.emplace_back(p + "self_attn.o_proj.weight", &l.wo);
    if (!l.bq.empty()) {
      out.emplace_back(p + "self_attn.q_proj.bias", &l.bq);
      out.emplace_back(p + "self_attn.k_proj.bias", &l.bk);
      out.emplace_back(p + "self_attn.v_proj.bias", &l.bv);
    }
    out.emplace_back(p + "post_attention_layernorm.weight", &l.ffn_norm);
    out.emplace_back(p + "mlp.gate_proj.weight", &l.w_gate);
    out.emplace_back(p + "mlp.up_proj.weight", &l.w_up);
    out.emplace_back(p + "mlp.down_proj.weight", &l.w_down);
  }
  return out;
}

std::vector<float> to_floats(const RawTensor& t) {
  std::vector<float> v(t.numel());
  dequantize(t.dtype, t.data, v.data(), t.numel());
  return v;
}

// Compares every weight of `m` with the tensor of the same Hugging Face name in `expected`, and
// checks that nothing in `expected` was left out.
void expect_weights_equal(const Model& m, const std::string& expected_path, float tol) {
  SafetensorsFile ref(expected_path);
  auto named = hf_named(m);
  EXPECT_EQ(named.size(), ref.tensors().size());
  int64_t total = 0;
  for (const auto& [name, t] : named) {
    const RawTensor* r = ref.find_tensor(name);
    ASSERT_NE(r, nullptr) << name;
    ASSERT_EQ(t->shape, r->shape) << name;
    const std::vector<float> want = to_floats(*r);
    // Blocks-only weights (Q4_1, Q8_0 GGUFs) are read through weight_values, as the backends do.
    std::vector<float> scratch;
    const float* have = weight_values(*t, scratch);
    ASSERT_EQ(t->quantized_only() ? static_cast<size_t>(t->numel()) : t->data.size(), want.size()) << name;
    int bad = 0;
    for (size_t i = 0; i < want.size() && bad < 5; ++i)
      if (!(std::fabs(have[i] - want[i]) <= tol * std::max(1.0f, std::fabs(want[i])))) {
        ADD_FAILURE() << name << "[" << i << "] = " << have[i] << ", expected " << want[i];
        ++bad;
      }
    total += t->numel();
  }
  EXPECT_EQ(total, m.config.n_params());
}

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no exception)";
}

// ---- Hugging Face folders ----

TEST(LoaderHf, LoadsHandWrittenFolder) {
  const std::string dir = scratch_dir("ld_tiny_llama");
  const json c = tiny_llama_config();
  const auto ts = tiny_llama_tensors(c);
  write_hf_folder(dir, c, ts);
  auto m = load_model(dir);
  EXPECT_EQ(m->format, "safetensors");
  EXPECT_EQ(m->path, dir);
  EXPECT_EQ(m->config.name, "ld_tiny_llama");
  EXPECT_EQ(m->weight_types, "F32 x 21");
  EXPECT_EQ(m->tokenizer.n_vocab(), 0);  // no tokenizer.json: empty tokenizer
  EXPECT_TRUE(m->weights.layers[0].bq.empty());
  expect_weights_equal(*m, dir + "/model.safetensors", 0.0f);
}

TEST(LoaderHf, Bf16TiedShardedWithIgnoredExtras) {
  const std::string dir = scratch_dir("ld_bf16_sharded");
  json c = tiny_llama_config();
  c["tie_word_embeddings"] = true;
  c["model_type"] = "qwen2";
  auto ts = tiny_llama_tensors(c, 7);
  std::vector<StTensor> shard_a, shard_b;
  for (size_t i = 0; i < ts.size(); ++i) {
    // Values rounded to bf16 (truncation of random floats) are exact in both files.
    std::vector<float> v(ts[i].bytes.size() / 4);
    std::memcpy(v.data(), ts[i].bytes.data(), ts[i].bytes.size());
    for (float& x : v) {
      uint32_t u;
      std::memcpy(&u, &x, 4);
      u &= 0xffff0000u;
      std::memcpy(&x, &u, 4);
    }
    ts[i].bytes = f32_bytes(v);
    (i % 2 ? shard_a : shard_b).push_back({ts[i].name, "BF16", ts[i].shape, bf16_bytes(v)});
  }
  // An extra tensor transformers would ignore too (old checkpoints store rotary inv_freq).
  shard_b.push_back({"model.layers.0.self_attn.rotary_emb.inv_freq", "F32", {2}, f32_bytes({1, 2})});
  write_file(dir + "/config.json", c.dump());
  write_file(dir + "/a.safetensors", safetensors_bytes(shard_a));
  write_file(dir + "/b.safetensors", safetensors_bytes(shard_b));
  json wm = json::object();
  for (const auto& t : shard_a) wm[t.name] = "a.safetensors";
  for (const auto& t : shard_b) wm[t.name] = "b.safetensors";
  write_file(dir + "/model.safetensors.index.json", json{{"weight_map", wm}}.dump());
  write_file(dir + "/expected.safetensors", safetensors_bytes(ts));

  auto m = load_model(dir);
  EXPECT_TRUE(m->config.tied_embeddings);
  EXPECT_TRUE(m->weights.output.empty());
  EXPECT_EQ(&m->weights.lm_head(), &m->weights.tok_embd);
  EXPECT_EQ(m->weight_types, "BF16 x 26");  // 2 + 2 * 12 (qwen2: q/k/v biases)
  expect_weights_equal(*m, dir + "/expected.safetensors", 0.0f);
}

TEST(LoaderHf, RejectsMissingAndMisshapenTensors) {
  const json c = tiny_llama_config();
  const auto ts = tiny_llama_tensors(c);

  std::vector<StTensor> missing;
  for (const auto& t : ts)
    if (t.name != "model.layers.1.mlp.up_proj.weight") missing.push_back(t);
  const std::string d1 = scratch_dir("ld_missing");
  write_hf_folder(d1, c, missing);
  std::string msg = message_of([&] { load_model(d1); });
  EXPECT_NE(msg.find("model.layers.1.mlp.up_proj.weight"), std::string::npos) << msg;
  EXPECT_THROW(load_model(d1), FormatError);

  auto wrong = ts;
  for (auto& t : wrong)
    if (t.name == "model.layers.0.self_attn.k_proj.weight") t.shape = {8, 4};  // expected {4, 8}
  const std::string d2 = scratch_dir("ld_shape");
  write_hf_folder(d2, c, wrong);
  msg = message_of([&] { load_model(d2); });
  EXPECT_NE(msg.find("model.layers.0.self_attn.k_proj.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[8, 4]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[4, 8]"), std::string::npos) << msg;
  EXPECT_THROW(load_model(d2), FormatError);

  // Untied config without lm_head.
  std::vector<StTensor> no_head;
  for (const auto& t : ts)
    if (t.name != "lm_head.weight") no_head.push_back(t);
  const std::string d3 = scratch_dir("ld_nohead");
  write_hf_folder(d3, c, no_head);
  EXPECT_THROW(load_model(d3), FormatError);

  // qwen2 needs biases.
  json q = c;
  q["model_type"] = "qwen2";
  const std::string d4 = scratch_dir("ld_nobias");
  write_hf_folder(d4, q, ts);
  msg = message_of([&] { load_model(d4); });
  EXPECT_NE(msg.find("q_proj.bias"), std::string::npos) << msg;

  // Integer weights are not convertible.
  auto ints = ts;
  ints[1].dtype = "I32";
  const std::string d5 = scratch_dir("ld_int");
  write_hf_folder(d5, c, ints);
  EXPECT_THROW(load_model(d5), UnsupportedError);
}

TEST(LoaderHf, RejectsUnknownArchitecture) {
  json c = tiny_llama_config();
  c["model_type"] = "falcon";
  const std::string dir = scratch_dir("ld_falcon");
  write_hf_folder(dir, c, tiny_llama_tensors(tiny_llama_config()));
  const std::string msg = message_of([&] { load_model(dir); });
  EXPECT_NE(msg.find("falcon"), std::string::npos) << msg;
  EXPECT_THROW(load_model(dir), UnsupportedError);
}

TEST(Loader, RejectsWhatIsNeitherGgufNorFolder) {
  const std::string dir = scratch_dir("ld_neither");
  write_file(dir + "/model.bin", "PK\x03\x04 not a gguf");
  std::string msg = message_of([&] { load_model(dir + "/model.bin"); });
  EXPECT_NE(msg.find("not a GGUF file or Hugging Face folder"), std::string::npos) << msg;
  EXPECT_THROW(load_model(dir + "/model.bin"), FormatError);
  write_file(dir + "/empty.gguf", "");
  EXPECT_THROW(load_model(dir + "/empty.gguf"), FormatError);
  EXPECT_THROW(load_model(dir), FormatError);  // a folder without config.json
  EXPECT_THROW(load_model(dir + "/nope"), FormatError);
  write_file(dir + "/trunc.gguf", "GGUF\x03");
  EXPECT_THROW(load_model(dir + "/trunc.gguf"), FormatError);
}

// Every tiny model that transformers wrote must load, with weights that add up to n_params.
TEST(LoaderHf, LoadsEveryTinyFixture) {
  const std::string root = fixture_path("tiny");
  if (!path_exists(root)) GTEST_SKIP() << "no tests/fixtures/tiny";
  int n = 0;
  for (const auto& entry : std::filesystem::directory_iterator(root)) {
    if (!path_exists(entry.path().string() + "/config.json")) continue;
    SCOPED_TRACE(entry.path().string());
    std::unique_ptr<Model> m;
    ASSERT_NO_THROW(m = load_model(entry.path().string()));
    int64_t total = 0;
    for (const auto& [name, t] : hf_named(*m)) {
      total += t->numel();
      for (float x : t->data) ASSERT_TRUE(std::isfinite(x)) << name;
    }
    EXPECT_EQ(total, m->config.n_params());
    EXPECT_EQ(m->weights.lm_head().shape, (std::vector<int64_t>{m->config.n_vocab, m->config.n_embd}));
    EXPECT_FALSE(m->weight_types.empty());
    ++n;
  }
  EXPECT_GT(n, 0);
}

// ---- GGUF ----

TEST(LoaderGguf, TinyLlamaUndoesLlamaCppPermutation) {
  const std::string path = fixture_path("loader/tiny_llama.gguf");
  auto m = load_model(path);
  const ModelConfig& c = m->config;
  EXPECT_EQ(m->format, "gguf");
  EXPECT_EQ(c.arch, "llama");
  EXPECT_EQ(c.name, "tiny tiny_llama");
  EXPECT_EQ(c.n_vocab, 48);
  EXPECT_EQ(c.n_embd, 64);
  EXPECT_EQ(c.n_layer, 2);
  EXPECT_EQ(c.n_head, 4);
  EXPECT_EQ(c.n_head_kv, 2);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.n_ff, 96);
  EXPECT_EQ(c.n_ctx_train, 256);
  EXPECT_FLOAT_EQ(c.rms_eps, 1e-5f);
  EXPECT_FLOAT_EQ(c.rope_theta, 10000.0f);
  EXPECT_EQ(c.rope_scaling.type, "none");
  EXPECT_FALSE(c.tied_embeddings);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_EQ(m->weight_types, "F32 x 14, Q8_0 x 3, F16 x 2, Q4_1 x 2");
  // gguf-py's dequantisation and ours may round the Q4_1 "d*q + m" differently in the last bit.
  expect_weights_equal(*m, fixture_path("loader/tiny_llama_expected.safetensors"), 1e-6f);
}

// By default Q4_1 and Q8_0 weights stay in their blocks (no float32 copy): their values read
// through weight_rows equal, bit for bit, the float32 load (keep_quantized off), rows and the
// llama Q/K un-permutation included; every other type holds floats only.
TEST(LoaderGguf, QuantizedWeightsStayInBlocksAndReadAsTheFloatLoad) {
  const std::string path = fixture_path("loader/tiny_llama.gguf");
  auto q = load_model(path);
  LoadOptions floats;
  floats.keep_quantized = false;
  auto f = load_model(path, floats);
  const auto qn = hf_named(*q), fn = hf_named(*f);
  ASSERT_EQ(qn.size(), fn.size());
  int blocks_only = 0;
  size_t q_bytes = 0, f_bytes = 0;
  for (size_t i = 0; i < qn.size(); ++i) {
    const Tensor& a = *qn[i].second;
    const Tensor& b = *fn[i].second;
    ASSERT_EQ(a.shape, b.shape) << qn[i].first;
    ASSERT_EQ(b.data.size(), static_cast<size_t>(b.numel())) << qn[i].first;
    q_bytes += a.host_bytes();
    f_bytes += b.data.size() * sizeof(float);
    const bool kept = a.file_quant == "Q4_1" || a.file_quant == "Q8_0";
    EXPECT_EQ(a.quantized_only(), kept) << qn[i].first;
    if (!kept) continue;
    ++blocks_only;
    EXPECT_TRUE(a.data.empty()) << qn[i].first;
    EXPECT_EQ(a.file_blocks, b.file_blocks) << qn[i].first;
    const int64_t rows = a.dim(0), k = a.dim(1);
    std::vector<float> row(static_cast<size_t>(k));
    for (int64_t r = 0; r < rows; ++r) {
      weight_rows(a, r, 1, row.data());
      ASSERT_EQ(0, std::memcmp(row.data(), b.data.data() + r * k, sizeof(float) * k)) << qn[i].first << " row " << r;
    }
  }
  EXPECT_EQ(blocks_only, 5);  // Q8_0 x 3, Q4_1 x 2
  EXPECT_LT(q_bytes, f_bytes);
  std::printf("[loader] tiny_llama: %zu bytes of weights kept as blocks, %zu as float32\n", q_bytes, f_bytes);
  EXPECT_THROW(weight_rows(*qn[1].second, qn[1].second->dim(0), 1, nullptr), Error);
}

TEST(LoaderGguf, TinyQwen2KeepsLayoutAndBiases) {
  auto m = load_model(fixture_path("loader/tiny_qwen2.gguf"));
  EXPECT_EQ(m->config.arch, "qwen2");
  EXPECT_TRUE(m->config.qkv_bias);
  EXPECT_TRUE(m->config.tied_embeddings);
  EXPECT_FLOAT_EQ(m->config.rope_theta, 1e6f);
  expect_weights_equal(*m, fixture_path("loader/tiny_qwen2_expected.safetensors"), 1e-6f);
}

TEST(LoaderGguf, Llama3ScalingFromRopeFreqs) {
  auto m = load_model(fixture_path("loader/tiny_llama3.gguf"));
  const RopeScaling& s = m->config.rope_scaling;
  EXPECT_EQ(s.type, "llama3");
  EXPECT_FLOAT_EQ(s.factor, 8.0f);
  EXPECT_FLOAT_EQ(s.low_freq_factor, 1.0f);
  EXPECT_FLOAT_EQ(s.high_freq_factor, 4.0f);
  EXPECT_EQ(s.original_max_position, 8192);
  EXPECT_FLOAT_EQ(m->config.rope_theta, 500000.0f);
  expect_weights_equal(*m, fixture_path("loader/tiny_llama3_expected.safetensors"), 0.0f);
}

// A minimal GGUF v3 writer for the error cases: metadata (strings and uint32s) and F32 tensors.
struct MiniGguf {
  std::string kv, infos, data;
  uint64_t n_kv = 0, n_tensors = 0;
  static void u32(std::string& s, uint32_t v) { s.append(reinterpret_cast<const char*>(&v), 4); }
  static void u64(std::string& s, uint64_t v) { s.append(reinterpret_cast<const char*>(&v), 8); }
  static void str(std::string& s, const std::string& v) {
    u64(s, v.size());
    s += v;
  }
  MiniGguf& s(const std::string& k, const std::string& v) {
    str(kv, k), u32(kv, 8), str(kv, v), ++n_kv;
    return *this;
  }
  MiniGguf& i(const std::string& k, uint32_t v) {
    str(kv, k), u32(kv, 4), u32(kv, v), ++n_kv;
    return *this;
  }
  MiniGguf& f(const std::string& k, float v) {
    str(kv, k), u32(kv, 6), kv.append(reinterpret_cast<const char*>(&v), 4), ++n_kv;
    return *this;
  }
  // ne in GGUF order (innermost first).
  MiniGguf& t(const std::string& name, std::vector<uint64_t> ne) {
    uint64_t n = 1;
    str(infos, name), u32(infos, uint32_t(ne.size()));
    for (uint64_t d : ne) u64(infos, d), n *= d;
    u32(infos, 0), u64(infos, data.size());
    data.append(n * 4, '\0');
    while (data.size() % 32) data += '\0';
    ++n_tensors;
    return *this;
  }
  std::string bytes() const {
    std::string out = "GGUF";
    u32(out, 3), u64(out, n_tensors), u64(out, n_kv);
    out += kv + infos;
    while (out.size() % 32) out += '\0';
    return out + data;
  }
};

MiniGguf tiny_llama_meta(const std::string& arch = "llama") {
  MiniGguf g;
  g.s("general.architecture", arch)
      .i(arch + ".context_length", 64)
      .i(arch + ".embedding_length", 8)
      .i(arch + ".block_count", 1)
      .i(arch + ".feed_forward_length", 12)
      .i(arch + ".attention.head_count", 2)
      .i(arch + ".attention.head_count_kv", 1)
      .f(arch + ".attention.layer_norm_rms_epsilon", 1e-5f)
      .i(arch + ".vocab_size", 16);
  return g;
}

TEST(LoaderGguf, RejectsUnknownArchAndBadTensors) {
  const std::string dir = scratch_dir("ld_gguf_err");
  write_file(dir + "/gpt2.gguf", tiny_llama_meta("gpt2").bytes());
  std::string msg = message_of([&] { load_model(dir + "/gpt2.gguf"); });
  EXPECT_NE(msg.find("gpt2"), std::string::npos) << msg;
  EXPECT_THROW(load_model(dir + "/gpt2.gguf"), UnsupportedError);

  MiniGguf none;
  none.i("general.alignment", 32);
  write_file(dir + "/noarch.gguf", none.bytes());
  EXPECT_THROW(load_model(dir + "/noarch.gguf"), FormatError);

  MiniGguf missing = tiny_llama_meta();
  missing.t("token_embd.weight", {8, 16}).t("output_norm.weight", {8});
  write_file(dir + "/missing.gguf", missing.bytes());
  msg = message_of([&] { load_model(dir + "/missing.gguf"); });
  EXPECT_NE(msg.find("blk.0.attn_norm.weight"), std::string::npos) << msg;
  EXPECT_THROW(load_model(dir + "/missing.gguf"), FormatError);

  MiniGguf shape = tiny_llama_meta();
  shape.t("token_embd.weight", {16, 8});  // transposed: PyTorch shape [8, 16], expected [16, 8]
  write_file(dir + "/shape.gguf", shape.bytes());
  msg = message_of([&] { load_model(dir + "/shape.gguf"); });
  EXPECT_NE(msg.find("token_embd.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[8, 16]"), std::string::npos) << msg;
  EXPECT_THROW(load_model(dir + "/shape.gguf"), FormatError);

  MiniGguf gqa;
  gqa.s("general.architecture", "llama")
      .i("llama.context_length", 64)
      .i("llama.embedding_length", 8)
      .i("llama.block_count", 1)
      .i("llama.feed_forward_length", 12)
      .i("llama.attention.head_count", 2)
      .i("llama.attention.head_count_kv", 3)
      .f("llama.attention.layer_norm_rms_epsilon", 1e-5f)
      .i("llama.vocab_size", 16);
  write_file(dir + "/gqa.gguf", gqa.bytes());
  EXPECT_THROW(load_model(dir + "/gqa.gguf"), FormatError);

  MiniGguf yarn = tiny_llama_meta();
  yarn.s("llama.rope.scaling.type", "yarn");
  write_file(dir + "/yarn.gguf", yarn.bytes());
  EXPECT_THROW(load_model(dir + "/yarn.gguf"), UnsupportedError);
}

// ---- The real default model ----

TEST(LoaderSlow, SmolLM2Gguf) {
  const std::string path = default_model_path();
  if (!path_exists(path)) SDTP_NO_DEFAULT_MODEL("real model not found at " << path);
  auto m = load_model(path);
  const ModelConfig& c = m->config;
  EXPECT_EQ(c.arch, "llama");
  EXPECT_EQ(c.n_layer, 30);
  EXPECT_EQ(c.n_embd, 576);
  EXPECT_EQ(c.n_head, 9);
  EXPECT_EQ(c.n_head_kv, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.n_ff, 1536);
  EXPECT_EQ(c.n_vocab, 49152);
  EXPECT_EQ(c.n_ctx_train, 8192);
  EXPECT_FLOAT_EQ(c.rope_theta, 100000.0f);
  EXPECT_NEAR(c.rms_eps, 1e-5f, 1e-10f);
  EXPECT_TRUE(c.tied_embeddings);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_EQ(c.rope_scaling.type, "none");
  EXPECT_EQ(c.n_params(), 134515008);  // transformers' num_parameters()
  EXPECT_EQ(m->format, "gguf");
  EXPECT_EQ(m->weight_types, "Q4_1 x 210, F32 x 61, Q8_0 x 1");
  EXPECT_EQ(m->tokenizer.n_vocab(), 49152);

  // Slices of Q and K as transformers loads them from this GGUF (it undoes llama.cpp's permutation).
  const std::string slices = fixture_path("loader/smollm2_qk_slices.safetensors");
  if (!path_exists(slices)) GTEST_SKIP() << "no " << slices;
  SafetensorsFile ref(slices);
  struct Slice {
    const char* name;
    const Tensor* t;
    int64_t col0;
  } cases[] = {{"model.layers.0.self_attn.q_proj.weight[:, :8]", &m->weights.layers[0].wq, 0},
               {"model.layers.0.self_attn.k_proj.weight[:, :8]", &m->weights.layers[0].wk, 0},
               {"model.layers.29.self_attn.k_proj.weight[:, -8:]", &m->weights.layers[29].wk, 576 - 8}};
  for (const Slice& s : cases) {
    const RawTensor* r = ref.find_tensor(s.name);
    ASSERT_NE(r, nullptr) << s.name;
    const std::vector<float> want = to_floats(*r);
    const int64_t rows = r->shape[0], cols = r->shape[1];
    ASSERT_EQ(rows, s.t->dim(0)) << s.name;
    EXPECT_TRUE(s.t->quantized_only()) << s.name;  // Q4_1: read from its blocks
    std::vector<float> scratch;
    const float* have = weight_values(*s.t, scratch);
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j)
        ASSERT_NEAR(have[i * 576 + s.col0 + j], want[i * cols + j], 1e-6)
            << s.name << " at " << i << "," << j;
  }
}

}  // namespace
}  // namespace sdtp
