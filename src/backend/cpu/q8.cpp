// Quantised decode matvecs (see q8.h).
#include "backend/cpu/q8.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "backend/cpu/isa.h"
#include "backend/cpu/kernels.h"

namespace sdtp::cpu {

namespace {

// Quantises one row of k floats: per block, scale = max|x| / 127, q = round(x / scale). Also
// returns each block's sum of q (the Q4_1 dot product needs it for the offset term).
void quantize_row(const float* x, int64_t k, int8_t* q, float* scale, int32_t* qsum) {
  for (int64_t b = 0; b < k / kQ8Block; ++b) {
    const float* xb = x + b * kQ8Block;
    float amax = 0.0f;
    for (int i = 0; i < kQ8Block; ++i) amax = std::max(amax, std::abs(xb[i]));
    const float d = amax / 127.0f;
    const float id = d > 0.0f ? 1.0f / d : 0.0f;
    int32_t sum = 0;
    for (int i = 0; i < kQ8Block; ++i) {
      const int8_t v = static_cast<int8_t>(std::lrint(xb[i] * id));
      q[b * kQ8Block + i] = v;
      sum += v;
    }
    scale[b] = d;
    if (qsum) qsum[b] = sum;
  }
}

}  // namespace

QuantMatrix quantize_q8(const float* w, int64_t m, int64_t k) {
  QuantMatrix out;
  out.kind = QuantMatrix::Kind::q8_0;
  out.m = m;
  out.k = k;
  out.q.resize(static_cast<size_t>(m * k));
  out.scale.resize(static_cast<size_t>(m * (k / kQ8Block)));
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < m; ++r)
    quantize_row(w + r * k, k, out.q.data() + r * k, out.scale.data() + r * (k / kQ8Block), nullptr);
  return out;
}

QuantMatrix q8_0_from_blocks(const uint8_t* blocks, int64_t m, int64_t k) {
  constexpr int64_t kBlockBytes = 2 + kQ8Block;  // f16 d, 32 int8
  QuantMatrix out;
  out.kind = QuantMatrix::Kind::q8_0;
  out.m = m;
  out.k = k;
  const int64_t nb = m * (k / kQ8Block);
  out.q.resize(static_cast<size_t>(m * k));
  out.scale.resize(static_cast<size_t>(nb));
  for (int64_t b = 0; b < nb; ++b) {
    out.scale[b] = half_to_float(blocks + b * kBlockBytes);
    std::memcpy(out.q.data() + b * kQ8Block, blocks + b * kBlockBytes + 2, kQ8Block);
  }
  return out;
}

QuantMatrix q4_1_from_blocks(const uint8_t* blocks, int64_t m, int64_t k) {
  QuantMatrix out;
  out.kind = QuantMatrix::Kind::q4_1;
  out.m = m;
  out.k = k;
  out.q4.assign(blocks, blocks + m * (k / kQ8Block) * kQ4_1BlockBytes);
  return out;
}

QuantMatrix q4_1_view(const uint8_t* blocks, int64_t m, int64_t k) {
  QuantMatrix out;
  out.kind = QuantMatrix::Kind::q4_1;
  out.m = m;
  out.k = k;
  out.q4_view = blocks;
  return out;
}

void matmul_quant(const float* x, int64_t n, const QuantMatrix& w, const float* bias, float* y) {
  const int64_t k = w.k, nb = k / kQ8Block;
  std::vector<int8_t> xq(static_cast<size_t>(n * k));
  std::vector<float> xs(static_cast<size_t>(n * nb));
  std::vector<int32_t> xsum(static_cast<size_t>(n * nb));
  for (int64_t r = 0; r < n; ++r) quantize_row(x + r * k, k, xq.data() + r * k, xs.data() + r * nb, xsum.data() + r * nb);
  const bool q4 = w.kind == QuantMatrix::Kind::q4_1;
  const Kernels& kern = kernels();
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < w.m; ++j) {
    for (int64_t r = 0; r < n; ++r) {
      const float dot = q4 ? kern.dot_q4_1(w.q4_blocks() + j * nb * kQ4_1BlockBytes, xq.data() + r * k,
                                           xs.data() + r * nb, xsum.data() + r * nb, nb)
                           : kern.dot_q8_0(w.q.data() + j * k, w.scale.data() + j * nb, xq.data() + r * k,
                                           xs.data() + r * nb, nb);
      y[r * w.m + j] = dot + (bias ? bias[j] : 0.0f);
    }
  }
}

}  // namespace sdtp::cpu
