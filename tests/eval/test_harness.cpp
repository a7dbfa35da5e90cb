// The evaluation harness end to end: on a tiny random llama (test fixture, vocabulary widened to the
// tiny Qwen2 tokenizer's) for the JSON schema, skipped samples, ppl agreement of a dense run with
// its dense reference, the output-path check and --compare; and, in the Slow suite, a short passkey
// run on the real default model.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "sdtp/error.h"
#include "sdtp/eval.h"
#include "eval/tiny_eval_model.h"
#include "testing/fixtures.h"

namespace sdtp {
namespace {

std::unique_ptr<Model> tiny_model() {
  return testing::tiny_eval_model();
}

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("sdtp_eval_" + name)).string();
}

TEST(EvalHarness, JsonSchemaSkippedSamplesAndDenseAgreement) {
  auto model = tiny_model();
  RunConfig config;
  config.label = "dense";
  config.session.n_ctx = 512;
  EvalOptions o;
  o.tasks = {"passkey", "ppl"};
  o.lengths = {256, 1024};  // 1024 does not fit the 512-token context: skipped, not a crash
  o.samples = 2;
  o.ppl_tail = 8;
  o.ppl_always_reference = true;  // run the dense reference even though the config is dense
  std::string haystack;
  for (int i = 0; i < 300; ++i)
    haystack += "Sentence " + std::to_string(i) + " is about the river and the hills. ";
  const std::string hay_path = temp_path("haystack.txt");
  std::ofstream(hay_path) << haystack;
  o.haystack_path = hay_path;
  int last_done = -1, last_total = -1;
  o.on_progress = [&](int done, int total) {
    EXPECT_GE(done, last_done);
    last_done = done;
    last_total = total;
  };
  const EvalReport report = run_eval(*model, config, o);
  std::remove(hay_path.c_str());
  EXPECT_EQ(last_done, last_total);
  EXPECT_EQ(last_total, 2 * 2 * 2);

  const nlohmann::json j = nlohmann::json::parse(report.to_json());
  ASSERT_TRUE(j["summary"].is_array());
  ASSERT_EQ(j["summary"].size(), 4u);  // (passkey, ppl) x (256, 1024)
  for (const auto& row : j["summary"])
    for (const char* key : {"task", "length", "samples", "score", "ttft_ms", "prefill_flops", "kv_bytes",
                            "kv_peak_bytes", "config"})
      EXPECT_TRUE(row.contains(key)) << key << " missing in " << row.dump();
  EXPECT_EQ(j["summary"][0]["task"], "passkey");
  EXPECT_EQ(j["summary"][0]["length"], 256);
  EXPECT_EQ(j["summary"][0]["samples"], 2);
  EXPECT_EQ(j["summary"][0]["config"]["label"], "dense");
  EXPECT_EQ(j["summary"][0]["config"]["n_ctx"], 512);
  EXPECT_EQ(j["summary"][0]["config"]["query_aware"], false);
  EXPECT_FALSE(j["summary"][0]["config"].contains("kv_policy"));
  const double score = j["summary"][0]["score"];
  EXPECT_GE(score, 0.0);
  EXPECT_LE(score, 1.0);
  EXPECT_GT(j["summary"][0]["prefill_flops"].get<double>(), 0.0);
  EXPECT_GT(j["summary"][0]["kv_bytes"].get<double>(), 0.0);
  // 1024-token passkey prompts do not fit a 512 context
  EXPECT_EQ(j["summary"][1]["length"], 1024);
  EXPECT_EQ(j["summary"][1]["samples"], 0);
  EXPECT_EQ(j["summary"][1]["skipped"], 2);
  EXPECT_TRUE(j["summary"][1]["score"].is_null());
  // ppl: a dense run against its dense reference agrees exactly
  const auto& ppl = j["summary"][2];
  EXPECT_EQ(ppl["task"], "ppl");
  EXPECT_EQ(ppl["samples"], 2);
  EXPECT_EQ(ppl["top1_agreement"].get<double>(), 1.0);
  EXPECT_NEAR(ppl["kl_mean"].get<double>(), 0.0, 1e-9);
  EXPECT_GT(ppl["score"].get<double>(), 1.0);  // a perplexity

  ASSERT_EQ(j["samples"].size(), 8u);
  const auto& s0 = j["samples"][0];
  for (const char* key : {"n_prompt", "alive_per_layer", "prefill_flops", "ttft_ms", "decode_ms", "kv_bytes",
                          "kv_peak_bytes", "answer", "expected", "score", "depth", "needle_position"})
    EXPECT_TRUE(s0.contains(key)) << key;
  EXPECT_EQ(s0["alive_per_layer"].size(), static_cast<size_t>(model->config.n_layer));
  EXPECT_EQ(s0["alive_per_layer"][0], s0["n_prompt"]);
  const auto& skipped = j["samples"][2];
  EXPECT_TRUE(skipped["skipped"].get<bool>());
  EXPECT_NE(skipped["skip_reason"].get<std::string>().find("exceeds the context of 512"), std::string::npos)
      << skipped["skip_reason"];
  ASSERT_FALSE(j["by_depth"].empty());
  EXPECT_EQ(j["by_depth"][0]["task"], "passkey");

  const std::string table = format_summary_table(report);
  EXPECT_NE(table.find("| passkey | 256 | 2 | 0 |"), std::string::npos) << table;
  EXPECT_NE(table.find("| passkey | 1024 | 0 | 2 | - |"), std::string::npos) << table;
  // accuracy by depth: 2 samples at depths 0 and 1
  EXPECT_NE(table.find("| task | length | depth 0.00 | depth 1.00 |"), std::string::npos) << table;

  // --compare against itself: zero deltas
  const std::string a = temp_path("a.json"), b = temp_path("b.json");
  write_report(report, a);
  write_report(report, b);
  const std::string cmp = compare_report_files({a, b});
  EXPECT_NE(cmp.find("| passkey | 256 | dense (sdtp_eval_b.json) |"), std::string::npos) << cmp;
  EXPECT_NE(cmp.find("+0.000"), std::string::npos) << cmp;
  EXPECT_NE(cmp.find("+0.0%"), std::string::npos) << cmp;
  std::ofstream(b) << "{\"not\": \"a report\"}";
  EXPECT_THROW(compare_report_files({a, b}), FormatError);
  EXPECT_THROW(compare_report_files({a}), UsageError);
  std::remove(a.c_str());
  std::remove(b.c_str());
}

TEST(EvalHarness, BadOptionsAreUsageErrors) {
  auto model = tiny_model();
  EvalOptions o;
  o.tasks = {"passkey", "haystack"};
  EXPECT_THROW(run_eval(*model, RunConfig{}, o), UsageError);
  o.tasks = {"passkey"};
  o.lengths = {8};
  EXPECT_THROW(run_eval(*model, RunConfig{}, o), UsageError);
  o.lengths = {256};
  o.tasks = {"longbench"};
  EXPECT_THROW(run_eval(*model, RunConfig{}, o), UsageError);  // no --longbench file
  o.longbench_path = testing::fixture_path("eval/malformed_longbench.jsonl");
  EXPECT_THROW(run_eval(*model, RunConfig{}, o), FormatError);
  o.tasks = {"niah"};
  o.haystack_path = "/nonexistent/haystack.txt";
  EXPECT_THROW(run_eval(*model, RunConfig{}, o), UsageError);
}

TEST(EvalHarness, OutputPathIsCheckedWithoutLeavingAFile) {
  const std::string ok = temp_path("out_check.json");
  std::remove(ok.c_str());
  EXPECT_NO_THROW(check_output_writable(ok));
  EXPECT_FALSE(std::filesystem::exists(ok));
  EXPECT_THROW(check_output_writable("/nonexistent/dir/out.json"), UsageError);
  EXPECT_THROW(check_output_writable(std::filesystem::temp_directory_path().string()), UsageError);
  EXPECT_THROW(check_output_writable(""), UsageError);
}

// The real default model: passkey at 512 tokens, 2 samples (depth 0 and 1).
TEST(EvalHarnessSlow, PasskeyOnTheDefaultModel) {
  const std::string path = testing::default_model_path();
  if (!testing::path_exists(path))
    SDTP_NO_DEFAULT_MODEL("default model not found at " << path);
  auto model = load_model(path);
  EvalOptions o;
  o.tasks = {"passkey"};
  o.lengths = {512};
  o.samples = 2;
  const EvalReport r = run_eval(*model, RunConfig{}, o);
  ASSERT_EQ(r.summary.size(), 1u);
  EXPECT_EQ(r.summary[0].samples, 2);
  for (const auto& s : r.samples) {
    EXPECT_FALSE(s.skipped) << s.skip_reason;
    EXPECT_LE(s.n_prompt + 16, 512);
    EXPECT_GT(s.n_prompt, 400);
    EXPECT_GT(s.ttft_ms, 0);
    EXPECT_NEAR(s.prefill_flops, dense_forward_flops(model->config, 0, s.n_prompt, 1),
                1e-6 * s.prefill_flops);
    // SmolLM2-135M-Instruct finds the key at 512 tokens at both ends of the filler.
    EXPECT_EQ(s.score, 1.0) << "answer '" << s.answer << "', key " << s.expected.at(0);
  }
}

}  // namespace
}  // namespace sdtp
