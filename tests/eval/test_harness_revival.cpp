// What the evaluation harness records of the (token, layer) pairs a run computes, on the tiny random
// model of tiny_eval_model.h: a dense run computes every pair; lazyllm (pruning in prefill, revival
// in decode) skips the pruned tokens' pairs and computes each revived one once, never more than
// dense, and its samples, summary rows, config and table
// carry the revival fields (revived_total, computed_pairs, dense_pairs, aux_bytes, aux_budget).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "eval/tiny_eval_model.h"
#include "sdtp/eval.h"
#include "sdtp/prune.h"

namespace sdtp {
namespace {

// passkey and ppl (teacher-forced, 8 decode steps per window) at 256 tokens, 2 samples each; the
// ppl text a file of numbered sentences.
EvalOptions options() {
  static const std::string text_path = [] {
    const std::string path = (std::filesystem::temp_directory_path() / "sdtp_eval_revival_text.txt").string();
    std::ofstream out(path);
    for (int i = 0; i < 300; ++i) out << "Sentence " << i << " is about the river and the hills. ";
    return path;
  }();
  EvalOptions o;
  o.tasks = {"passkey", "ppl"};
  o.lengths = {256};
  o.samples = 2;
  o.ppl_tail = 8;
  o.ppl_text_path = text_path;
  return o;
}

RunConfig lazyllm_config(const ModelConfig& c, int64_t aux_budget) {
  RunConfig config;
  config.session.n_ctx = 512;
  config.session.prune.method = "lazyllm";
  config.session.prune.keep_ratios = {0.5f};
  config.session.prune.aux_budget = aux_budget;
  complete_prune_plan(c, config.session.prune);
  config.label = "lazyllm";
  return config;
}

TEST(EvalHarnessRevival, DenseComputesEveryPair) {
  auto model = testing::tiny_eval_model();
  RunConfig config;
  config.session.n_ctx = 512;
  EvalOptions o = options();
  o.tasks = {"passkey"};
  const EvalReport r = run_eval(*model, config, o);
  ASSERT_EQ(r.samples.size(), 2u);
  for (const SampleRecord& s : r.samples) {
    ASSERT_FALSE(s.skipped) << s.skip_reason;
    EXPECT_EQ(s.dense_pairs, int64_t{model->config.n_layer} * (s.n_prompt + s.n_decoded));
    EXPECT_EQ(s.computed_pairs, s.dense_pairs);
    EXPECT_EQ(s.revived_total, 0);
    EXPECT_EQ(s.aux_bytes, 0u);
  }
  EXPECT_NE(format_summary_table(r).find("| computed % |"), std::string::npos);
  EXPECT_NE(format_summary_table(r).find(" | 100.0 | "), std::string::npos) << format_summary_table(r);
}

TEST(EvalHarnessRevival, LazyllmRecordsPairsRevivalAndTheAuxCache) {
  auto model = testing::tiny_eval_model();
  const ModelConfig& c = model->config;
  const RunConfig config = lazyllm_config(c, 0);
  const EvalReport r = run_eval(*model, config, options());
  const nlohmann::json j = nlohmann::json::parse(r.to_json());

  EXPECT_EQ(j["config"]["method"], "lazyllm");
  EXPECT_EQ(j["config"]["aux_budget"], 0);
  ASSERT_EQ(j["samples"].size(), 4u);  // (passkey, ppl) x 2
  for (const auto& s : j["samples"]) {
    SCOPED_TRACE(s.dump());
    ASSERT_FALSE(s["skipped"].get<bool>());
    for (const char* key : {"computed_pairs", "dense_pairs", "revived_total", "aux_bytes"})
      ASSERT_TRUE(s.contains(key)) << key;
    const int64_t computed = s["computed_pairs"], dense = s["dense_pairs"];
    EXPECT_EQ(dense, int64_t{c.n_layer} * (s["n_prompt"].get<int64_t>() + s["n_decoded"].get<int64_t>()));
    EXPECT_GT(computed, 0);
    EXPECT_LE(computed, dense);
    // One stage, at layer 1 of 2: the prefill skips layer 1 of the tokens it prunes, and each token
    // revived later has that one pair computed then (each at most once).
    const int64_t pruned = s["n_prompt"].get<int64_t>() - s["alive_per_layer"][1].get<int64_t>();
    const int64_t revived = s["revived_total"];
    EXPECT_GT(pruned, 0);
    EXPECT_GE(revived, 0);
    EXPECT_LE(revived, pruned);
    EXPECT_EQ(computed, dense - pruned + revived);
    EXPECT_GT(s["aux_bytes"].get<int64_t>(), 0) << "the prefill's pruned tokens go to the aux cache";
  }
  for (const auto& row : j["summary"]) {
    SCOPED_TRACE(row.dump());
    for (const char* key : {"computed_pairs", "dense_pairs", "revived_total", "aux_bytes"})
      ASSERT_TRUE(row.contains(key)) << key;
    EXPECT_GT(row["computed_pairs"].get<double>(), 0);
    EXPECT_LE(row["computed_pairs"].get<double>(), row["dense_pairs"].get<double>());
  }
  ASSERT_EQ(r.summary.size(), 2u);
  EXPECT_DOUBLE_EQ(r.summary[0].computed_pairs,
                   (r.samples[0].computed_pairs + r.samples[1].computed_pairs) / 2.0);
  EXPECT_DOUBLE_EQ(r.summary[0].revived_total, (r.samples[0].revived_total + r.samples[1].revived_total) / 2.0);

  // A budget of one hidden state: the cache never holds more than one.
  const EvalReport small = run_eval(*model, lazyllm_config(c, 1), options());
  EXPECT_EQ(nlohmann::json::parse(small.to_json())["config"]["aux_budget"], 1);
  for (size_t i = 0; i < small.samples.size(); ++i) {
    EXPECT_LE(small.samples[i].aux_bytes, r.samples[i].aux_bytes);
    EXPECT_LE(small.samples[i].computed_pairs, small.samples[i].dense_pairs);
  }
}

}  // namespace
}  // namespace sdtp
