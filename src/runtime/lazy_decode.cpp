// LazyLLM in the session (arXiv 2407.14057 §3, docs/lazyllm.md): pruned prefill rows go to the
// aux cache; every decode step chooses again, stage by stage, from the new token's attention and
// revives pruned tokens from the aux cache, their K/V placed in position order.
#include <functional>
#include <numeric>

#include "runtime/session_impl.h"

namespace sdtp {

void Session::Impl::keep_pruned_in_aux(size_t s, int64_t alive, int64_t kept) {
  // The pruned rows' hidden states go to the aux cache at this stage (one sync per stage).
  std::vector<int32_t> rows(static_cast<size_t>(kept));
  be.download(rows.data(), idx.rows(0, kept), ElemType::i32);
  std::vector<int32_t> pruned_rows, pruned_pos, alive_pos;
  size_t r = 0;
  for (int64_t i = 0; i < alive; ++i) {
    if (r < rows.size() && rows[r] == i) {
      alive_pos.push_back(lazy_alive[i]);
      ++r;
    } else {
      pruned_rows.push_back(static_cast<int32_t>(i));
      pruned_pos.push_back(lazy_alive[i]);
      reach[lazy_alive[i]] = plan.layers[s];
    }
  }
  aux.put(static_cast<int>(s), x.rows(0, alive), pruned_rows, pruned_pos);
  lazy_alive = std::move(alive_pos);
}

void Session::Impl::revive(size_t s, int l, std::vector<int32_t>& rows_pos) {
  const int64_t m = static_cast<int64_t>(rows_pos.size());
  if (m > 1) {
    std::vector<int32_t> rows(static_cast<size_t>(m - 1));
    std::iota(rows.begin(), rows.end(), 0);
    aux.put(static_cast<int>(s), x.rows(0, m), rows, std::vector<int32_t>(rows_pos.begin(), rows_pos.end() - 1));
  }
  const std::vector<int32_t>& cand = layer_pos[l - 1];
  const int64_t n = static_cast<int64_t>(cand.size());
  const int H = c.n_head_kv;
  std::vector<float> mass(static_cast<size_t>(n * H));
  be.download(mass.data(), lazy_mass.rows(0, n), ElemType::f32);
  std::vector<float> score(static_cast<size_t>(n), 0.0f);
  for (int64_t j = 0; j < n; ++j) {
    double sum = 0;
    for (int g = 0; g < H; ++g) sum += mass[j * H + g];
    score[j] = static_cast<float>(sum / c.n_head);  // the mean over the query heads
  }
  std::vector<int32_t> back;
  for (int64_t j : select_rows(score, cand.data(), n, plan.keep_ratios[s], plan.keep_first)) {
    const int32_t p = cand[j];
    if (reach[p] == l && aux.holds(static_cast<int>(s), p)) back.push_back(p);
  }
  const int64_t k = static_cast<int64_t>(back.size());
  aux.take(static_cast<int>(s), back, x_alt);
  be.copy(x_alt.rows(k, 1), x.rows(m - 1, 1));
  std::swap(x, x_alt);
  back.push_back(rows_pos.back());
  rows_pos = std::move(back);
  be.upload(pos.rows(0, k + 1), rows_pos.data(), ElemType::i32);
  stats.revived_per_stage[s] = static_cast<int>(k);
  stats.revived += k;
}

double Session::Impl::lazy_decode_step() {
  const int L = c.n_layer;
  const int H = c.n_head_kv;
  const size_t S = plan.layers.size();
  std::vector<int32_t> rows_pos = {static_cast<int32_t>(n_past)};
  stats.revived_per_stage.assign(S, 0);
  be.embedding(*w->tok_embd, ids_t.rows(0, 1), x.rows(0, 1));
  double flops = 0;
  size_t s = 0;
  for (int l = 0; l < L; ++l) {
    if (s < S && l == plan.layers[s]) revive(s++, l, rows_pos);
    const int64_t m = static_cast<int64_t>(rows_pos.size());
    kv.reserve(m, l, l + 1);
    const KVView& cache = kv.layer(l);
    const int64_t have = cache.n[0];
    // With revived rows: where each entry goes, the cached ones (indices [0, have)) and the rows
    // (indices have + r) merged by position; the new token's is the largest, so it stays last.
    // The new token alone is appended in place.
    std::vector<int32_t> order, merged;
    if (m > 1) {
      order.reserve(static_cast<size_t>(have + m));
      merged.reserve(static_cast<size_t>(have + m));
      const std::vector<int32_t>& old = layer_pos[l];
      for (int64_t i = 0, r = 0; i < have || r < m;) {
        if (r < m && (i >= have || rows_pos[r] < old[i])) {
          order.push_back(static_cast<int32_t>(have + r));
          merged.push_back(rows_pos[r++]);
        } else {
          order.push_back(static_cast<int32_t>(i));
          merged.push_back(old[i++]);
        }
      }
    }
    const bool score = s < S && plan.layers[s] == l + 1;
    AttentionStats st;
    if (score) {
      if (lazy_mass.rows() < have + m) {
        lazy_mass = DeviceTensor();
        lazy_mass = be.alloc(ElemType::f32, cache.k.rows(), H, "LazyLLM attention scores");
      }
      be.fill(lazy_mass.rows(0, have + m), 0.0f);
      st.key_mass = lazy_mass;
      st.mass_from = m - 1;  // the new token's row only
    }
    std::function<void()> placed;
    if (m > 1) placed = [&] { kv.place_appended(l, m, order); };
    llama_block(be, c, w->layers[l], w->inv_freq, x.rows(0, m), pos.rows(0, m), cache, buf,
                score ? &st : nullptr, nullptr, placed);
    kv.grow(l, m);
    if (m > 1) layer_pos[l] = std::move(merged);
    else layer_pos[l].push_back(rows_pos[0]);
    for (int32_t p : rows_pos) reach[p] = l + 1;
    computed_pairs += m;
    stats.alive_per_layer.push_back(static_cast<int>(m));
    flops += layer_flops(c, static_cast<double>(have), m);
  }
  head(static_cast<int64_t>(rows_pos.size()) - 1, 1);
  return flops;
}

}  // namespace sdtp
