// Reading weight values whether a tensor holds floats or only its file's blocks (model.h).
#include <cstring>

#include "formats/quants.h"
#include "sdtp/error.h"
#include "sdtp/model.h"

namespace sdtp {

namespace {

DType block_type(const Tensor& t) {
  if (const std::optional<DType> d = dtype_from_name(t.file_quant)) return *d;
  throw Error("weight with unknown block type '" + t.file_quant + "'");
}

}  // namespace

void weight_rows(const Tensor& t, int64_t row0, int64_t rows, float* out) {
  if (t.shape.size() != 2 || row0 < 0 || rows < 0 || row0 + rows > t.dim(0))
    throw Error("weight_rows: rows [" + std::to_string(row0) + ", " + std::to_string(row0 + rows) +
                ") outside the tensor");
  const int64_t k = t.dim(1);
  if (!t.data.empty()) {
    std::memcpy(out, t.data.data() + row0 * k, sizeof(float) * static_cast<size_t>(rows * k));
    return;
  }
  const DType d = block_type(t);
  const auto row_bytes = dtype_nbytes(d, k);
  if (!row_bytes || t.file_blocks.size() != static_cast<size_t>(*row_bytes * t.dim(0)))
    throw Error("weight_rows: blocks of the wrong size");
  dequantize(d, t.file_blocks.data() + row0 * *row_bytes, out, rows * k);
}

const float* weight_values(const Tensor& t, std::vector<float>& scratch) {
  if (!t.quantized_only()) return t.data.data();
  scratch.resize(static_cast<size_t>(t.numel()));
  weight_rows(t, 0, t.dim(0), scratch.data());
  return scratch.data();
}

size_t weight_host_bytes(const ModelWeights& w) {
  size_t b = w.tok_embd.host_bytes() + w.output_norm.host_bytes() + w.output.host_bytes();
  for (const LayerWeights& l : w.layers)
    for (const Tensor* t : {&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.wo, &l.bq, &l.bk, &l.bv, &l.ffn_norm, &l.w_gate,
                            &l.w_up, &l.w_down})
      b += t->host_bytes();
  return b;
}

}  // namespace sdtp
