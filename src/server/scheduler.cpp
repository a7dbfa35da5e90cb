// Sequence slots and their workers (scheduler.h).
#include "server/scheduler.h"

#include <algorithm>

#include "sdtp/error.h"

namespace sdtp::server {

namespace {

using clock = std::chrono::steady_clock;

// What decides a session's behaviour in a plan / KV options, to skip reconfiguring when it is unchanged.
std::string plan_key(const PrunePlan& p) {
  std::string k = p.method + "|" + std::to_string(p.keep_first) + "|" + std::to_string(p.keep_recent) + "|" +
                  std::to_string(p.seed) + "|" + std::to_string(p.aux_budget) + "|" +
                  std::to_string(reinterpret_cast<uintptr_t>(p.predictor.get())) + "|";
  for (int l : p.layers) k += std::to_string(l) + ",";
  k += "|";
  for (float r : p.keep_ratios) k += std::to_string(r) + ",";
  return k;
}

std::string kv_key(const KVPolicyOptions& o) {
  return o.policy + "|" + std::to_string(o.budget) + "|" + std::to_string(o.sinks) + "|" + std::to_string(o.window) +
         "|" + std::to_string(o.interval) + "|" + std::to_string(o.adaptive) + "|" +
         std::to_string(o.score_window) + "|" + std::to_string(o.seed);
}

}  // namespace

Scheduler::Scheduler(const Model& model, const SessionOptions& options, int parallel, int max_queue,
                     Metrics& metrics)
    : model_(model), options_(options), metrics_(metrics), max_queue_(max_queue) {
  if (parallel < 1) throw UsageError("--parallel must be >= 1, got " + std::to_string(parallel));
  if (max_queue < 0) throw UsageError("--queue must be >= 0, got " + std::to_string(max_queue));
  // Sessions of one GPU share its backend (one per device), which one thread at a time may drive.
  if (options.device != "cpu" && parallel > 1)
    throw UsageError("--parallel " + std::to_string(parallel) + " on " + options.device +
                     ": one sequence slot per GPU for now (its sessions share one backend)");
  for (int i = 0; i < parallel; ++i) sessions_.push_back(std::make_unique<Session>(model, options));
  n_ctx_ = sessions_[0]->n_ctx();
  for (auto& s : sessions_) workers_.emplace_back([this, &s] { work(*s); });
}

Scheduler::~Scheduler() { stop(true); }

bool Scheduler::submit(const std::shared_ptr<Job>& job) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return false;
    // A job waits only when every slot is busy; the queue bounds the waiting ones.
    const int64_t busy = static_cast<int64_t>(running_.size());
    if (busy >= static_cast<int64_t>(sessions_.size()) && static_cast<int>(queue_.size()) >= max_queue_) return false;
    queue_.push_back(job);
    metrics_.queue_depth = static_cast<int64_t>(queue_.size());
  }
  cv_.notify_one();
  return true;
}

void Scheduler::close() {
  std::deque<std::shared_ptr<Job>> dropped;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    dropped.swap(queue_);
    metrics_.queue_depth = 0;
  }
  cv_.notify_all();
  for (auto& j : dropped) {
    JobResult r;
    r.error_status = 503;
    r.error = "the server is shutting down";
    if (j->on_done) j->on_done(r);
  }
}

void Scheduler::cancel_running() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& j : running_) j->cancel = true;
}

int64_t Scheduler::running() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(running_.size());
}

void Scheduler::stop(bool cancel) {
  close();
  if (cancel) cancel_running();
  std::call_once(joined_, [this] {
    for (auto& t : workers_)
      if (t.joinable()) t.join();
  });
}

void Scheduler::work(Session& session) {
  std::string plan_now = plan_key(session.prune()), kv_now = kv_key(session.kv_policy());
  for (;;) {
    std::shared_ptr<Job> job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, nothing left
      job = queue_.front();
      queue_.pop_front();
      metrics_.queue_depth = static_cast<int64_t>(queue_.size());
      running_.push_back(job);
      metrics_.running = static_cast<int64_t>(running_.size());
    }
    bool configured = false;
    try {
      // Reconfigure only what changed; the dense plan first, since a reviving plan refuses a KV policy.
      const std::string pk = plan_key(job->plan), kk = kv_key(job->kv);
      if (pk != plan_now || kk != kv_now) {
        plan_now = kv_now = "";  // unknown until all three calls succeed
        session.set_prune(PrunePlan{});
        session.set_kv_policy(job->kv);
        session.set_prune(job->plan);
        plan_now = pk;
        kv_now = kk;
      }
      configured = true;
    } catch (const std::exception& e) {
      JobResult r;
      r.error_status = 400;
      r.error = e.what();
      if (job->on_done) job->on_done(r);
    }
    if (configured) run_job(session, *job);
    {
      std::lock_guard<std::mutex> lock(mu_);
      running_.erase(std::find(running_.begin(), running_.end(), job));
      metrics_.running = static_cast<int64_t>(running_.size());
    }
  }
}

void Scheduler::run_job(Session& session, Job& job) {
  JobResult result;
  std::vector<TokenLogprob> pending;
  bool first = true;
  clock::time_point last = clock::now();
  int64_t kv_held = 0;  // this session's share of metrics_.kv_bytes
  const auto update_kv = [&](int64_t now) {
    metrics_.kv_bytes += now - kv_held;
    kv_held = now;
  };
  GenerateOptions gen = job.gen;
  gen.on_token = [&](const TokenLogprob& t) {
    const clock::time_point now = clock::now();
    if (first) {
      metrics_.ttft.observe(std::chrono::duration<double>(now - job.arrived).count());
      first = false;
    } else {
      metrics_.per_token.observe(std::chrono::duration<double>(now - last).count());
    }
    last = now;
    ++metrics_.completion_tokens;
    update_kv(static_cast<int64_t>(session.kv_bytes()));
    if (gen.logprobs >= 0) pending.push_back(t);
  };
  const auto on_text = [&](std::string_view piece) {
    if (job.cancel) return false;
    return job.on_piece ? job.on_piece(piece, std::move(pending)) : true;
  };
  try {
    result.gen = generate(session, job.prompt, gen, on_text);
    if (!pending.empty() && job.on_piece && !job.cancel) job.on_piece("", std::move(pending));
    if (result.gen.finish_reason == "cancelled") ++metrics_.cancelled;
    const ForwardStats& pre = result.gen.prefill_stats;
    SdtpReport& rep = result.report;
    rep.prompt_tokens = result.gen.n_prompt;
    rep.completion_tokens = static_cast<int>(result.gen.tokens.size());
    rep.alive_last_layer = pre.alive_per_layer.empty() ? rep.prompt_tokens : pre.alive_per_layer.back();
    rep.prefill_flops = pre.flops;
    rep.dense_prefill_flops = pre.dense_flops;
    for (const auto& layer : result.gen.last_stats.kv_entries)
      for (int64_t e : layer) rep.kv_entries += e;
    rep.kv_bytes = session.kv_bytes();
    rep.prune = session.prune().method;
    rep.kv_policy = session.kv_policy().describe();
    metrics_.prompt_tokens += rep.prompt_tokens;
    metrics_.tokens_pruned += std::max(0, rep.prompt_tokens - rep.alive_last_layer);
  } catch (const UsageError& e) {
    result.error_status = 400;
    result.error = e.what();
  } catch (const DeviceOutOfMemoryError& e) {
    result.error_status = 503;
    result.error = e.what();
  } catch (const std::exception& e) {
    result.error_status = 500;
    result.error = e.what();
  }
  session.reset();  // the sequence's KV cache goes back
  update_kv(static_cast<int64_t>(session.kv_bytes()));
  if (job.on_done) job.on_done(result);
}

}  // namespace sdtp::server
