// Quantised weights for the memory-bound decode matvecs, in ggml's block layouts (blocks of 32
// along k): Q8_0 (f16 scale + 32 int8 values, 34 bytes; made from float weights, or a GGUF's own
// blocks used in place) and Q4_1 (f16 scale and min + 32 nibbles, 20 bytes; a GGUF's own blocks). Activations are
// quantised to int8 per block on the fly and the dot products run in int32 (AVX2, or AVX-512 VNNI,
// chosen at run time: isa.h), as llama.cpp's CPU backend does. Decode reads 4x (Q8_0) to 6x (Q4_1)
// fewer weight bytes than float32; the int8 activations cost about 1e-3 relative error per dot
// product.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace sdtp::cpu {

constexpr int64_t kQ8Block = 32;
constexpr int64_t kQ8_0BlockBytes = 34;  // f16 d, 32 int8

struct QuantMatrix {
  enum class Kind { none, q8_0, q4_1, q4_0, q4_k, q6_k };
  Kind kind = Kind::none;
  int64_t m = 0, k = 0;          // rows, columns (k % 32 == 0)
  std::vector<uint8_t> owned;    // [m x k/32] blocks, or none when they are viewed
  const uint8_t* view = nullptr;  // blocks owned by someone else (the model's tensor)
  bool empty() const { return kind == Kind::none; }
  const uint8_t* blocks() const { return view ? view : owned.data(); }
  // Bytes this matrix owns (a view's blocks are counted by their owner).
  size_t bytes() const { return owned.size(); }
};

// True when k allows the block layouts.
inline bool q8_supported(int64_t k) { return k % kQ8Block == 0; }

// Q8_0 quantisation of float weights, as ggml's: per block d = max|w| / 127, q = round(w / d), d
// stored as f16.
QuantMatrix quantize_q8(const float* w, int64_t m, int64_t k);
// A GGUF tensor's own blocks (ggml layout) of a kind, copied, or viewed without a copy (then the
// blocks must outlive the matrix).
QuantMatrix quant_blocks(QuantMatrix::Kind kind, const uint8_t* blocks, int64_t m, int64_t k, bool copy);
// The kind whose kernels multiply a GGUF type name's blocks ("Q4_K", ...) at width k; none if no
// kernel does (the type, or k not a whole number of its blocks). The one list of such types: the
// loader keeps exactly these as blocks.
QuantMatrix::Kind quant_kind_of(const std::string& ggml_type, int64_t k);
// Bytes of one row of k weights of a kind (k as quant_kind_of accepts it).
int64_t row_bytes(QuantMatrix::Kind kind, int64_t k);

// y[n x m] = x[n x k] · W^T (+ bias), x quantised per 32-block to int8.
void matmul_quant(const float* x, int64_t n, const QuantMatrix& w, const float* bias, float* y);

}  // namespace sdtp::cpu
