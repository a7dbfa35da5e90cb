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

KVCache::KVCache(Backend& backend, int n_layer, int64_t width, int64_t max_rows)
    : backend_(&backend), width_(width), max_rows_(max_rows), layers_(n_layer) {}

size_t KVCache::bytes_per_entry() const {
  return 2 * static_cast<size_t>(width_) * elem_bytes(backend_->activation_type()) + sizeof(int32_t);
}

void KVCache::reserve(int64_t more) {
  // New capacity of each layer that must grow: geometric, so a long decode does not copy the cache
  // at every step, and never past the context.
  std::vector<int64_t> cap(layers_.size(), 0);
  size_t need = 0;
  int64_t most = 0;
  for (size_t l = 0; l < layers_.size(); ++l) {
    const KVView& v = layers_[l];
    const int64_t want = v.n + more, have = v.k.rows();
    most = std::max(most, want);
    if (want <= have) continue;
    cap[l] = std::min(max_rows_, std::max(want, have * 3 / 2 + 64));
    need += static_cast<size_t>(cap[l]) * bytes_per_entry();
  }
  if (need == 0) return;
  const size_t free = backend_->free_bytes();
  if (need > free) {
    DeviceOutOfMemoryError e(backend_->name() + ": KV cache for " + std::to_string(most) + " tokens needs " +
                             gib(static_cast<double>(need)) + " more, " + gib(static_cast<double>(free)) + " free");
    e.bytes_requested = need;
    throw e;
  }
  const ElemType t = backend_->activation_type();
  for (size_t l = 0; l < layers_.size(); ++l) {
    if (!cap[l]) continue;
    KVView& v = layers_[l];
    const std::string what = "KV cache of layer " + std::to_string(l);
    KVView g;
    g.k = backend_->alloc(t, cap[l], width_, what);
    g.v = backend_->alloc(t, cap[l], width_, what);
    g.pos = backend_->alloc(ElemType::i32, cap[l], 1, what);
    g.n = v.n;
    if (v.n) {
      backend_->copy(g.k.rows(0, v.n), v.k.rows(0, v.n));
      backend_->copy(g.v.rows(0, v.n), v.v.rows(0, v.n));
      backend_->copy(g.pos.rows(0, v.n), v.pos.rows(0, v.n));
    }
    v = std::move(g);
  }
}

void KVCache::set_size(int l, int64_t n) {
  if (n < 0 || n > layers_[l].k.rows()) throw Error("KV cache: size " + std::to_string(n) + " outside the storage");
  layers_[l].n = n;
}

void KVCache::clear() {
  for (KVView& l : layers_) l.n = 0;
}

size_t KVCache::bytes() const {
  size_t b = 0;
  for (const KVView& l : layers_) b += static_cast<size_t>(l.n) * bytes_per_entry();
  return b;
}

size_t KVCache::capacity_bytes() const {
  size_t b = 0;
  for (const KVView& l : layers_) b += static_cast<size_t>(l.k.rows()) * bytes_per_entry();
  return b;
}

}  // namespace sdtp
