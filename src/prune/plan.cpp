// PrunePlan: validation against the model and the kept fraction (see include/sdtp/prune.h).
#include <cmath>
#include <sstream>

#include "prune/methods.h"
#include "sdtp/error.h"
#include "sdtp/model.h"
#include "sdtp/prune.h"

namespace sdtp {

bool PrunePlan::enabled() const {
  const PruneMethod* m = lookup_prune_method(method);
  return !layers.empty() && (!m || m->prunes());  // an unknown method is validate's to refuse
}

void PrunePlan::validate(const ModelConfig& c) const {
  if (!find_prune_method(method).prunes()) return;
  if (layers.empty()) throw UsageError("pruning method '" + method + "' needs at least one pruning layer");
  if (layers.size() != keep_ratios.size()) {
    throw UsageError("pruning plan has " + std::to_string(layers.size()) + " layers but " +
                     std::to_string(keep_ratios.size()) + " keep ratios");
  }
  for (size_t i = 0; i < layers.size(); ++i) {
    if (layers[i] < 1 || layers[i] >= c.n_layer) {
      throw UsageError("pruning layer " + std::to_string(layers[i]) + " is outside [1, " + std::to_string(c.n_layer) +
                       ") for this " + std::to_string(c.n_layer) + "-layer model");
    }
    if (i > 0 && layers[i] <= layers[i - 1]) {
      throw UsageError("pruning layers must be strictly increasing, got " + std::to_string(layers[i - 1]) +
                       " then " + std::to_string(layers[i]));
    }
    const float r = keep_ratios[i];
    if (!(r > 0.0f && r <= 1.0f)) {
      std::ostringstream os;
      os << "keep ratio " << r << " of stage " << i << " is outside (0, 1]";
      throw UsageError(os.str());
    }
  }
  if (keep_first < 0) throw UsageError("keep-first must be >= 0, got " + std::to_string(keep_first));
}

float PrunePlan::final_keep_fraction() const {
  float f = 1.0f;
  if (enabled())
    for (float r : keep_ratios) f *= r;
  return f;
}

}  // namespace sdtp
