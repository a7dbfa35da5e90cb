// The KV cache: per layer and KV head, the key and value rows of the entries that head holds, each
// with its original position (backend.h's KVView), and optionally the attention mass accumulated
// per entry for an eviction policy. Entries are appended in position order and compaction keeps
// that order, so positions ascend per head. Storage grows geometrically (capped at the context)
// and shrinks when compaction frees a large share of it, so evicted entries' bytes are returned
// to the device.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "backend/backend.h"

namespace sdtp {

class KVCache {
 public:
  KVCache() = default;
  // max_rows: the context length; track_mass: keep KVView::mass (zero for new entries).
  // The entries are stored in the backend's activation type, or in `type` with the second form
  // (one the backend supports_kv_type).
  KVCache(Backend& backend, int n_layer, int n_head_kv, int head_dim, int64_t max_rows, bool track_mass = false);
  KVCache(Backend& backend, int n_layer, int n_head_kv, int head_dim, int64_t max_rows, bool track_mass,
          ElemType type);
  ElemType type() const { return type_; }

  const KVView& layer(int l) const { return layers_[l]; }
  int n_layer() const { return static_cast<int>(layers_.size()); }
  int n_head_kv() const { return n_head_kv_; }
  bool tracks_mass() const { return track_mass_; }
  // Makes room for `more` entries after those of every head in every layer (only layers
  // [first, last) with the second form). Throws
  // DeviceOutOfMemoryError ("KV cache for 32768 tokens needs 16.0 GiB more, 9.2 GiB free")
  // before allocating when it cannot fit.
  void reserve(int64_t more);
  void reserve(int64_t more, int first, int last);
  // Every head of layer l gained `added` entries (the ops wrote them past n). Host counts only:
  // sync() before ops read them.
  void grow(int l, int64_t added);
  // Uploads every layer's per-head counts to the device (KVView::len), one copy; sync_layer(l)
  // only layer l's.
  void sync();
  void sync_layer(int l);
  // Layer l keeps, for each KV head g, its entries keep[g] (indices into its entries, strictly
  // ascending): they move to rows [0, keep[g].size()) in order, with their positions and mass.
  // When that frees more than a quarter of the layer's storage, the layer moves to storage sized
  // for what it keeps plus `headroom` entries, and the old storage is freed.
  void compact(int l, const std::vector<std::vector<int32_t>>& keep, int64_t headroom);
  // Position order after an out-of-order append (a revived token, LazyLLM): every head of layer l
  // holds n entries and `appended` more written past them (not yet counted); they move so that
  // entry i becomes entry order[i] (a permutation of [0, n + appended), the same for every head).
  // Only the entries from the first one that moves on are copied. Counts are unchanged (grow()).
  void place_appended(int l, int64_t appended, const std::vector<int32_t>& order);
  // Zeroes every layer's mass (a policy that scores with the newest query's attention only).
  void clear_mass();
  void clear();
  size_t bytes() const;           // bytes of the entries held: K, V, position (and mass) of each
  size_t capacity_bytes() const;  // bytes allocated
  size_t bytes_per_entry() const;  // one entry of one KV head
  int64_t entries() const;         // entries held, all layers and heads

 private:
  KVView alloc_layer(int l, int64_t cap);
  // A gather's plan on the device: keep_ <- host [rows x n_head_kv] indices, keep_len_ <- counts.
  void upload_gather(const std::vector<int32_t>& host, int64_t rows, const std::vector<int32_t>& counts);
  // Gathers that plan from `src` into the scratch layer, then copies its first `rows` rows to
  // layer l's rows [at, at + rows) (the layer keeps its storage).
  void gather_in_place(int l, const KVView& src, const std::vector<int32_t>& counts, int64_t rows, int64_t at);
  Backend* backend_ = nullptr;
  int n_head_kv_ = 0, head_dim_ = 0;
  int64_t max_rows_ = 0;
  bool track_mass_ = false;
  ElemType type_ = ElemType::f32;
  std::vector<KVView> layers_;
  DeviceTensor lens_;                  // i32 [n_layer x n_head_kv]: every layer's len
  KVView scratch_;                     // where compaction gathers when the layer keeps its storage
  DeviceTensor keep_, keep_len_;       // compaction's indices and counts on the device
  DeviceTensor src_len_;               // place_appended: the counts its gather reads from
};

}  // namespace sdtp
