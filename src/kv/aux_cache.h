// The aux cache of dynamic pruning (LazyLLM, arXiv 2407.14057 §3.3): for every token pruned at a
// stage, its hidden state entering that stage's layer, so a later decode step can revive the token
// from there instead of recomputing it from layer 0. Each stage keeps its entries in one device
// tensor, appended in the order they are stored and compacted when holes fill half of it. A
// budget (entries, all stages together) drops the oldest entries first; a dropped token is never
// revived (its computed layers stay in the KV cache).
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <vector>

#include "backend/backend.h"

namespace sdtp {

class AuxCache {
 public:
  AuxCache() = default;
  // n_embd: the hidden size; max_positions: the context (positions are < it); budget 0: no limit.
  AuxCache(Backend& backend, int n_embd, int n_stage, int64_t max_positions, int64_t budget);

  // Stores rows `rows` of x (the residual stream entering stage s's layer) as the entries of
  // `positions` (same length; none already held at s), then enforces the budget.
  void put(int s, const DeviceTensor& x, const std::vector<int32_t>& rows, const std::vector<int32_t>& positions);
  // Copies the entries of `positions` (each held at s) to out rows [0, positions.size()) and
  // removes them from the cache.
  void take(int s, const std::vector<int32_t>& positions, const DeviceTensor& out);
  bool holds(int s, int32_t pos) const;
  std::vector<int32_t> positions(int s) const;  // held at stage s, ascending
  int n_stage() const { return static_cast<int>(stages_.size()); }
  int64_t entries() const { return live_; }
  int64_t dropped() const { return dropped_; }  // entries the budget dropped since clear()
  size_t bytes() const;                         // of the entries held
  void clear();

 private:
  struct Stage {
    DeviceTensor rows;               // [capacity x n_embd], residual type
    int64_t used = 0;                // rows written (live or freed)
    int64_t live = 0;
    std::vector<int32_t> slot_pos;   // position of each used row, -1 when freed
    std::vector<int32_t> slot_of;    // slot of each position, -1 when not held
    std::vector<uint64_t> stored_at; // when each position's entry was stored (put order)
  };
  void make_room(int s, int64_t more);
  void drop_over_budget();
  DeviceTensor index(const std::vector<int32_t>& v);  // v uploaded as i32 [v.size() x 1]

  Backend* backend_ = nullptr;
  int n_embd_ = 0;
  int64_t max_positions_ = 0, budget_ = 0, live_ = 0, dropped_ = 0;
  uint64_t clock_ = 0;
  std::vector<Stage> stages_;
  std::deque<std::pair<uint64_t, std::pair<int, int32_t>>> order_;  // (stored_at, (stage, pos)), oldest first
  DeviceTensor index_;
};

}  // namespace sdtp
