// AVX-512 variant of the CPU kernels (see kernels.h): 16-float exp/softmax/SwiGLU loops, and int8
// dot products with VNNI (vpdpbusd: unsigned x signed bytes summed into int32 in one instruction).
// The build's baseline is AVX2, so each function here carries its own target attribute and runs
// only where isa.cpp found the CPU to have these extensions. Attributes rather than per-file flags:
// flags would also compile every header inline function this file uses for AVX-512, and the linker
// may keep that copy for the whole program.

// GCC 12 flags _mm512_undefined_ps()'s deliberate self-initialisation once its intrinsics are inlined
// into a function with a target attribute (a false positive, GCC bug 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include "backend/cpu/kernels.h"
#include "backend/cpu/ops.h"

#define SDTP_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")))

namespace sdtp::cpu {

namespace {

float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline __m256i load_i8(const int8_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

SDTP_AVX512 inline __m512 exp512(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(kExpLo)), _mm512_set1_ps(kExpHi));
  __m512 fx = _mm512_roundscale_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(kLog2e), _mm512_set1_ps(0.5f)),
                                   _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(kC1), x);
  x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(kC2), x);
  __m512 z = _mm512_mul_ps(x, x);
  __m512 y = _mm512_set1_ps(kP0);
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(kP1));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(kP2));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(kP3));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(kP4));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(kP5));
  y = _mm512_fmadd_ps(y, z, _mm512_add_ps(x, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(y, fx);  // y · 2^fx
}

}  // namespace

SDTP_AVX512 float dot_q8_0_avx512(const uint8_t* blocks, const int8_t* xq, const float* xs, int64_t n_blocks) {
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < n_blocks; ++b) {
    const uint8_t* blk = blocks + b * 34;
    const __m256i w = load_i8(reinterpret_cast<const int8_t*>(blk + 2));
    const __m256i x = load_i8(xq + b * 32);
    // vpdpbusd multiplies unsigned by signed bytes: use |w| and x·sign(w).
    const __m256i p =
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(half_to_float(blk) * xs[b]), acc);
  }
  return hsum(acc);
}

namespace {

// Q4_1 (kMin: f16 d, f16 m, nibbles) and Q4_0 (f16 d, nibbles; the offset is -8·d) blocks.
template <bool kMin>
SDTP_AVX512 float dot_q4(const uint8_t* blocks, const int8_t* xq, const float* xs, const int32_t* xsum,
                         int64_t n_blocks) {
  constexpr int64_t kBytes = kMin ? 20 : 18, kNibbles = kMin ? 4 : 2;
  __m256 acc = _mm256_setzero_ps();
  float offset = 0.0f;
  const __m128i low4 = _mm_set1_epi8(0x0F);
  for (int64_t b = 0; b < n_blocks; ++b) {
    const uint8_t* blk = blocks + b * kBytes;
    const float d = half_to_float(blk), m = kMin ? half_to_float(blk + 2) : -8.0f * d;
    const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + kNibbles));
    const __m128i lo = _mm_and_si128(packed, low4);
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low4);
    const __m256i w = _mm256_set_m128i(hi, lo);  // elements 0..15 then 16..31, unsigned 0..15
    const __m256i p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, load_i8(xq + b * 32));
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(d * xs[b]), acc);
    offset += m * xs[b] * static_cast<float>(xsum[b]);
  }
  return hsum(acc) + offset;
}

}  // namespace

SDTP_AVX512 float dot_q4_1_avx512(const uint8_t* blocks, const int8_t* xq, const float* xs,
                                  const int32_t* xsum, int64_t n_blocks) {
  return dot_q4<true>(blocks, xq, xs, xsum, n_blocks);
}

SDTP_AVX512 float dot_q4_0_avx512(const uint8_t* blocks, const int8_t* xq, const float* xs,
                                  const int32_t* xsum, int64_t n_blocks) {
  return dot_q4<false>(blocks, xq, xs, xsum, n_blocks);
}

SDTP_AVX512 float exp_shifted_sum_avx512(float* x, int64_t n, float shift) {
  int64_t i = 0;
  __m512 acc = _mm512_setzero_ps();
  const __m512 s = _mm512_set1_ps(shift);
  for (; i + 16 <= n; i += 16) {
    const __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(x + i), s));
    _mm512_storeu_ps(x + i, e);
    acc = _mm512_add_ps(acc, e);
  }
  float sum = _mm512_reduce_add_ps(acc);
  for (; i < n; ++i) {
    x[i] = exp_approx(x[i] - shift);
    sum += x[i];
  }
  return sum;
}

SDTP_AVX512 void swiglu_avx512(const float* gate, const float* up, int64_t count, float* out) {
  int64_t i = 0;
  const __m512 one = _mm512_set1_ps(1.0f);
  for (; i + 16 <= count; i += 16) {
    const __m512 g = _mm512_loadu_ps(gate + i);
    const __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), g));
    const __m512 silu = _mm512_div_ps(g, _mm512_add_ps(one, e));
    _mm512_storeu_ps(out + i, _mm512_mul_ps(silu, _mm512_loadu_ps(up + i)));
  }
  for (; i < count; ++i) out[i] = gate[i] / (1.0f + exp_approx(-gate[i])) * up[i];
}

}  // namespace sdtp::cpu
