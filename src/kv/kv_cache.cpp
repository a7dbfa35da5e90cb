// KV cache storage (see kv_cache.h).
#include "kv/kv_cache.h"

#include <algorithm>
#include <cstring>

namespace sdtp {

void LayerKV::append(const float* k_rows, const float* v_rows, const int32_t* positions, int64_t rows) {
  const int64_t need = n + rows;
  if (static_cast<int64_t>(pos.size()) < need) {
    // Grow geometrically so a long decode does not copy the cache at every step.
    const int64_t cap = std::max<int64_t>(need, static_cast<int64_t>(pos.size()) * 3 / 2 + 64);
    k.resize(static_cast<size_t>(cap * width));
    v.resize(static_cast<size_t>(cap * width));
    pos.resize(static_cast<size_t>(cap));
  }
  std::memcpy(k.data() + n * width, k_rows, sizeof(float) * rows * width);
  std::memcpy(v.data() + n * width, v_rows, sizeof(float) * rows * width);
  std::memcpy(pos.data() + n, positions, sizeof(int32_t) * rows);
  n = need;
}

KVCache::KVCache(int n_layer, int64_t width) : layers_(n_layer) {
  for (auto& l : layers_) l.width = width;
}

void KVCache::clear() {
  for (auto& l : layers_) l.clear();
}

size_t KVCache::bytes() const {
  size_t b = 0;
  for (const auto& l : layers_) b += l.bytes();
  return b;
}

}  // namespace sdtp
