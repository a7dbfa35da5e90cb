// PrunePlan validation and list parsing (see include/sdtp/prune.h).
#include <cmath>
#include <sstream>

#include "sdtp/error.h"
#include "sdtp/model.h"
#include "sdtp/prune.h"

namespace sdtp {

void PrunePlan::validate(const ModelConfig& c) const {
  if (method != "none" && method != "random" && method != "attn") {
    throw UsageError("unknown pruning method '" + method + "' (expected none, random or attn)");
  }
  if (method == "none") return;
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

namespace {

template <typename T, typename Parse>
std::vector<T> parse_list(const std::string& text, const std::string& what, Parse parse) {
  std::vector<T> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t used = 0;
    T v{};
    try {
      v = parse(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (item.empty() || used != item.size()) throw UsageError(what + ": '" + item + "' is not a number in '" + text + "'");
    out.push_back(v);
  }
  if (out.empty()) throw UsageError(what + ": empty list");
  return out;
}

}  // namespace

std::vector<int> parse_int_list(const std::string& text, const std::string& what) {
  return parse_list<int>(text, what, [](const std::string& s, size_t* used) { return std::stoi(s, used); });
}

std::vector<float> parse_float_list(const std::string& text, const std::string& what) {
  return parse_list<float>(text, what, [](const std::string& s, size_t* used) { return std::stof(s, used); });
}

}  // namespace sdtp
