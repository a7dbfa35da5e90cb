// KV cache storage (see kv_cache.h).
#include "kv/kv_cache.h"

#include <algorithm>
#include <cstdio>
#include <string>

#include "sdtp/error.h"

namespace sdtp {

namespace {

std::string gib(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f GiB", bytes / (1024.0 * 1024.0 * 1024.0));
  return buf;
}

}  // namespace

KVCache::KVCache(Backend& backend, int n_layer, int n_head_kv, int head_dim, int64_t max_rows, bool track_mass)
    : KVCache(backend, n_layer, n_head_kv, head_dim, max_rows, track_mass, backend.activation_type()) {}

KVCache::KVCache(Backend& backend, int n_layer, int n_head_kv, int head_dim, int64_t max_rows, bool track_mass,
                 ElemType type)
    : backend_(&backend),
      n_head_kv_(n_head_kv),
      head_dim_(head_dim),
      max_rows_(max_rows),
      track_mass_(track_mass),
      type_(type),
      layers_(n_layer) {
  if (!backend.supports_kv_type(type))
    throw UsageError(backend.name() + ": no KV cache in " + elem_name(type) + " (this backend keeps it in " +
                     elem_name(backend.default_kv_type()) + ")");
  lens_ = backend.alloc(ElemType::i32, n_layer, n_head_kv, "KV cache lengths");
  for (int l = 0; l < n_layer; ++l) {
    layers_[l].n.assign(static_cast<size_t>(n_head_kv), 0);
    layers_[l].len = lens_.rows(l, 1);
  }
  sync();
}

size_t KVCache::bytes_per_entry() const {
  return 2 * static_cast<size_t>(head_dim_) * elem_bytes(type_) + sizeof(int32_t) +
         (track_mass_ ? sizeof(float) : 0);
}

KVView KVCache::alloc_layer(int l, int64_t cap) {
  const ElemType t = type_;
  const int64_t width = static_cast<int64_t>(n_head_kv_) * head_dim_;
  const std::string what = "KV cache of layer " + std::to_string(l);
  KVView g;
  g.k = backend_->alloc(t, cap, width, what);
  g.v = backend_->alloc(t, cap, width, what);
  g.pos = backend_->alloc(ElemType::i32, cap, n_head_kv_, what);
  if (track_mass_) {
    g.mass = backend_->alloc(ElemType::f32, cap, n_head_kv_, what);
    backend_->fill(g.mass, 0.0f);  // new entries start with no attention mass
  }
  g.len = layers_[l].len;
  g.n = layers_[l].n;
  return g;
}

void KVCache::reserve(int64_t more) { reserve(more, 0, n_layer()); }

void KVCache::reserve(int64_t more, int first, int last) {
  // New capacity of each layer that must grow: geometric, so a long decode does not copy the cache
  // at every step, and never past the context.
  std::vector<int64_t> cap(layers_.size(), 0);
  size_t need = 0;
  int64_t most = 0;
  for (size_t l = static_cast<size_t>(std::max(first, 0)); l < std::min<size_t>(last, layers_.size()); ++l) {
    const KVView& v = layers_[l];
    const int64_t want = v.max_n() + more, have = v.k.rows();
    most = std::max(most, want);
    if (want <= have) continue;
    cap[l] = std::min(max_rows_, std::max(want, have * 3 / 2 + 64));
    need += static_cast<size_t>(cap[l]) * n_head_kv_ * bytes_per_entry();
  }
  if (need == 0) return;
  const size_t free = backend_->free_bytes();
  if (need > free) {
    DeviceOutOfMemoryError e(backend_->name() + ": KV cache for " + std::to_string(most) + " tokens needs " +
                             gib(static_cast<double>(need)) + " more, " + gib(static_cast<double>(free)) + " free");
    e.bytes_requested = need;
    throw e;
  }
  for (size_t l = 0; l < layers_.size(); ++l) {
    if (!cap[l]) continue;
    KVView& v = layers_[l];
    KVView g = alloc_layer(static_cast<int>(l), cap[l]);
    const int64_t rows = v.max_n();
    if (rows) {
      backend_->copy(g.k.rows(0, rows), v.k.rows(0, rows));
      backend_->copy(g.v.rows(0, rows), v.v.rows(0, rows));
      backend_->copy(g.pos.rows(0, rows), v.pos.rows(0, rows));
      if (track_mass_) backend_->copy(g.mass.rows(0, rows), v.mass.rows(0, rows));
    }
    v = std::move(g);
  }
}

void KVCache::grow(int l, int64_t added) {
  KVView& v = layers_[l];
  for (int64_t& c : v.n) {
    if (added < 0 || c + added > v.k.rows())
      throw Error("KV cache: " + std::to_string(c + added) + " entries outside the storage of layer " +
                  std::to_string(l));
    c += added;
  }
}

void KVCache::sync() {
  std::vector<int32_t> all(layers_.size() * static_cast<size_t>(n_head_kv_));
  for (size_t l = 0; l < layers_.size(); ++l)
    for (int g = 0; g < n_head_kv_; ++g) all[l * n_head_kv_ + g] = static_cast<int32_t>(layers_[l].n[g]);
  backend_->upload(lens_, all.data(), ElemType::i32);
}

void KVCache::sync_layer(int l) {
  std::vector<int32_t> c(layers_[l].n.begin(), layers_[l].n.end());
  backend_->upload(layers_[l].len, c.data(), ElemType::i32);
}

void KVCache::compact(int l, const std::vector<std::vector<int32_t>>& keep, int64_t headroom) {
  KVView& v = layers_[l];
  if (static_cast<int>(keep.size()) != n_head_kv_) throw Error("KV cache: compaction needs one list per KV head");
  int64_t kept_max = 0;
  std::vector<int32_t> counts(static_cast<size_t>(n_head_kv_));
  for (int g = 0; g < n_head_kv_; ++g) {
    const auto& k = keep[g];
    for (size_t i = 0; i < k.size(); ++i)
      if (k[i] < 0 || k[i] >= v.n[g] || (i > 0 && k[i] <= k[i - 1]))
        throw Error("KV cache: compaction of layer " + std::to_string(l) + " head " + std::to_string(g) +
                    ": index " + std::to_string(k[i]) + " is not an ascending entry");
    counts[g] = static_cast<int32_t>(k.size());
    kept_max = std::max<int64_t>(kept_max, static_cast<int64_t>(k.size()));
  }
  // The indices and counts on the device (the old counts there too: the ops read len).
  std::vector<int32_t> host(static_cast<size_t>(kept_max * n_head_kv_), 0);
  for (int g = 0; g < n_head_kv_; ++g)
    for (size_t i = 0; i < keep[g].size(); ++i) host[i * n_head_kv_ + g] = keep[g][i];
  upload_gather(host, kept_max, counts);
  sync_layer(l);

  const int64_t old_max = v.max_n();
  const int64_t cap = std::min(max_rows_, kept_max + std::max<int64_t>(headroom, 0));
  KVView src = v;
  if (cap < v.k.rows() - v.k.rows() / 4) {
    // Smaller storage: gather straight into it; the old storage goes with `src`.
    KVView g = alloc_layer(l, std::max<int64_t>(cap, 1));
    g.len = keep_len_;
    g.n.assign(counts.begin(), counts.end());
    backend_->gather_entries(src, keep_, n_head_kv_, head_dim_, g);
    g.len = v.len;
    v = std::move(g);
  } else {
    // Same storage: gather into the scratch layer, then copy the kept rows back.
    gather_in_place(l, src, counts, kept_max, 0);
    // Rows past the kept ones must read as new entries: no mass.
    if (track_mass_ && old_max > kept_max) backend_->fill(v.mass.rows(kept_max, old_max - kept_max), 0.0f);
  }
  for (int g = 0; g < n_head_kv_; ++g) v.n[g] = counts[g];
  backend_->upload(v.len, counts.data(), ElemType::i32);
}

void KVCache::place_appended(int l, int64_t appended, const std::vector<int32_t>& order) {
  KVView& v = layers_[l];
  const int64_t n = v.n.empty() ? 0 : v.n[0];
  for (int64_t c : v.n)
    if (c != n) throw Error("KV cache: placing appended entries needs every KV head of layer " + std::to_string(l) +
                            " to hold the same entries");
  const int64_t total = n + appended;
  if (static_cast<int64_t>(order.size()) != total || total > v.k.rows())
    throw Error("KV cache: placement of layer " + std::to_string(l) + " is not a permutation of its entries");
  std::vector<char> seen(static_cast<size_t>(total), 0);
  for (int32_t j : order) {
    if (j < 0 || j >= total || seen[j]) throw Error("KV cache: placement of layer " + std::to_string(l) + " is not a permutation");
    seen[j] = 1;
  }
  int64_t first = 0;
  while (first < total && order[first] == first) ++first;
  if (first == total) return;
  const int64_t count = total - first;
  const int H = n_head_kv_;
  std::vector<int32_t> host(static_cast<size_t>(count * H));
  for (int64_t i = 0; i < count; ++i)
    for (int g = 0; g < H; ++g) host[i * H + g] = order[first + i];
  const std::vector<int32_t> counts(static_cast<size_t>(H), static_cast<int32_t>(count));
  upload_gather(host, count, counts);
  // The gather reads appended entries too: its source counts them.
  if (src_len_.empty()) src_len_ = backend_->alloc(ElemType::i32, 1, H, "KV compaction");
  const std::vector<int32_t> totals(static_cast<size_t>(H), static_cast<int32_t>(total));
  backend_->upload(src_len_, totals.data(), ElemType::i32);
  KVView src = v;
  src.len = src_len_;
  gather_in_place(l, src, counts, count, first);
}

void KVCache::upload_gather(const std::vector<int32_t>& host, int64_t rows, const std::vector<int32_t>& counts) {
  if (keep_.rows() < std::max<int64_t>(rows, 1)) {
    keep_ = DeviceTensor();
    keep_ = backend_->alloc(ElemType::i32, std::max<int64_t>(rows, 1) * 3 / 2 + 16, n_head_kv_, "KV compaction");
  }
  if (keep_len_.empty()) keep_len_ = backend_->alloc(ElemType::i32, 1, n_head_kv_, "KV compaction");
  if (rows) backend_->upload(keep_.rows(0, rows), host.data(), ElemType::i32);
  backend_->upload(keep_len_, counts.data(), ElemType::i32);
}

void KVCache::gather_in_place(int l, const KVView& src, const std::vector<int32_t>& counts, int64_t rows, int64_t at) {
  KVView& v = layers_[l];
  const int64_t room = std::max<int64_t>(rows, 1);
  if (scratch_.k.rows() < room) {
    scratch_ = KVView();
    scratch_ = alloc_layer(l, room);
  }
  // A head keeping fewer than `rows` leaves scratch rows unwritten: they carry no mass back.
  if (track_mass_) backend_->fill(scratch_.mass.rows(0, room), 0.0f);
  scratch_.len = keep_len_;
  scratch_.n.assign(counts.begin(), counts.end());
  backend_->gather_entries(src, keep_, n_head_kv_, head_dim_, scratch_);
  if (!rows) return;
  backend_->copy(v.k.rows(at, rows), scratch_.k.rows(0, rows));
  backend_->copy(v.v.rows(at, rows), scratch_.v.rows(0, rows));
  backend_->copy(v.pos.rows(at, rows), scratch_.pos.rows(0, rows));
  if (track_mass_) backend_->copy(v.mass.rows(at, rows), scratch_.mass.rows(0, rows));
}

void KVCache::clear_mass() {
  if (!track_mass_) return;
  for (KVView& v : layers_)
    if (!v.mass.empty()) backend_->fill(v.mass, 0.0f);
}

void KVCache::clear() {
  for (KVView& v : layers_) {
    std::fill(v.n.begin(), v.n.end(), 0);
    if (track_mass_ && !v.mass.empty()) backend_->fill(v.mass, 0.0f);
  }
  sync();
}

int64_t KVCache::entries() const {
  int64_t e = 0;
  for (const KVView& v : layers_) e += v.total();
  return e;
}

size_t KVCache::bytes() const { return static_cast<size_t>(entries()) * bytes_per_entry(); }

size_t KVCache::capacity_bytes() const {
  size_t b = 0;
  for (const KVView& v : layers_) b += static_cast<size_t>(v.k.rows()) * n_head_kv_ * bytes_per_entry();
  return b;
}

}  // namespace sdtp
