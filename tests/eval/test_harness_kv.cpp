// KV-cache compression in the evaluation harness, on the tiny random model of tiny_eval_model.h:
// RunConfig with a KV policy (dense or not, its reference, its JSON), the compressed cache's bytes
// against a dense run, and query-aware runs (the context prefilled and compressed first, then the
// question appended uncompressed on the same session).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "eval/run_config.h"
#include "eval/tasks.h"
#include "eval/tiny_eval_model.h"
#include "sdtp/eval.h"

namespace sdtp {
namespace {

KVPolicyOptions kv_policy(const std::string& policy, double budget, int interval = 1) {
  KVPolicyOptions o;
  o.policy = policy;
  o.budget = budget;
  o.interval = interval;
  o.validate();
  return o;
}

RunConfig kv_config(const KVPolicyOptions& kv) {
  RunConfig c;
  c.session.n_ctx = 512;
  c.session.kv = kv;
  c.label = kv.describe();
  return c;
}

EvalOptions passkey_options() {
  EvalOptions o;
  o.tasks = {"passkey"};
  o.lengths = {256};
  o.samples = 2;
  return o;
}

TEST(EvalRunConfig, KvPolicyIsNotDenseAndTheDenseReferenceSwitchesItOff) {
  RunConfig c = kv_config(kv_policy("h2o", 0.25));
  c.session.prune.method = "random";
  c.session.prune.layers = {1};
  c.session.prune.keep_ratios = {0.5};
  EXPECT_FALSE(c.is_dense());
  const RunConfig d = c.dense_reference();
  EXPECT_TRUE(d.is_dense());
  EXPECT_FALSE(d.session.kv.enabled());
  EXPECT_FALSE(d.session.prune.enabled());
  EXPECT_EQ(d.label, "dense");
  EXPECT_EQ(d.session.n_ctx, 512);  // the rest of the session is kept

  // the KV policy alone makes a run non-dense; "none" with a budget evicts nothing
  const RunConfig kv_only = kv_config(kv_policy("streaming", 0.25));
  EXPECT_FALSE(kv_only.is_dense());
  EXPECT_TRUE(kv_only.dense_reference().is_dense());
  RunConfig none;
  none.session.kv.budget = 0.25;
  EXPECT_TRUE(none.is_dense());
}

TEST(EvalRunConfig, JsonHasTheKvFieldsAndQueryAware) {
  KVPolicyOptions snap = kv_policy("snapkv", 0.25, 0);
  snap.adaptive = true;
  const nlohmann::json j = nlohmann::json::parse(kv_config(snap).to_json());
  EXPECT_EQ(j["method"], "none");  // no token pruning, yet not dense
  EXPECT_EQ(j["kv_policy"], "snapkv");
  EXPECT_EQ(j["kv_budget"], 0.25);
  EXPECT_EQ(j["kv_sinks"], 4);    // sinks_or_default()
  EXPECT_EQ(j["kv_window"], 64);  // snapkv's default window
  EXPECT_EQ(j["kv_interval"], 0);
  EXPECT_EQ(j["kv_adaptive"], true);
  EXPECT_EQ(j["kv_score_window"], 0);
  EXPECT_EQ(j["kv"], "snapkv 25% (sinks 4, window 64, adaptive)");
  EXPECT_EQ(j["query_aware"], false);
  EXPECT_FALSE(j.contains("kv_seed"));
  EXPECT_FALSE(j.contains("keep_ratio"));

  KVPolicyOptions h2o = kv_policy("h2o", 128);
  h2o.sinks = 2;
  h2o.window = 8;
  h2o.score_window = 16;
  const nlohmann::ordered_json k = eval::run_config_json(kv_config(h2o), true);
  EXPECT_EQ(k["kv_budget"], 128.0);
  EXPECT_EQ(k["kv_sinks"], 2);
  EXPECT_EQ(k["kv_window"], 8);
  EXPECT_EQ(k["kv_interval"], 1);
  EXPECT_EQ(k["kv_score_window"], 16);
  EXPECT_EQ(k["kv"], "h2o 128 entries (sinks 2, window 8)");
  EXPECT_EQ(k["query_aware"], true);

  KVPolicyOptions rnd = kv_policy("random", 0.5);
  rnd.seed = 7;
  EXPECT_EQ(nlohmann::json::parse(kv_config(rnd).to_json())["kv_seed"], 7);

  const nlohmann::json dense = nlohmann::json::parse(RunConfig{}.to_json());
  EXPECT_EQ(dense["method"], "dense");
  for (const char* key : {"kv_policy", "kv_budget", "kv_sinks", "kv_window", "kv"})
    EXPECT_FALSE(dense.contains(key)) << key;
}

TEST(EvalHarnessKv, CompressedCacheIsSmallerThanDenseAndPeakCoversIt) {
  auto model = testing::tiny_eval_model();
  RunConfig dense;
  dense.session.n_ctx = 512;
  const EvalReport base = run_eval(*model, dense, passkey_options());
  ASSERT_EQ(base.samples.size(), 2u);
  for (const auto& s : base.samples) {
    ASSERT_FALSE(s.skipped) << s.skip_reason;
    EXPECT_GT(s.kv_bytes, 0u);
    EXPECT_EQ(s.kv_peak_bytes, s.kv_bytes) << "nothing is evicted: the cache after decoding is its peak";
  }
  for (const std::string policy : {"streaming", "h2o"}) {
    SCOPED_TRACE(policy);
    const EvalReport r = run_eval(*model, kv_config(kv_policy(policy, 0.25)), passkey_options());
    ASSERT_EQ(r.samples.size(), 2u);
    for (size_t i = 0; i < r.samples.size(); ++i) {
      const SampleRecord& s = r.samples[i];
      ASSERT_FALSE(s.skipped) << s.skip_reason;
      EXPECT_EQ(s.n_prompt, base.samples[i].n_prompt);
      EXPECT_EQ(s.n_question, 0);
      // a quarter of the prompt's entries (plus at most the decoded ones) against all of them
      EXPECT_LT(s.kv_bytes, base.samples[i].kv_bytes / 2)
          << "compressed " << s.kv_bytes << " dense " << base.samples[i].kv_bytes;
      EXPECT_GT(s.kv_bytes, base.samples[i].kv_bytes / 8);
      // the prompt's entries were held during prefill, before the policy evicted
      EXPECT_GT(s.kv_peak_bytes, s.kv_bytes);
      EXPECT_LE(s.kv_peak_bytes, base.samples[i].kv_peak_bytes);
    }
    ASSERT_EQ(r.summary.size(), 1u);
    const SummaryRow& row = r.summary[0];
    EXPECT_DOUBLE_EQ(row.kv_bytes, (r.samples[0].kv_bytes + r.samples[1].kv_bytes) / 2.0);
    EXPECT_DOUBLE_EQ(row.kv_peak_bytes, (r.samples[0].kv_peak_bytes + r.samples[1].kv_peak_bytes) / 2.0);
    EXPECT_LT(row.kv_bytes, base.summary[0].kv_bytes);

    const nlohmann::json j = nlohmann::json::parse(r.to_json());
    EXPECT_EQ(j["summary"][0]["kv_bytes"].get<double>(), row.kv_bytes);
    EXPECT_EQ(j["summary"][0]["kv_peak_bytes"].get<double>(), row.kv_peak_bytes);
    EXPECT_EQ(j["samples"][1]["kv_peak_bytes"].get<size_t>(), r.samples[1].kv_peak_bytes);
    EXPECT_EQ(j["config"]["kv_policy"], policy);
    EXPECT_EQ(j["summary"][0]["config"]["kv_budget"], 0.25);
    const std::string table = format_summary_table(r);
    EXPECT_NE(table.find("| KV MiB | peak KV MiB |"), std::string::npos) << table;
  }
}

// The two prefills, on the session itself: the context is compressed to its budget, the question
// is added to it in full.
TEST(EvalHarnessKv, ContinuationAppendsUncompressed) {
  auto model = testing::tiny_eval_model();
  const KVPolicyOptions kv = kv_policy("streaming", 0.25, 0);
  eval::ConfiguredSession session(*model, kv_config(kv));
  std::vector<int32_t> context, question;
  for (int i = 0; i < 200; ++i) context.push_back(100 + (i * 37) % 500);
  for (int i = 0; i < 12; ++i) question.push_back(700 + i);
  session.prefill(context);
  const int64_t budget = kv.budget_entries(static_cast<int64_t>(context.size()));
  ASSERT_EQ(budget, 50);
  ASSERT_EQ(session.last_stats().kv_entries.size(), static_cast<size_t>(model->config.n_layer));
  for (const auto& heads : session.last_stats().kv_entries)
    for (int64_t e : heads) EXPECT_EQ(e, budget);
  const size_t after_context = session.kv_bytes();
  session.prefill_continuation(question);
  EXPECT_EQ(session.n_past(), 212);  // not reset
  for (const auto& heads : session.last_stats().kv_entries)
    for (int64_t e : heads) EXPECT_EQ(e, budget + 12);
  EXPECT_GT(session.kv_bytes(), after_context);
  EXPECT_GE(session.kv_peak_bytes(), session.kv_bytes());
  // prefill starts a new sequence
  session.prefill(question);
  EXPECT_EQ(session.n_past(), 12);
}

TEST(EvalHarnessKv, QueryAwareRunsPrefillTheContextThenTheQuestion) {
  auto model = testing::tiny_eval_model();
  const RunConfig config = kv_config(kv_policy("streaming", 0.25, 0));  // evict after prefill only
  EvalOptions o = passkey_options();
  const EvalReport whole = run_eval(*model, config, o);
  o.query_aware = true;
  const EvalReport split = run_eval(*model, config, o);
  EXPECT_FALSE(whole.query_aware);
  EXPECT_TRUE(split.query_aware);
  // the samples' question_start, as the harness generates them
  const eval::PromptFormat format{&model->tokenizer, o.chat};
  const auto samples = eval::make_task("passkey", {})->generate(o.seed, 256, 2, format);
  ASSERT_EQ(split.samples.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    SCOPED_TRACE(i);
    const SampleRecord &a = whole.samples[i], &b = split.samples[i];
    ASSERT_FALSE(b.skipped) << b.skip_reason;
    ASSERT_GT(samples[i].question_start, 0);
    EXPECT_EQ(a.n_question, 0);
    EXPECT_EQ(b.n_question, b.n_prompt - samples[i].question_start);
    EXPECT_GT(b.n_question, 4);  // "What is the pass key?" and the answer prefix
    EXPECT_EQ(a.n_prompt, b.n_prompt);
    // every prompt token went through layer 0 once, in one call or in two
    EXPECT_EQ(a.alive_per_layer.at(0), a.n_prompt);
    EXPECT_EQ(b.alive_per_layer.at(0), b.n_prompt);
    EXPECT_GT(b.ttft_ms, 0);
    EXPECT_GT(b.prefill_flops, 0);
    // the question is kept in full on top of the compressed context: a bigger cache than when it
    // is compressed with the context, by about its tokens
    EXPECT_GT(b.kv_bytes, a.kv_bytes);
    EXPECT_GE(b.kv_peak_bytes, b.kv_bytes);
  }
  const nlohmann::json j = nlohmann::json::parse(split.to_json());
  EXPECT_EQ(j["config"]["query_aware"], true);
  EXPECT_EQ(j["samples"][0]["n_question"], split.samples[0].n_question);
  EXPECT_FALSE(nlohmann::json::parse(whole.to_json())["samples"][0].contains("n_question"));
}

}  // namespace
}  // namespace sdtp
