// A Session runs one sequence through a Model on one device: prefill of a prompt, then decode one
// token at a time, with a per-layer KV cache. Every row carries its own position, so the same block
// code runs on all tokens or on any subset (the pruning plan). The layer loop, the plan, the stats
// and the FLOPs are written once here; the device is a backend (cpu, or cuda[:N]) behind one
// interface, which only computes.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sdtp/kv.h"
#include "sdtp/model.h"
#include "sdtp/prune.h"

namespace sdtp {

struct SessionOptions {
  // "cpu", "cuda" or "cuda:N". The model's weights are placed on the device by the first session
  // there (bf16 on CUDA) and shared by later sessions of the same Model.
  std::string device = "cpu";
  int n_ctx = 0;      // context length in tokens; 0 = the model's training context, capped at 8192
  int n_threads = 0;  // 0 = $OMP_NUM_THREADS if set, else all hardware threads
  // CPU: decode steps multiply by 8-bit copies of the weights (blocks of 32, like ggml's Q8_0;
  // about 1e-3 relative error per dot product, 4x fewer bytes read). false keeps float32
  // everywhere, as the reference tests do. Prefill always runs in float32. CUDA ignores it (bf16).
  bool decode_q8 = true;
  // The KV cache's element type: "auto" (the backend's: f16 on the CPU, bf16 on CUDA), "f32",
  // "f16" or "bf16" (the CPU takes all three, CUDA bf16 only). Reference tests use "f32".
  std::string kv_type = "auto";
  // Token pruning applied to every prefill (validated against the model when the session is made).
  PrunePlan prune;
  // KV-cache compression after the prompt's prefill and during decode (sdtp/kv.h).
  KVPolicyOptions kv;
};

// The context a session with `options` has for a model of `config`: options.n_ctx, or 0 for the
// model's training context capped at 8192 (UsageError for a negative size).
int session_context(const ModelConfig& config, const SessionOptions& options);

// What the last prefill/decode call did, for reports and benchmarks.
struct ForwardStats {
  int n_tokens = 0;          // tokens the call was given
  double flops = 0;          // analytical FLOPs (2 per multiply-add), matmuls + attention + lm head
  double dense_flops = 0;    // the same without pruning
  double elapsed_ms = 0;     // host wall time of the call (it ends with the logits on the host)
  // Rows computed at each layer (all n_tokens when dense; a lazyllm decode step: the new token and
  // the tokens revived there).
  std::vector<int> alive_per_layer;
  std::vector<std::vector<int32_t>> kept_positions;  // per pruning stage: positions kept, ascending
  // KV cache: bytes held after the call, what it would hold had nothing been evicted in it, the
  // entries each layer's KV heads hold after it ([layer][head]), host time spent evicting.
  size_t kv_bytes = 0, kv_bytes_before = 0;
  std::vector<std::vector<int64_t>> kv_entries;
  double kv_evict_ms = 0;
  // (token, layer) pairs computed since reset() — the rows alive summed over layers and calls, with
  // any plan — and what the dense model computes for the same tokens (n_layer per token; each pair
  // is computed at most once, so computed_pairs <= dense_pairs). Dynamic pruning (lazyllm): tokens
  // revived in this call at each stage (a token counts once per stage it is revived through) and in
  // all calls since reset(); the aux cache after the call: hidden states held, their bytes, and the
  // entries its budget has dropped since reset().
  std::vector<int> revived_per_stage;
  int64_t revived = 0, revived_total = 0;
  int64_t computed_pairs = 0, dense_pairs = 0;
  int64_t aux_entries = 0, aux_dropped = 0;
  size_t aux_bytes = 0;
};

class Session {
 public:
  explicit Session(const Model& model, const SessionOptions& options = {});
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Appends `ids` at positions n_past()..n_past()+ids.size()-1 and returns logits, row-major
  // [rows x n_vocab]: the last position only, or every new position when all_logits is true
  // (which a pruning plan does not allow: pruned positions have no logits).
  // Throws UsageError if the tokens do not fit in the context or an id is out of the vocabulary.
  const std::vector<float>& prefill(const std::vector<int32_t>& ids, bool all_logits = false);
  // One token at position n_past(); returns its logits [n_vocab].
  const std::vector<float>& decode(int32_t id);

  void reset();  // empties the KV cache (a new sequence: the KV budget is set again by its prompt)
  int n_past() const;
  int n_ctx() const;
  int n_threads() const;
  const std::string& device() const;  // the backend's name: "cpu", "cuda:0"
  const char* kv_type() const;        // the KV cache's element type: "f32", "f16", "bf16"
  size_t kv_bytes() const;  // bytes of the entries the KV cache holds (K, V, position, mass of each)
  size_t kv_peak_bytes() const;      // the most kv_bytes() was at any point since reset()
  size_t kv_capacity_bytes() const;  // bytes the cache has allocated (>= kv_bytes())
  size_t aux_bytes() const;          // bytes of the hidden states the aux cache holds (lazyllm)
  // Positions whose hidden state entering pruning stage `stage`'s layer the aux cache holds,
  // ascending (the tokens pruned there and not revived since).
  std::vector<int32_t> aux_positions(int stage) const;
  // Replaces the KV policy (validated) and starts a new sequence (reset()).
  void set_kv_policy(const KVPolicyOptions& options);
  const KVPolicyOptions& kv_policy() const;
  // Entries each KV head of `layer` holds.
  std::vector<int64_t> kv_entries(int layer) const;
  // Replaces the pruning plan of later prefills (validated like the constructor's). A plan whose
  // method revives (lazyllm) starts a new sequence (reset()); replacing it mid-sequence drops its
  // aux cache, so its pruned tokens stay pruned.
  void set_prune(const PrunePlan& plan);
  const PrunePlan& prune() const;
  // Original positions of the entries KV head `head` of layer `layer` holds (which tokens
  // survived pruning and eviction there), ascending.
  std::vector<int32_t> cached_positions(int layer, int head = 0) const;
  const ForwardStats& last_stats() const;
  const Model& model() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The SIMD variant of the CPU kernels that runs ("avx512", "avx2" or "scalar"): the best this CPU
// supports, or the one the environment variable SDTP_CPU_ISA names. Throws UsageError when
// SDTP_CPU_ISA names an unknown variant or one this CPU lacks.
const char* cpu_isa();

// What a model needs on a device, for `sdtp info --device` and checks before a long run.
struct DeviceMemory {
  std::string device;             // the backend's name, e.g. "cuda:0"
  size_t weight_bytes = 0;        // the weights in the device's layout (float32 on the CPU, bf16 on CUDA)
  size_t kv_bytes_per_token = 0;  // one token's K, V and position in every layer
  size_t free_bytes = 0;          // what the device can still allocate (SIZE_MAX: host memory, unbounded)
};
// Throws UsageError when the device does not exist (as SessionOptions::device does).
DeviceMemory device_memory(const ModelConfig& c, const std::string& device);

// Analytical FLOPs of a dense forward pass over n new tokens appended after n_past cached ones
// (matmuls 2·params·n, causal attention 4·head_dim·n_head per (query, key) pair, lm head on
// `n_logits` rows).
double dense_forward_flops(const ModelConfig& c, int64_t n_past, int64_t n, int64_t n_logits);

}  // namespace sdtp
