// The inner loops the CPU backend runs in one variant per instruction set (isa.h picks one at run
// time): kernels_scalar.cpp holds the reference, kernels_avx2.cpp and kernels_avx512.cpp the vector
// versions, tests/backend/test_cpu_kernels.cpp holds every variant to the reference.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace sdtp::cpu {

// Cephes expf: exp(x) = 2^n · exp(r), r = x - n·ln2 split in two constants (Cody–Waite), exp(r) by a
// degree-7 polynomial. About 1 ulp over [-88, 88]. Every variant evaluates this same polynomial.
constexpr float kExpHi = 88.3762626647949f;
constexpr float kExpLo = -88.3762626647949f;
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kC1 = 0.693359375f;
constexpr float kC2 = -2.12194440e-4f;
constexpr float kP0 = 1.9875691500e-4f, kP1 = 1.3981999507e-3f, kP2 = 8.3334519073e-3f,
                kP3 = 4.1665795894e-2f, kP4 = 1.6666665459e-1f, kP5 = 5.0000001201e-1f;

// ggml's f16 (IEEE half), as the Q8_0 / Q4_1 block scales are stored.
inline float half_to_float(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

// dot_q8_0: Σ_b d[b]·xs[b]·Σ_i q[b,i]·x[b,i] over n_blocks Q8_0 weight blocks (34 bytes: f16 d,
// 32 int8 q; ggml's layout) and int8 activations xq with scales xs.
// dot_q4_1: the same with Q4_1 weight blocks (20 bytes: f16 d, f16 m, 16 bytes of nibbles; weight
// i is d·q[i] + m, q[i] the low nibble of byte i for i < 16, else the high nibble of byte i-16);
// xsum[b] = Σ_i x[b,i] carries the offset term m·xs·Σ x.
// dot_q4_k: Q4_K super-blocks of 256 (144 bytes: f16 d, f16 dmin, 12 bytes of 6-bit scales and
// mins, 128 bytes of nibbles; sub-block j of 32 is d·sc_j·q − dmin·m_j), n_blocks counting
// super-blocks; activations in blocks of 32 as above.
// dot_q6_k: Q6_K super-blocks of 256 (210 bytes: ql, qh, 16 int8 scales, f16 d; weight
// d·sc·(q − 32), one scale per 16), n_blocks counting super-blocks; xsum unused.
// The AVX-512 table uses the AVX2 variants of these two.
// dot_q4_0: the same with Q4_0 weight blocks (18 bytes: f16 d, 16 bytes of nibbles in Q4_1's
// order; weight i is d·(q[i] − 8)), the offset term −8·d·xs·Σ x.
// exp_shifted_sum: x[i] = exp(x[i] - shift) for i < n; returns Σ x[i].
// swiglu: out[i] = gate[i] / (1 + exp(-gate[i])) · up[i]  (out may alias gate).
float dot_q8_0_scalar(const uint8_t* blocks, const int8_t* xq, const float* xs, int64_t n_blocks);
float dot_q4_k_scalar(const uint8_t* blocks, const int8_t* xq, const float* xs, const int32_t* xsum, int64_t n_blocks);
float dot_q6_k_scalar(const uint8_t* blocks, const int8_t* xq, const float* xs, const int32_t* xsum, int64_t n_blocks);
float dot_q4_0_scalar(const uint8_t* blocks, const int8_t* xq, const float* xs, const int32_t* xsum, int64_t n_blocks);
float dot_q4_1_scalar(const uint8_t* blocks, const int8_t* xq, const float* xs, const int32_t* xsum,
                      int64_t n_blocks);
float exp_shifted_sum_scalar(float* x, int64_t n, float shift);
void swiglu_scalar(const float* gate, const float* up, int64_t count, float* out);

float dot_q8_0_avx2(const uint8_t* blocks, const int8_t* xq, const float* xs, int64_t n_blocks);
float dot_q4_k_avx2(const uint8_t* blocks, const int8_t* xq, const float* xs, const int32_t* xsum, int64_t n_blocks);
float dot_q6_k_avx2(const uint8_t* blocks, const int8_t* xq, const float* xs, const int32_t* xsum, int64_t n_blocks);
float dot_q4_0_avx2(const uint8_t* blocks, const int8_t* xq, const float* xs, const int32_t* xsum, int64_t n_blocks);
float dot_q4_1_avx2(const uint8_t* blocks, const int8_t* xq, const float* xs, const int32_t* xsum,
                    int64_t n_blocks);
float exp_shifted_sum_avx2(float* x, int64_t n, float shift);
void swiglu_avx2(const float* gate, const float* up, int64_t count, float* out);

float dot_q8_0_avx512(const uint8_t* blocks, const int8_t* xq, const float* xs, int64_t n_blocks);
float dot_q4_0_avx512(const uint8_t* blocks, const int8_t* xq, const float* xs, const int32_t* xsum,
                      int64_t n_blocks);
float dot_q4_1_avx512(const uint8_t* blocks, const int8_t* xq, const float* xs, const int32_t* xsum,
                      int64_t n_blocks);
float exp_shifted_sum_avx512(float* x, int64_t n, float shift);
void swiglu_avx512(const float* gate, const float* up, int64_t count, float* out);

}  // namespace sdtp::cpu
