// Quantised decode matvecs (see q8.h).
#include "backend/cpu/q8.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>

#include "backend/cpu/isa.h"
#include "backend/cpu/kernels.h"
#include "formats/quants.h"

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
  const int64_t nb = k / kQ8Block;
  out.owned.resize(static_cast<size_t>(m * nb * kQ8_0BlockBytes));
#pragma omp parallel
  {
    std::vector<int8_t> q(static_cast<size_t>(k));  // one row's values and scales, per thread
    std::vector<float> d(static_cast<size_t>(nb));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < m; ++r) {
      quantize_row(w + r * k, k, q.data(), d.data(), nullptr);
      for (int64_t b = 0; b < nb; ++b) {
        uint8_t* blk = out.owned.data() + (r * nb + b) * kQ8_0BlockBytes;
        const uint16_t h = _cvtss_sh(d[b], _MM_FROUND_TO_NEAREST_INT);
        std::memcpy(blk, &h, 2);
        std::memcpy(blk + 2, q.data() + b * kQ8Block, kQ8Block);
      }
    }
  }
  return out;
}

namespace {

// Each kind and the GGUF type whose blocks it multiplies (sizes from formats' type table).
constexpr std::pair<QuantMatrix::Kind, DType> kKinds[] = {{QuantMatrix::Kind::q8_0, DType::Q8_0},
                                                          {QuantMatrix::Kind::q4_1, DType::Q4_1},
                                                          {QuantMatrix::Kind::q4_0, DType::Q4_0},
                                                          {QuantMatrix::Kind::q4_k, DType::Q4_K},
                                                          {QuantMatrix::Kind::q6_k, DType::Q6_K}};

}  // namespace

int64_t row_bytes(QuantMatrix::Kind kind, int64_t k) {
  for (const auto& [kd, d] : kKinds)
    if (kd == kind) return static_cast<int64_t>(dtype_nbytes(d, k).value_or(0));
  return 0;
}

QuantMatrix::Kind quant_kind_of(const std::string& ggml_type, int64_t k) {
  const std::optional<DType> t = dtype_from_name(ggml_type);
  if (!t || k % kQ8Block != 0) return QuantMatrix::Kind::none;
  for (const auto& [kd, d] : kKinds)
    if (d == *t) return dtype_nbytes(d, k) ? kd : QuantMatrix::Kind::none;
  return QuantMatrix::Kind::none;
}

QuantMatrix quant_blocks(QuantMatrix::Kind kind, const uint8_t* blocks, int64_t m, int64_t k, bool copy) {
  QuantMatrix out;
  out.kind = kind;
  out.m = m;
  out.k = k;
  const int64_t bytes = m * row_bytes(kind, k);
  if (copy) out.owned.assign(blocks, blocks + bytes);
  else out.view = blocks;
  return out;
}

void matmul_quant(const float* x, int64_t n, const QuantMatrix& w, const float* bias, float* y) {
  const int64_t k = w.k, nb = k / kQ8Block;
  std::vector<int8_t> xq(static_cast<size_t>(n * k));
  std::vector<float> xs(static_cast<size_t>(n * nb));
  std::vector<int32_t> xsum(static_cast<size_t>(n * nb));
  for (int64_t r = 0; r < n; ++r) quantize_row(x + r * k, k, xq.data() + r * k, xs.data() + r * nb, xsum.data() + r * nb);
  const int64_t row_size = row_bytes(w.kind, k), n_super = k / 256;
  const Kernels& kern = kernels();
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < w.m; ++j) {
    for (int64_t r = 0; r < n; ++r) {
      const uint8_t* row = w.blocks() + j * row_size;
      const int8_t* xr = xq.data() + r * k;
      const float* sr = xs.data() + r * nb;
      float dot = 0.0f;
      switch (w.kind) {
        case QuantMatrix::Kind::q4_1: dot = kern.dot_q4_1(row, xr, sr, xsum.data() + r * nb, nb); break;
        case QuantMatrix::Kind::q4_0: dot = kern.dot_q4_0(row, xr, sr, xsum.data() + r * nb, nb); break;
        case QuantMatrix::Kind::q4_k: dot = kern.dot_q4_k(row, xr, sr, xsum.data() + r * nb, n_super); break;
        case QuantMatrix::Kind::q6_k: dot = kern.dot_q6_k(row, xr, sr, xsum.data() + r * nb, n_super); break;
        default: dot = kern.dot_q8_0(row, xr, sr, nb); break;
      }
      y[r * w.m + j] = dot + (bias ? bias[j] : 0.0f);
    }
  }
}

}  // namespace sdtp::cpu
