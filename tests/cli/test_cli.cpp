// Tests of the `sdtp` command-line tool, run as a separate process (SDTP_BINARY_DIR/sdtp) with its
// stdout, stderr and exit status captured: help texts, one-line errors without crashes on bad input,
// JSON shapes on the tiny fixture models, and (suite CliSlow, needs the default GGUF model) info,
// tokenize, logits and greedy chat generation against references from Hugging Face transformers.
#include <fcntl.h>
#include <gtest/gtest.h>

#include "testing/fixtures.h"
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct RunResult {
  int exit_code = -1;  // -1 when killed by a signal
  int signal = 0;      // the signal that ended it, 0 if it exited
  bool timed_out = false;
  std::string out, err;
};

std::string binary() {
  return std::string(SDTP_BINARY_DIR) + "/sdtp";
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A per-process folder for the outputs and bad model files of these tests, removed at exit.
fs::path scratch_dir() {
  struct Dir {
    fs::path path = fs::temp_directory_path() / ("sdtp_cli_test_" + std::to_string(getpid()));
    Dir() { fs::create_directories(path); }
    ~Dir() {
      std::error_code ec;
      fs::remove_all(path, ec);
    }
  };
  static Dir dir;
  return dir.path;
}

// Runs sdtp with `args`, stdin from `stdin_path` (/dev/null by default), stdout and stderr to files;
// kills it after timeout_s.
RunResult run_sdtp(const std::vector<std::string>& args, int timeout_s = 120, const std::string& stdin_path = "/dev/null") {
  static int counter = 0;
  const std::string tag = std::to_string(counter++);
  const fs::path out_path = scratch_dir() / ("out" + tag), err_path = scratch_dir() / ("err" + tag);

  std::vector<std::string> argv_s = {binary()};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);

  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, stdin_path.c_str(), O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = 0;
  int rc = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  RunResult r;
  if (rc != 0) {
    r.err = "posix_spawn failed: " + std::string(strerror(rc));
    return r;
  }
  int status = 0;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  while (true) {
    pid_t w = waitpid(pid, &status, WNOHANG);
    if (w == pid) break;
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      r.timed_out = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
  r.out = slurp(out_path);
  r.err = slurp(err_path);
  fs::remove(out_path);
  fs::remove(err_path);
  return r;
}

std::string describe(const std::vector<std::string>& args, const RunResult& r) {
  std::string cmd = "sdtp";
  for (const auto& a : args) cmd += " '" + a + "'";
  return cmd + "\n  exit " + std::to_string(r.exit_code) + ", signal " + std::to_string(r.signal) +
         (r.timed_out ? " (timed out)" : "") + "\n  stdout: " + r.out.substr(0, 2000) +
         "\n  stderr: " + r.err.substr(0, 2000);
}

// Asserts the failure contract: non-zero exit, no signal, stdout empty, stderr one `sdtp: error:` line.
void expect_clean_error(const std::vector<std::string>& args, int expected_code = 0) {
  RunResult r = run_sdtp(args);
  SCOPED_TRACE(describe(args, r));
  EXPECT_FALSE(r.timed_out);
  EXPECT_EQ(r.signal, 0);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.exit_code, -1);
  if (expected_code) {
    EXPECT_EQ(r.exit_code, expected_code);
  }
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err.rfind("sdtp: error: ", 0), 0u);
  ASSERT_FALSE(r.err.empty());
  EXPECT_EQ(r.err.back(), '\n');
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1);
}

fs::path write_file(const std::string& name, const std::string& bytes) {
  fs::path p = scratch_dir() / name;
  std::ofstream(p, std::ios::binary) << bytes;
  return p;
}

const std::vector<std::string> kSubcommands = {"generate", "chat", "serve", "info", "logits", "tokenize", "bench",
                                              "train-predictor"};

std::string default_model() {
  if (const char* cache = std::getenv("SDTP_CACHE"))
    return std::string(cache) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  const char* home = std::getenv("HOME");
  return std::string(home ? home : "") + "/.cache/sdtp/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

#define SKIP_WITHOUT_DEFAULT_MODEL() \
  if (!fs::exists(default_model())) SDTP_NO_DEFAULT_MODEL("default model " << default_model() << " is absent")

// ---------------------------------------------------------------- help and version

TEST(Cli, TopLevelHelpAndVersion) {
  for (const std::vector<std::string>& args : {std::vector<std::string>{"--help"}, {"-h"}, {"help"}}) {
    RunResult r = run_sdtp(args);
    SCOPED_TRACE(describe(args, r));
    EXPECT_EQ(r.exit_code, 0);
    EXPECT_EQ(r.out.rfind("usage: sdtp <command>", 0), 0u);
    for (const auto& c : kSubcommands) EXPECT_NE(r.out.find("  " + c + " "), std::string::npos) << c;
    EXPECT_EQ(r.err, "");
  }
  RunResult r = run_sdtp({"--version"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.out.rfind("sdtp ", 0), 0u) << r.out;
}

TEST(Cli, EverySubcommandHelpExitsZero) {
  for (const auto& c : kSubcommands) {
    for (const std::vector<std::string>& args :
         {std::vector<std::string>{c, "--help"}, {c, "-h"}, {"help", c}, {c, "--bogus", "--help"}}) {
      RunResult r = run_sdtp(args);
      SCOPED_TRACE(describe(args, r));
      EXPECT_EQ(r.exit_code, 0);
      EXPECT_EQ(r.out.rfind("usage: sdtp " + c, 0), 0u);
      EXPECT_NE(r.out.find("-m, --model PATH"), std::string::npos);
      EXPECT_EQ(r.err, "");
    }
  }
}

// docs/cli.md must hold every --help text verbatim, so the two cannot drift apart.
TEST(Cli, DocsContainEveryHelpText) {
  const std::string docs = slurp(fs::path(SDTP_SOURCE_DIR) / "docs" / "cli.md");
  ASSERT_FALSE(docs.empty()) << "docs/cli.md is missing";
  std::vector<std::vector<std::string>> all = {{"--help"}};
  for (const auto& c : kSubcommands) all.push_back({c, "--help"});
  for (const auto& args : all) {
    RunResult r = run_sdtp(args);
    ASSERT_EQ(r.exit_code, 0);
    EXPECT_NE(docs.find(r.out), std::string::npos) << "docs/cli.md does not contain the output of `sdtp "
                                                   << args[0] << (args.size() > 1 ? " --help" : "") << "`:\n"
                                                   << r.out;
  }
}

// ---------------------------------------------------------------- bad input: one line, no crash

TEST(Cli, UsageErrorsAreOneLineExitTwo) {
  const std::string m = "/nonexistent/model.gguf";  // options are checked before the model is opened
  const std::vector<std::vector<std::string>> cases = {
      {},
      {"frobnicate"},
      {"--frobnicate"},
      {"help", "frobnicate"},
      {"generate", "-m", m, "-p", "hi", "--bogus"},
      {"generate", "-p", "hi"},                     // missing -m
      {"generate", "-m", m},                        // missing -p / -f
      {"generate", "-m", m, "-p", "a", "-f", "b"},  // conflicting
      {"generate", "-m", m, "-p", "hi", "-n", "-1"},
      {"generate", "-m", m, "-p", "hi", "-n", "0"},
      {"generate", "-m", m, "-p", "hi", "-n", "12x"},
      {"generate", "-m", m, "-p", "hi", "-n", ""},
      {"generate", "-m", m, "-p", "hi", "-n", "99999999999999999999999"},
      {"generate", "-m", m, "-p", "hi", "--temp", "abc"},
      {"generate", "-m", m, "-p", "hi", "--temp", "nan"},
      {"generate", "-m", m, "-p", "hi", "--temp", "-1"},
      {"generate", "-m", m, "-p", "hi", "--top-p", "1.5"},
      {"generate", "-m", m, "-p", "hi", "--temp"},                // missing value
      {"generate", "-m", m, "-p", "hi", "--chat=yes"},            // flag with a value
      {"generate", "-m", m, "-p", "hi", "--system", "be brief"},  // --system without --chat
      {"generate", "-m", m, "-p", "hi", "-n", "4", "-n", "5"},
      {"generate", "-m", m, "-p", "hi", "stray"},
      {"generate", "-m", m, "-f", "/nonexistent/prompt.txt"},
      {"generate", "-m", m, "-p", "hi", "--prune-layers", "3"},                           // no --prune
      {"generate", "-m", m, "-p", "hi", "--prune", "attn", "--prune-layers", "3", "--keep-ratio", "0.5,x"},
      {"info"},
      {"info", "-m"},
      {"logits", "-m", m},
      {"logits", "-m", m, "--ids", "1,2", "-p", "hi"},
      {"logits", "-m", m, "--ids", "1,x,3"},
      {"logits", "-m", m, "--ids", "1,,3"},
      {"logits", "-m", m, "--ids", "-5"},
      {"tokenize", "-m", m},
      {"bench", "-m", m, "-p", "12,abc"},
      {"bench", "-m", m, "-r", "0"},
      {"bench", "-m", m, "-p", "0", "-n", "0"},
  };
  for (const auto& args : cases) expect_clean_error(args, 2);
}

TEST(Cli, BadModelFilesAreOneLineErrors) {
  const fs::path garbage = write_file("garbage.gguf", "this is not a model file\n");
  const fs::path empty = write_file("empty.gguf", "");
  // GGUF magic, version 3, then a tensor count far beyond what the 24-byte file could hold.
  std::string truncated = "GGUF";
  truncated += std::string("\x03\x00\x00\x00", 4);
  truncated += std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8);
  truncated += std::string("\x01\x00\x00\x00\x00\x00\x00\x00", 8);
  const fs::path huge_count = write_file("huge_count.gguf", truncated);
  const fs::path folder = scratch_dir() / "not_a_model";
  fs::create_directories(folder);
  for (const auto& path : {std::string("/nonexistent/model.gguf"), garbage.string(), empty.string(),
                           huge_count.string(), folder.string(), std::string("/dev/null")}) {
    expect_clean_error({"info", "-m", path});
    expect_clean_error({"logits", "-m", path, "--ids", "1,2"});
    expect_clean_error({"generate", "-m", path, "-p", "hi", "-n", "1"});
  }
}

// ---------------------------------------------------------------- tiny fixture models (no tokenizer)

std::vector<fs::path> tiny_models() {
  std::vector<fs::path> out;
  const fs::path root = fs::path(SDTP_SOURCE_DIR) / "tests" / "fixtures" / "tiny";
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return out;
  for (const auto& e : fs::directory_iterator(root, ec))
    if (e.is_directory() && fs::exists(e.path() / "config.json")) out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

// A symlink loop is reported as one, not as a missing file (model paths and prompt files).
TEST(Cli, SymlinkLoopIsNamedAsSuch) {
  const fs::path a = scratch_dir() / "loop_a", b = scratch_dir() / "loop_b";
  std::error_code ec;
  fs::remove(a, ec);
  fs::remove(b, ec);
  fs::create_symlink(b, a);
  fs::create_symlink(a, b);
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"info", "-m", a.string()},
        std::vector<std::string>{"generate", "-m", a.string(), "-p", "x"},
        std::vector<std::string>{"generate", "-m", "unused.gguf", "-f", a.string()}}) {
    expect_clean_error(args);
    RunResult r = run_sdtp(args);
    EXPECT_NE(r.err.find("symbolic links"), std::string::npos) << describe(args, r);
    EXPECT_EQ(r.err.find("no such file"), std::string::npos) << describe(args, r);
  }
}

TEST(Cli, LogitsOnTinyFixturesIsJsonOfTheRightShape) {
  const auto models = tiny_models();
  if (models.empty()) GTEST_SKIP() << "no tiny fixture models under tests/fixtures/tiny/";
  for (const auto& dir : models) {
    SCOPED_TRACE(dir.string());
    const json config = json::parse(slurp(dir / "config.json"));
    const int n_vocab = config.at("vocab_size").get<int>();
    ASSERT_GT(n_vocab, 5);
    const std::vector<int> ids = {1, 2, n_vocab - 1, 3};
    std::string ids_text;
    for (int id : ids) {
      if (!ids_text.empty()) ids_text += ',';
      ids_text += std::to_string(id);
    }

    std::vector<std::string> args = {"logits", "-m", dir.string(), "--ids", ids_text, "--all"};
    RunResult all = run_sdtp(args);
    ASSERT_EQ(all.exit_code, 0) << describe(args, all);
    const json j_all = json::parse(all.out);
    ASSERT_TRUE(j_all.at("logits").is_array());
    ASSERT_EQ(j_all["logits"].size(), ids.size());
    EXPECT_EQ(j_all.at("ids").get<std::vector<int>>(), ids);
    for (const auto& row : j_all["logits"]) {
      ASSERT_EQ(row.size(), static_cast<size_t>(n_vocab));
      for (const auto& v : row) ASSERT_TRUE(v.is_number()) << "non-finite logit";
    }

    args.pop_back();  // last position only: the same numbers as the last row of --all
    RunResult last = run_sdtp(args);
    ASSERT_EQ(last.exit_code, 0) << describe(args, last);
    const json j_last = json::parse(last.out);
    ASSERT_EQ(j_last.at("logits").size(), 1u);
    ASSERT_EQ(j_last["logits"][0].size(), static_cast<size_t>(n_vocab));
    for (int v = 0; v < n_vocab; ++v) {
      const double a = j_last["logits"][0][v].get<double>(), b = j_all["logits"].back()[v].get<double>();
      EXPECT_NEAR(a, b, 1e-4 * (1 + std::fabs(b))) << "vocab index " << v;
    }

    expect_clean_error({"logits", "-m", dir.string(), "--ids", "1," + std::to_string(n_vocab)}, 2);
    expect_clean_error({"logits", "-m", dir.string(), "-p", "hello"});  // no tokenizer
    expect_clean_error({"tokenize", "-m", dir.string(), "-p", "hello"});
  }
}

// SDTP_CPU_ISA forces the CPU kernel variant (bench names the one that ran); a name that is not a
// variant is a one-line usage error.
TEST(Cli, CpuIsaEnvironmentVariableSelectsKernels) {
  const auto models = tiny_models();
  if (models.empty()) GTEST_SKIP() << "no tiny fixture models under tests/fixtures/tiny/";
  const char* before = std::getenv("SDTP_CPU_ISA");
  const std::string saved = before ? before : "";
  const std::vector<std::string> args = {"bench", "-m", models.front().string(), "-p", "8", "-n", "2",
                                         "-r",    "1",  "-t", "1"};
  setenv("SDTP_CPU_ISA", "scalar", 1);
  RunResult r = run_sdtp(args);
  EXPECT_EQ(r.exit_code, 0) << describe(args, r);
  EXPECT_NE(r.out.find("cpu kernels: scalar;"), std::string::npos) << r.out;
  setenv("SDTP_CPU_ISA", "sse9", 1);
  expect_clean_error(args, 2);
  r = run_sdtp(args);
  EXPECT_NE(r.err.find("SDTP_CPU_ISA=sse9"), std::string::npos) << r.err;
  if (before) {
    setenv("SDTP_CPU_ISA", saved.c_str(), 1);
  } else {
    unsetenv("SDTP_CPU_ISA");
  }
}

// --kv-type: the CPU's KV cache in f16 by default, bf16 or f32 on request (bench names it); an
// unknown type, and one the device does not keep, are one-line usage errors.
TEST(Cli, KvTypeOption) {
  const auto models = tiny_models();
  if (models.empty()) GTEST_SKIP() << "no tiny fixture models under tests/fixtures/tiny/";
  const std::vector<std::string> base = {"bench", "-m", models.front().string(), "-p", "8", "-n", "2", "-r", "1"};
  for (const auto& [opt, want] : {std::pair<std::string, std::string>{"", "KV cache f16)"},
                                  {"f32", "KV cache f32)"}, {"bf16", "KV cache bf16)"}}) {
    std::vector<std::string> args = base;
    if (!opt.empty()) args.insert(args.end(), {"--kv-type", opt});
    const RunResult r = run_sdtp(args);
    EXPECT_EQ(r.exit_code, 0) << describe(args, r);
    EXPECT_NE(r.out.find(want), std::string::npos) << r.out;
  }
  std::vector<std::string> bad = base;
  bad.insert(bad.end(), {"--kv-type", "f8"});
  expect_clean_error(bad, 2);
  const RunResult r = run_sdtp(bad);
  EXPECT_NE(r.err.find("--kv-type must be auto, f32, f16 or bf16, got 'f8'"), std::string::npos) << r.err;
}

// ---------------------------------------------------------------- the default model (slow)

TEST(CliSlow, InfoDescribesTheDefaultModel) {
  SKIP_WITHOUT_DEFAULT_MODEL();
  std::vector<std::string> args = {"info", "-m", default_model(), "--json"};
  RunResult r = run_sdtp(args);
  ASSERT_EQ(r.exit_code, 0) << describe(args, r);
  const json j = json::parse(r.out);
  EXPECT_EQ(j.at("format"), "gguf");
  EXPECT_EQ(j.at("arch"), "llama");
  EXPECT_EQ(j.at("n_layer"), 30);
  EXPECT_EQ(j.at("n_embd"), 576);
  EXPECT_EQ(j.at("n_head"), 9);
  EXPECT_EQ(j.at("n_head_kv"), 3);
  EXPECT_EQ(j.at("head_dim"), 64);
  EXPECT_EQ(j.at("n_ff"), 1536);
  EXPECT_EQ(j.at("n_vocab"), 49152);
  EXPECT_EQ(j.at("tied_embeddings"), true);
  EXPECT_NE(j.at("weight_types").get<std::string>().find("Q4_1"), std::string::npos);
  EXPECT_EQ(j.at("tokenizer").at("model"), "gpt2");
  EXPECT_EQ(j.at("tokenizer").at("pre"), "smollm");
  EXPECT_EQ(j.at("tokenizer").at("bos_id"), 1);
  EXPECT_EQ(j.at("tokenizer").at("eos_id"), 2);
  EXPECT_EQ(j.at("tokenizer").at("chat_family"), "chatml");

  args.pop_back();
  r = run_sdtp(args);
  ASSERT_EQ(r.exit_code, 0) << describe(args, r);
  EXPECT_NE(r.out.find("architecture:     llama"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("layers:           30"), std::string::npos) << r.out;
}

// Reference ids from transformers' GGUF tokenizer loader (AutoTokenizer with gguf_file=).
TEST(CliSlow, TokenizeMatchesTransformers) {
  SKIP_WITHOUT_DEFAULT_MODEL();
  const std::vector<std::pair<std::string, std::vector<int>>> cases = {
      {"Hello world", {19556, 905}},
      {"The capital of France is Paris.", {504, 3575, 282, 4649, 314, 7042, 30}},
      {"<|im_start|>user\nHi<|im_end|>\n", {1, 4093, 198, 26843, 2, 198}},
  };
  for (const auto& [text, expected] : cases) {
    std::vector<std::string> args = {"tokenize", "-m", default_model(), "-p", text};
    RunResult r = run_sdtp(args);
    ASSERT_EQ(r.exit_code, 0) << describe(args, r);
    EXPECT_EQ(json::parse(r.out).get<std::vector<int>>(), expected) << text;
  }
  std::vector<std::string> args = {"tokenize", "-m", default_model(), "-p", "<|im_end|>", "--no-special"};
  RunResult r = run_sdtp(args);
  ASSERT_EQ(r.exit_code, 0) << describe(args, r);
  const auto ids = json::parse(r.out).get<std::vector<int>>();
  EXPECT_GT(ids.size(), 1u) << "with --no-special, <|im_end|> must not be one token";
}

// Reference logits from transformers (GGUF dequantised to float32) for "The capital of France is".
TEST(CliSlow, LogitsMatchTransformers) {
  SKIP_WITHOUT_DEFAULT_MODEL();
  std::vector<std::string> args = {"logits", "-m", default_model(), "--ids", "504,3575,282,4649,314",
                                   "--all"};
  RunResult r = run_sdtp(args);
  ASSERT_EQ(r.exit_code, 0) << describe(args, r);
  const json j = json::parse(r.out);
  ASSERT_EQ(j.at("logits").size(), 5u);
  const std::vector<int> argmax_ref = {29, 282, 260, 314, 7042};
  for (size_t row = 0; row < 5; ++row) {
    const auto v = j["logits"][row].get<std::vector<double>>();
    ASSERT_EQ(v.size(), 49152u);
    EXPECT_EQ(std::max_element(v.begin(), v.end()) - v.begin(), argmax_ref[row]) << "row " << row;
  }
  const auto last = j["logits"][4].get<std::vector<double>>();
  const std::vector<std::pair<int, double>> ref = {
      {0, 1.6136468}, {1, -11.8718729}, {2, -7.9444526}, {7042, 17.3712616}, {19556, -1.0144955}};
  for (const auto& [id, value] : ref) EXPECT_NEAR(last[id], value, 2e-2) << "id " << id;
}

TEST(CliSlow, GenerateGreedyChatSaysParis) {
  SKIP_WITHOUT_DEFAULT_MODEL();
  std::vector<std::string> args = {
      "generate", "-m", default_model(), "--chat", "-p", "What is the capital of France?", "--temp", "0",
      "-n",       "32"};
  RunResult r = run_sdtp(args, 600);
  ASSERT_EQ(r.exit_code, 0) << describe(args, r);
  EXPECT_NE(r.out.find("Paris"), std::string::npos) << describe(args, r);
  EXPECT_NE(r.err.find("tokens/s"), std::string::npos) << r.err;

  // Same request, not streamed: the same text (greedy is deterministic).
  args.push_back("--no-stream");
  RunResult r2 = run_sdtp(args, 600);
  ASSERT_EQ(r2.exit_code, 0) << describe(args, r2);
  EXPECT_EQ(r2.out, r.out);
}

// `sdtp chat` on a pipe: each line a turn with the history kept (the second question needs the
// first), /stats and /reset, an unknown command named; the first answer equals generate --chat's.
TEST(CliSlow, ChatKeepsTheConversation) {
  SKIP_WITHOUT_DEFAULT_MODEL();
  const fs::path in = write_file("chat.txt",
                                 "What is the capital of France?\n/stats\nAnd what river runs through it?\n/reset\n"
                                 "/nonsense\n");
  const std::vector<std::string> args = {"chat", "-m", default_model(), "--temp", "0", "-n", "24"};
  RunResult r = run_sdtp(args, 600, in.string());
  ASSERT_EQ(r.exit_code, 0) << describe(args, r);
  RunResult g = run_sdtp({"generate", "-m", default_model(), "--chat", "-p", "What is the capital of France?",
                          "--temp", "0", "-n", "24"},
                         600);
  ASSERT_EQ(g.exit_code, 0);
  EXPECT_EQ(r.out.rfind(g.out, 0), 0u) << "chat:\n" << r.out << "\ngenerate:\n" << g.out;
  EXPECT_NE(r.out.find("prompt "), std::string::npos) << r.out;  // /stats
  EXPECT_NE(r.out.find("tokens/s"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("Seine"), std::string::npos) << "the second turn lost the first: " << r.out;
  EXPECT_NE(r.out.find("(conversation cleared)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("unknown command /nonsense"), std::string::npos) << r.out;
}

// A prompt that is not UTF-8 is encoded byte for byte, with one warning naming the first bad byte.
TEST(CliSlow, InvalidUtf8PromptIsAWarning) {
  SKIP_WITHOUT_DEFAULT_MODEL();
  const fs::path file = write_file("bad.txt", "hi \xff there");
  const std::vector<std::string> args = {"generate", "-m", default_model(), "-f", file.string(), "--temp", "0",
                                         "-n", "2"};
  RunResult r = run_sdtp(args, 600);
  ASSERT_EQ(r.exit_code, 0) << describe(args, r);
  EXPECT_NE(r.err.find("warning: the prompt is not valid UTF-8 (byte 0xff at offset 3)"), std::string::npos) << r.err;
  RunResult ok = run_sdtp({"generate", "-m", default_model(), "-p", "hi there", "--temp", "0", "-n", "2"}, 600);
  EXPECT_EQ(ok.err.find("warning"), std::string::npos) << ok.err;
}

// Text from a file or from standard input ("-"): tokenize -f and generate -f give what -p gives.
TEST(CliSlow, TextFromAFileOrStandardInput) {
  SKIP_WITHOUT_DEFAULT_MODEL();
  const std::string text = "The capital of France is Paris.\nIt is on the Seine.";
  const fs::path file = write_file("text.txt", text);
  const auto ids_of = [&](std::vector<std::string> args, const std::string& in = "/dev/null") {
    RunResult r = run_sdtp(args, 120, in);
    EXPECT_EQ(r.exit_code, 0) << describe(args, r);
    return r.exit_code == 0 ? json::parse(r.out).get<std::vector<int>>() : std::vector<int>{};
  };
  const auto direct = ids_of({"tokenize", "-m", default_model(), "-p", text});
  ASSERT_GT(direct.size(), 8u);
  EXPECT_EQ(ids_of({"tokenize", "-m", default_model(), "-f", file.string()}), direct);
  EXPECT_EQ(ids_of({"tokenize", "-m", default_model(), "-f", "-"}, file.string()), direct);
  expect_clean_error({"tokenize", "-m", default_model(), "-p", text, "-f", file.string()}, 2);

  const std::vector<std::string> gen = {"generate", "-m", default_model(), "--temp", "0", "-n", "8"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> a = gen;
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  RunResult p = run_sdtp(with({"-p", text}), 600);
  RunResult f = run_sdtp(with({"-f", "-"}), 600, file.string());
  ASSERT_EQ(p.exit_code, 0) << describe(with({"-p", text}), p);
  ASSERT_EQ(f.exit_code, 0) << describe(with({"-f", "-"}), f);
  EXPECT_EQ(f.out, p.out);
}

// --stop "\n" (a backslash and an n, as a shell passes it) stops at a newline: the same greedy
// story has newlines without it and none with it.
TEST(CliSlow, StopEscapesMeanTheirCharacters) {
  SKIP_WITHOUT_DEFAULT_MODEL();
  std::vector<std::string> args = {"generate", "-m", default_model(), "--chat", "-p",
                                   "Write a short poem about the sea, in four lines.", "--temp", "0", "-n", "48"};
  RunResult free_run = run_sdtp(args, 600);
  ASSERT_EQ(free_run.exit_code, 0) << describe(args, free_run);
  const std::string body = free_run.out.substr(0, free_run.out.find_last_not_of('\n') + 1);
  ASSERT_NE(body.find('\n'), std::string::npos) << "the test needs an answer with a newline: " << free_run.out;
  args.push_back("--stop");
  args.push_back("\\n");
  RunResult stopped = run_sdtp(args, 600);
  ASSERT_EQ(stopped.exit_code, 0) << describe(args, stopped);
  const std::string first_line = body.substr(0, body.find('\n'));
  const std::string got = stopped.out.substr(0, stopped.out.find_last_not_of('\n') + 1);
  EXPECT_EQ(got, first_line) << describe(args, stopped);
}

TEST(CliSlow, GeneratePromptOverTheContextIsAUsageError) {
  SKIP_WITHOUT_DEFAULT_MODEL();
  std::string prompt;  // 141 tokens, as counted by transformers' tokenizer of this model
  for (int i = 0; i < 20; ++i) prompt += "The capital of France is Paris. ";
  std::vector<std::string> args = {"generate", "-m", default_model(), "-p", prompt, "--ctx", "16", "-n", "4"};
  expect_clean_error(args, 2);
  RunResult r = run_sdtp(args);
  EXPECT_NE(r.err.find("16"), std::string::npos) << "message should name the context size: " << r.err;
  EXPECT_NE(r.err.find("141"), std::string::npos) << "message should name the prompt tokens (141): " << r.err;
}

TEST(CliSlow, BenchPrintsTableAndJson) {
  SKIP_WITHOUT_DEFAULT_MODEL();
  std::vector<std::string> args = {"bench", "-m", default_model(), "-p", "8", "-n", "2", "-r", "2",
                                   "-t",    "1"};
  RunResult r = run_sdtp(args, 600);
  ASSERT_EQ(r.exit_code, 0) << describe(args, r);
  EXPECT_NE(r.out.find("| method | test |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("| dense | pp8 |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("| dense | tg2 @ d8 |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("device: cpu (1 threads"), std::string::npos) << r.out;

  args.push_back("--json");
  r = run_sdtp(args, 600);
  ASSERT_EQ(r.exit_code, 0) << describe(args, r);
  const json j = json::parse(r.out);
  ASSERT_EQ(j.size(), 2u);
  EXPECT_EQ(j[0].at("test"), "pp8");
  EXPECT_EQ(j[1].at("test"), "tg2 @ d8");
  for (const auto& row : j) {
    EXPECT_EQ(row.at("samples_ms").size(), 2u);
    EXPECT_EQ(row.at("method"), "dense");
    EXPECT_EQ(row.at("device"), "cpu");
    EXPECT_GT(row.at("tokens_per_s").get<double>(), 0);
    EXPECT_GT(row.at("flops").get<double>(), 0);
    EXPECT_DOUBLE_EQ(row.at("speedup").get<double>(), 1.0);  // the dense row against itself
    EXPECT_GT(row.at("kv_bytes").get<double>(), 0);
  }
}

}  // namespace
