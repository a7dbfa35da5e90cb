// Device plumbing of the CUDA backend (see device.h): errors, device discovery, Context, memory.
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "backend/cuda/check.cuh"
#include "backend/cuda/device.h"

namespace sdtp::cuda {
namespace detail {

void throw_cuda(cudaError_t e, const char* op, const char* call) {
  throw CudaError(std::string("cuda: ") + op + ": " + call + " failed: " + cudaGetErrorName(e) + " (" +
                  cudaGetErrorString(e) + ")");
}

void throw_cublas(int status, const char* op, const char* call) {
  throw CudaError(std::string("cuda: ") + op + ": " + call + " failed: cuBLAS status " + std::to_string(status) +
                  " (" + cublasGetStatusString(static_cast<cublasStatus_t>(status)) + ")");
}

void check_launch(const Context& ctx, const char* op) {
  check(cudaGetLastError(), op, "kernel launch");
  if (ctx.sync_each_op()) check(cudaStreamSynchronize(ctx.stream()), op, "cudaStreamSynchronize after launch");
}

void require(bool ok, const char* op, const std::string& what) {
  if (!ok) throw Error(std::string("cuda: ") + op + ": " + what);
}

}  // namespace detail

using detail::check;

bf16 to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  bf16 r;
  if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep it a quiet NaN
    r.bits = static_cast<uint16_t>((u >> 16) | 0x40u);
    return r;
  }
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
  r.bits = static_cast<uint16_t>(u >> 16);
  return r;
}

float to_float(bf16 x) {
  const uint32_t u = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

std::vector<bf16> to_bf16(const std::vector<float>& x) {
  std::vector<bf16> r(x.size());
  for (size_t i = 0; i < x.size(); ++i) r[i] = to_bf16(x[i]);
  return r;
}

std::vector<float> to_float(const std::vector<bf16>& x) {
  std::vector<float> r(x.size());
  for (size_t i = 0; i < x.size(); ++i) r[i] = to_float(x[i]);
  return r;
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky-free error so later calls start clean
    return 0;
  }
  return n;
}

std::string device_description() {
  int dev = 0;
  check(cudaGetDevice(&dev), "device_description", "cudaGetDevice");
  cudaDeviceProp p{};
  check(cudaGetDeviceProperties(&p, dev), "device_description", "cudaGetDeviceProperties");
  int rt = 0, drv = 0;
  cudaRuntimeGetVersion(&rt);
  cudaDriverGetVersion(&drv);
  std::ostringstream s;
  s << p.name << ", compute capability " << p.major << "." << p.minor << ", " << p.multiProcessorCount << " SMs, "
    << (p.totalGlobalMem >> 20) << " MiB, L2 " << (p.l2CacheSize >> 20) << " MiB, runtime " << rt << ", driver "
    << drv;
  return s.str();
}

DeviceBuffer::DeviceBuffer(size_t bytes, std::string what) {
  if (bytes == 0) return;
  const cudaError_t e = cudaMalloc(&ptr_, bytes);
  if (e == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    ptr_ = nullptr;
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    std::ostringstream s;
    s << "cuda: out of device memory allocating " << bytes << " bytes (" << (bytes >> 20) << " MiB) for " << what
      << "; the device has " << (free_b >> 20) << " MiB free of " << (total_b >> 20) << " MiB";
    DeviceOutOfMemoryError err(s.str());
    err.bytes_requested = bytes;
    throw err;
  }
  check(e, ("allocate " + what).c_str(), "cudaMalloc");
  bytes_ = bytes;
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_) cudaFree(ptr_);
}

void copy_to_device(void* dst, const void* src, size_t bytes, const char* what) {
  check(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), what, "cudaMemcpy host to device");
}

void copy_to_host(void* dst, const void* src, size_t bytes, const char* what) {
  check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), what, "cudaMemcpy device to host");
}

namespace {
// cuBLASLt workspace: NVIDIA recommends 32 MiB on Hopper.
constexpr size_t kWorkspaceBytes = size_t{32} << 20;
}  // namespace

Context::Context(int device) : device_(device) {
  const int n = device_count();
  if (n == 0) throw CudaError("cuda: no CUDA device found (cudaGetDeviceCount reports none or no driver)");
  if (device < 0 || device >= n) {
    throw CudaError("cuda: device " + std::to_string(device) + " requested but only " + std::to_string(n) +
                    " device(s) present");
  }
  check(cudaSetDevice(device), "Context", "cudaSetDevice");
  check(cudaDeviceGetAttribute(&sm_count_, cudaDevAttrMultiProcessorCount, device), "Context",
        "cudaDeviceGetAttribute(multiProcessorCount)");
  const char* sync = std::getenv("SDTP_CUDA_SYNC");
  sync_each_op_ = sync && std::strcmp(sync, "0") != 0 && *sync != '\0';
  // A blocking stream: the legacy default stream, which the plain synchronous copies use, waits for
  // it, so copy_to_host after an op sees the op's result.
  cudaStream_t s = nullptr;
  check(cudaStreamCreate(&s), "Context", "cudaStreamCreate");
  stream_ = s;
  cublasLtHandle_t lt = nullptr;
  SDTP_CUBLAS_CHECK(cublasLtCreate(&lt), "Context");
  cublaslt_ = lt;
  cublasHandle_t h = nullptr;
  SDTP_CUBLAS_CHECK(cublasCreate(&h), "Context");
  cublas_ = h;
  SDTP_CUBLAS_CHECK(cublasSetStream(h, s), "Context");
  workspace_ = DeviceBuffer(kWorkspaceBytes, "cuBLASLt workspace");
  SDTP_CUBLAS_CHECK(cublasSetWorkspace(h, workspace_.data(), workspace_.bytes()), "Context");
}

Context::~Context() {
  if (stream_) cudaStreamSynchronize(stream_);
  if (cublas_) cublasDestroy(static_cast<cublasHandle_t>(cublas_));
  if (cublaslt_) cublasLtDestroy(static_cast<cublasLtHandle_t>(cublaslt_));
  if (stream_) cudaStreamDestroy(stream_);
}

void Context::synchronize(const char* what) const {
  check(cudaStreamSynchronize(stream_), what, "cudaStreamSynchronize");
}

}  // namespace sdtp::cuda
