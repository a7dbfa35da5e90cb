// Quantised decode matvecs (see q8.h).
#include "backend/cpu/q8.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define SDTP_Q8_VNNI 1
#endif

namespace sdtp::cpu {

namespace {

float half_to_float(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

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

float hsum(__m256 acc) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  s = _mm_hadd_ps(s, s);
  s = _mm_hadd_ps(s, s);
  return _mm_cvtss_f32(s);
}

// Σ_b ws[b]·xs[b]·Σ_i w[b,i]·x[b,i] over int8 blocks.
float dot_q8(const int8_t* wq, const float* ws, const int8_t* xq, const float* xs, int64_t n_blocks) {
#if SDTP_Q8_VNNI
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < n_blocks; ++b) {
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wq + b * kQ8Block));
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + b * kQ8Block));
    // vpdpbusd multiplies unsigned by signed bytes: use |w| and x·sign(w).
    const __m256i p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(ws[b] * xs[b]), acc);
  }
  return hsum(acc);
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

// Q4_1 block b holds w[i] = d·q[i] + m with q[i] the low nibble of byte i (i < 16) or the high
// nibble of byte i-16. Σ_i w[i]·xs·x[i] = d·xs·Σ q[i]·x[i] + m·xs·Σ x[i].
float dot_q4_1(const uint8_t* blocks, const int8_t* xq, const float* xs, const int32_t* xsum, int64_t n_blocks) {
#if SDTP_Q8_VNNI
  __m256 acc = _mm256_setzero_ps();
  float offset = 0.0f;
  const __m128i low4 = _mm_set1_epi8(0x0F);
  for (int64_t b = 0; b < n_blocks; ++b) {
    const uint8_t* blk = blocks + b * kQ4_1BlockBytes;
    const float d = half_to_float(blk), m = half_to_float(blk + 2);
    const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 4));
    const __m128i lo = _mm_and_si128(packed, low4);
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low4);
    const __m256i w = _mm256_set_m128i(hi, lo);  // elements 0..15 then 16..31, unsigned 0..15
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + b * kQ8Block));
    const __m256i p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, x);
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(d * xs[b]), acc);
    offset += m * xs[b] * static_cast<float>(xsum[b]);
  }
  return hsum(acc) + offset;
#else
  float sum = 0.0f;
  for (int64_t b = 0; b < n_blocks; ++b) {
    const uint8_t* blk = blocks + b * kQ4_1BlockBytes;
    const float d = half_to_float(blk), m = half_to_float(blk + 2);
    int32_t p = 0;
    for (int i = 0; i < 16; ++i) {
      p += int32_t(blk[4 + i] & 0x0F) * xq[b * kQ8Block + i];
      p += int32_t(blk[4 + i] >> 4) * xq[b * kQ8Block + 16 + i];
    }
    sum += d * xs[b] * static_cast<float>(p) + m * xs[b] * static_cast<float>(xsum[b]);
  }
  return sum;
#endif
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

void matmul_quant(const float* x, int64_t n, const QuantMatrix& w, const float* bias, float* y) {
  const int64_t k = w.k, nb = k / kQ8Block;
  std::vector<int8_t> xq(static_cast<size_t>(n * k));
  std::vector<float> xs(static_cast<size_t>(n * nb));
  std::vector<int32_t> xsum(static_cast<size_t>(n * nb));
  for (int64_t r = 0; r < n; ++r) quantize_row(x + r * k, k, xq.data() + r * k, xs.data() + r * nb, xsum.data() + r * nb);
  const bool q4 = w.kind == QuantMatrix::Kind::q4_1;
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < w.m; ++j) {
    for (int64_t r = 0; r < n; ++r) {
      const float dot = q4 ? dot_q4_1(w.q4.data() + j * nb * kQ4_1BlockBytes, xq.data() + r * k, xs.data() + r * nb,
                                      xsum.data() + r * nb, nb)
                           : dot_q8(w.q.data() + j * k, w.scale.data() + j * nb, xq.data() + r * k,
                                    xs.data() + r * nb, nb);
      y[r * w.m + j] = dot + (bias ? bias[j] : 0.0f);
    }
  }
}

}  // namespace sdtp::cpu
