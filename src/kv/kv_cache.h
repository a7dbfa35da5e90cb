// The KV cache: per layer, the key and value rows of the tokens alive at that layer, each with its
// original position, as backend tensors (backend.h's KVView). Rows are appended in position order,
// so positions are ascending. Storage grows geometrically, capped at the context length.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "backend/backend.h"

namespace sdtp {

class KVCache {
 public:
  KVCache() = default;
  // width: floats per row (n_head_kv · head_dim); max_rows: the context length.
  KVCache(Backend& backend, int n_layer, int64_t width, int64_t max_rows);

  const KVView& layer(int l) const { return layers_[l]; }
  int n_layer() const { return static_cast<int>(layers_.size()); }
  // Makes room for `more` entries after the n held in every layer. Throws DeviceOutOfMemoryError
  // ("KV cache for 32768 tokens needs 16.0 GiB, 9.2 GiB free") before allocating when it cannot fit.
  void reserve(int64_t more);
  // Entries [0, n) of layer l are valid (after the ops wrote rows up to n).
  void set_size(int l, int64_t n);
  void clear();
  size_t bytes() const;           // bytes of the entries held (K, V and position of each)
  size_t capacity_bytes() const;  // bytes allocated
  size_t bytes_per_entry() const;

 private:
  Backend* backend_ = nullptr;
  int64_t width_ = 0, max_rows_ = 0;
  std::vector<KVView> layers_;
};

}  // namespace sdtp
