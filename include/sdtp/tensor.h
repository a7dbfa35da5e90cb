// A plain dense float32 tensor in row-major order (last dimension fastest), as the CPU backend uses.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sdtp {

struct Tensor {
  std::vector<int64_t> shape;  // outermost first, PyTorch order: a Linear weight is {out, in}
  std::vector<float> data;
  // The file's own quantised blocks of this weight, kept where the CPU backend multiplies them
  // directly in decode (GGUF "Q4_1" and "Q8_0", ggml block layout, rows in the same order as
  // `data`); empty otherwise. `data` always holds the exact dequantised values.
  std::string file_quant;
  std::vector<uint8_t> file_blocks;

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
