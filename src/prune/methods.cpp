// The registry of pruning methods: one row per method (name, help line, what its plan needs, the
// selector factory of selector.cpp). Adding a method is adding a row here and its selector.
#include "prune/methods.h"

#include "prune/selector.h"
#include "sdtp/error.h"

namespace sdtp {

const std::vector<PruneMethod>& prune_methods() {
  // name, help, needs_predictor, needs_last_attention, needs_saliency_oracle, revives, make_selector
  static const std::vector<PruneMethod> methods = {
      {"none", "dense", false, false, false, false, nullptr},
      {"sdtp", "learned predictor, needs a predictor file", true, false, false, false, make_sdtp_selector},
      {"random", "random tokens at the same ratios", false, false, false, false, make_random_selector},
      {"attn", "last token's attention, prefill only", false, true, false, false, make_attn_selector},
      // LazyLLM (arXiv 2407.14057 §3): attn's scores in prefill, then the same choice again at every
      // decode step with revival from the aux cache (the Session's decode loop).
      {"lazyllm", "last token's attention at every step, pruned tokens revived", false, true, false, true,
       make_attn_selector},
      {"saliency", "gradient oracle, CPU only", false, false, true, false, make_saliency_selector},
  };
  return methods;
}

const PruneMethod* lookup_prune_method(const std::string& name) {
  for (const PruneMethod& m : prune_methods())
    if (m.name == name) return &m;
  return nullptr;
}

const PruneMethod& find_prune_method(const std::string& name) {
  if (const PruneMethod* m = lookup_prune_method(name)) return *m;
  throw UsageError("unknown pruning method '" + name + "' (expected " + prune_method_names() + ")");
}

std::string prune_method_names() {
  const std::vector<PruneMethod>& all = prune_methods();
  std::string s;
  for (size_t i = 0; i < all.size(); ++i) s += (i == 0 ? "" : i + 1 == all.size() ? " or " : ", ") + all[i].name;
  return s;
}

}  // namespace sdtp
