// `sdtp bench`: prefill and decode throughput in the manner of llama-bench. For each prompt length p,
// after one warm-up run, r repetitions each time the prefill of p random valid token ids (fixed seed)
// and then n decode steps on top of it; prints tokens/s mean ± sample stddev and GFLOP/s (analytical
// FLOPs from the session, or dense_forward_flops when the session reports none, over wall time).
// With --device cuda (bench_cuda.cpp's run_bench_cuda): the same on the GPU, dense and pruned side
// by side, on a model file or on random weights of a real model's shape (--random-weights).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <string>

#include "cli/commands.h"
#include "sdtp/error.h"
#include "sdtp/session.h"

namespace sdtp::cli {

int run_bench_cuda(const ParsedArgs& args);       // bench_cuda.cpp
int run_bench_cpu_pruned(const ParsedArgs& args);  // bench_pruned.cpp

namespace {

struct BenchRow {
  std::string test;  // "pp512" or "tg128 @ d512"
  int n_prompt = 0, n_gen = 0, n_depth = 0;
  std::vector<double> ms;      // wall time of each repetition
  std::vector<double> gflops;  // analytical GFLOP of each repetition
  int n_tokens() const { return n_prompt > 0 ? n_prompt : n_gen; }
};

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / v.size();
}

double stddev(const std::vector<double>& v) {
  if (v.size() < 2) return 0;
  double m = mean(v), s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / (v.size() - 1));
}

std::vector<double> tokens_per_s(const BenchRow& row) {
  std::vector<double> out;
  for (double ms : row.ms) out.push_back(ms > 0 ? row.n_tokens() * 1000.0 / ms : 0.0);
  return out;
}

double gflop_per_s(const BenchRow& row) {
  double gflop = 0, ms = 0;
  for (size_t i = 0; i < row.ms.size(); ++i) {
    gflop += row.gflops[i];
    ms += row.ms[i];
  }
  return ms > 0 ? gflop * 1000.0 / ms : 0.0;
}

}  // namespace

ArgParser bench_parser() {
  ArgParser p("bench", "sdtp bench -m MODEL [-p 512,2048] [-n 128] [-r 3] [options]",
              "Measures prefill (ppP) and decode (tgN @ dP: N tokens decoded after a P-token prompt) speed\n"
              "on random token ids and prints a markdown table. Progress goes to stderr when it is a TTY.");
  p.text("-m", "--model", "PATH", "model file (.gguf) or Hugging Face model folder")
      .text("", "--device", "DEV", "cpu, or cuda (GPU: dense and pruned prefill side by side)", "cpu")
      .text("", "--random-weights", "PRESET",
            "with --device cuda: random weights of a model shape made on the GPU instead of -m: llama2-7b, "
            "llama3-8b or mistral-7b")
      .one_of("--model", "--random-weights")
      .text("-p", "--prompt-lengths", "LIST", "comma-separated prompt lengths; 0 = decode only", "512,2048")
      .integer("-n", "--n-gen", "N", "tokens to decode after each prompt; 0 = prefill only", 0, 1 << 20,
               "128")
      .integer("-r", "--repetitions", "N", "timed repetitions after one warm-up run", 1, 1000, "3")
      .integer("-t", "--threads", "N", "CPU threads", 1, 1024, "all hardware threads")
      .flag("", "--f32-decode", "decode with the float32 weights instead of their 8-bit copies (slower, exact)")
      .flag("", "--json", "print a JSON array instead of the table");
  add_prune_options(p);
  p.epilog(
      "With --device cuda, --prune METHOD adds a pruned run next to each dense one (sdtp without\n"
      "--predictor: a randomly initialised predictor of the right shape; layers and ratios default to\n"
      "1/4, 1/2, 3/4 of the depth keeping 0.7 each). On the CPU, --prune compares dense and pruned\n"
      "prefill of the same prompts side by side (prefill only).\n"
      "examples:\n  sdtp bench -m model.gguf -p 128,512 -n 32 -r 5\n"
      "  sdtp bench --device cuda --random-weights llama2-7b -p 4096,8192 -n 32 --prune sdtp\n");
  return p;
}

int run_bench(const ParsedArgs& args) {
  const std::string device = args.text("--device", "cpu");
  if (device == "cuda") return run_bench_cuda(args);
  if (device != "cpu") throw UsageError("bench: --device must be cpu or cuda, got '" + device + "'");
  if (args.has("--random-weights")) throw UsageError("bench: --random-weights needs --device cuda");
  if (args.has("--prune")) return run_bench_cpu_pruned(args);
  std::vector<int64_t> lengths =
      parse_int_list("bench: --prompt-lengths", args.text("--prompt-lengths", "512,2048"), 0, 1 << 20);
  const int n_gen = static_cast<int>(args.integer("--n-gen", 128));
  const int reps = static_cast<int>(args.integer("--repetitions", 3));
  for (int64_t p : lengths)
    if (p == 0 && n_gen == 0) throw UsageError("bench: prompt length 0 with -n 0 measures nothing");

  std::unique_ptr<Model> model = load_model_checked(args.text("--model"));
  const ModelConfig& c = model->config;
  if (c.n_vocab <= 0) throw Error("bench: model '" + model->path + "' has an empty vocabulary");

  SessionOptions options;
  options.n_ctx = static_cast<int>(*std::max_element(lengths.begin(), lengths.end()) + std::max(n_gen, 1));
  options.n_threads = static_cast<int>(args.integer("--threads", 0));
  options.decode_q8 = !args.flag("--f32-decode");
  Session session(*model, options);

  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> random_id(0, c.n_vocab - 1);
  const bool tty = stderr_is_tty();

  std::vector<BenchRow> rows;
  for (int64_t p64 : lengths) {
    const int p = static_cast<int>(p64);
    BenchRow pp{"pp" + std::to_string(p), p, 0, 0, {}, {}};
    BenchRow tg{
        "tg" + std::to_string(n_gen) + (p > 0 ? " @ d" + std::to_string(p) : ""), 0, n_gen, p, {}, {}};
    for (int rep = 0; rep <= reps; ++rep) {  // rep 0 is the warm-up
      if (tty)
        std::fprintf(stderr, "\r\033[Kbench: p=%d n=%d %s %d/%d", p, n_gen, rep == 0 ? "warm-up" : "run", rep,
                     reps);
      session.reset();
      std::vector<int32_t> ids(p);
      for (auto& id : ids) id = random_id(rng);
      if (p > 0) {
        double t = now_ms();
        session.prefill(ids, false);
        double ms = now_ms() - t;
        double flops =
            session.last_stats().flops > 0 ? session.last_stats().flops : dense_forward_flops(c, 0, p, 1);
        if (rep > 0) {
          pp.ms.push_back(ms);
          pp.gflops.push_back(flops / 1e9);
        }
      }
      const int steps = rep == 0 ? std::min(n_gen, 1) : n_gen;
      double ms = 0, flops = 0;
      for (int i = 0; i < steps; ++i) {
        int32_t id = random_id(rng);
        double t = now_ms();
        session.decode(id);
        ms += now_ms() - t;
        double f = session.last_stats().flops;
        flops += f > 0 ? f : dense_forward_flops(c, p + i, 1, 1);
      }
      if (rep > 0 && n_gen > 0) {
        tg.ms.push_back(ms);
        tg.gflops.push_back(flops / 1e9);
      }
    }
    if (p > 0) rows.push_back(pp);
    if (n_gen > 0) rows.push_back(tg);
  }
  if (tty) std::fprintf(stderr, "\r\033[K");

  std::string model_name = c.name.empty() ? std::filesystem::path(model->path).filename().string() : c.name;
  char params[32];
  std::snprintf(params, sizeof params, "%.2f M", c.n_params() / 1e6);

  if (args.flag("--json")) {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& row : rows) {
      auto ts = tokens_per_s(row);
      out.push_back({{"model", model_name},
                     {"path", model->path},
                     {"weight_types", model->weight_types},
                     {"n_params", c.n_params()},
                     {"n_threads", session.n_threads()},
                     {"test", row.test},
                     {"n_prompt", row.n_prompt},
                     {"n_gen", row.n_gen},
                     {"n_depth", row.n_depth},
                     {"repetitions", reps},
                     {"samples_ms", row.ms},
                     {"samples_ts", ts},
                     {"avg_ts", mean(ts)},
                     {"stddev_ts", stddev(ts)},
                     {"gflop_per_s", gflop_per_s(row)}});
    }
    std::printf("%s\n", out.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    return 0;
  }

  std::printf("| model | params | threads | test | t/s | GFLOP/s | reps |\n");
  std::printf("| --- | ---: | ---: | --- | ---: | ---: | ---: |\n");
  for (const auto& row : rows) {
    auto ts = tokens_per_s(row);
    std::printf("| %s | %s | %d | %s | %.2f ± %.2f | %.1f | %d |\n", model_name.c_str(), params,
                session.n_threads(), row.test.c_str(), mean(ts), stddev(ts), gflop_per_s(row), reps);
  }
  return 0;
}

}  // namespace sdtp::cli
