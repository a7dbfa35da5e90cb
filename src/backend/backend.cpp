// Backend selection by device name, and the device-independent parts of backend.h.
#include "backend/backend.h"

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>

#include "backend/cpu/cpu_backend.h"
#include "sdtp/error.h"
#if SDTP_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

namespace sdtp {

size_t elem_bytes(ElemType t) {
  switch (t) {
    case ElemType::f32: return 4;
    case ElemType::bf16: return 2;
    case ElemType::f16: return 2;
    case ElemType::i32: return 4;
  }
  return 0;
}

const char* elem_name(ElemType t) {
  switch (t) {
    case ElemType::f32: return "f32";
    case ElemType::bf16: return "bf16";
    case ElemType::f16: return "f16";
    case ElemType::i32: return "i32";
  }
  return "?";
}

int64_t KVView::max_n() const {
  int64_t m = 0;
  for (int64_t c : n) m = std::max(m, c);
  return m;
}

int64_t KVView::total() const {
  int64_t t = 0;
  for (int64_t c : n) t += c;
  return t;
}

DeviceTensor DeviceTensor::rows(int64_t first, int64_t count) const {
  if (first < 0 || count < 0 || first + count > rows_)
    throw Error("tensor rows [" + std::to_string(first) + ", " + std::to_string(first + count) + ") outside [0, " +
                std::to_string(rows_) + ")");
  return DeviceTensor(storage_, static_cast<char*>(data_) + static_cast<size_t>(first) * row_bytes(), type_, count,
                      cols_);
}

namespace {

// "cuda" -> 0, "cuda:3" -> 3; -1 when `device` does not name a CUDA device.
int cuda_index(const std::string& device) {
  if (device == "cuda") return 0;
  if (device.rfind("cuda:", 0) != 0 || device.size() == 5) return -1;
  int idx = 0;
  for (size_t i = 5; i < device.size(); ++i) {
    if (device[i] < '0' || device[i] > '9' || idx > 1000) return -1;
    idx = idx * 10 + (device[i] - '0');
  }
  return idx;
}

}  // namespace

std::shared_ptr<Backend> make_backend(const std::string& device, const BackendOptions& options) {
  if (device == "cpu") return cpu::make_cpu_backend(options);
  // One backend per device for the whole process: sessions on a device share its stream and the
  // weights placed there.
  static std::mutex mu;
  static std::map<std::string, std::shared_ptr<Backend>> made;
  std::lock_guard<std::mutex> lock(mu);
  const int idx = cuda_index(device);
  if (idx < 0) throw UsageError("unknown device '" + device + "' (expected cpu, cuda or cuda:N)");
#if SDTP_CUDA
  const std::string key = "cuda:" + std::to_string(idx);
  auto& b = made[key];
  if (!b) b = cuda::make_cuda_backend(idx);  // throws UsageError when the device does not exist
  return b;
#else
  throw UsageError("device '" + device + "': this sdtp was built without CUDA (rebuild with nvcc and -DSDTP_CUDA=ON)");
#endif
}

bool backend_available(const std::string& device) {
  if (device == "cpu") return true;
  const int idx = cuda_index(device);
  if (idx < 0) return false;
#if SDTP_CUDA
  return idx < cuda::cuda_device_count();
#else
  return false;
#endif
}

}  // namespace sdtp
