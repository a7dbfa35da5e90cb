// Token sampling: repetition penalty, temperature, top-k, top-p, min-p, then a draw (or argmax).
#include <algorithm>
#include <cmath>
#include <string>
#include <unordered_set>

#include "sdtp/error.h"
#include "sdtp/generate.h"

namespace sdtp {

void SamplingParams::validate() const {
  const auto bad = [](const std::string& what) { throw UsageError(what); };
  if (!std::isfinite(temperature) || temperature < 0) bad("temperature must be >= 0, got " + std::to_string(temperature));
  if (!std::isfinite(top_p) || top_p <= 0 || top_p > 1) bad("top-p must be in (0, 1], got " + std::to_string(top_p));
  if (!std::isfinite(min_p) || min_p < 0 || min_p > 1) bad("min-p must be in [0, 1], got " + std::to_string(min_p));
  if (top_k < 0) bad("top-k must be >= 0, got " + std::to_string(top_k));
  if (!std::isfinite(repeat_penalty) || repeat_penalty <= 0) {
    bad("repeat penalty must be > 0, got " + std::to_string(repeat_penalty));
  }
  if (repeat_last_n < 0) bad("repeat-last-n must be >= 0, got " + std::to_string(repeat_last_n));
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) { params_.validate(); }

int32_t Sampler::sample(const float* logits, int n_vocab, const std::vector<int32_t>& history) {
  candidates_.resize(static_cast<size_t>(n_vocab));
  for (int i = 0; i < n_vocab; ++i) candidates_[i] = {logits[i], i};

  // Repetition penalty (CTRL, Keskar et al. 2019), as transformers applies it: positive logits are
  // divided by the penalty, negative ones multiplied, once per distinct recent token.
  if (params_.repeat_penalty != 1.0f && params_.repeat_last_n > 0) {
    const size_t start = history.size() > static_cast<size_t>(params_.repeat_last_n)
                             ? history.size() - static_cast<size_t>(params_.repeat_last_n)
                             : 0;
    std::unordered_set<int32_t> seen(history.begin() + static_cast<std::ptrdiff_t>(start), history.end());
    for (int32_t id : seen) {
      if (id < 0 || id >= n_vocab) continue;
      float& l = candidates_[id].first;
      l = l > 0 ? l / params_.repeat_penalty : l * params_.repeat_penalty;
    }
  }

  const auto by_logit = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  if (params_.temperature <= 0.0f) {
    return std::min_element(candidates_.begin(), candidates_.end(), by_logit)->second;
  }

  size_t keep = candidates_.size();
  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < keep) keep = static_cast<size_t>(params_.top_k);
  std::partial_sort(candidates_.begin(), candidates_.begin() + static_cast<std::ptrdiff_t>(keep), candidates_.end(),
                    by_logit);
  candidates_.resize(keep);

  // Softmax at the temperature over the survivors (sorted, so the first is the max).
  const float mx = candidates_[0].first;
  std::vector<double> p(keep);
  double sum = 0;
  for (size_t i = 0; i < keep; ++i) {
    p[i] = std::exp(static_cast<double>(candidates_[i].first - mx) / params_.temperature);
    sum += p[i];
  }
  for (double& v : p) v /= sum;

  // min-p: drop tokens whose probability is below min_p times the top one's.
  size_t n = keep;
  if (params_.min_p > 0) {
    const double floor = params_.min_p * p[0];
    n = 1;
    while (n < keep && p[n] >= floor) ++n;
  }
  // top-p: the smallest prefix whose mass reaches top_p.
  if (params_.top_p < 1.0f) {
    double mass = 0;
    size_t m = 0;
    while (m < n) {
      mass += p[m++];
      if (mass >= params_.top_p) break;
    }
    n = m;
  }
  double total = 0;
  for (size_t i = 0; i < n; ++i) total += p[i];
  std::uniform_real_distribution<double> u(0.0, total);
  double r = u(rng_);
  for (size_t i = 0; i < n; ++i) {
    r -= p[i];
    if (r <= 0) return candidates_[i].second;
  }
  return candidates_[n - 1].second;
}

}  // namespace sdtp
