// Prometheus text exposition of the server's counters (metrics.h).
#include "server/metrics.h"

#include <cstdio>

namespace sdtp::server {

namespace {

std::string num(double x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.15g", x);
  return buf;
}

void header(std::string& out, const char* name, const char* type, const char* help) {
  out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

}  // namespace

void Histogram::observe(double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  size_t i = 0;
  while (i < kBounds.size() && seconds > kBounds[i]) ++i;
  ++counts_[i];
  sum_ += seconds;
  ++n_;
}

std::string Histogram::text(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string out;
  uint64_t cumulative = 0;
  for (size_t i = 0; i < kBounds.size(); ++i) {
    cumulative += counts_[i];
    out += name + "_bucket{le=\"" + num(kBounds[i]) + "\"} " + std::to_string(cumulative) + "\n";
  }
  cumulative += counts_[kBounds.size()];
  out += name + "_bucket{le=\"+Inf\"} " + std::to_string(cumulative) + "\n";
  out += name + "_sum " + num(sum_) + "\n" + name + "_count " + std::to_string(n_) + "\n";
  return out;
}

void Metrics::request(const std::string& endpoint, int status) {
  std::lock_guard<std::mutex> lock(mu_);
  ++requests_[{endpoint, status}];
}

int64_t Metrics::requests(const std::string& endpoint, int status) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = requests_.find({endpoint, status});
  return it == requests_.end() ? 0 : it->second;
}

std::string Metrics::text() const {
  std::string out;
  header(out, "sdtp_requests_total", "counter", "HTTP requests answered, by endpoint and status");
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [key, n] : requests_)
      out += "sdtp_requests_total{endpoint=\"" + key.first + "\",status=\"" + std::to_string(key.second) + "\"} " +
             std::to_string(n) + "\n";
  }
  const auto counter = [&](const char* name, const char* help, int64_t v) {
    header(out, name, "counter", help);
    out += std::string(name) + " " + std::to_string(v) + "\n";
  };
  const auto gauge = [&](const char* name, const char* help, int64_t v) {
    header(out, name, "gauge", help);
    out += std::string(name) + " " + std::to_string(v) + "\n";
  };
  counter("sdtp_prompt_tokens_total", "prompt tokens prefilled", prompt_tokens.load());
  counter("sdtp_completion_tokens_total", "tokens generated", completion_tokens.load());
  counter("sdtp_tokens_pruned_total", "prompt tokens not computed at the last layer (token pruning)",
          tokens_pruned.load());
  counter("sdtp_requests_cancelled_total", "generations stopped because the client went away", cancelled.load());
  gauge("sdtp_queue_depth", "requests waiting for a free sequence slot", queue_depth.load());
  gauge("sdtp_running_sequences", "sequences being prefilled or decoded", running.load());
  gauge("sdtp_kv_bytes", "bytes of KV-cache entries the sequences hold", kv_bytes.load());
  header(out, "sdtp_time_to_first_token_seconds", "histogram", "from a request's arrival to its first token");
  out += ttft.text("sdtp_time_to_first_token_seconds");
  header(out, "sdtp_time_per_output_token_seconds", "histogram", "decode time of each token after the first");
  out += per_token.text("sdtp_time_per_output_token_seconds");
  return out;
}

}  // namespace sdtp::server
