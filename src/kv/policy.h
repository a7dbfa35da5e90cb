// Eviction policies' scores and the per-head selection of what a layer keeps (sdtp/kv.h). Pure
// host code on what the Session downloads from the cache, in double precision, so every device
// evicts the same entries for the same statistics.
#pragma once

#include <cstdint>
#include <vector>

#include "sdtp/kv.h"

namespace sdtp::kv {

// How a policy wants the cache's attention mass (KVView::mass) kept: its registry row's.
using MassMode = KVPolicy::Mass;
MassMode mass_mode(const KVPolicy& p);
bool needs_value_norms(const KVPolicy& p);  // vatp
bool needs_key_norms(const KVPolicy& p);    // knorm

// One layer's entries as downloaded: per KV head g, entries j < n[g]; the arrays are [rows x
// n_head_kv], element (j, g) at j * n_head_kv + g (the cache's layout).
struct LayerEntries {
  int n_head_kv = 0;
  int64_t rows = 0;
  std::vector<int64_t> n;
  std::vector<int32_t> pos;
  std::vector<float> mass, v_l1, k_l2;  // those the policy needs
};

// The policy's score of every entry (higher is kept), [rows x n_head_kv] like the inputs.
std::vector<double> score_entries(const KVPolicy& p, const KVPolicyOptions& o, const LayerEntries& e, int layer);

// The entries each head keeps (indices, ascending): the sinks (positions < sinks) and the most
// recent `window` entries first, then the highest scores (ties: the earlier position), `budget`
// per head in all (a head holding fewer keeps all). adaptive (AdaKV): the layer keeps
// budget · n_head_kv entries, each head at least a fifth of `budget`, the rest to the best scores
// of any head.
std::vector<std::vector<int32_t>> select_entries(const LayerEntries& e, const std::vector<double>& scores,
                                                 int64_t budget, int sinks, int window, bool adaptive);

// Entries per head at `layer` for a policy whose average budget is `budget` (n: entries a head
// holds there): `budget` everywhere, except pyramidkv's arithmetic pyramid (PyramidKV, Cai et al.
// 2024, as kvpress computes it: from 2·budget − budget/20 at layer 0 to budget/20 at the last).
int64_t layer_budget(const KVPolicy& p, int64_t budget, int layer, int n_layer, int64_t n);

}  // namespace sdtp::kv
