// A tensor as a file stores it: name, element type, shape, and a view of its bytes inside a mapped
// file. Both the GGUF and the safetensors readers produce these; the loader turns them into floats.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sdtp {

// Element types, numbered as ggml's ggml_type so GGUF values map directly.
enum class DType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  BF16 = 30,
};

struct RawTensor {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;  // PyTorch order, outermost first (GGUF's ne[] reversed)
  const uint8_t* data = nullptr;  // points into the mapped file; valid while the file object lives
  uint64_t nbytes = 0;            // validated: equals dtype_nbytes(dtype, numel)

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

}  // namespace sdtp
