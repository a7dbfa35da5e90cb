// Model shapes for speed runs with random weights (preset_config), and random_model(): a Model
// whose weights are drawn on the device the Session runs on (see include/sdtp/model.h).
#include <string>
#include <vector>

#include "sdtp/error.h"
#include "sdtp/model.h"

namespace sdtp {

namespace {

struct Preset {
  const char* name;
  ModelConfig config;
};

ModelConfig make_config(const char* arch, const char* name, int vocab, int embd, int layers, int heads, int kv_heads,
                        int ff, int ctx, float theta, bool tied = false) {
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
  c.tied_embeddings = tied;
  return c;
}

// config.json of each model on the Hugging Face hub (hidden_size, num_hidden_layers,
// num_attention_heads, num_key_value_heads, intermediate_size, vocab_size,
// max_position_embeddings, rope_theta; no rope scaling).
const std::vector<Preset>& presets() {
  static const std::vector<Preset> p = [] {
    std::vector<Preset> v = {
        {"llama2-7b",  // meta-llama/Llama-2-7b-hf
         make_config("llama", "Llama-2-7B shape (random weights)", 32000, 4096, 32, 32, 32, 11008, 4096, 10000.0f)},
        {"llama3-8b",  // meta-llama/Meta-Llama-3-8B
         make_config("llama", "Llama-3-8B shape (random weights)", 128256, 4096, 32, 32, 8, 14336, 8192, 500000.0f)},
        {"mistral-7b",  // mistralai/Mistral-7B-v0.3
         make_config("mistral", "Mistral-7B-v0.3 shape (random weights)", 32768, 4096, 32, 32, 8, 14336, 32768,
                     1000000.0f)},
        {"smollm2-135m",  // HuggingFaceTB/SmolLM2-135M (rms_norm_eps 1e-5, tied embeddings)
         make_config("llama", "SmolLM2-135M shape (random weights)", 49152, 576, 30, 9, 3, 1536, 8192, 100000.0f,
                     true)},
    };
    return v;
  }();
  return p;
}

}  // namespace

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

std::unique_ptr<Model> random_model(const ModelConfig& config, uint64_t seed) {
  config.validate(config.name.empty() ? "model config" : config.name);
  auto m = std::make_unique<Model>();
  m->config = config;
  m->random_weights = true;
  m->random_seed = seed;
  m->path = config.name;
  m->format = "random";
  m->weight_types = "random (drawn on the device)";
  return m;
}

}  // namespace sdtp
