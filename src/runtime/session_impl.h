// The Session's state and steps (sdtp/session.h), shared by the files that implement them:
// session.cpp (the forward pass, plans, buffers, the public API), kv_eviction.cpp (a KV policy's
// eviction of one layer) and lazy_decode.cpp (LazyLLM's aux cache and revival in decode).
// Engine-internal: only src/runtime/ includes it.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "kv/aux_cache.h"
#include "kv/kv_cache.h"
#include "kv/policy.h"
#include "model/llama_block.h"
#include "prune/selector.h"
#include "sdtp/error.h"
#include "sdtp/session.h"

namespace sdtp {

// FLOPs of one layer on `rows` new rows appended after kv_before cached ones (per KV head; their
// mean when heads differ): the projections, and causal attention where new row i sees
// kv_before + i + 1 keys at 2·head_dim FLOPs each for QK^T and for PV, per head.
double layer_flops(const ModelConfig& c, double kv_before, int64_t rows);

struct Session::Impl {
  const Model& model;
  const ModelConfig& c;
  std::shared_ptr<Backend> be_ref;
  Backend& be;
  std::string device;
  std::shared_ptr<const DeviceWeights> w;
  int n_ctx = 0;
  int n_past = 0;
  // The first position of the current prefill's recent tail (PrunePlan::keep_recent), always kept.
  int32_t recent_from = 0;
  KVCache kv;
  ElemType kv_type = ElemType::f32;  // SessionOptions::kv_type resolved for this backend
  PrunePlan plan;
  std::unique_ptr<TokenSelector> selector;
  // LazyLLM (a plan whose method revives, docs/lazyllm.md): the positions each layer's cache holds
  // (a host mirror, ascending), the first layer each position has no K/V in (n_layer: none
  // missing), the aux cache of pruned hidden states, the tokens revived since reset(), and the new
  // token's attention at the layer before a stage.
  bool lazy = false;
  std::vector<std::vector<int32_t>> layer_pos;
  std::vector<int32_t> reach;
  AuxCache aux;
  int64_t revived_total = 0;
  int64_t computed_pairs = 0;  // (token, layer) pairs computed since reset(), with any plan
  DeviceTensor lazy_mass;  // f32 [rows x n_head_kv]
  std::vector<int32_t> lazy_alive;  // prefill: positions of the rows alive, ascending
  // KV-cache compression (sdtp/kv.h): the policy, the entries per head it keeps (set by the first
  // prefill, raised by later ones), decode steps since the last eviction, the peak bytes held.
  KVPolicyOptions kvo;
  const KVPolicy* kvp = nullptr;
  kv::MassMode mass = kv::MassMode::none;
  int64_t kv_budget = INT64_MAX;
  int64_t steps_since_evict = 0, decode_steps = 0;
  size_t kv_peak = 0;
  DeviceTensor norm_v, norm_k;  // entry_norms' outputs [rows x n_head_kv]

  // Work tensors, sized for `cap` rows (grown, never shrunk).
  int64_t cap = 0;
  BlockBuffers buf;
  DeviceTensor x, x_alt, ids_t, pos, pos_alt, idx, scores, logits, last_attn, stage_pos;
  std::vector<float> host_logits;
  ForwardStats stats;

  Impl(const Model& m, const SessionOptions& o);

  // A new policy starts a new sequence: the cache is made again (mass tracked or not).
  void set_kv(const KVPolicyOptions& o);

  // LazyLLM decides which entries exist in decode itself: an eviction policy beside it is not
  // supported yet (docs/lazyllm.md).
  static void check_combination(const PrunePlan& p, const KVPolicyOptions& o) {
    if (p.enabled() && find_prune_method(p.method).revives && o.enabled())
      throw UsageError("--prune " + p.method + " does not combine with --kv-policy " + o.policy +
                       " yet (revival inserts the entries an eviction policy removes)");
  }

  void reset();

  // Layer l keeps kv_budget entries per head (the policy's per-layer share): scores from what the
  // cache holds (positions, mass, norms), selection on the host, compaction on the device.
  // SDTP_KV_PROFILE=1: host time of evict()'s phases, summed, printed by the destructor.
  double prof[6] = {0, 0, 0, 0, 0, 0};
  bool profile = std::getenv("SDTP_KV_PROFILE") != nullptr;
  ~Impl();
  void lap(int phase, std::chrono::steady_clock::time_point& t);

  void evict(int l);

  void set_prune(const PrunePlan& p);

  // Work tensors for up to `rows` rows (freed before reallocating).
  void ensure(int64_t rows);

  // Scores the `alive` rows entering pruning layer plan.layers[s] and keeps `kept` of them (the
  // forced rows first: positions < keep_first, and the last row), gathered with their positions.
  void prune_rows(size_t s, int64_t alive, int64_t kept);
  // LazyLLM's prefill: after stage s chose `kept` of the `alive` rows (idx), the others' hidden
  // states go to the aux cache at s and their reach is that stage's layer (one sync per stage).
  void keep_pruned_in_aux(size_t s, int64_t alive, int64_t kept);

  // LazyLLM at decode stage s (arXiv 2407.14057 §3.2-3.3), entering layer l = plan.layers[s]: the
  // rows revived at earlier stages (all but the last, the new token) have reached l and go to the
  // aux cache at s; then the new token's attention at layer l-1 (lazy_mass) scores every entry
  // there, the same rule as the prefill keeps the top share (select_rows), and the kept tokens that
  // have no K/V at l yet and whose hidden state the aux cache holds are revived: their rows join
  // the new token's for this stage's layers. rows_pos: the positions of x's rows, ascending.
  void revive(size_t s, int l, std::vector<int32_t>& rows_pos);

  // One LazyLLM decode step while the aux cache holds tokens to revive; returns its FLOPs. Runs op
  // by op (no captured step): which rows each stage computes is decided on the host from the
  // attention of the stage before.
  double lazy_decode_step();

  void check_tokens(const std::vector<int32_t>& ids) const;

  // Final norm and lm head on x rows [first, first + rows) into logits [rows x n_vocab].
  void head(int64_t first, int64_t rows);

  void ensure_logits(int64_t rows);

  // One prefill (decoding false) or decode step (n == 1) of `tokens`; the logits on the host.
  const std::vector<float>& forward(const std::vector<int32_t>& tokens, bool all_logits, bool decoding);
};

}  // namespace sdtp
