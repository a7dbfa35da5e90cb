// The CPU backend (backend.h): float32 activations and KV cache, OpenBLAS sgemm for the prefill
// projections, the 8-bit weights of q8.h for decode (few rows), the ops of ops.h for the rest.
// It is the reference every other backend is tested against.
#pragma once

#include <memory>

#include "backend/backend.h"

namespace sdtp::cpu {

std::shared_ptr<Backend> make_cpu_backend(const BackendOptions& options);

}  // namespace sdtp::cpu
