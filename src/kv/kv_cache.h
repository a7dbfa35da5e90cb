// The KV cache: per layer, the key and value rows of the tokens alive at that layer, each with its
// original position. Rows are appended in position order, so positions are ascending.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace sdtp {

struct LayerKV {
  int64_t width = 0;  // floats per row: n_head_kv * head_dim
  int64_t n = 0;      // rows held
  std::vector<float> k, v;
  std::vector<int32_t> pos;

  void append(const float* k_rows, const float* v_rows, const int32_t* positions, int64_t rows);
  void clear() { n = 0; }
  size_t bytes() const { return static_cast<size_t>(n) * (2 * width * sizeof(float) + sizeof(int32_t)); }
};

class KVCache {
 public:
  KVCache() = default;
  KVCache(int n_layer, int64_t width);
  LayerKV& layer(int l) { return layers_[l]; }
  const LayerKV& layer(int l) const { return layers_[l]; }
  int n_layer() const { return static_cast<int>(layers_.size()); }
  void clear();
  size_t bytes() const;

 private:
  std::vector<LayerKV> layers_;
};

}  // namespace sdtp
