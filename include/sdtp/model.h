// A loaded model: its configuration (plain data), its float32 weights and its tokenizer.
// load_model() takes a .gguf file or a Hugging Face folder (config.json + *.safetensors).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sdtp/tensor.h"
#include "sdtp/tokenizer.h"

namespace sdtp {

struct RopeScaling {
  std::string type = "none";  // "none", "linear", "llama3"
  float factor = 1.0f;
  float low_freq_factor = 1.0f;   // llama3
  float high_freq_factor = 4.0f;  // llama3
  int original_max_position = 8192;  // llama3
};

// The llama family (Llama 2/3, Mistral, SmolLM2) and Qwen2 share one block; these fields are all
// that tell them apart.
struct ModelConfig {
  std::string arch;  // "llama", "mistral" or "qwen2"
  std::string name;  // human-readable model name, when the file has one
  int n_vocab = 0;
  int n_embd = 0;     // hidden size
  int n_layer = 0;
  int n_head = 0;
  int n_head_kv = 0;  // < n_head for grouped-query attention
  int head_dim = 0;   // usually n_embd / n_head, but may be set explicitly
  int n_ff = 0;       // MLP intermediate size
  int n_ctx_train = 0;  // context length the model was trained with
  float rms_eps = 1e-5f;
  float rope_theta = 10000.0f;
  RopeScaling rope_scaling;
  bool tied_embeddings = false;  // lm head reuses the token embedding matrix
  bool qkv_bias = false;         // Qwen2: q/k/v projections have biases

  // Parameter count of the transformer blocks plus embedding and lm head (counted once if tied).
  int64_t n_params() const;
  // Throws FormatError naming `source` if a field is missing or inconsistent.
  void validate(const std::string& source) const;
};

// Weights in PyTorch layout: a projection W has shape {out, in} and computes y = x W^T.
// Q and K are stored in the Hugging Face (rotate-half / NeoX) RoPE convention whatever the file's.
struct LayerWeights {
  Tensor attn_norm;       // {n_embd}
  Tensor wq, wk, wv, wo;  // {n_head*head_dim, n_embd}, {n_head_kv*head_dim, n_embd} x2, {n_embd, n_head*head_dim}
  Tensor bq, bk, bv;      // biases, empty unless config.qkv_bias
  Tensor ffn_norm;        // {n_embd}
  Tensor w_gate, w_up;    // {n_ff, n_embd}
  Tensor w_down;          // {n_embd, n_ff}
};

struct ModelWeights {
  Tensor tok_embd;     // {n_vocab, n_embd}
  Tensor output_norm;  // {n_embd}
  Tensor output;       // {n_vocab, n_embd}; empty when tied (use tok_embd)
  std::vector<LayerWeights> layers;

  const Tensor& lm_head() const { return output.empty() ? tok_embd : output; }
};

struct LoadOptions {
  bool progress = false;  // progress bar on stderr while dequantising
  // Q4_0, Q4_1, Q8_0, Q4_K and Q6_K weights of a GGUF stay in their blocks (no float32 copy: the CPU backend
  // multiplies them as they are, the CUDA upload and the saliency pass dequantise on the fly).
  // Off: every weight is also dequantised to float32 on load (Tensor::data).
  bool keep_quantized = true;
};

// Rows [row0, row0 + rows) of a 2-D weight as float32 into out (rows x dim(1)), from its floats or
// its quantised blocks (exactly the values a float32 load gives).
void weight_rows(const Tensor& t, int64_t row0, int64_t rows, float* out);
// All of t as float32: t.data itself when it holds floats, else its blocks dequantised into scratch.
const float* weight_values(const Tensor& t, std::vector<float>& scratch);
// Host bytes the model's weights take (floats and kept blocks).
size_t weight_host_bytes(const ModelWeights& w);

struct DeviceWeightCache;  // the model's weights as placed on devices (runtime/, one upload per device)

struct Model {
  ModelConfig config;
  ModelWeights weights;  // empty for a random_model(): its weights exist only on the device
  // Random weights (uniform, std 0.02; norm weights 1) drawn on the device from this seed, when
  // there are no host weights (speed runs of shapes too big for host memory).
  bool random_weights = false;
  uint64_t random_seed = 0;
  Tokenizer tokenizer;
  std::string path;         // what the user passed to load_model
  std::string format;       // "gguf" or "safetensors"
  std::string weight_types;  // e.g. "Q4_1 x 211, F32 x 61": the element types the file stored
  // Filled by the first Session on each device and shared by the later ones.
  mutable std::shared_ptr<DeviceWeightCache> device_weights;
};

// Loads a model from a .gguf file or a Hugging Face folder. Throws FormatError / UnsupportedError.
std::unique_ptr<Model> load_model(const std::string& path, const LoadOptions& options = {});

// Shapes of real models for speed runs with random weights: "llama2-7b" (Llama-2-7b-hf),
// "llama3-8b" (Meta-Llama-3-8B), "mistral-7b" (Mistral-7B-v0.3: no sliding window), exactly the
// Hugging Face config.json values; "smollm2-135m" (SmolLM2-135M). Throws UsageError naming them.
ModelConfig preset_config(const std::string& name);
std::vector<std::string> preset_names();
// A model of this shape whose weights are drawn on the device a Session runs on (no host copy, no
// tokenizer). The config is validated first.
std::unique_ptr<Model> random_model(const ModelConfig& config, uint64_t seed = 0);

}  // namespace sdtp
