// The pruning options of `sdtp generate` run as a separate process: bad combinations of --prune,
// --predictor and the plan options are one-line errors (exit 2 for usage, 1 for a bad file), a
// predictor for another model is refused, --aux-budget is taken by lazyllm only, `sdtp bench
// --prune lazyllm` on a tiny fixture reports revival and the pairs computed in its JSON, and
// (suite CliPruneSlow, needs the default GGUF model) sdtp with a random predictor, saliency, random
// and lazyllm (with its revival line) with the default plan generate text.
#include <fcntl.h>
#include <gtest/gtest.h>

#include "testing/fixtures.h"
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "sdtp/model.h"
#include "sdtp/predictor.h"

extern char** environ;

namespace {

namespace fs = std::filesystem;

struct RunResult {
  int exit_code = -1;  // -1 when killed by a signal
  std::string out, err;
};

fs::path scratch_dir() {
  struct Dir {
    fs::path path = fs::temp_directory_path() / ("sdtp_cli_prune_test_" + std::to_string(getpid()));
    Dir() { fs::create_directories(path); }
    ~Dir() {
      std::error_code ec;
      fs::remove_all(path, ec);
    }
  };
  static Dir dir;
  return dir.path;
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Runs sdtp with `args`, stdin from /dev/null, stdout and stderr to files; kills it after timeout_s.
RunResult run_sdtp(const std::vector<std::string>& args, int timeout_s = 300) {
  static int counter = 0;
  const std::string tag = std::to_string(counter++);
  const fs::path out_path = scratch_dir() / ("out" + tag), err_path = scratch_dir() / ("err" + tag);
  std::vector<std::string> argv_s = {std::string(SDTP_BINARY_DIR) + "/sdtp"};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  RunResult r;
  if (rc != 0) {
    r.err = "posix_spawn failed: " + std::string(strerror(rc));
    return r;
  }
  int status = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  while (waitpid(pid, &status, WNOHANG) != pid) {
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  r.out = slurp(out_path);
  r.err = slurp(err_path);
  return r;
}

std::string describe(const std::vector<std::string>& args, const RunResult& r) {
  std::string cmd = "sdtp";
  for (const auto& a : args) cmd += " '" + a + "'";
  return cmd + "\n  exit " + std::to_string(r.exit_code) + "\n  stdout: " + r.out.substr(0, 2000) +
         "\n  stderr: " + r.err.substr(0, 2000);
}

// Non-zero exit `code`, nothing on stdout, one `sdtp: error:` line on stderr.
RunResult expect_clean_error(const std::vector<std::string>& args, int code) {
  RunResult r = run_sdtp(args);
  SCOPED_TRACE(describe(args, r));
  EXPECT_EQ(r.exit_code, code);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err.rfind("sdtp: error: ", 0), 0u);
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1);
  return r;
}

std::string fixture(const std::string& rel) { return std::string(SDTP_SOURCE_DIR) + "/tests/fixtures/" + rel; }

std::string default_model() {
  if (const char* cache = std::getenv("SDTP_CACHE"))
    return std::string(cache) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  const char* home = std::getenv("HOME");
  return std::string(home ? home : "") + "/.cache/sdtp/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

TEST(CliPrune, BadPruneOptionsAreOneLineErrors) {
  const std::string m = "/nonexistent/model.gguf";  // option errors come before the model is opened
  const std::string pred = fixture("predictor/predictor.safetensors");
  const std::vector<std::vector<std::string>> usage = {
      {"generate", "-m", m, "-p", "hi", "--predictor", pred},                        // no --prune
      {"generate", "-m", m, "-p", "hi", "--prune", "random", "--predictor", pred},  // not sdtp
      {"generate", "-m", m, "-p", "hi", "--prune", "bogus"},
      {"generate", "-m", m, "-p", "hi", "--keep-first", "2"},  // no --prune
      {"generate", "-m", m, "-p", "hi", "--prune", "sdtp", "--predictor", pred, "--prune-layers", "3"},  // no module
      {"eval", "-m", m, "--task", "passkey", "--prune", "sdtp", "--keep-recent", "2"},
      {"generate", "-m", m, "-p", "hi", "--aux-budget", "8"},                     // no --prune
      {"generate", "-m", m, "-p", "hi", "--prune", "lazyllm", "--aux-budget", "-1"},
      {"generate", "-m", m, "-p", "hi", "--prune", "lazyllm", "--aux-budget", "many"},
      {"generate", "-m", m, "-p", "hi", "--prune", "attn", "--keep-recent", "1"},    // [0, 1)
      {"generate", "-m", m, "-p", "hi", "--prune", "attn", "--keep-recent", "-0.1"},
      {"generate", "-m", m, "-p", "hi", "--keep-recent", "0.1"},                      // no --prune
      {"generate", "-m", m, "-p", "hi", "--prune", "attn", "--prune-schedule", "steep"},
      {"generate", "-m", m, "-p", "hi", "--prune", "attn", "--prune-schedule", "paper", "--prune-layers", "3"},
      {"generate", "-m", m, "-p", "hi", "--prune", "sdtp", "--predictor", pred, "--prune-schedule", "paper"},
  };
  for (const auto& args : usage) expect_clean_error(args, 2);

  const fs::path garbage = scratch_dir() / "garbage.safetensors";
  std::ofstream(garbage) << "not a predictor\n";
  for (const std::string& bad : {std::string("/nonexistent/p.safetensors"), garbage.string(),
                                 fixture("tiny/llama_gqa/model.safetensors")}) {
    const RunResult r = expect_clean_error({"generate", "-m", m, "-p", "hi", "--prune", "sdtp", "--predictor", bad}, 1);
    EXPECT_NE(r.err.find(bad), std::string::npos) << "the error should name the predictor file: " << r.err;
  }
}

// Named schedules on the 2-layer fixture's bench: the plan line shows the schedule's layers, ratios
// and tail (paper: one stage at layer 1, keep 0.90, the last 10% kept; quarters: keep 0.70, none).
TEST(CliPrune, BenchShowsTheNamedSchedule) {
  const std::string m = fixture("tiny/llama_gqa");
  for (const auto& [name, want] : std::vector<std::pair<std::string, std::string>>{
           {"paper", "attn at layers 1 (keep 0.90), keep-first 4, keep-recent 0.10"},
           {"quarters", "attn at layers 1 (keep 0.70), keep-first 4"},
       }) {
    const RunResult r = run_sdtp({"bench", "-m", m, "-p", "24", "-n", "2", "-t", "1", "--prune", "attn",
                                  "--prune-schedule", name, "-r", "1"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find(want), std::string::npos) << name << ":\n" << r.out;
    if (name == "quarters") {
      EXPECT_EQ(r.out.find("keep-recent"), std::string::npos) << r.out;
    }
  }
  // Random weights of a shape take the schedule too (scaled to its 30 layers).
  const RunResult r = run_sdtp({"bench", "--random-weights", "smollm2-135m", "-p", "32", "-n", "0", "-r", "1", "-t",
                                "1", "--prune", "sdtp", "--prune-schedule", "quarters"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("sdtp at layers 8 (keep 0.70), 15 (keep 0.70), 23 (keep 0.70), keep-first 4, random predictor"),
            std::string::npos)
      << r.out;
}

// --prune sdtp without --predictor takes the predictor shipped for the model (matched by its
// fingerprint in $SDTP_PREDICTORS, then predictors/ of the source tree) and says which; with none
// for the model, one line that says where it looked.
TEST(CliPrune, SdtpWithoutPredictorFindsTheOneShippedForTheModel) {
  const std::string m = fixture("tiny/llama_gqa");
  const fs::path dir = scratch_dir() / "shipped";
  fs::remove_all(dir);
  fs::create_directories(dir);
  setenv("SDTP_PREDICTORS", dir.c_str(), 1);
  {
    const RunResult r = expect_clean_error({"generate", "-m", m, "-p", "hi", "-n", "1", "--prune", "sdtp"}, 2);
    EXPECT_NE(r.err.find("--prune sdtp needs --predictor FILE: no predictor for this model in " + dir.string()),
              std::string::npos)
        << r.err;
  }
  auto model = sdtp::load_model(m);
  sdtp::PrunePlan plan;
  plan.method = "sdtp";
  plan.layers = {1};
  plan.keep_ratios = {0.5f};
  plan.keep_first = 1;
  sdtp::save_predictor(sdtp::Predictor::random(*model, plan, 3), (dir / "tiny.sdtp.safetensors").string());
  std::ofstream(dir / "junk.safetensors") << "not a predictor\n";  // passed over
  fs::copy_file(fixture("predictor/predictor.safetensors"), dir / "another_model.safetensors");  // passed over
  // bench: the fixture has no tokenizer; bench prefills random ids.
  const RunResult r = run_sdtp({"bench", "-m", m, "-p", "24", "-n", "0", "-r", "1", "-t", "1", "--prune", "sdtp"});
  unsetenv("SDTP_PREDICTORS");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("sdtp: --prune sdtp: using " + (dir / "tiny.sdtp.safetensors").string() +
                       ", shipped for this model"),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.out.find("pruned: sdtp at layers 1 (keep 0.50), keep-first 1, predictor file"), std::string::npos)
      << r.out;
}

TEST(CliPrune, AuxBudgetIsOnlyForMethodsThatRevive) {
  // Option errors come before the model is opened (bench reads it first: the tiny fixture).
  const std::string m = "/nonexistent/model.gguf";
  for (const std::string method : {"attn", "random", "saliency"}) {
    for (const std::string cmd : {"generate", "eval", "bench"}) {
      std::vector<std::string> args = {cmd, "-m", cmd == "bench" ? fixture("tiny/llama_gqa") : m, "--prune", method,
                                       "--aux-budget", "16"};
      if (cmd == "generate") args.insert(args.end(), {"-p", "hi"});
      if (cmd == "eval") args.insert(args.end(), {"--task", "passkey"});
      const RunResult r = expect_clean_error(args, 2);
      EXPECT_NE(r.err.find("--aux-budget is only used with --prune lazyllm, not with --prune " + method),
                std::string::npos)
          << r.err;
    }
  }
  // Accepted with lazyllm: the run gets as far as the model file (exit 1, the file named).
  const RunResult r =
      expect_clean_error({"generate", "-m", m, "-p", "hi", "--prune", "lazyllm", "--aux-budget", "16"}, 1);
  EXPECT_NE(r.err.find(m), std::string::npos) << r.err;
}

// bench on the 2-layer fixture (prefill 24 random ids, decode 4): the lazyllm rows carry the revival
// fields with sane values; the dense rows compute every pair.
TEST(CliPrune, BenchLazyllmReportsRevivalAndPairs) {
  const std::vector<std::string> args = {"bench", "-m", fixture("tiny/llama_gqa"), "-p", "24", "-n", "4", "-r", "1",
                                         "-t", "1", "--prune", "lazyllm", "--keep-ratio", "0.5", "--aux-budget",
                                         "64", "--json"};
  const RunResult r = run_sdtp(args);
  SCOPED_TRACE(describe(args, r));
  ASSERT_EQ(r.exit_code, 0);
  const nlohmann::json j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j.size(), 4u);  // (dense, lazyllm) x (pp24, tg4 @ d24)
  const int n_layer = 2;
  for (const auto& row : j) {
    SCOPED_TRACE(row.dump());
    for (const char* key : {"revived", "computed_pairs", "dense_pairs", "computed_pairs_pct", "aux_bytes",
                            "aux_peak_bytes", "kv_bytes"})
      ASSERT_TRUE(row.contains(key)) << key;
    const bool decode = row["n_gen"].get<int>() > 0;
    const int64_t computed = row["computed_pairs"], dense = row["dense_pairs"];
    EXPECT_EQ(dense, int64_t{n_layer} * (decode ? 24 + 4 : 24));  // since the sequence began
    EXPECT_GT(computed, 0);
    EXPECT_LE(computed, dense);
    if (row["method"] == "dense") {
      EXPECT_EQ(computed, dense);
      EXPECT_EQ(row["revived"], 0);
      EXPECT_EQ(row["aux_bytes"], 0);
      continue;
    }
    EXPECT_EQ(row["method"], "lazyllm");
    EXPECT_NEAR(row["computed_pairs_pct"].get<double>(), 100.0 * computed / dense, 1e-9);
    EXPECT_GE(row["aux_peak_bytes"].get<int64_t>(), row["aux_bytes"].get<int64_t>());
    if (!decode) {
      EXPECT_EQ(computed, dense - 12) << "12 of the 24 tokens are pruned at layer 1";
      EXPECT_EQ(row["revived"], 0);
      EXPECT_GT(row["aux_bytes"].get<int64_t>(), 0) << "the pruned tokens' hidden states";
    } else {
      // A step computes the new token at both layers and each token it revives at layer 1 (the
      // stage), once per pruned token over the whole sequence.
      EXPECT_LE(row["revived"].get<int64_t>(), 12);
      EXPECT_EQ(computed, dense - 12 + row["revived"].get<int64_t>());
    }
  }
  // The table: the revival columns next to the existing ones.
  std::vector<std::string> table_args = args;
  table_args.pop_back();
  const RunResult t = run_sdtp(table_args);
  ASSERT_EQ(t.exit_code, 0) << describe(table_args, t);
  EXPECT_NE(t.out.find("| evict ms | alive at end | revived | pairs computed | aux MiB |"), std::string::npos)
      << t.out;
  EXPECT_NE(t.out.find("| lazyllm | tg4 @ d24 |"), std::string::npos) << t.out;
}

TEST(CliPrune, PredictorForAnotherModelIsRefused) {
  const std::string pred = fixture("predictor/predictor.safetensors");  // 8 layers, 64 wide
  const RunResult r = expect_clean_error(
      {"generate", "-m", fixture("tiny/llama_gqa"), "-p", "hi", "--prune", "sdtp", "--predictor", pred}, 2);
  EXPECT_NE(r.err.find("predictor " + pred + " was trained for predictor-fixture"), std::string::npos) << r.err;
}

#define SKIP_WITHOUT_DEFAULT_MODEL() \
  if (!fs::exists(default_model())) SDTP_NO_DEFAULT_MODEL("default model " << default_model() << " is absent")

TEST(CliPruneSlow, GenerateWithSdtpSaliencyAndDefaultPlans) {
  SKIP_WITHOUT_DEFAULT_MODEL();
  // A random predictor for the default model with the default plan (the paper's: layers 4, 7, ..., 28 of 30).
  const std::string pred = (scratch_dir() / "smollm2_random.safetensors").string();
  {
    auto model = sdtp::load_model(default_model());
    sdtp::save_predictor(sdtp::Predictor::random(*model, sdtp::default_sdtp_plan(model->config), 1), pred);
  }
  const std::string text = "The quick brown fox jumps over the lazy dog. The capital of France is";
  const std::vector<std::string> base = {"generate", "-m", default_model(), "-p", text, "-n", "3", "--temp", "0"};
  struct Case {
    std::vector<std::string> extra;
    std::string method;
    int layer;
    double ratio;
  };
  // The paper's schedule: the first stage at layer 4 keeping 0.9, the first 4 and the last 10% kept.
  const std::vector<Case> cases = {
      {{"--prune", "sdtp", "--predictor", pred}, "sdtp", 4, 0.9},
      {{"--prune", "saliency"}, "saliency", 4, 0.9},
      {{"--prune", "random", "--keep-ratio", "0.5"}, "random", 4, 0.5},
      {{"--prune", "sdtp", "--predictor", pred, "--prune-layers", "16", "--keep-ratio", "0.5"}, "sdtp", 16, 0.5},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args = base;
    args.insert(args.end(), c.extra.begin(), c.extra.end());
    const RunResult r = run_sdtp(args);
    SCOPED_TRACE(describe(args, r));
    ASSERT_EQ(r.exit_code, 0);
    const size_t at = r.err.find("prompt ");
    ASSERT_NE(at, std::string::npos);
    const int n = std::atoi(r.err.c_str() + at + 7);
    ASSERT_GT(n, 10);
    const int forced = std::min(n, 4 + std::max(1, static_cast<int>(std::ceil(0.1 * n - 1e-4))));
    const int kept = std::max(forced, static_cast<int>(std::ceil(c.ratio * n - 1e-4)));
    EXPECT_NE(r.err.find("sdtp: prune " + c.method + " | tokens alive per layer L0:" + std::to_string(n) + ", L" +
                         std::to_string(c.layer) + ":" + std::to_string(kept)),
              std::string::npos);
  }
  // lazyllm: the revival line after the pruning line, its pairs no more than dense's, the aux cache
  // within the budget.
  {
    std::vector<std::string> args = base;
    args.insert(args.end(), {"--prune", "lazyllm", "--aux-budget", "3"});
    const RunResult r = run_sdtp(args);
    SCOPED_TRACE(describe(args, r));
    ASSERT_EQ(r.exit_code, 0);
    EXPECT_NE(r.err.find("sdtp: prune lazyllm | tokens alive per layer L0:"), std::string::npos);
    const size_t at = r.err.find("sdtp: lazyllm revival | ");
    ASSERT_NE(at, std::string::npos);
    long long revived = -1, computed = -1, dense = -1, entries = -1;
    ASSERT_EQ(std::sscanf(r.err.c_str() + at,
                          "sdtp: lazyllm revival | %lld tokens revived | (token, layer) pairs computed %lld of %lld "
                          "dense (%*f%%) | aux cache %lld entries",
                          &revived, &computed, &dense, &entries),
              4);
    EXPECT_GE(revived, 0);
    EXPECT_GT(computed, 0);
    EXPECT_LE(computed, dense);
    EXPECT_LE(entries, 3);
    EXPECT_NE(r.err.find("dropped by the aux budget (3 entries)"), std::string::npos);
  }
  // A predictor trained for another model.
  const RunResult r = expect_clean_error(
      {"generate", "-m", default_model(), "-p", "hi", "--prune", "sdtp", "--predictor",
       fixture("predictor/predictor.safetensors")},
      2);
  EXPECT_NE(r.err.find("not for this model"), std::string::npos) << r.err;
}

}  // namespace
