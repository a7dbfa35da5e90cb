// The device side of a CudaModel (include/sdtp/cuda.h): the Context every session of the model
// queues its work on, and the weights in the layouts the forward pass reads: Q|K|V fused into one
// [(n_head + 2·n_head_kv)·head_dim x n_embd] matrix, gate|up into one [2·n_ff x n_embd] matrix,
// bf16 projections, float32 norm weights and RoPE inverse frequencies.
#pragma once

#include <memory>
#include <optional>

#include "backend/cuda/device.h"
#include "sdtp/cuda.h"
#include "sdtp/predictor.h"

namespace sdtp::cuda {

struct DeviceLayer {
  DeviceArray<float> attn_norm, ffn_norm;  // [n_embd]
  DeviceArray<bf16> wqkv;                  // [q_dim + 2·kv_dim, n_embd]
  DeviceArray<bf16> bqkv;                  // [q_dim + 2·kv_dim] or empty
  DeviceArray<bf16> wo;                    // [n_embd, q_dim]
  DeviceArray<bf16> wgu;                   // [2·n_ff, n_embd]
  DeviceArray<bf16> wdown;                 // [n_embd, n_ff]
};

struct CudaModel::Impl {
  ModelConfig config;
  std::unique_ptr<Context> ctx;  // one stream for the model and all its sessions
  DeviceArray<bf16> tok_embd;    // [n_vocab, n_embd]
  DeviceArray<bf16> output;      // [n_vocab, n_embd]; empty when tied
  DeviceArray<float> output_norm, inv_freq;
  std::vector<DeviceLayer> layers;
  std::optional<ModelIdentity> identity;  // of the host model it came from (none for random weights)
  size_t bytes = 0;

  const bf16* lm_head() const { return output.size() ? output.data() : tok_embd.data(); }
};

}  // namespace sdtp::cuda
