// `sdtp bench --device cuda`: prefill (and decode) speed on the GPU, dense and pruned side by side
// in one run, on a model file (-m) or on random weights of a real model's shape made on the device
// (--random-weights llama2-7b|llama3-8b|mistral-7b). For each prompt length and method: one warm-up
// run, then r timed repetitions (host wall time of CudaSession::prefill, which ends with the logits
// on the host); the table gives the median time, TFLOP/s (analytical FLOPs / time), the speedup
// over dense measured and counted (dense FLOPs / pruned FLOPs), and the tokens alive at the end.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <string>

#include "cli/commands.h"
#include "sdtp/error.h"
#include "sdtp/predictor.h"
#include "sdtp/session.h"
#if SDTP_CUDA
#include "sdtp/cuda.h"
#endif

namespace sdtp::cli {

#if !SDTP_CUDA

int run_bench_cuda(const ParsedArgs&) {
  throw UsageError("no CUDA device: this sdtp was built without the CUDA backend (configure with nvcc present, "
                   "-DSDTP_CUDA=ON)");
}

#else

namespace {

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t h = v.size() / 2;
  return v.size() % 2 ? v[h] : 0.5 * (v[h - 1] + v[h]);
}

struct CudaRow {
  std::string method, test;
  int n_prompt = 0, n_gen = 0;
  std::vector<double> ms;  // per repetition: prefill ms, or decode ms per token
  double flops = 0, dense_flops = 0;  // of one repetition (per token for decode)
  int final_alive = 0;
  double median_ms() const { return median(ms); }
  double tflops() const { return median_ms() > 0 ? flops / (median_ms() * 1e-3) / 1e12 : 0; }
};

// The pruned run's plan: the pruning options, with the defaults of default_sdtp_plan for what is
// not given; sdtp without --predictor gets a random predictor of the right shape (a speed run).
PrunePlan cuda_plan(const ParsedArgs& args, const ModelConfig& c) {
  PrunePlan plan = prune_plan_from_args(args, /*predictor_optional=*/true);
  complete_prune_plan(c, plan);
  if (find_prune_method(plan.method).needs_predictor && !plan.predictor)
    plan.predictor = std::make_shared<const Predictor>(cuda::random_predictor(c, plan, 42));
  return plan;
}

std::string plan_text(const PrunePlan& p) {
  if (!p.enabled()) return "dense";
  std::string s = p.method + " at layers";
  char buf[48];
  for (size_t i = 0; i < p.layers.size(); ++i) {
    std::snprintf(buf, sizeof buf, "%s %d (keep %.2f)", i ? "," : "", p.layers[i], p.keep_ratios[i]);
    s += buf;
  }
  s += ", keep-first " + std::to_string(p.keep_first);
  if (find_prune_method(p.method).needs_predictor) s += p.predictor && p.predictor->info.count("origin") ? ", random predictor" : ", predictor file";
  return s;
}

}  // namespace

int run_bench_cuda(const ParsedArgs& args) {
  std::vector<int64_t> lengths =
      parse_int_list("bench: --prompt-lengths", args.text("--prompt-lengths", "512,2048"), 0, 1 << 20);
  const int n_gen = static_cast<int>(args.integer("--n-gen", 128));
  const int reps = static_cast<int>(args.integer("--repetitions", 3));
  for (int64_t p : lengths)
    if (p == 0 && n_gen == 0) throw UsageError("bench: prompt length 0 with -n 0 measures nothing");
  if (args.has("--threads") || args.has("--f32-decode"))
    throw UsageError("bench: --threads and --f32-decode are CPU options (not with --device cuda)");
  if (!cuda::available()) throw UsageError("no CUDA device found (no NVIDIA GPU or driver): --device cuda needs one");

  std::shared_ptr<cuda::CudaModel> model;
  std::string model_name, path;
  if (args.has("--random-weights")) {
    const ModelConfig c = cuda::preset_config(args.text("--random-weights"));
    model = cuda::CudaModel::random(c, 1234);
    model_name = args.text("--random-weights") + " (random)";
  } else {
    std::unique_ptr<Model> host = load_model_checked(args.text("--model"));
    path = host->path;
    model_name = host->config.name.empty() ? std::filesystem::path(host->path).filename().string() : host->config.name;
    model = cuda::CudaModel::upload(*host);
  }
  const ModelConfig& c = model->config();
  const PrunePlan pruned = cuda_plan(args, c);

  cuda::CudaSessionOptions options;
  options.n_ctx = static_cast<int>(*std::max_element(lengths.begin(), lengths.end()) + std::max(n_gen, 1));
  cuda::CudaSession session(model, options);

  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> random_id(0, c.n_vocab - 1);
  const bool tty = stderr_is_tty();
  std::vector<PrunePlan> plans = {PrunePlan{}};
  if (pruned.enabled()) plans.push_back(pruned);

  std::vector<CudaRow> rows;
  for (int64_t p64 : lengths) {
    const int p = static_cast<int>(p64);
    for (const PrunePlan& plan : plans) {
      session.set_prune(plan);
      const std::string method = plan.enabled() ? plan.method : "dense";
      CudaRow pp{method, "pp" + std::to_string(p), p, 0, {}, 0, 0, p};
      CudaRow tg{method, "tg" + std::to_string(n_gen) + (p > 0 ? " @ d" + std::to_string(p) : ""), p, n_gen, {},
                 0, 0, 0};
      for (int rep = 0; rep <= reps; ++rep) {  // rep 0 is the warm-up
        if (tty)
          std::fprintf(stderr, "\r\033[Kbench: %s p=%d n=%d %s %d/%d", method.c_str(), p, n_gen,
                       rep == 0 ? "warm-up" : "run", rep, reps);
        session.reset();
        std::vector<int32_t> ids(p);
        for (auto& id : ids) id = random_id(rng);
        if (p > 0) {
          const double t = now_ms();
          session.prefill(ids);
          const double ms = now_ms() - t;
          const ForwardStats& st = session.last_stats();
          if (rep > 0) pp.ms.push_back(ms);
          pp.flops = st.flops;
          pp.dense_flops = st.dense_flops;
          pp.final_alive = st.alive_per_layer.empty() ? p : st.alive_per_layer.back();
        }
        const int steps = rep == 0 ? std::min(n_gen, 1) : n_gen;
        double ms = 0, flops = 0, dense = 0;
        for (int i = 0; i < steps; ++i) {
          const int32_t id = random_id(rng);
          const double t = now_ms();
          session.decode(id);
          ms += now_ms() - t;
          flops += session.last_stats().flops;
          dense += session.last_stats().dense_flops;
        }
        if (rep > 0 && n_gen > 0) {
          tg.ms.push_back(ms / n_gen);
          tg.flops = flops / n_gen;
          tg.dense_flops = dense / n_gen;
        }
      }
      if (p > 0) rows.push_back(pp);
      if (n_gen > 0) rows.push_back(tg);
    }
  }
  if (tty) std::fprintf(stderr, "\r\033[K");

  // Speedups against the dense row of the same test.
  const auto dense_of = [&](const CudaRow& r) -> const CudaRow* {
    for (const CudaRow& d : rows)
      if (d.method == "dense" && d.test == r.test) return &d;
    return nullptr;
  };
  const std::string device = cuda::device_name();
  const std::string plan_desc = plan_text(pruned);

  if (args.flag("--json")) {
    nlohmann::json out = nlohmann::json::array();
    for (const CudaRow& r : rows) {
      const CudaRow* d = dense_of(r);
      out.push_back({{"model", model_name},
                     {"path", path},
                     {"device", device},
                     {"n_params", c.n_params()},
                     {"weight_bytes", model->weight_bytes()},
                     {"method", r.method},
                     {"plan", r.method == "dense" ? "dense" : plan_desc},
                     {"test", r.test},
                     {"n_prompt", r.n_prompt},
                     {"n_gen", r.n_gen},
                     {"repetitions", reps},
                     {"samples_ms", r.ms},
                     {"median_ms", r.median_ms()},
                     {"flops", r.flops},
                     {"dense_flops", r.dense_flops},
                     {"tflop_per_s", r.tflops()},
                     {"speedup", d && r.median_ms() > 0 ? d->median_ms() / r.median_ms() : 1.0},
                     {"flops_ratio", r.flops > 0 ? r.dense_flops / r.flops : 1.0},
                     {"final_alive", r.final_alive}});
    }
    std::printf("%s\n", out.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    return 0;
  }

  std::printf("device: %s\nmodel: %s, %.2f B params, %.1f GiB of bf16 weights on the device\npruned: %s\n\n",
              device.c_str(), model_name.c_str(), c.n_params() / 1e9, model->weight_bytes() / 1073741824.0,
              plan_desc.c_str());
  std::printf("| method | test | ms (median of %d) | TFLOP/s | speedup vs dense | FLOPs ratio | alive at end |\n", reps);
  std::printf("| --- | --- | ---: | ---: | ---: | ---: | ---: |\n");
  for (const CudaRow& r : rows) {
    const CudaRow* d = dense_of(r);
    const double speedup = d && r.median_ms() > 0 ? d->median_ms() / r.median_ms() : 1.0;
    char ms_text[48];
    if (r.n_gen > 0)
      std::snprintf(ms_text, sizeof ms_text, "%.2f /token", r.median_ms());
    else
      std::snprintf(ms_text, sizeof ms_text, "%.1f", r.median_ms());
    char alive[32] = "";
    if (r.n_gen == 0 && r.n_prompt > 0)
      std::snprintf(alive, sizeof alive, "%d (%.1f%%)", r.final_alive, 100.0 * r.final_alive / r.n_prompt);
    std::printf("| %s | %s | %s | %.1f | %.2fx | %.2fx | %s |\n", r.method.c_str(), r.test.c_str(), ms_text, r.tflops(),
                speedup, r.flops > 0 ? r.dense_flops / r.flops : 1.0, alive);
  }
  std::printf("\nFLOPs ratio: analytical dense FLOPs / this run's FLOPs (the speedup pruning could give at "
              "equal efficiency); speedup: measured dense time / this time.\n");
  return 0;
}

#endif

}  // namespace sdtp::cli
