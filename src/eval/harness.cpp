// The evaluation loop: builds every task's samples for every length, runs each through the
// configured session (greedy generation, or teacher-forced scoring for ppl with the dense run as
// reference), records quality and cost per sample and summarises per task and length. A query-aware
// run prefills a sample's context and question in two calls, so that the KV policy compresses the
// context alone (kvpress's benchmark protocol).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <tuple>

#include "eval/metrics.h"
#include "eval/run_config.h"
#include "eval/task_impls.h"
#include "eval/tasks.h"
#include "sdtp/error.h"
#include "sdtp/eval.h"

namespace sdtp {
namespace {

double now_ms() {
  using namespace std::chrono;
  return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

bool needs_haystack(const std::string& task, const EvalOptions& o) {
  return task.rfind("niah", 0) == 0 || task == "cwe" || task == "mdqa" || (task == "ppl" && o.ppl_text_path.empty());
}

SampleRecord base_record(const eval::EvalSample& s) {
  SampleRecord r;
  r.task = s.task;
  r.length = s.length;
  r.index = s.index;
  r.depth = s.depth;
  r.needle_position = s.needle_position;
  r.n_prompt = static_cast<int>(s.prompt_ids.size());
  r.metric = s.metric;
  r.expected = s.expected;
  return r;
}

// After each forward call of a sample (its session was reset when the sample began): the session's
// (token, layer) pairs and revivals so far, and the most aux cache it held.
void record_pairs(SampleRecord& r, const ForwardStats& st) {
  r.computed_pairs = st.computed_pairs;
  r.dense_pairs = st.dense_pairs;
  r.revived_total = st.revived_total;
  r.aux_bytes = std::max(r.aux_bytes, st.aux_bytes);
}

// Adds one prefill call's cost to the record (a query-aware sample has two); kv_bytes is the cache
// after the latest call, i.e. after its compression.
void record_prefill(SampleRecord& r, const eval::ConfiguredSession& session, const ModelConfig& c,
                    int64_t n_past, double ms) {
  const ForwardStats& st = session.last_stats();
  r.ttft_ms += ms;
  r.prefill_flops += st.flops > 0 ? st.flops : dense_forward_flops(c, n_past, st.n_tokens, 1);
  if (r.alive_per_layer.empty()) r.alive_per_layer.assign(st.alive_per_layer.size(), 0);
  for (size_t l = 0; l < st.alive_per_layer.size() && l < r.alive_per_layer.size(); ++l)
    r.alive_per_layer[l] += st.alive_per_layer[l];
  r.kv_bytes = session.kv_bytes();
  r.kv_peak_bytes = session.kv_peak_bytes();
  record_pairs(r, st);
}

// The prompt's prefill: one call, or (query-aware, the sample has a question) the context into the
// empty cache, which the policy compresses, then the question on the same session. Returns the
// logits of the last prompt position.
const std::vector<float>& prefill_prompt(const eval::EvalSample& s, eval::ConfiguredSession& session,
                                         const Model& model, bool query_aware, SampleRecord& r) {
  const int n = static_cast<int>(s.prompt_ids.size());
  const int split = query_aware && s.question_start > 0 && s.question_start < n ? s.question_start : n;
  const std::vector<int32_t> context(s.prompt_ids.begin(), s.prompt_ids.begin() + split);
  double t0 = now_ms();
  const std::vector<float>* logits = &session.prefill(context);
  record_prefill(r, session, model.config, 0, now_ms() - t0);
  if (split < n) {
    const std::vector<int32_t> question(s.prompt_ids.begin() + split, s.prompt_ids.end());
    t0 = now_ms();
    logits = &session.prefill_continuation(question);
    record_prefill(r, session, model.config, split, now_ms() - t0);
    r.n_question = n - split;
  }
  return *logits;
}

// Greedy generation until an end-of-generation token or max_new_tokens.
void run_generate(const eval::Task& task, const eval::EvalSample& s, eval::ConfiguredSession& session,
                  const Model& model, bool query_aware, SampleRecord& r) {
  const int n_vocab = model.config.n_vocab;
  const std::vector<float>* logits = &prefill_prompt(s, session, model, query_aware, r);
  std::vector<int32_t> out;
  for (int step = 0; step < s.max_new_tokens; ++step) {
    const int32_t next = eval::argmax(logits->data(), n_vocab);
    if (model.tokenizer.is_end_of_generation(next)) break;
    out.push_back(next);
    if (step + 1 == s.max_new_tokens) break;
    const double t0 = now_ms();
    logits = &session.decode(next);
    r.decode_ms += now_ms() - t0;
    ++r.n_decoded;
    r.kv_bytes = std::max(r.kv_bytes, session.kv_bytes());
    record_pairs(r, session.last_stats());
  }
  r.kv_peak_bytes = session.kv_peak_bytes();
  r.answer = model.tokenizer.decode(out);
  r.score = task.score(r.answer, s);
}

// Teacher-forced scoring of the window's last n_scored tokens: the prefill of the prefix predicts the
// first, each decode step of a true token the next. `visit(t, logits)` sees every distribution.
template <class Visit>
void run_window(const eval::EvalSample& s, eval::ConfiguredSession& session, const Model& model,
                SampleRecord* r, const Visit& visit) {
  const int n_prefix = static_cast<int>(s.prompt_ids.size()) - s.n_scored;
  const std::vector<int32_t> prefix(s.prompt_ids.begin(), s.prompt_ids.begin() + n_prefix);
  double t0 = now_ms();
  const std::vector<float>* logits = &session.prefill(prefix);
  if (r) {
    r->n_prompt = n_prefix;
    record_prefill(*r, session, model.config, 0, now_ms() - t0);
  }
  for (int t = 0; t < s.n_scored; ++t) {
    visit(t, logits->data());
    if (t + 1 == s.n_scored) break;
    t0 = now_ms();
    logits = &session.decode(s.prompt_ids[n_prefix + t]);
    if (r) {
      r->decode_ms += now_ms() - t0;
      ++r->n_decoded;
      r->kv_bytes = std::max(r->kv_bytes, session.kv_bytes());
      record_pairs(*r, session.last_stats());
    }
  }
  if (r) r->kv_peak_bytes = session.kv_peak_bytes();
}

void run_perplexity(const eval::EvalSample& s, eval::ConfiguredSession& session,
                    std::unique_ptr<eval::ConfiguredSession>& reference, const Model& model,
                    bool need_reference, SampleRecord& r) {
  const int n_vocab = model.config.n_vocab;
  const int n_prefix = static_cast<int>(s.prompt_ids.size()) - s.n_scored;
  std::vector<float> ref_logits;
  if (need_reference) {
    if (!reference) {
      reference = std::make_unique<eval::ConfiguredSession>(model, session.config().dense_reference());
      reference->warm_up(s.prompt_ids.front());
    }
    ref_logits.resize(static_cast<size_t>(s.n_scored) * n_vocab);
    run_window(s, *reference, model, nullptr, [&](int t, const float* l) {
      std::copy(l, l + n_vocab, ref_logits.begin() + static_cast<size_t>(t) * n_vocab);
    });
  }
  int agree = 0;
  double kl = 0;
  run_window(s, session, model, &r, [&](int t, const float* l) {
    r.nll_sum += eval::token_nll(l, n_vocab, s.prompt_ids[n_prefix + t]);
    if (need_reference) {
      const float* ref = ref_logits.data() + static_cast<size_t>(t) * n_vocab;
      agree += eval::argmax(ref, n_vocab) == eval::argmax(l, n_vocab);
      kl += eval::kl_divergence(ref, l, n_vocab);
    }
  });
  r.n_scored = s.n_scored;
  r.score = std::exp(r.nll_sum / s.n_scored);
  // A dense run is its own reference: agreement 1 and KL 0 by definition.
  r.top1_agreement = need_reference ? static_cast<double>(agree) / s.n_scored : 1.0;
  r.kl_mean = need_reference ? kl / s.n_scored : 0.0;
}

std::vector<SummaryRow> summarise(const std::vector<SampleRecord>& samples) {
  std::vector<SummaryRow> rows;
  std::map<std::pair<std::string, int>, size_t> at;
  struct Acc {
    double score = 0, score_sq = 0, nll = 0, agree = 0, kl = 0;
    long scored_tokens = 0;
    bool binary = true;  // every sample scored 0 or 1
  };
  std::vector<Acc> acc;
  for (const auto& s : samples) {
    auto key = std::make_pair(s.task, s.length);
    auto it = at.find(key);
    if (it == at.end()) {
      it = at.emplace(key, rows.size()).first;
      SummaryRow row;
      row.task = s.task;
      row.length = s.length;
      rows.push_back(row);
      acc.emplace_back();
    }
    SummaryRow& row = rows[it->second];
    Acc& a = acc[it->second];
    if (s.skipped) {
      ++row.skipped;
      continue;
    }
    ++row.samples;
    a.score += s.score;
    a.score_sq += s.score * s.score;
    a.binary = a.binary && (s.score == 0.0 || s.score == 1.0);
    row.ttft_ms += s.ttft_ms;
    row.decode_ms += s.decode_ms;
    row.prefill_flops += s.prefill_flops;
    row.kv_bytes += static_cast<double>(s.kv_bytes);
    row.kv_peak_bytes += static_cast<double>(s.kv_peak_bytes);
    row.computed_pairs += static_cast<double>(s.computed_pairs);
    row.dense_pairs += static_cast<double>(s.dense_pairs);
    row.revived_total += static_cast<double>(s.revived_total);
    row.aux_bytes += static_cast<double>(s.aux_bytes);
    if (s.metric == "ppl") {
      a.nll += s.nll_sum;
      a.agree += s.top1_agreement * s.n_scored;
      a.kl += s.kl_mean * s.n_scored;
      a.scored_tokens += s.n_scored;
    }
  }
  for (size_t i = 0; i < rows.size(); ++i) {
    SummaryRow& row = rows[i];
    const Acc& a = acc[i];
    if (row.samples == 0) {
      row.score = std::nan("");
      continue;
    }
    const double n = row.samples;
    row.ttft_ms /= n;
    row.decode_ms /= n;
    row.prefill_flops /= n;
    row.kv_bytes /= n;
    row.kv_peak_bytes /= n;
    row.computed_pairs /= n;
    row.dense_pairs /= n;
    row.revived_total /= n;
    row.aux_bytes /= n;
    if (a.scored_tokens > 0) {
      row.score = std::exp(a.nll / a.scored_tokens);  // perplexity over all scored tokens
      row.top1_agreement = a.agree / a.scored_tokens;
      row.kl_mean = a.kl / a.scored_tokens;
    } else {
      row.score = a.score / n;
      std::tie(row.ci_low, row.ci_high) = eval::score_interval95(row.score, a.score_sq / n, n, a.binary);
    }
  }
  return rows;
}

std::vector<DepthRow> by_depth(const std::vector<SampleRecord>& samples) {
  std::vector<DepthRow> rows;
  for (const auto& s : samples) {
    if (s.skipped || s.depth < 0) continue;
    auto it = std::find_if(rows.begin(), rows.end(), [&](const DepthRow& r) {
      return r.task == s.task && r.length == s.length && std::abs(r.depth - s.depth) < 1e-9;
    });
    if (it == rows.end()) {
      rows.push_back({s.task, s.length, s.depth, 0, 0});
      it = rows.end() - 1;
    }
    ++it->samples;
    it->score += s.score;
  }
  for (auto& r : rows) r.score /= r.samples;
  std::stable_sort(rows.begin(), rows.end(), [](const DepthRow& a, const DepthRow& b) {
    return std::tie(a.task, a.length, a.depth) < std::tie(b.task, b.length, b.depth);
  });
  return rows;
}

}  // namespace

std::vector<std::string> eval_task_names() {
  return eval::task_names();
}

std::vector<std::string> expand_eval_tasks(const std::vector<std::string>& names) {
  return eval::expand_task_names(names);
}

EvalReport run_eval(const Model& model, const RunConfig& config, const EvalOptions& options) {
  const double t_start = now_ms();
  const std::vector<std::string> names = expand_eval_tasks(options.tasks);
  if (options.lengths.empty()) throw UsageError("eval: no target lengths given");
  for (int L : options.lengths)
    if (L < 16) throw UsageError("eval: target length must be at least 16 tokens, got " + std::to_string(L));
  if (options.samples < 1)
    throw UsageError("eval: --samples must be at least 1, got " + std::to_string(options.samples));
  if (model.tokenizer.n_vocab() <= 0) throw UsageError("eval: model '" + model.path + "' has no tokenizer");

  // Inputs of the tasks, read once (and checked before any model work).
  eval::TaskSources src;
  src.longbench_path = options.longbench_path;
  src.longbench_metric = options.longbench_metric;
  src.ppl_tail = options.ppl_tail;
  const bool want_haystack = std::any_of(names.begin(), names.end(),
                                         [&](const std::string& n) { return needs_haystack(n, options); });
  if (!options.haystack_path.empty()) {
    src.haystack_text = eval::clean_haystack(eval::read_task_file(options.haystack_path, "eval: haystack"));
    src.haystack_name = options.haystack_path;
  } else if (want_haystack) {
    src.haystack_text = eval::default_haystack_text(&src.haystack_name);
  }
  if (!options.ppl_text_path.empty()) {
    src.ppl_text = eval::read_task_file(options.ppl_text_path, "eval: ppl text");
    src.ppl_name = options.ppl_text_path;
  } else {
    src.ppl_text = src.haystack_text;
    src.ppl_name = src.haystack_name;
  }
  std::vector<std::unique_ptr<eval::Task>> tasks;
  for (const auto& n : names) tasks.push_back(eval::make_task(n, src));

  const eval::PromptFormat format{&model.tokenizer, options.chat};
  struct Item {
    size_t task;
    eval::EvalSample sample;
  };
  std::vector<Item> items;
  for (size_t t = 0; t < tasks.size(); ++t)
    for (int L : options.lengths)
      for (auto& s : tasks[t]->generate(options.seed, L, options.samples, format))
        items.push_back({t, std::move(s)});

  eval::ConfiguredSession session(model, config);
  const int32_t warm_token = std::max<int32_t>(model.tokenizer.bos_id(), 0);
  if (!items.empty()) session.warm_up(warm_token);
  std::unique_ptr<eval::ConfiguredSession> reference;
  EvalReport report;
  report.config = config;
  report.config.session.n_ctx = session.n_ctx();
  report.config.session.n_threads = session.n_threads();
  report.model_path = model.path;
  report.model_name =
      model.config.name.empty() ? std::filesystem::path(model.path).filename().string() : model.config.name;
  report.n_threads = session.n_threads();
  report.seed = options.seed;
  report.chat = format.uses_chat();
  report.query_aware = options.query_aware;

  const int total = static_cast<int>(items.size());
  if (options.on_progress) options.on_progress(0, total);
  for (int i = 0; i < total; ++i) {
    const eval::EvalSample& s = items[i].sample;
    SampleRecord r = base_record(s);
    const int needed = static_cast<int>(s.prompt_ids.size()) + s.max_new_tokens;
    if (!s.skip_reason.empty()) {
      r.skipped = true;
      r.skip_reason = s.skip_reason;
    } else if (needed > session.n_ctx()) {
      r.skipped = true;
      r.skip_reason = "prompt of " + std::to_string(s.prompt_ids.size()) + " tokens plus " +
                      std::to_string(s.max_new_tokens) + " answer tokens exceeds the context of " +
                      std::to_string(session.n_ctx()) + " tokens";
    } else if (s.kind == eval::EvalSample::Kind::perplexity) {
      const bool need_reference = options.ppl_always_reference || !config.is_dense();
      run_perplexity(s, session, reference, model, need_reference, r);
    } else {
      run_generate(*tasks[items[i].task], s, session, model, options.query_aware, r);
    }
    report.samples.push_back(std::move(r));
    if (options.on_progress) options.on_progress(i + 1, total);
  }
  report.summary = summarise(report.samples);
  report.by_depth = by_depth(report.samples);
  report.wall_s = (now_ms() - t_start) / 1000.0;
  return report;
}

}  // namespace sdtp
