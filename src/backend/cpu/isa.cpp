// Run-time choice of the CPU kernel variant (see isa.h): CPU feature detection, SDTP_CPU_ISA, and
// one function-pointer table per variant.
#include "backend/cpu/isa.h"

#include <atomic>
#include <cstdlib>
#include <string>

#include "backend/cpu/kernels.h"
#include "sdtp/error.h"

namespace sdtp::cpu {

namespace {

constexpr Kernels kScalar{Isa::scalar,    dot_q8_0_scalar,        dot_q4_1_scalar, dot_q4_0_scalar,
                          dot_q4_k_scalar, dot_q6_k_scalar,       exp_shifted_sum_scalar, swiglu_scalar};
constexpr Kernels kAvx2{Isa::avx2,    dot_q8_0_avx2,        dot_q4_1_avx2, dot_q4_0_avx2,
                        dot_q4_k_avx2, dot_q6_k_avx2,       exp_shifted_sum_avx2, swiglu_avx2};
constexpr Kernels kAvx512{Isa::avx512,  dot_q8_0_avx512,        dot_q4_1_avx512, dot_q4_0_avx512,
                          dot_q4_k_avx2, dot_q6_k_avx2,         exp_shifted_sum_avx512, swiglu_avx512};

// The variant SDTP_CPU_ISA names, else the best this CPU has.
const Kernels* initial_kernels() {
  const char* env = std::getenv("SDTP_CPU_ISA");
  if (env == nullptr || *env == '\0') return &kernels_for(best_isa());
  const std::string want = env;
  for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512}) {
    if (want != isa_name(isa)) continue;
    if (!isa_supported(isa)) {
      throw UsageError("SDTP_CPU_ISA=" + want + ": this CPU lacks " + want +
                       " (best it supports: " + isa_name(best_isa()) + ")");
    }
    return &kernels_for(isa);
  }
  throw UsageError("SDTP_CPU_ISA=" + want + " is not one of scalar, avx2, avx512");
}

// Initialised on the first call (thread-safe, and retried if SDTP_CPU_ISA was rejected).
std::atomic<const Kernels*>& active() {
  static std::atomic<const Kernels*> table{initial_kernels()};
  return table;
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::scalar:
      return "scalar";
    case Isa::avx2:
      return "avx2";
    case Isa::avx512:
      return "avx512";
  }
  return "?";
}

bool isa_supported(Isa isa) {
  // __builtin_cpu_supports also checks that the OS saves the wider registers (XCR0).
  static const bool avx2 =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  static const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
  switch (isa) {
    case Isa::scalar:
      return true;
    case Isa::avx2:
      return avx2;
    case Isa::avx512:
      return avx512;
  }
  return false;
}

Isa best_isa() {
  if (isa_supported(Isa::avx512)) return Isa::avx512;
  if (isa_supported(Isa::avx2)) return Isa::avx2;
  return Isa::scalar;
}

const Kernels& kernels_for(Isa isa) {
  switch (isa) {
    case Isa::avx2:
      return kAvx2;
    case Isa::avx512:
      return kAvx512;
    case Isa::scalar:
      break;
  }
  return kScalar;
}

const Kernels& kernels() {
  return *active().load(std::memory_order_relaxed);
}

void set_isa(Isa isa) {
  if (!isa_supported(isa)) {
    throw UsageError(std::string("CPU kernels: this CPU lacks ") + isa_name(isa) +
                     " (best it supports: " + isa_name(best_isa()) + ")");
  }
  active().store(&kernels_for(isa), std::memory_order_relaxed);
}

}  // namespace sdtp::cpu
