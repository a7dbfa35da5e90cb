// The CUDA backend (backend.h) on the kernels of ops.h / model_ops.h: bf16 activations, weights
// and KV cache, float32 accumulation; decode steps captured as CUDA graphs (run_step).
#pragma once

#include <memory>

#include "backend/backend.h"

namespace sdtp::cuda {

// Number of usable CUDA devices; 0 when there is no device or no driver (never throws).
int cuda_device_count();
// Throws UsageError ("--device cuda:1: only 1 CUDA device found" / "no CUDA device found").
std::shared_ptr<Backend> make_cuda_backend(int device);

}  // namespace sdtp::cuda
