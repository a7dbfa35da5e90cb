// The aux cache of pruned hidden states (see aux_cache.h).
#include "kv/aux_cache.h"

#include <algorithm>
#include <string>

#include "sdtp/error.h"

namespace sdtp {

AuxCache::AuxCache(Backend& backend, int n_embd, int n_stage, int64_t max_positions, int64_t budget)
    : backend_(&backend), n_embd_(n_embd), max_positions_(max_positions), budget_(budget), stages_(n_stage) {
  for (Stage& st : stages_) {
    st.slot_of.assign(static_cast<size_t>(max_positions), -1);
    st.stored_at.assign(static_cast<size_t>(max_positions), 0);
  }
}

DeviceTensor AuxCache::index(const std::vector<int32_t>& v) {
  const int64_t n = static_cast<int64_t>(v.size());
  if (index_.rows() < n) {
    index_ = DeviceTensor();
    index_ = backend_->alloc(ElemType::i32, std::max<int64_t>(n, 64) * 3 / 2, 1, "aux cache indices");
  }
  const DeviceTensor t = index_.rows(0, n);
  if (n) backend_->upload(t, v.data(), ElemType::i32);
  return t;
}

void AuxCache::make_room(int s, int64_t more) {
  Stage& st = stages_[s];
  if (st.used + more <= st.rows.rows()) return;
  // Live rows move to new storage sized for them, the new ones and as much again; the old
  // storage (and its holes) is freed.
  std::vector<int32_t> live;
  live.reserve(static_cast<size_t>(st.live));
  for (int64_t r = 0; r < st.used; ++r)
    if (st.slot_pos[r] >= 0) live.push_back(static_cast<int32_t>(r));
  const int64_t cap = std::min<int64_t>(max_positions_, 2 * (st.live + more) + 64);
  DeviceTensor fresh = backend_->alloc(backend_->residual_type(), cap, n_embd_, "aux cache of pruned hidden states");
  if (!live.empty()) backend_->gather_rows(st.rows, index(live), fresh.rows(0, static_cast<int64_t>(live.size())));
  std::vector<int32_t> slot_pos(static_cast<size_t>(cap), -1);
  for (size_t i = 0; i < live.size(); ++i) {
    const int32_t p = st.slot_pos[live[i]];
    slot_pos[i] = p;
    st.slot_of[p] = static_cast<int32_t>(i);
  }
  st.rows = std::move(fresh);
  st.slot_pos = std::move(slot_pos);
  st.used = static_cast<int64_t>(live.size());
}

void AuxCache::put(int s, const DeviceTensor& x, const std::vector<int32_t>& rows,
                   const std::vector<int32_t>& positions) {
  if (s < 0 || s >= n_stage() || rows.size() != positions.size())
    throw Error("aux cache: bad put (stage " + std::to_string(s) + ")");
  if (rows.empty()) return;
  Stage& st = stages_[s];
  for (int32_t p : positions)
    if (p < 0 || p >= max_positions_ || st.slot_of[p] >= 0)
      throw Error("aux cache: position " + std::to_string(p) + " is already held at stage " + std::to_string(s));
  const int64_t k = static_cast<int64_t>(rows.size());
  make_room(s, k);
  backend_->gather_rows(x, index(rows), st.rows.rows(st.used, k));
  for (int64_t i = 0; i < k; ++i) {
    const int32_t p = positions[i];
    st.slot_pos[st.used + i] = p;
    st.slot_of[p] = static_cast<int32_t>(st.used + i);
    st.stored_at[p] = ++clock_;
    order_.push_back({clock_, {s, p}});
  }
  st.used += k;
  st.live += k;
  live_ += k;
  drop_over_budget();
}

void AuxCache::take(int s, const std::vector<int32_t>& positions, const DeviceTensor& out) {
  if (positions.empty()) return;
  Stage& st = stages_[s];
  std::vector<int32_t> slots;
  slots.reserve(positions.size());
  for (int32_t p : positions) {
    if (!holds(s, p)) throw Error("aux cache: position " + std::to_string(p) + " is not held at stage " + std::to_string(s));
    slots.push_back(st.slot_of[p]);
  }
  backend_->gather_rows(st.rows, index(slots), out.rows(0, static_cast<int64_t>(slots.size())));
  for (size_t i = 0; i < positions.size(); ++i) {
    st.slot_pos[slots[i]] = -1;
    st.slot_of[positions[i]] = -1;
  }
  const int64_t k = static_cast<int64_t>(positions.size());
  st.live -= k;
  live_ -= k;
  // Mostly holes: start again at row 0 when nothing is live, else compact at the next put.
  if (st.live == 0) st.used = 0;
}

void AuxCache::drop_over_budget() {
  while (budget_ > 0 && live_ > budget_ && !order_.empty()) {
    const auto [when, where] = order_.front();
    order_.pop_front();
    const auto [s, p] = where;
    Stage& st = stages_[s];
    if (st.slot_of[p] < 0 || st.stored_at[p] != when) continue;  // taken (or stored again) since
    st.slot_pos[st.slot_of[p]] = -1;
    st.slot_of[p] = -1;
    --st.live;
    --live_;
    ++dropped_;
  }
  // Entries taken since they were queued: forget them once the queue is mostly stale.
  if (order_.size() > static_cast<size_t>(4 * live_ + 1024)) {
    std::deque<std::pair<uint64_t, std::pair<int, int32_t>>> kept;
    for (const auto& e : order_) {
      const Stage& st = stages_[e.second.first];
      if (st.slot_of[e.second.second] >= 0 && st.stored_at[e.second.second] == e.first) kept.push_back(e);
    }
    order_ = std::move(kept);
  }
}

bool AuxCache::holds(int s, int32_t pos) const {
  return s >= 0 && s < n_stage() && pos >= 0 && pos < max_positions_ && stages_[s].slot_of[pos] >= 0;
}

std::vector<int32_t> AuxCache::positions(int s) const {
  std::vector<int32_t> p;
  if (s < 0 || s >= n_stage()) return p;
  const Stage& st = stages_[s];
  for (int64_t r = 0; r < st.used; ++r)
    if (st.slot_pos[r] >= 0) p.push_back(st.slot_pos[r]);
  std::sort(p.begin(), p.end());
  return p;
}

size_t AuxCache::bytes() const {
  return backend_ ? static_cast<size_t>(live_) * n_embd_ * elem_bytes(backend_->residual_type()) : 0;
}

void AuxCache::clear() {
  for (Stage& st : stages_) {
    for (int64_t r = 0; r < st.used; ++r)
      if (st.slot_pos[r] >= 0) st.slot_of[st.slot_pos[r]] = -1;
    st.slot_pos.assign(st.slot_pos.size(), -1);
    st.used = st.live = 0;
  }
  order_.clear();
  live_ = dropped_ = 0;
}

}  // namespace sdtp
