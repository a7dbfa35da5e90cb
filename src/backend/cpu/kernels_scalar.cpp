// Scalar reference of the CPU kernels (see kernels.h): plain loops, what every vector variant is
// tested against, and what runs when SDTP_CPU_ISA=scalar.
#include "backend/cpu/kernels.h"
#include "formats/quants.h"
#include "backend/cpu/ops.h"

namespace sdtp::cpu {

float dot_q8_0_scalar(const uint8_t* blocks, const int8_t* xq, const float* xs, int64_t n_blocks) {
  float sum = 0.0f;
  for (int64_t b = 0; b < n_blocks; ++b) {
    const uint8_t* blk = blocks + b * 34;
    const auto* wq = reinterpret_cast<const int8_t*>(blk + 2);
    int32_t p = 0;
    for (int i = 0; i < 32; ++i) p += int32_t(wq[i]) * int32_t(xq[b * 32 + i]);
    sum += static_cast<float>(p) * (half_to_float(blk) * xs[b]);
  }
  return sum;
}

namespace {

// Σ_i w[i]·xs·x[i] = d·xs·Σ q[i]·x[i] + m·xs·Σ x[i]: Q4_1 (kMin: f16 d, f16 m, nibbles) and Q4_0
// (f16 d, nibbles; m = −8·d).
template <bool kMin>
float dot_q4(const uint8_t* blocks, const int8_t* xq, const float* xs, const int32_t* xsum, int64_t n_blocks) {
  constexpr int64_t kBytes = kMin ? 20 : 18, kNibbles = kMin ? 4 : 2;
  float sum = 0.0f;
  for (int64_t b = 0; b < n_blocks; ++b) {
    const uint8_t* blk = blocks + b * kBytes;
    const float d = half_to_float(blk), m = kMin ? half_to_float(blk + 2) : -8.0f * d;
    int32_t p = 0;
    for (int i = 0; i < 16; ++i) {
      p += int32_t(blk[kNibbles + i] & 0x0F) * xq[b * 32 + i];
      p += int32_t(blk[kNibbles + i] >> 4) * xq[b * 32 + 16 + i];
    }
    sum += d * xs[b] * static_cast<float>(p) + m * xs[b] * static_cast<float>(xsum[b]);
  }
  return sum;
}

}  // namespace

float dot_q4_1_scalar(const uint8_t* blocks, const int8_t* xq, const float* xs, const int32_t* xsum,
                      int64_t n_blocks) {
  return dot_q4<true>(blocks, xq, xs, xsum, n_blocks);
}

float dot_q4_0_scalar(const uint8_t* blocks, const int8_t* xq, const float* xs, const int32_t* xsum,
                      int64_t n_blocks) {
  return dot_q4<false>(blocks, xq, xs, xsum, n_blocks);
}

float dot_q4_k_scalar(const uint8_t* blocks, const int8_t* xq, const float* xs, const int32_t* xsum,
                      int64_t n_blocks) {
  float sum = 0.0f;
  for (int64_t s = 0; s < n_blocks; ++s) {
    const uint8_t* blk = blocks + s * 144;
    const float d = half_to_float(blk), dmin = half_to_float(blk + 2);
    for (int sb = 0; sb < 8; ++sb) {
      uint8_t sc, m;
      k_scale_min(blk + 4, sb, &sc, &m);
      const uint8_t* q = blk + 16 + (sb / 2) * 32;
      const int shift = (sb % 2) * 4;
      const int64_t b = s * 8 + sb;
      int32_t p = 0;
      for (int l = 0; l < 32; ++l) p += int32_t((q[l] >> shift) & 0xF) * xq[b * 32 + l];
      sum += d * sc * xs[b] * static_cast<float>(p) - dmin * m * xs[b] * static_cast<float>(xsum[b]);
    }
  }
  return sum;
}

float dot_q6_k_scalar(const uint8_t* blocks, const int8_t* xq, const float* xs, const int32_t*,
                      int64_t n_blocks) {
  float sum = 0.0f;
  for (int64_t s = 0; s < n_blocks; ++s) {
    const uint8_t* blk = blocks + s * 210;
    const auto* scales = reinterpret_cast<const int8_t*>(blk + 192);
    const float d = half_to_float(blk + 208);
    for (int h = 0; h < 2; ++h) {
      for (int t = 0; t < 4; ++t) {
        const uint8_t* lo = blk + h * 64 + (t % 2) * 32;
        const uint8_t* hi = blk + 128 + h * 32;
        const int lshift = (t / 2) * 4;
        const int64_t b = s * 8 + h * 4 + t;
        int32_t p[2] = {0, 0};
        for (int l = 0; l < 32; ++l) {
          const int q = (((lo[l] >> lshift) & 0xF) | (((hi[l] >> (2 * t)) & 3) << 4)) - 32;
          p[l / 16] += q * xq[b * 32 + l];
        }
        const int e = (h * 128 + t * 32) / 16;
        sum += d * xs[b] * (static_cast<float>(scales[e]) * p[0] + static_cast<float>(scales[e + 1]) * p[1]);
      }
    }
  }
  return sum;
}

float exp_shifted_sum_scalar(float* x, int64_t n, float shift) {
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = exp_approx(x[i] - shift);
    sum += x[i];
  }
  return sum;
}

void swiglu_scalar(const float* gate, const float* up, int64_t count, float* out) {
  for (int64_t i = 0; i < count; ++i) out[i] = gate[i] / (1.0f + exp_approx(-gate[i])) * up[i];
}

}  // namespace sdtp::cpu
