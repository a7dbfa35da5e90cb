// CUDA device plumbing for the CUDA backend: device discovery, the per-session Context (one stream,
// the cuBLASLt handle and its workspace), device memory that reports out-of-memory with the bytes
// it asked for, host<->device copies, and bf16 storage. Plain C++: no CUDA header is needed to use
// it, so host code compiled by the C++ compiler can include it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "sdtp/error.h"

struct CUstream_st;  // cudaStream_t is CUstream_st*

namespace sdtp::cuda {

// A CUDA runtime or cuBLAS call failed (the message names the op, the call and CUDA's reason); a
// device allocation failed (what was being allocated and how many bytes): sdtp/error.h's types.
using CudaError = DeviceError;
using sdtp::DeviceOutOfMemoryError;

// bf16 storage (the upper 16 bits of an IEEE float). Same layout as CUDA's __nv_bfloat16.
struct bf16 {
  uint16_t bits = 0;
};
static_assert(sizeof(bf16) == 2);

// Round-to-nearest-even float -> bf16 and back, on the host.
bf16 to_bf16(float x);
float to_float(bf16 x);
std::vector<bf16> to_bf16(const std::vector<float>& x);
std::vector<float> to_float(const std::vector<bf16>& x);

// Number of usable CUDA devices; 0 when there is no device or no driver (never throws).
int device_count();
// One line naming the current device, compute capability, multiprocessors and memory.
std::string device_description();

// Device memory, freed on destruction. Throws DeviceOutOfMemoryError naming `what` and the bytes.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(size_t bytes, std::string what);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept { swap(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    swap(o);
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  bool empty() const { return bytes_ == 0; }

 private:
  void swap(DeviceBuffer& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
  }
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Typed device array over a DeviceBuffer.
template <class T>
class DeviceArray {
 public:
  DeviceArray() = default;
  DeviceArray(size_t count, std::string what) : buf_(count * sizeof(T), std::move(what)), count_(count) {}
  T* data() const { return static_cast<T*>(buf_.data()); }
  size_t size() const { return count_; }
  size_t bytes() const { return buf_.bytes(); }

 private:
  DeviceBuffer buf_;
  size_t count_ = 0;
};

// Synchronous copies on the legacy default stream: they wait for the ops queued before them on a
// Context's stream (a blocking stream) and are finished when they return.
void copy_to_device(void* dst, const void* src, size_t bytes, const char* what);
void copy_to_host(void* dst, const void* src, size_t bytes, const char* what);

template <class T>
DeviceArray<T> upload(const std::vector<T>& host, std::string what) {
  DeviceArray<T> d(host.size(), what);
  if (!host.empty()) copy_to_device(d.data(), host.data(), host.size() * sizeof(T), what.c_str());
  return d;
}
template <class T>
std::vector<T> download(const DeviceArray<T>& d, const char* what) {
  std::vector<T> host(d.size());
  if (!host.empty()) copy_to_host(host.data(), d.data(), d.bytes(), what);
  return host;
}

// The state every op runs with: one device, one stream, the cuBLASLt handle and its workspace.
// Ops are queued on the stream and return at once; synchronize() waits and reports any error a
// kernel raised. With SDTP_CUDA_SYNC=1 in the environment every op synchronizes and checks, so an
// asynchronous fault is reported with the name of the op that caused it.
class Context {
 public:
  // Throws CudaError when there is no usable device (the message says so).
  explicit Context(int device = 0);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  CUstream_st* stream() const { return stream_; }
  void* cublaslt() const { return cublaslt_; }  // cublasLtHandle_t
  void* cublas() const { return cublas_; }      // cublasHandle_t
  void* workspace() const { return workspace_.data(); }
  size_t workspace_bytes() const { return workspace_.bytes(); }
  int device() const { return device_; }
  int sm_count() const { return sm_count_; }
  bool sync_each_op() const { return sync_each_op_; }

  // Waits for the stream; throws CudaError naming `what` if a queued op failed.
  void synchronize(const char* what = "synchronize") const;

 private:
  int device_ = 0;
  int sm_count_ = 0;
  bool sync_each_op_ = false;
  CUstream_st* stream_ = nullptr;
  void* cublaslt_ = nullptr;
  void* cublas_ = nullptr;
  DeviceBuffer workspace_;
};

}  // namespace sdtp::cuda
