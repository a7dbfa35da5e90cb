// 8-bit decode matvec (see q8.h).
#include "backend/cpu/q8.h"

#include <algorithm>
#include <cmath>

#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#include <immintrin.h>
#define SDTP_Q8_VNNI 1
#endif

namespace sdtp::cpu {

namespace {

// Quantises one row of k floats: per block, scale = max|x| / 127, q = round(x / scale).
void quantize_row(const float* x, int64_t k, int8_t* q, float* scale) {
  for (int64_t b = 0; b < k / kQ8Block; ++b) {
    const float* xb = x + b * kQ8Block;
    float amax = 0.0f;
    for (int i = 0; i < kQ8Block; ++i) amax = std::max(amax, std::abs(xb[i]));
    const float d = amax / 127.0f;
    const float id = d > 0.0f ? 1.0f / d : 0.0f;
    for (int i = 0; i < kQ8Block; ++i) q[b * kQ8Block + i] = static_cast<int8_t>(std::lrint(xb[i] * id));
    scale[b] = d;
  }
}

float dot_row(const int8_t* wq, const float* ws, const int8_t* xq, const float* xs, int64_t n_blocks) {
#if SDTP_Q8_VNNI
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < n_blocks; ++b) {
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wq + b * kQ8Block));
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + b * kQ8Block));
    // vpdpbusd multiplies unsigned by signed bytes: use |w| and x·sign(w).
    const __m256i aw = _mm256_sign_epi8(w, w);
    const __m256i sx = _mm256_sign_epi8(x, w);
    const __m256i p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), aw, sx);
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(ws[b] * xs[b]), acc);
  }
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  s = _mm_hadd_ps(s, s);
  s = _mm_hadd_ps(s, s);
  return _mm_cvtss_f32(s);
#else
  float sum = 0.0f;
  for (int64_t b = 0; b < n_blocks; ++b) {
    int32_t p = 0;
    for (int i = 0; i < kQ8Block; ++i) p += int32_t(wq[b * kQ8Block + i]) * int32_t(xq[b * kQ8Block + i]);
    sum += static_cast<float>(p) * ws[b] * xs[b];
  }
  return sum;
#endif
}

}  // namespace

Q8Matrix quantize_q8(const float* w, int64_t m, int64_t k) {
  Q8Matrix out;
  out.m = m;
  out.k = k;
  out.q.resize(static_cast<size_t>(m * k));
  out.scale.resize(static_cast<size_t>(m * (k / kQ8Block)));
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < m; ++r) quantize_row(w + r * k, k, out.q.data() + r * k, out.scale.data() + r * (k / kQ8Block));
  return out;
}

void matmul_q8(const float* x, int64_t n, const Q8Matrix& w, const float* bias, float* y) {
  const int64_t k = w.k, nb = k / kQ8Block;
  std::vector<int8_t> xq(static_cast<size_t>(n * k));
  std::vector<float> xs(static_cast<size_t>(n * nb));
  for (int64_t r = 0; r < n; ++r) quantize_row(x + r * k, k, xq.data() + r * k, xs.data() + r * nb);
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < w.m; ++j) {
    const int8_t* wq = w.q.data() + j * k;
    const float* ws = w.scale.data() + j * nb;
    for (int64_t r = 0; r < n; ++r) {
      y[r * w.m + j] = dot_row(wq, ws, xq.data() + r * k, xs.data() + r * nb, nb) + (bias ? bias[j] : 0.0f);
    }
  }
}

}  // namespace sdtp::cpu
