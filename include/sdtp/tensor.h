// A weight tensor in row-major order (last dimension fastest): float32 values, or only the file's
// quantised blocks (see file_blocks).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sdtp {

struct Tensor {
  std::vector<int64_t> shape;  // outermost first, PyTorch order: a Linear weight is {out, in}
  std::vector<float> data;
  // The file's own quantised blocks of a 2-D weight whose type the CPU kernels multiply directly
  // (GGUF "Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q6_K", ggml block layout, rows in the model's order); empty otherwise. By
  // default (LoadOptions::keep_quantized) they are the only copy and `data` is empty: read the
  // values with weight_rows / weight_values (model.h). With keep_quantized off, `data` holds the
  // exact dequantised values beside them.
  std::string file_quant;
  std::vector<uint8_t> file_blocks;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  bool empty() const { return data.empty() && file_blocks.empty(); }
  // True when only the quantised blocks are held (no float32 values).
  bool quantized_only() const { return data.empty() && !file_blocks.empty(); }
  // Bytes of host memory the values take (floats and blocks).
  size_t host_bytes() const { return data.size() * sizeof(float) + file_blocks.size(); }
  int64_t dim(int i) const { return shape.at(i); }
  float* ptr() { return data.data(); }
  const float* ptr() const { return data.data(); }
};

}  // namespace sdtp
