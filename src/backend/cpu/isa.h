// Which SIMD variant of the CPU kernels runs, chosen at run time so that one binary serves every
// x86-64 machine the build supports. The project compiles for a baseline of AVX2 + FMA + F16C
// (x86-64-v3 without BMI/MOVBE; CMakeLists.txt); the AVX-512 kernels carry function-level target
// attributes and run only where the CPU reports AVX-512 F/BW/DQ/VL and VNNI. The selection is made
// once, on first use: the best variant the CPU supports, or the one named by the environment
// variable SDTP_CPU_ISA=scalar|avx2|avx512 (comparisons and tests; asking for a variant this CPU
// lacks is a UsageError). Each variant computes the same function as the scalar reference (the
// same polynomial for exp, exact int32 dot products), up to float summation order.
#pragma once

#include <cstdint>

namespace sdtp::cpu {

enum class Isa { scalar, avx2, avx512 };

const char* isa_name(Isa isa);
// Whether this CPU (and OS) can run the variant.
bool isa_supported(Isa isa);
// The best variant this CPU supports.
Isa best_isa();

// The kernels of one variant (see kernels.h for what each computes).
struct Kernels {
  Isa isa;
  float (*dot_q8_0)(const uint8_t* blocks, const int8_t* xq, const float* xs, int64_t n_blocks);
  float (*dot_q4_1)(const uint8_t* blocks, const int8_t* xq, const float* xs, const int32_t* xsum,
                    int64_t n_blocks);
  float (*dot_q4_0)(const uint8_t* blocks, const int8_t* xq, const float* xs, const int32_t* xsum,
                    int64_t n_blocks);
  float (*dot_q4_k)(const uint8_t* blocks, const int8_t* xq, const float* xs, const int32_t* xsum,
                    int64_t n_blocks);
  float (*dot_q6_k)(const uint8_t* blocks, const int8_t* xq, const float* xs, const int32_t* xsum,
                    int64_t n_blocks);
  float (*exp_shifted_sum)(float* x, int64_t n, float shift);
  void (*swiglu)(const float* gate, const float* up, int64_t count, float* out);
};

// The selected kernels (selected on the first call: SDTP_CPU_ISA, else best_isa()). Throws
// UsageError when SDTP_CPU_ISA names an unknown variant or one this CPU lacks.
const Kernels& kernels();
inline Isa active_isa() {
  return kernels().isa;
}
// Selects a variant for every later call (tests compare the variants); throws UsageError if this
// CPU lacks it. Not to be called while other threads run kernels.
void set_isa(Isa isa);
// The kernels of one variant without selecting it (isa_supported(isa) must hold).
const Kernels& kernels_for(Isa isa);

}  // namespace sdtp::cpu
