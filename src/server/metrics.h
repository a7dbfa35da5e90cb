// What `GET /metrics` reports, in Prometheus' text format: requests by endpoint and status, prompt and
// completion tokens, time-to-first-token and per-token latency histograms, queue depth, running
// sequences, KV-cache bytes held, prompt tokens pruned. Thread-safe.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>

namespace sdtp::server {

// A cumulative histogram over fixed upper bounds in seconds (Prometheus' `le` buckets).
class Histogram {
 public:
  static constexpr std::array<double, 14> kBounds = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                     0.25,  0.5,    1.0,   2.5,  5.0,   10.0, 30.0};
  void observe(double seconds);
  // The histogram's lines under `name` (…_bucket{le=…}, …_sum, …_count).
  std::string text(const std::string& name) const;

 private:
  mutable std::mutex mu_;
  std::array<uint64_t, kBounds.size() + 1> counts_{};  // the last: +Inf
  double sum_ = 0;
  uint64_t n_ = 0;
};

class Metrics {
 public:
  void request(const std::string& endpoint, int status);
  std::atomic<int64_t> prompt_tokens{0}, completion_tokens{0}, tokens_pruned{0}, cancelled{0};
  std::atomic<int64_t> queue_depth{0}, running{0};
  std::atomic<int64_t> kv_bytes{0};  // summed over the sessions, updated as they run
  Histogram ttft, per_token;
  std::string text() const;  // the whole exposition
  int64_t requests(const std::string& endpoint, int status) const;

 private:
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, int64_t> requests_;
};

}  // namespace sdtp::server
