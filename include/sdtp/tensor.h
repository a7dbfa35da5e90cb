// A plain dense float32 tensor in row-major order (last dimension fastest), as the CPU backend uses.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sdtp {

struct Tensor {
  std::vector<int64_t> shape;  // outermost first, PyTorch order: a Linear weight is {out, in}
  std::vector<float> data;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  bool empty() const { return data.empty(); }
  int64_t dim(int i) const { return shape.at(i); }
  float* ptr() { return data.data(); }
  const float* ptr() const { return data.data(); }
};

}  // namespace sdtp
