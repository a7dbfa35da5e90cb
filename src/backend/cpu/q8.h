// 8-bit weights for the memory-bound decode matvecs: each row of W is split in blocks of 32
// along k, stored as int8 with one float scale per block (ggml's Q8_0 layout, scales in f32).
// Activations are quantised the same way on the fly and the dot products run in int32
// (AVX-512 VNNI where present), like llama.cpp's CPU backend. Decode reads 4x fewer weight bytes
// than float32 at about 1e-3 relative error per dot product.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace sdtp::cpu {

constexpr int64_t kQ8Block = 32;

struct Q8Matrix {
  int64_t m = 0, k = 0;      // rows, columns (k % 32 == 0)
  std::vector<int8_t> q;     // [m x k]
  std::vector<float> scale;  // [m x k/32]
  bool empty() const { return m == 0; }
  size_t bytes() const { return q.size() + scale.size() * sizeof(float); }
};

// True when k allows the 8-bit layout.
inline bool q8_supported(int64_t k) { return k % kQ8Block == 0; }

Q8Matrix quantize_q8(const float* w, int64_t m, int64_t k);

// y[n x m] = x[n x k] · W^T (+ bias), x quantised per 32-block to int8.
void matmul_q8(const float* x, int64_t n, const Q8Matrix& w, const float* bias, float* y);

}  // namespace sdtp::cpu
