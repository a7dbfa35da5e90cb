// Inference on an NVIDIA GPU: a CudaModel holds a model's weights on the device (bf16; norm
// weights float32), a CudaSession runs one sequence through it with the same semantics as the CPU
// Session (prefill with an optional PrunePlan, then decode; the KV cache of each layer holds the
// tokens alive there, with their original positions). Plain C++: no CUDA header is needed to use
// it. Available when sdtp was built with SDTP_CUDA (the library sdtp_cuda); errors are sdtp::Error
// subclasses (a CUDA failure or device out-of-memory names the op and the bytes).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sdtp/model.h"
#include "sdtp/predictor.h"
#include "sdtp/prune.h"
#include "sdtp/session.h"

namespace sdtp::cuda {

// True when a usable CUDA device and driver exist (never throws).
bool available();
// One line naming device 0 (name, compute capability, memory); throws CudaError without a device.
std::string device_name();

// Shapes of real models for speed runs with random weights: "llama2-7b" (Llama-2-7b-hf),
// "llama3-8b" (Meta-Llama-3-8B), "mistral-7b" (Mistral-7B-v0.3: no sliding window). Exactly the
// Hugging Face config.json values. Throws UsageError naming the known presets.
ModelConfig preset_config(const std::string& name);
std::vector<std::string> preset_names();

// A predictor of the right shape with fresh weights (torch.nn.Linear's init, like
// Predictor::random) for a config alone: speed runs of models that exist only on the device.
// n_hidden 0 = n_embd / 4.
Predictor random_predictor(const ModelConfig& config, const PrunePlan& plan, uint64_t seed, int n_hidden = 0);

class CudaModel {
 public:
  // Dequantised host floats -> bf16 on device `device`. The host model may be freed afterwards.
  static std::shared_ptr<CudaModel> upload(const Model& model, int device = 0);
  // Random weights (uniform, std 0.02; norm weights 1) generated on the device: no host copy, so a
  // 7B preset needs no 28 GB of host memory. The config is validated first.
  static std::shared_ptr<CudaModel> random(const ModelConfig& config, uint64_t seed = 0, int device = 0);
  ~CudaModel();
  CudaModel(const CudaModel&) = delete;
  CudaModel& operator=(const CudaModel&) = delete;

  const ModelConfig& config() const;
  size_t weight_bytes() const;  // device bytes of the weights

  struct Impl;
  const Impl& impl() const { return *impl_; }

 private:
  CudaModel();
  std::unique_ptr<Impl> impl_;
};

struct CudaSessionOptions {
  int n_ctx = 0;  // context length in tokens; 0 = the model's training context, capped at 8192
  // Token pruning applied to every prefill; "sdtp" needs plan.predictor (its stages go to the
  // device), "saliency" is not available on the GPU.
  PrunePlan prune;
};

class CudaSession {
 public:
  // Allocates the KV cache for n_ctx tokens on the device; throws DeviceOutOfMemoryError
  // ("KV cache for 32768 tokens needs 16.0 GiB, 9.2 GiB free") when it does not fit.
  explicit CudaSession(std::shared_ptr<const CudaModel> model, const CudaSessionOptions& options = {});
  ~CudaSession();
  CudaSession(const CudaSession&) = delete;
  CudaSession& operator=(const CudaSession&) = delete;

  // Appends `ids` at positions n_past()..; returns the last position's logits [n_vocab] (host).
  // Throws UsageError if the tokens do not fit in the context or an id is out of the vocabulary.
  const std::vector<float>& prefill(const std::vector<int32_t>& ids);
  // One token at position n_past(); returns its logits [n_vocab].
  const std::vector<float>& decode(int32_t id);

  // Replaces the pruning plan of later prefills (validated like the constructor's).
  void set_prune(const PrunePlan& plan);
  const PrunePlan& prune() const;

  void reset();  // empties the KV cache
  int n_past() const;
  int n_ctx() const;
  size_t kv_bytes() const;  // bytes of KV cache in use (entries held x bytes per entry)
  // Original positions of the tokens held in layer `layer`'s KV cache.
  std::vector<int32_t> cached_positions(int layer) const;
  // Elapsed time is host wall time of the call (it ends with the logits on the host).
  const ForwardStats& last_stats() const;
  const ModelConfig& config() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sdtp::cuda
