// The server's sequence slots: `parallel` Sessions of one Model (weights shared), each driven by its
// own worker thread, fed from one bounded queue of jobs. A job is one generation: its prompt ids,
// options, plan and KV policy; its text pieces stream through a callback that may cancel it (a
// client that went away), and its end through another. After each job the session is reset, so a
// finished or cancelled sequence gives its KV cache back.
//
// Sequences run side by side, not batched into one matmul: on the CPU each session takes its share
// of the threads; a GPU takes one slot (its sessions share one backend; continuous batching of
// decode steps is not built yet, docs/server.md).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "sdtp/generate.h"
#include "sdtp/session.h"
#include "server/api.h"
#include "server/metrics.h"

namespace sdtp::server {

struct JobResult {
  GenerateResult gen;
  SdtpReport report;
  int error_status = 0;  // 0: no error; else the HTTP status of `error`
  std::string error;
};

struct Job {
  std::vector<int32_t> prompt;
  GenerateOptions gen;
  PrunePlan plan;
  KVPolicyOptions kv;
  std::chrono::steady_clock::time_point arrived = std::chrono::steady_clock::now();
  // On the worker thread: a piece of text (valid UTF-8, maybe empty) and the log-probabilities of
  // the tokens generated since the previous piece (when gen.logprobs >= 0); false cancels the job.
  std::function<bool(std::string_view text, std::vector<TokenLogprob>&& logprobs)> on_piece;
  // On the worker thread, once, at the end (also for a job dropped from the queue at shutdown).
  std::function<void(const JobResult&)> on_done;
  std::atomic<bool> cancel{false};  // set from any thread: the job stops at its next token
};

class Scheduler {
 public:
  // Makes the sessions (UsageError / DeviceError as Session's constructor throws them).
  Scheduler(const Model& model, const SessionOptions& options, int parallel, int max_queue, Metrics& metrics);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues a job; false when the queue holds max_queue jobs already or the scheduler is stopping.
  bool submit(const std::shared_ptr<Job>& job);
  // Stops taking jobs; queued ones end with 503; running ones go on. Idempotent, thread-safe.
  void close();
  void cancel_running();  // running jobs stop at their next token
  // close(), cancel_running() when asked, then waits for every worker to exit. Idempotent.
  void stop(bool cancel_running);
  int64_t running() const;

  int n_ctx() const { return n_ctx_; }
  int parallel() const { return static_cast<int>(workers_.size()); }
  const SessionOptions& options() const { return options_; }

 private:
  void work(Session& session);
  void run_job(Session& session, Job& job);

  const Model& model_;
  SessionOptions options_;
  Metrics& metrics_;
  int max_queue_;
  int n_ctx_ = 0;
  std::vector<std::unique_ptr<Session>> sessions_;
  std::vector<std::thread> workers_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> queue_;
  std::vector<std::shared_ptr<Job>> running_;
  bool stopping_ = false;
  std::once_flag joined_;
};

}  // namespace sdtp::server
