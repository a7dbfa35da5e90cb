// CudaModel: weights on the device, uploaded from a host Model or generated there; the model
// presets for speed runs; random predictors for a config alone (see include/sdtp/cuda.h).
#include <algorithm>
#include <cmath>
#include <random>

#include "backend/cuda/cuda_model.h"
#include "backend/cuda/model_ops.h"
#include "backend/cuda/ops.h"
#include "model/rope.h"
#include "sdtp/error.h"

namespace sdtp::cuda {

namespace {

struct Preset {
  const char* name;
  const char* hf_id;
  ModelConfig config;
};

ModelConfig make_config(const char* arch, const char* name, int vocab, int embd, int layers, int heads, int kv_heads,
                        int ff, int ctx, float theta) {
  ModelConfig c;
  c.arch = arch;
  c.name = name;
  c.n_vocab = vocab;
  c.n_embd = embd;
  c.n_layer = layers;
  c.n_head = heads;
  c.n_head_kv = kv_heads;
  c.head_dim = embd / heads;
  c.n_ff = ff;
  c.n_ctx_train = ctx;
  c.rms_eps = 1e-5f;
  c.rope_theta = theta;
  return c;
}

// config.json of each model on the Hugging Face hub (hidden_size, num_hidden_layers,
// num_attention_heads, num_key_value_heads, intermediate_size, vocab_size,
// max_position_embeddings, rope_theta; rms_norm_eps 1e-5 for all three, no rope scaling).
const std::vector<Preset>& presets() {
  static const std::vector<Preset> p = {
      {"llama2-7b", "meta-llama/Llama-2-7b-hf",
       make_config("llama", "Llama-2-7B shape (random weights)", 32000, 4096, 32, 32, 32, 11008, 4096, 10000.0f)},
      {"llama3-8b", "meta-llama/Meta-Llama-3-8B",
       make_config("llama", "Llama-3-8B shape (random weights)", 128256, 4096, 32, 32, 8, 14336, 8192, 500000.0f)},
      {"mistral-7b", "mistralai/Mistral-7B-v0.3",
       make_config("mistral", "Mistral-7B-v0.3 shape (random weights)", 32768, 4096, 32, 32, 8, 14336, 32768,
                   1000000.0f)},
  };
  return p;
}

// Host float tensor -> bf16 rows appended to `out`, after checking its element count.
void append_bf16(std::vector<bf16>& out, const Tensor& t, int64_t want, const std::string& what) {
  if (t.numel() != want || static_cast<int64_t>(t.data.size()) != want)
    throw FormatError("cuda upload: " + what + " has " + std::to_string(t.data.size()) + " values, expected " +
                      std::to_string(want));
  const size_t at = out.size();
  out.resize(at + static_cast<size_t>(want));
  for (int64_t i = 0; i < want; ++i) out[at + i] = to_bf16(t.data[i]);
}

DeviceArray<bf16> upload_bf16(const std::vector<bf16>& host, const std::string& what, size_t& bytes) {
  bytes += host.size() * sizeof(bf16);
  return cuda::upload(host, what);
}

DeviceArray<float> upload_f32(const Tensor& t, int64_t want, const std::string& what, size_t& bytes) {
  if (static_cast<int64_t>(t.data.size()) != want)
    throw FormatError("cuda upload: " + what + " has " + std::to_string(t.data.size()) + " values, expected " +
                      std::to_string(want));
  bytes += t.data.size() * sizeof(float);
  return cuda::upload(t.data, what);
}

}  // namespace

bool available() { return device_count() > 0; }

std::string device_name() {
  if (!available()) throw CudaError("cuda: no CUDA device found (no GPU or no driver)");
  return device_description();
}

std::vector<std::string> preset_names() {
  std::vector<std::string> names;
  for (const Preset& p : presets()) names.push_back(p.name);
  return names;
}

ModelConfig preset_config(const std::string& name) {
  std::string known;
  for (const Preset& p : presets()) {
    if (name == p.name) return p.config;
    known += (known.empty() ? "" : ", ") + std::string(p.name);
  }
  throw UsageError("unknown model preset '" + name + "' (known: " + known + ")");
}

Predictor random_predictor(const ModelConfig& c, const PrunePlan& plan, uint64_t seed, int n_hidden) {
  Predictor p = Predictor::random(c, plan, seed, n_hidden);
  p.info["origin"] = "cuda::random_predictor seed " + std::to_string(seed);
  return p;
}

CudaModel::CudaModel() : impl_(std::make_unique<Impl>()) {}
CudaModel::~CudaModel() = default;
const ModelConfig& CudaModel::config() const { return impl_->config; }
size_t CudaModel::weight_bytes() const { return impl_->bytes; }

std::shared_ptr<CudaModel> CudaModel::upload(const Model& model, int device) {
  const ModelConfig& c = model.config;
  c.validate(model.path.empty() ? "model" : model.path);
  std::shared_ptr<CudaModel> cm(new CudaModel());
  Impl& m = *cm->impl_;
  m.config = c;
  m.ctx = std::make_unique<Context>(device);
  m.identity = ModelIdentity::of(model);
  const int64_t d = c.n_embd, q_dim = int64_t(c.n_head) * c.head_dim, kv_dim = int64_t(c.n_head_kv) * c.head_dim;
  const ModelWeights& w = model.weights;
  if (static_cast<int>(w.layers.size()) != c.n_layer)
    throw FormatError("cuda upload: model has " + std::to_string(w.layers.size()) + " layers, config says " +
                      std::to_string(c.n_layer));
  std::vector<bf16> host;
  const auto take = [&](std::initializer_list<std::pair<const Tensor*, int64_t>> parts, const std::string& what) {
    host.clear();
    for (const auto& [t, n] : parts) append_bf16(host, *t, n, what);
    return upload_bf16(host, what, m.bytes);
  };
  m.tok_embd = take({{&w.tok_embd, int64_t(c.n_vocab) * d}}, "token embedding");
  if (!w.output.empty()) m.output = take({{&w.output, int64_t(c.n_vocab) * d}}, "lm head");
  m.output_norm = upload_f32(w.output_norm, d, "output norm", m.bytes);
  for (int l = 0; l < c.n_layer; ++l) {
    const LayerWeights& lw = w.layers[l];
    const std::string name = "layer " + std::to_string(l);
    DeviceLayer dl;
    dl.attn_norm = upload_f32(lw.attn_norm, d, name + " attn_norm", m.bytes);
    dl.ffn_norm = upload_f32(lw.ffn_norm, d, name + " ffn_norm", m.bytes);
    dl.wqkv = take({{&lw.wq, q_dim * d}, {&lw.wk, kv_dim * d}, {&lw.wv, kv_dim * d}}, name + " wq|wk|wv");
    if (c.qkv_bias) dl.bqkv = take({{&lw.bq, q_dim}, {&lw.bk, kv_dim}, {&lw.bv, kv_dim}}, name + " bq|bk|bv");
    dl.wo = take({{&lw.wo, d * q_dim}}, name + " wo");
    dl.wgu = take({{&lw.w_gate, int64_t(c.n_ff) * d}, {&lw.w_up, int64_t(c.n_ff) * d}}, name + " w_gate|w_up");
    dl.wdown = take({{&lw.w_down, d * c.n_ff}}, name + " w_down");
    m.layers.push_back(std::move(dl));
  }
  m.inv_freq = cuda::upload(rope_inv_freq(c), "rope inv_freq");
  return cm;
}

std::shared_ptr<CudaModel> CudaModel::random(const ModelConfig& config, uint64_t seed, int device) {
  config.validate(config.name.empty() ? "model config" : config.name);
  std::shared_ptr<CudaModel> cm(new CudaModel());
  Impl& m = *cm->impl_;
  m.config = config;
  const ModelConfig& c = m.config;
  m.ctx = std::make_unique<Context>(device);
  Context& ctx = *m.ctx;
  const int64_t d = c.n_embd, q_dim = int64_t(c.n_head) * c.head_dim, kv_dim = int64_t(c.n_head_kv) * c.head_dim;
  // Uniform with standard deviation 0.02 (Hugging Face's initializer_range), one seed per tensor.
  const float bound = 0.02f * std::sqrt(3.0f);
  uint64_t tensor = seed * 1000003u;
  const auto rand = [&](int64_t count, const std::string& what) {
    DeviceArray<bf16> a(static_cast<size_t>(count), what);
    fill_uniform(ctx, a.data(), count, ++tensor, bound);
    m.bytes += a.bytes();
    return a;
  };
  const auto ones = [&](int64_t count, const std::string& what) {
    DeviceArray<float> a(static_cast<size_t>(count), what);
    fill_value(ctx, a.data(), count, 1.0f);
    m.bytes += a.bytes();
    return a;
  };
  m.tok_embd = rand(int64_t(c.n_vocab) * d, "token embedding");
  if (!c.tied_embeddings) m.output = rand(int64_t(c.n_vocab) * d, "lm head");
  m.output_norm = ones(d, "output norm");
  for (int l = 0; l < c.n_layer; ++l) {
    const std::string name = "layer " + std::to_string(l);
    DeviceLayer dl;
    dl.attn_norm = ones(d, name + " attn_norm");
    dl.ffn_norm = ones(d, name + " ffn_norm");
    dl.wqkv = rand((q_dim + 2 * kv_dim) * d, name + " wq|wk|wv");
    if (c.qkv_bias) dl.bqkv = rand(q_dim + 2 * kv_dim, name + " bq|bk|bv");
    dl.wo = rand(d * q_dim, name + " wo");
    dl.wgu = rand(2 * int64_t(c.n_ff) * d, name + " w_gate|w_up");
    dl.wdown = rand(d * c.n_ff, name + " w_down");
    m.layers.push_back(std::move(dl));
  }
  m.inv_freq = cuda::upload(rope_inv_freq(c), "rope inv_freq");
  ctx.synchronize("random weights");
  return cm;
}

}  // namespace sdtp::cuda
