// `sdtp eval`'s KV options, run as the built binary: --query-aware without a KV policy and bad
// --kv-* values are one-line usage errors (exit 2) before the model is opened, and --help lists them.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "testing/fixtures.h"

namespace {

struct Result {
  int exit_code = -1;
  std::string out, err;
};

std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// `args` are shell words without quotes or spaces of their own.
Result run_eval_cli(const std::string& args) {
  // Names of this process and call: ctest runs the tests of this file in parallel processes.
  static int calls = 0;
  const std::string tag = std::to_string(getpid()) + "_" + std::to_string(calls++);
  const auto dir = std::filesystem::temp_directory_path();
  const auto out = dir / ("sdtp_eval_cli_out_" + tag), err = dir / ("sdtp_eval_cli_err_" + tag);
  const std::string cmd = std::string(SDTP_BINARY_DIR) + "/sdtp eval " + args + " </dev/null >" +
                          out.string() + " 2>" + err.string();
  const int status = std::system(cmd.c_str());
  Result r;
  if (status != -1 && WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  r.out = slurp(out);
  r.err = slurp(err);
  std::filesystem::remove(out);
  std::filesystem::remove(err);
  return r;
}

void expect_usage_error(const std::string& args, const std::string& message) {
  SCOPED_TRACE("sdtp eval " + args);
  const Result r = run_eval_cli(args);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err.rfind("sdtp: error: ", 0), 0u) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(r.err.find(message), std::string::npos) << r.err;
}

TEST(CliEval, QueryAwareNeedsAKvPolicy) {
  const std::string base = "-m /nonexistent/model.gguf --task passkey";  // usage errors come first
  expect_usage_error(base + " --query-aware", "--query-aware needs --kv-policy (other than none)");
  expect_usage_error(base + " --query-aware --kv-policy none", "--query-aware needs --kv-policy");
  expect_usage_error(base + " --kv-policy bogus", "unknown KV policy 'bogus'");
  expect_usage_error(base + " --kv-budget 0.5", "--kv-budget needs --kv-policy");
  expect_usage_error(base + " --kv-policy h2o --kv-budget 3", "--kv-budget 3");
  // accepted with a policy: the run gets as far as the model file
  const Result r = run_eval_cli(base + " --kv-policy streaming --kv-budget 0.25 --query-aware");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(r.err.find("--query-aware"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("/nonexistent/model.gguf"), std::string::npos) << r.err;
}

// A length over the session's context would skip all of its samples: one usage error instead,
// after the model is read (the context is the model's, capped at 8192, or --ctx).
TEST(CliEval, LengthsOverTheContextAreAnError) {
  const std::string m = sdtp::testing::default_model_path();
  if (!std::filesystem::exists(m)) SDTP_NO_DEFAULT_MODEL("default model " << m << " is absent");
  expect_usage_error("-m " + m + " --task passkey --lengths 1024,16384 --samples 1",
                     "eval: --lengths 16384 is over the context of 8192 tokens (raise it with --ctx N)");
  expect_usage_error("-m " + m + " --task passkey --lengths 1024 --ctx 512 --samples 1",
                     "eval: --lengths 1024 is over the context of 512 tokens");
}

TEST(CliEval, HelpListsTheKvOptions) {
  const Result r = run_eval_cli("--help");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  for (const char* opt :
       {"--query-aware", "--kv-policy NAME", "--kv-budget B", "--kv-interval N", "--kv-adaptive"})
    EXPECT_NE(r.out.find(opt), std::string::npos) << opt;
}

}  // namespace
