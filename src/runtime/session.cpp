// Session: embeddings → blocks (with the KV cache and the pruning plan) → final norm → lm head, on
// any backend. Everything that decides (plan checks, keep counts, which rows survive, FLOPs, stats)
// is in the session, once — here, with a KV policy's eviction in kv_eviction.cpp and LazyLLM's
// revival in lazy_decode.cpp (state: session_impl.h); the backend only computes. Outside LazyLLM's
// decode steps every row count is known on the host before the layer loop, so the loop queues
// work without waiting for the device; a call ends with the logits on the host.
#include "runtime/session_impl.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstring>
#include <mutex>
#include <numeric>
#include <string>

#include "sdtp/predictor.h"

namespace sdtp {

// The weights of a Model as placed on each device, shared by the sessions there (model.h).
struct DeviceWeightCache {
  std::mutex mu;
  std::vector<std::pair<std::string, std::shared_ptr<const DeviceWeights>>> by_device;
};

namespace {

int64_t sat_add(int64_t a, int64_t b) { return a > INT64_MAX - b ? INT64_MAX : a + b; }

std::shared_ptr<const DeviceWeights> weights_on(const Model& model, Backend& be) {
  auto& cache = model.device_weights;  // mutable: filled once per device, under its lock
  static std::mutex create_mu;
  {
    std::lock_guard<std::mutex> lock(create_mu);
    if (!cache) cache = std::make_shared<DeviceWeightCache>();
  }
  std::lock_guard<std::mutex> lock(cache->mu);
  for (const auto& [name, w] : cache->by_device)
    if (name == be.name()) return w;
  auto w = be.upload_model(model);
  cache->by_device.emplace_back(be.name(), w);
  return w;
}

}  // namespace

double layer_flops(const ModelConfig& c, double kv_before, int64_t rows) {
  const double pairs = static_cast<double>(rows) * kv_before + static_cast<double>(rows) * (rows + 1) / 2.0;
  return block_matmul_flops_per_row(c) * static_cast<double>(rows) + 4.0 * c.head_dim * c.n_head * pairs;
}

ElemType resolve_kv_type(const std::string& name, const Backend& be) {
  ElemType t;
  if (name.empty() || name == "auto") t = be.default_kv_type();
  else if (name == "f32") t = ElemType::f32;
  else if (name == "f16") t = ElemType::f16;
  else if (name == "bf16") t = ElemType::bf16;
  else throw UsageError("--kv-type must be auto, f32, f16 or bf16, got '" + name + "'");
  if (!be.supports_kv_type(t))
    throw UsageError("--kv-type " + name + ": the " + be.name() + " backend keeps its KV cache in " +
                     elem_name(be.default_kv_type()));
  return t;
}

int session_context(const ModelConfig& c, const SessionOptions& o) {
  if (o.n_ctx < 0) throw UsageError("context size must be positive, got " + std::to_string(o.n_ctx));
  return o.n_ctx > 0 ? o.n_ctx : std::min(c.n_ctx_train > 0 ? c.n_ctx_train : 8192, 8192);
}

Session::Impl::Impl(const Model& m, const SessionOptions& o)
    : model(m), c(m.config), be_ref(make_backend(o.device, {o.decode_q8, o.n_threads})), be(*be_ref) {
  n_ctx = session_context(c, o);
  device = be.name();
  kv_type = resolve_kv_type(o.kv_type, be);
  set_prune(o.prune);
  w = weights_on(model, be);
  set_kv(o.kv);
}

void Session::Impl::set_kv(const KVPolicyOptions& o) {
  o.validate();
  check_combination(plan, o);
  kvo = o;
  kvp = &find_kv_policy(o.policy);
  mass = o.enabled() ? kv::mass_mode(*kvp) : kv::MassMode::none;
  kv = KVCache();
  kv = KVCache(be, c.n_layer, c.n_head_kv, c.head_dim, n_ctx, mass != kv::MassMode::none, kv_type);
  reset();
}

void Session::Impl::reset() {
  kv.clear();
  for (auto& lp : layer_pos) lp.clear();
  std::fill(reach.begin(), reach.end(), 0);
  aux.clear();
  computed_pairs = revived_total = 0;
  n_past = 0;
  kv_budget = INT64_MAX;
  steps_since_evict = decode_steps = 0;
  kv_peak = 0;
}

void Session::Impl::set_prune(const PrunePlan& p) {
  p.validate(c);
  check_combination(p, kvo);
  const bool revives = p.enabled() && find_prune_method(p.method).revives;
  if (find_prune_method(p.method).needs_predictor) {
    if (!p.predictor) throw UsageError("pruning method '" + p.method + "' needs a predictor (--predictor FILE)");
    if (!model.random_weights) p.predictor->model.check_matches(ModelIdentity::of(model), "the predictor");
    p.predictor->check_plan(p);
  }
  std::unique_ptr<TokenSelector> s;
  if (p.enabled()) s = make_selector(p, be);
  plan = p;
  selector = std::move(s);
  cap = 0;  // buffers whose size depends on the plan are made again on the next call
  lazy = revives;
  layer_pos.assign(lazy ? c.n_layer : 0, {});
  reach.assign(lazy ? n_ctx : 0, 0);
  aux = AuxCache();
  if (lazy) aux = AuxCache(be, c.n_embd, static_cast<int>(plan.layers.size()), n_ctx, plan.aux_budget);
  // Revival needs to know where every token of the sequence is: a reviving plan starts a new one
  // (a plan without revival keeps the cache as it is; pruned tokens then stay pruned).
  if (lazy && kv.n_layer() > 0) reset();
}

void Session::Impl::ensure(int64_t rows) {
  if (rows <= cap) return;
  for (DeviceTensor* t : {&x, &x_alt, &ids_t, &pos, &pos_alt, &idx, &scores, &stage_pos}) *t = DeviceTensor();
  const ElemType r = be.residual_type();
  const std::string what = "activations for " + std::to_string(rows) + " rows";
  buf.rows = 0;
  buf.ensure(be, c, rows);
  x = be.alloc(r, rows, c.n_embd, what);
  ids_t = be.alloc(ElemType::i32, rows, 1, what);
  pos = be.alloc(ElemType::i32, rows, 1, what);
  if (plan.enabled()) {
    x_alt = be.alloc(r, rows, c.n_embd, what);
    pos_alt = be.alloc(ElemType::i32, rows, 1, what);
    idx = be.alloc(ElemType::i32, rows, 1, what);
    scores = be.alloc(ElemType::f32, rows, 1, what);
    stage_pos = be.alloc(ElemType::i32, rows * static_cast<int64_t>(plan.layers.size()), 1, what);
  }
  cap = rows;
}

void Session::Impl::prune_rows(size_t s, int64_t alive, int64_t kept) {
  SelectorInput in;
  in.backend = &be;
  in.stage = static_cast<int>(s);
  in.layer = plan.layers[s];
  in.hidden = x.rows(0, alive);
  in.positions = pos.rows(0, alive);
  in.n_past = n_past;
  // The rows alive now are the entries the layer before appended to its cache, in order.
  if (selector->needs_last_attention()) in.last_attn = last_attn.rows(0, alive);
  const DeviceTensor sc = scores.rows(0, alive);
  selector->score(in, sc);
  be.force_rows(sc, in.positions, plan.keep_first, recent_from);
  be.top_k(sc, kept, idx);
  if (lazy) keep_pruned_in_aux(s, alive, kept);
  be.gather_rows(x.rows(0, alive), idx.rows(0, kept), x_alt.rows(0, kept));
  be.gather_rows(pos.rows(0, alive), idx.rows(0, kept), pos_alt.rows(0, kept));
  std::swap(x, x_alt);
  std::swap(pos, pos_alt);
  be.copy(stage_pos.rows(static_cast<int64_t>(s) * cap, kept), pos.rows(0, kept));
}

void Session::Impl::check_tokens(const std::vector<int32_t>& ids) const {
  const int64_t n = static_cast<int64_t>(ids.size());
  if (n == 0) throw UsageError("no tokens to process");
  if (n_past + n > n_ctx)
    throw UsageError("prompt of " + std::to_string(n_past + n) + " tokens does not fit in the context of " +
                     std::to_string(n_ctx) + " tokens");
  for (int32_t id : ids)
    if (id < 0 || id >= c.n_vocab)
      throw UsageError("token id " + std::to_string(id) + " is outside the vocabulary (size " +
                       std::to_string(c.n_vocab) + ")");
}

void Session::Impl::head(int64_t first, int64_t rows) {
  const DeviceTensor xn = buf.xn.rows(0, rows);
  be.rmsnorm(x.rows(first, rows), w->output_norm, c.rms_eps, xn);
  be.matmul(xn, *w->lm_head, logits.rows(0, rows));
}

void Session::Impl::ensure_logits(int64_t rows) {
  if (logits.rows() < rows) {
    logits = DeviceTensor();
    logits = be.alloc(ElemType::f32, rows, c.n_vocab, "logits");
  }
}

const std::vector<float>& Session::Impl::forward(const std::vector<int32_t>& tokens, bool all_logits, bool decoding) {
  const auto t0 = std::chrono::steady_clock::now();
  check_tokens(tokens);
  const int64_t n = static_cast<int64_t>(tokens.size());
  const bool prune = plan.enabled() && !decoding && n > 1;
  if (prune && all_logits) throw UsageError("all-position logits are not available with a pruning plan");
  // A LazyLLM step computes the new token and up to every token the aux cache holds.
  ensure(lazy ? std::max<int64_t>(n, 1 + aux.entries()) : n);
  kv.reserve(n);
  be.begin_forward(n, decoding);
  std::vector<int32_t> host_pos(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) host_pos[i] = n_past + static_cast<int32_t>(i);
  be.upload(ids_t.rows(0, n), tokens.data(), ElemType::i32);
  be.upload(pos.rows(0, n), host_pos.data(), ElemType::i32);

  stats = ForwardStats{};
  stats.n_tokens = static_cast<int>(n);
  stats.dense_flops = dense_forward_flops(c, n_past, n, all_logits ? n : 1);
  const int64_t n_out_rows = all_logits ? n : 1;
  ensure_logits(n_out_rows);

  // Rows kept at each stage, known here: the forced rows (positions < keep_first, the recent
  // tail of this prefill, and the last row) survive every stage, so their count is fixed by the
  // first.
  std::vector<int64_t> kept_at;
  if (prune) {
    selector->begin_prefill(model, tokens, n_past);
    const int64_t first = std::clamp<int64_t>(int64_t(plan.keep_first) - n_past, 0, n);
    const int64_t recent = plan.kept_tail(n);
    recent_from = static_cast<int32_t>(n_past + n - recent);
    const int64_t forced = std::min(n, first + recent);
    int64_t alive = n;
    for (float r : plan.keep_ratios) {
      alive = std::max(keep_count(r, alive), forced);
      kept_at.push_back(alive);
    }
    if (selector->needs_last_attention() && last_attn.rows() < n) {
      last_attn = DeviceTensor();
      last_attn = be.alloc(ElemType::f32, n, 1, "last-row attention");
    }
  }

  // KV policy: the first prefill of a sequence sets the budget and is compressed layer by layer
  // (so the full cache of only one layer exists at a time); a later prefill's tokens are added
  // to the budget in full; decode evicts every kvo.interval steps.
  const bool kv_on = kvo.enabled();
  const bool compress = kv_on && !decoding && n_past == 0;
  if (kv_on && !decoding) kv_budget = compress ? kvo.budget_entries(n) : sat_add(kv_budget, n);
  if (mass == kv::MassMode::newest) kv.clear_mass();
  const bool track = mass == kv::MassMode::accumulate || mass == kv::MassMode::newest ||
                     (mass == kv::MassMode::window && compress);
  if (decoding && mass == kv::MassMode::accumulate && kvo.score_window > 0 &&
      decode_steps % kvo.score_window == 0)
    kv.clear_mass();  // Scissorhands-style window: the mass restarts every score_window steps
  // What the cache would hold had this call evicted nothing: before it, plus every entry the
  // layers append (with pruning, fewer than n per layer).
  stats.kv_bytes_before = kv.bytes();
  const auto appended = [&](int64_t rows) {
    stats.kv_bytes_before += static_cast<size_t>(rows) * c.n_head_kv * kv.bytes_per_entry();
  };
  const auto mass_stats = [&](const KVView& cache, int64_t rows) {
    AttentionStats st;
    st.key_mass = cache.mass;
    if (mass == kv::MassMode::newest) st.mass_from = rows - 1;
    else if (mass == kv::MassMode::window) st.mass_from = rows - kvo.window_or_default(kv_budget);
    else if (kvo.score_window > 0 && !decoding) st.mass_from = rows - kvo.score_window;
    st.mass_from = std::max<int64_t>(st.mass_from, 0);
    return st;
  };
  size_t peak = kv.bytes();
  double flops = 0;
  kv.sync();
  if (lazy) lazy_alive.resize(static_cast<size_t>(n)), std::iota(lazy_alive.begin(), lazy_alive.end(), n_past);
  if (decoding && n == 1 && lazy && aux.entries() > 0) {
    flops = lazy_decode_step();
    for (int l = 0; l < c.n_layer; ++l) appended(stats.alive_per_layer[l]);
    peak = kv.bytes();
    ++decode_steps;
  } else if (decoding && n == 1) {
    // One decode step, in a form a backend may capture and replay (CUDA graphs): every layer's
    // per-head cache lengths come from device memory (kv.sync above).
    const int L = c.n_layer;
    be.run_step([&] {
      be.embedding(*w->tok_embd, ids_t.rows(0, 1), x.rows(0, 1));
      for (int l = 0; l < L; ++l) {
        const KVView& cache = kv.layer(l);
        AttentionStats st = track ? mass_stats(cache, 1) : AttentionStats{};
        llama_block(be, c, w->layers[l], w->inv_freq, x.rows(0, 1), pos.rows(0, 1), cache, buf,
                    track ? &st : nullptr);
      }
      head(0, 1);
    });
    for (int l = 0; l < L; ++l) {
      flops += layer_flops(c, static_cast<double>(kv.layer(l).total()) / c.n_head_kv, 1);
      kv.grow(l, 1);
      stats.alive_per_layer.push_back(1);
      if (lazy) layer_pos[l].push_back(static_cast<int32_t>(n_past));
    }
    computed_pairs += L;
    if (lazy) reach[n_past] = L;
    peak = kv.bytes();
    appended(c.n_layer);
    ++decode_steps;
    if (kv_on && kvp->evicts_in_decode && kvo.interval > 0 && ++steps_since_evict >= kvo.interval) {
      const auto e0 = std::chrono::steady_clock::now();
      for (int l = 0; l < L; ++l) evict(l);
      steps_since_evict = 0;
      stats.kv_evict_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - e0).count();
    }
  } else {
    be.embedding(*w->tok_embd, ids_t.rows(0, n), x.rows(0, n));
    int64_t alive = n;
    size_t stage = 0;
    for (int l = 0; l < c.n_layer; ++l) {
      if (prune && stage < plan.layers.size() && l == plan.layers[stage]) {
        prune_rows(stage, alive, kept_at[stage]);
        alive = kept_at[stage];
        ++stage;
      }
      const KVView& cache = kv.layer(l);
      const double kv_before = static_cast<double>(cache.total()) / c.n_head_kv;
      const bool record = prune && stage < plan.layers.size() && plan.layers[stage] == l + 1 &&
                          selector->needs_last_attention();
      AttentionStats st = track ? mass_stats(cache, alive) : AttentionStats{};
      if (record) st.last_row_mean = last_attn.rows(0, alive);
      llama_block(be, c, w->layers[l], w->inv_freq, x.rows(0, alive), pos.rows(0, alive), cache, buf,
                  record || track ? &st : nullptr);
      kv.grow(l, alive);
      peak = std::max(peak, kv.bytes());
      appended(alive);
      computed_pairs += alive;
      if (lazy) layer_pos[l].insert(layer_pos[l].end(), lazy_alive.begin(), lazy_alive.end());
      if (compress) {
        const auto e0 = std::chrono::steady_clock::now();
        evict(l);
        stats.kv_evict_ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - e0).count();
      }
      stats.alive_per_layer.push_back(static_cast<int>(alive));
      flops += layer_flops(c, kv_before, alive);
    }
    for (int32_t p : lazy_alive) reach[p] = c.n_layer;  // survived every stage
    // Logits of the last row, or of every row (dense only).
    head(alive - n_out_rows, n_out_rows);
  }
  stats.kv_bytes = kv.bytes();
  kv_peak = std::max(kv_peak, peak);
  stats.computed_pairs = computed_pairs;
  stats.dense_pairs = static_cast<int64_t>(c.n_layer) * (n_past + n);
  if (lazy) {
    revived_total += stats.revived;
    stats.revived_total = revived_total;
    stats.aux_entries = aux.entries();
    stats.aux_dropped = aux.dropped();
    stats.aux_bytes = aux.bytes();
    if (stats.revived_per_stage.empty()) stats.revived_per_stage.assign(plan.layers.size(), 0);
  }
  for (int l = 0; l < c.n_layer; ++l) stats.kv_entries.push_back(kv.layer(l).n);

  host_logits.resize(static_cast<size_t>(n_out_rows * c.n_vocab));
  be.download(host_logits.data(), logits.rows(0, n_out_rows), ElemType::f32);
  for (size_t s = 0; s < kept_at.size(); ++s) {
    std::vector<int32_t> kp(static_cast<size_t>(kept_at[s]));
    be.download(kp.data(), stage_pos.rows(static_cast<int64_t>(s) * cap, kept_at[s]), ElemType::i32);
    stats.kept_positions.push_back(std::move(kp));
  }
  stats.flops = flops + 2.0 * static_cast<double>(n_out_rows) * c.n_embd * c.n_vocab;
  n_past += static_cast<int>(n);
  stats.elapsed_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return host_logits;
}


Session::Session(const Model& model, const SessionOptions& options) : impl_(std::make_unique<Impl>(model, options)) {}
Session::~Session() = default;

const std::vector<float>& Session::prefill(const std::vector<int32_t>& ids, bool all_logits) {
  return impl_->forward(ids, all_logits, false);
}

const std::vector<float>& Session::decode(int32_t id) { return impl_->forward({id}, false, true); }

void Session::reset() { impl_->reset(); }

int Session::n_past() const { return impl_->n_past; }
int Session::n_ctx() const { return impl_->n_ctx; }
int Session::n_threads() const { return impl_->be.threads(); }
const std::string& Session::device() const { return impl_->device; }
size_t Session::kv_bytes() const { return impl_->kv.bytes(); }
size_t Session::kv_peak_bytes() const { return impl_->kv_peak; }
size_t Session::kv_capacity_bytes() const { return impl_->kv.capacity_bytes(); }
size_t Session::aux_bytes() const { return impl_->aux.bytes(); }
std::vector<int32_t> Session::aux_positions(int stage) const {
  if (stage < 0 || stage >= impl_->aux.n_stage())
    throw UsageError("pruning stage " + std::to_string(stage) + " out of range (the plan has " +
                     std::to_string(impl_->aux.n_stage()) + " stages that keep hidden states)");
  return impl_->aux.positions(stage);
}
void Session::set_kv_policy(const KVPolicyOptions& o) { impl_->set_kv(o); }
const KVPolicyOptions& Session::kv_policy() const { return impl_->kvo; }
std::vector<int64_t> Session::kv_entries(int layer) const {
  if (layer < 0 || layer >= impl_->kv.n_layer()) throw UsageError("layer " + std::to_string(layer) + " out of range");
  return impl_->kv.layer(layer).n;
}
void Session::set_prune(const PrunePlan& plan) { impl_->set_prune(plan); }
const PrunePlan& Session::prune() const { return impl_->plan; }
std::vector<int32_t> Session::cached_positions(int layer, int head) const {
  if (layer < 0 || layer >= impl_->kv.n_layer()) throw UsageError("layer " + std::to_string(layer) + " out of range");
  const int H = impl_->c.n_head_kv;
  if (head < 0 || head >= H)
    throw UsageError("KV head " + std::to_string(head) + " out of range (the model has " + std::to_string(H) + ")");
  const KVView& l = impl_->kv.layer(layer);
  const int64_t rows = l.max_n();
  std::vector<int32_t> all(static_cast<size_t>(rows * H));
  if (rows) impl_->be.download(all.data(), l.pos.rows(0, rows), ElemType::i32);
  std::vector<int32_t> p(static_cast<size_t>(l.n[head]));
  for (int64_t j = 0; j < l.n[head]; ++j) p[j] = all[j * H + head];
  return p;
}
const ForwardStats& Session::last_stats() const { return impl_->stats; }
const Model& Session::model() const { return impl_->model; }
const char* Session::kv_type() const { return elem_name(impl_->kv_type); }

DeviceMemory device_memory(const ModelConfig& c, const std::string& device) {
  const std::shared_ptr<Backend> be = make_backend(device);
  DeviceMemory m;
  m.device = be->name();
  m.weight_bytes = be->model_bytes(c);
  m.kv_bytes_per_token = static_cast<size_t>(c.n_layer) * c.n_head_kv *
                         (2 * static_cast<size_t>(c.head_dim) * elem_bytes(be->default_kv_type()) + sizeof(int32_t));
  m.free_bytes = be->free_bytes();
  return m;
}

double dense_forward_flops(const ModelConfig& c, int64_t n_past, int64_t n, int64_t n_logits) {
  return c.n_layer * layer_flops(c, n_past, n) + 2.0 * static_cast<double>(n_logits) * c.n_embd * c.n_vocab;
}

}  // namespace sdtp
