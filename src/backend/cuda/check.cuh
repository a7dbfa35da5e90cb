// Error checks shared by the CUDA backend's .cu files: every runtime call, cuBLAS call and kernel
// launch goes through one of these, so a failure is reported with the op's name.
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "backend/cuda/device.h"

namespace sdtp::cuda::detail {

[[noreturn]] void throw_cuda(cudaError_t e, const char* op, const char* call);
[[noreturn]] void throw_cublas(int status, const char* op, const char* call);

inline void check(cudaError_t e, const char* op, const char* call) {
  if (e != cudaSuccess) throw_cuda(e, op, call);
}
inline void check_cublas(int status, const char* op, const char* call) {
  if (status != 0) throw_cublas(status, op, call);
}
// After a kernel launch: launch errors now; with SDTP_CUDA_SYNC=1, execution errors too.
void check_launch(const Context& ctx, const char* op);

inline cudaStream_t stream_of(const Context& ctx) { return ctx.stream(); }
inline const __nv_bfloat16* bf(const bf16* p) { return reinterpret_cast<const __nv_bfloat16*>(p); }
inline __nv_bfloat16* bf(bf16* p) { return reinterpret_cast<__nv_bfloat16*>(p); }

// Threads per block of the element-wise kernels.
constexpr int kElementwiseThreads = 256;

// Blocks for a grid-stride loop over `work` items (enough to fill the device, no more).
inline unsigned grid_for(const Context& ctx, int64_t work, int threads = kElementwiseThreads) {
  const int64_t want = (work + threads - 1) / threads;
  const int64_t cap = static_cast<int64_t>(ctx.sm_count()) * 32;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(want, cap)));
}

// 8 bf16 in 16 bytes, for vectorised loads and stores.
struct alignas(16) Bf16x8 {
  __nv_bfloat162 v[4];
};

// Host-side argument checks: the ops are internal, but a wrong size here is a bug worth a message.
void require(bool ok, const char* op, const std::string& what);

}  // namespace sdtp::cuda::detail

#define SDTP_CUDA_CHECK(call, op) ::sdtp::cuda::detail::check((call), (op), #call)
#define SDTP_CUBLAS_CHECK(call, op) ::sdtp::cuda::detail::check_cublas(static_cast<int>(call), (op), #call)
