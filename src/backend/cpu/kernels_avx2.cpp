// AVX2 + FMA variant of the CPU kernels (see kernels.h), 8 floats or 32 int8 per instruction. The
// int8 dot products follow llama.cpp's AVX2 path: vpmaddubsw (unsigned x signed bytes, pairs summed
// to int16) then vpmaddwd against ones (int16 pairs to int32), one float multiply-add per block.
// AVX2 is the build's baseline (CMakeLists.txt), so nothing here needs a target attribute.
#include <immintrin.h>

#include "backend/cpu/kernels.h"
#include "formats/quants.h"
#include "backend/cpu/ops.h"

namespace sdtp::cpu {

namespace {

float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Σ_i w[i]·x[i] over 32 signed bytes, as 8 int32 partial sums. vpmaddubsw wants its first operand
// unsigned: it gets |w| and x·sign(w), whose products are the same; a pair sums to at most
// 2·128·127 < 2^15 (w may be -128 in a file's Q8_0 block, x is in [-127, 127]), so no saturation.
inline __m256i dot_i8(__m256i w, __m256i x) {
  const __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
  return _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
}

// Σ_i q[i]·x[i] for q unsigned (0..15, pairs sum to at most 2·15·127: no saturation).
inline __m256i dot_u4_i8(__m256i q, __m256i x) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), _mm256_set1_epi16(1));
}

// The 32 nibbles of a Q4_1 block as bytes: the low nibbles (elements 0..15) then the high ones.
inline __m256i unpack_q4(const uint8_t* nibbles) {
  const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(nibbles));
  const __m256i both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
  return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

inline __m256i load_i8(const int8_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

// The scalar exp_approx, 8 lanes at a time.
inline __m256 exp256(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(kExpLo)), _mm256_set1_ps(kExpHi));
  const __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(kLog2e), _mm256_set1_ps(0.5f)));
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(kC1), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(kC2), x);
  const __m256 z = _mm256_mul_ps(x, x);
  __m256 y = _mm256_set1_ps(kP0);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(kP1));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(kP2));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(kP3));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(kP4));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(kP5));
  y = _mm256_fmadd_ps(y, z, _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  // y · 2^fx for fx in [-127, 128] as y · 2^(fx>>1) · 2^(fx - (fx>>1)): both factors are normal
  // floats, so the ends of the range round like ldexp instead of overflowing the exponent field.
  const __m256i n = _mm256_cvtps_epi32(fx);
  const __m256i n1 = _mm256_srai_epi32(n, 1);
  const __m256i n2 = _mm256_sub_epi32(n, n1);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 p1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
  const __m256 p2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
  return _mm256_mul_ps(_mm256_mul_ps(y, p1), p2);
}

}  // namespace

// Two accumulators (even and odd blocks) so that consecutive FMAs do not wait on each other.
float dot_q8_0_avx2(const uint8_t* blocks, const int8_t* xq, const float* xs, int64_t n_blocks) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  const auto block = [&](int64_t b, __m256 acc) {
    const uint8_t* blk = blocks + b * 34;
    const __m256i p = dot_i8(load_i8(reinterpret_cast<const int8_t*>(blk + 2)), load_i8(xq + b * 32));
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(half_to_float(blk) * xs[b]), acc);
  };
  int64_t b = 0;
  for (; b + 2 <= n_blocks; b += 2) {
    acc0 = block(b, acc0);
    acc1 = block(b + 1, acc1);
  }
  if (b < n_blocks) acc0 = block(b, acc0);
  return hsum(_mm256_add_ps(acc0, acc1));
}

namespace {

// Q4_1 (kMin: f16 d, f16 m, nibbles) and Q4_0 (f16 d, nibbles; the offset is -8·d) blocks.
template <bool kMin>
float dot_q4(const uint8_t* blocks, const int8_t* xq, const float* xs, const int32_t* xsum, int64_t n_blocks) {
  constexpr int64_t kBytes = kMin ? 20 : 18, kNibbles = kMin ? 4 : 2;
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  float offset = 0.0f;
  const auto block = [&](int64_t b, __m256 acc) {
    const uint8_t* blk = blocks + b * kBytes;
    const float d = half_to_float(blk), m = kMin ? half_to_float(blk + 2) : -8.0f * d;
    const __m256i p = dot_u4_i8(unpack_q4(blk + kNibbles), load_i8(xq + b * 32));
    offset += m * xs[b] * static_cast<float>(xsum[b]);
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(d * xs[b]), acc);
  };
  int64_t b = 0;
  for (; b + 2 <= n_blocks; b += 2) {
    acc0 = block(b, acc0);
    acc1 = block(b + 1, acc1);
  }
  if (b < n_blocks) acc0 = block(b, acc0);
  return hsum(_mm256_add_ps(acc0, acc1)) + offset;
}

}  // namespace

float dot_q4_1_avx2(const uint8_t* blocks, const int8_t* xq, const float* xs, const int32_t* xsum,
                    int64_t n_blocks) {
  return dot_q4<true>(blocks, xq, xs, xsum, n_blocks);
}

float dot_q4_0_avx2(const uint8_t* blocks, const int8_t* xq, const float* xs, const int32_t* xsum,
                    int64_t n_blocks) {
  return dot_q4<false>(blocks, xq, xs, xsum, n_blocks);
}

float dot_q4_k_avx2(const uint8_t* blocks, const int8_t* xq, const float* xs, const int32_t* xsum,
                    int64_t n_blocks) {
  __m256 acc = _mm256_setzero_ps();
  float offset = 0.0f;
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  for (int64_t s = 0; s < n_blocks; ++s) {
    const uint8_t* blk = blocks + s * 144;
    const float d = half_to_float(blk), dmin = half_to_float(blk + 2);
    for (int c = 0; c < 4; ++c) {
      // 32 bytes: the low nibbles are sub-block 2c, the high ones sub-block 2c + 1.
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 16 + c * 32));
      const __m256i q[2] = {_mm256_and_si256(v, low4), _mm256_and_si256(_mm256_srli_epi16(v, 4), low4)};
      for (int h = 0; h < 2; ++h) {
        const int sb = 2 * c + h;
        uint8_t sc, m;
        k_scale_min(blk + 4, sb, &sc, &m);
        const int64_t b = s * 8 + sb;
        const __m256i p = dot_u4_i8(q[h], load_i8(xq + b * 32));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(d * sc * xs[b]), acc);
        offset -= dmin * m * xs[b] * static_cast<float>(xsum[b]);
      }
    }
  }
  return hsum(acc) + offset;
}

// Per 32 weights: the 6-bit values (4 from ql, 2 from qh) minus 32 as signed bytes, multiplied as
// Q8_0; int32 lanes 0-3 hold elements 0-15 and lanes 4-7 elements 16-31, so one float vector
// carries the two 16-element scales.
float dot_q6_k_avx2(const uint8_t* blocks, const int8_t* xq, const float* xs, const int32_t*, int64_t n_blocks) {
  __m256 acc = _mm256_setzero_ps();
  const __m256i low4 = _mm256_set1_epi8(0x0F), low2 = _mm256_set1_epi8(3), off = _mm256_set1_epi8(32);
  for (int64_t s = 0; s < n_blocks; ++s) {
    const uint8_t* blk = blocks + s * 210;
    const auto* scales = reinterpret_cast<const int8_t*>(blk + 192);
    const float d = half_to_float(blk + 208);
    for (int h = 0; h < 2; ++h) {
      const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 128 + h * 32));
      for (int t = 0; t < 4; ++t) {
        const __m256i ql = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + h * 64 + (t % 2) * 32));
        const __m256i lo = _mm256_and_si256(t < 2 ? ql : _mm256_srli_epi16(ql, 4), low4);
        const __m256i hi = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * t), low2), 4);
        const __m256i q = _mm256_sub_epi8(_mm256_or_si256(lo, hi), off);
        const int64_t b = s * 8 + h * 4 + t;
        const int e = (h * 128 + t * 32) / 16;
        const float f = d * xs[b];
        const __m256 scale = _mm256_set_m128(_mm_set1_ps(f * scales[e + 1]), _mm_set1_ps(f * scales[e]));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_i8(q, load_i8(xq + b * 32))), scale, acc);
      }
    }
  }
  return hsum(acc);
}

float exp_shifted_sum_avx2(float* x, int64_t n, float shift) {
  int64_t i = 0;
  __m256 acc = _mm256_setzero_ps();
  const __m256 s = _mm256_set1_ps(shift);
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), s));
    _mm256_storeu_ps(x + i, e);
    acc = _mm256_add_ps(acc, e);
  }
  float sum = hsum(acc);
  for (; i < n; ++i) {
    x[i] = exp_approx(x[i] - shift);
    sum += x[i];
  }
  return sum;
}

void swiglu_avx2(const float* gate, const float* up, int64_t count, float* out) {
  int64_t i = 0;
  const __m256 one = _mm256_set1_ps(1.0f);
  for (; i + 8 <= count; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), g));
    const __m256 silu = _mm256_div_ps(g, _mm256_add_ps(one, e));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(silu, _mm256_loadu_ps(up + i)));
  }
  for (; i < count; ++i) out[i] = gate[i] / (1.0f + exp_approx(-gate[i])) * up[i];
}

}  // namespace sdtp::cpu
