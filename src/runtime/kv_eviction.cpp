// KV-cache eviction of one layer by the session's policy (sdtp/kv.h): the statistics the policy
// scores with are downloaded, scored and selected on the host (kv/policy.h, double precision, the
// same entries on every device), and the layer is compacted on the device (KVCache::compact).
#include <chrono>
#include <cstdio>

#include "runtime/session_impl.h"

namespace sdtp {

Session::Impl::~Impl() {
  if (profile)
    std::fprintf(stderr,
                 "[kv-profile] queued work %.1f ms, download %.1f ms, norms %.1f ms, score %.1f ms, select %.1f ms, "
                 "compact %.1f ms\n",
                 prof[5], prof[0], prof[1], prof[2], prof[3], prof[4]);
}

void Session::Impl::lap(int phase, std::chrono::steady_clock::time_point& t) {
  if (!profile) return;
  be.synchronize();
  const auto now = std::chrono::steady_clock::now();
  prof[phase] += std::chrono::duration<double, std::milli>(now - t).count();
  t = now;
}

void Session::Impl::evict(int l) {
  auto t = std::chrono::steady_clock::now();
  lap(5, t);  // the work queued before (the layer's forward, or the decode step)
  const KVView& v = kv.layer(l);
  const int64_t budget = kv::layer_budget(*kvp, kv_budget, l, c.n_layer, v.max_n());
  bool over = false;
  for (int64_t n : v.n) over |= n > budget;
  if (!over) return;
  const int H = c.n_head_kv;
  kv::LayerEntries e;
  e.n_head_kv = H;
  e.n = v.n;
  e.rows = v.max_n();
  const auto take = [&](const DeviceTensor& t, auto& out) {
    out.resize(static_cast<size_t>(e.rows * H));
    be.download(out.data(), t.rows(0, e.rows), t.type());
  };
  take(v.pos, e.pos);
  if (mass != kv::MassMode::none) take(v.mass, e.mass);
  lap(0, t);
  const bool vn = kv::needs_value_norms(*kvp), kn = kv::needs_key_norms(*kvp);
  if (vn || kn) {
    for (auto [t, wanted] : {std::pair{&norm_v, vn}, std::pair{&norm_k, kn}})
      if (wanted && t->rows() < e.rows) {  // only the norms the policy scores with
        *t = DeviceTensor();
        *t = be.alloc(ElemType::f32, v.k.rows(), H, "KV entry norms");
      }
    kv.sync_layer(l);
    be.entry_norms(v, H, c.head_dim, vn ? norm_v : DeviceTensor(), kn ? norm_k : DeviceTensor());
    if (vn) take(norm_v, e.v_l1);
    if (kn) take(norm_k, e.k_l2);
    lap(1, t);
  }
  const std::vector<double> sc = kv::score_entries(*kvp, kvo, e, l);
  lap(2, t);
  const int64_t window = kvo.window_or_default(budget);
  const auto keep = kv::select_entries(e, sc, budget, kvo.sinks_or_default(), static_cast<int>(std::min<int64_t>(window, INT32_MAX)), kvo.adaptive);
  lap(3, t);
  kv.compact(l, keep, 16 + kvo.interval);  // room for the decode steps until the next eviction
  lap(4, t);
}

}  // namespace sdtp
