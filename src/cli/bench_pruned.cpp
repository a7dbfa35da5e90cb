// `sdtp bench --prune METHOD` on the CPU: dense and pruned prefill of the same prompts side by side
// in one process. For each prompt length, one warm-up of each, then r repetitions that alternate
// dense and pruned (so load on the machine hits both alike); prints method, tokens, time, tokens/s,
// the speedup over dense, analytical GFLOP and the FLOPs ratio, and the tokens alive after the last
// pruning stage.
#include <algorithm>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "sdtp/error.h"
#include "sdtp/session.h"

namespace sdtp::cli {

namespace {

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace

int run_bench_cpu_pruned(const ParsedArgs& args) {
  PrunePlan plan = prune_plan_from_args(args);
  const std::vector<int64_t> lengths =
      parse_int_list("bench: --prompt-lengths", args.text("--prompt-lengths", "512,2048"), 16, 1 << 20);
  const int reps = static_cast<int>(args.integer("--repetitions", 3));
  if (args.has("--n-gen") && args.integer("--n-gen") != 0) {
    throw UsageError("bench: --prune compares prefill only; leave out -n/--n-gen (or pass -n 0)");
  }
  std::unique_ptr<Model> model = load_model_checked(args.text("--model"));
  const ModelConfig& c = model->config;
  resolve_prune_plan(args, *model, plan);

  SessionOptions dense_opt;
  dense_opt.n_ctx = static_cast<int>(*std::max_element(lengths.begin(), lengths.end()) + 1);
  dense_opt.n_threads = static_cast<int>(args.integer("--threads", 0));
  SessionOptions pruned_opt = dense_opt;
  pruned_opt.prune = plan;
  Session dense(*model, dense_opt), pruned(*model, pruned_opt);

  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> random_id(0, c.n_vocab - 1);
  const bool tty = stderr_is_tty();
  std::printf("| method | tokens | prefill ms | t/s | speedup | GFLOP | FLOPs ratio | alive at end | threads |\n");
  std::printf("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
  for (int64_t p64 : lengths) {
    const int p = static_cast<int>(p64);
    std::vector<int32_t> ids(static_cast<size_t>(p));
    for (auto& id : ids) id = random_id(rng);
    std::vector<double> dense_ms, pruned_ms;
    double dense_flops = 0, pruned_flops = 0;
    int alive = p;
    for (int rep = 0; rep <= reps; ++rep) {  // rep 0 is the warm-up of both
      if (tty) std::fprintf(stderr, "\r\033[Kbench: p=%d %s %d/%d", p, rep == 0 ? "warm-up" : "run", rep, reps);
      for (int which = 0; which < 2; ++which) {
        Session& s = which == 0 ? dense : pruned;
        s.reset();
        const double t = now_ms();
        s.prefill(ids, false);
        const double ms = now_ms() - t;
        if (rep == 0) continue;
        (which == 0 ? dense_ms : pruned_ms).push_back(ms);
        (which == 0 ? dense_flops : pruned_flops) = s.last_stats().flops;
        if (which == 1 && !s.last_stats().alive_per_layer.empty()) alive = s.last_stats().alive_per_layer.back();
      }
    }
    if (tty) std::fprintf(stderr, "\r\033[K");
    const double d = median(dense_ms), q = median(pruned_ms);
    std::printf("| dense | %d | %.1f | %.1f | 1.00x | %.1f | 1.00 | %d | %d |\n", p, d, p * 1000.0 / d,
                dense_flops / 1e9, p, dense.n_threads());
    std::printf("| %s | %d | %.1f | %.1f | %.2fx | %.1f | %.3f | %d | %d |\n", plan.method.c_str(), p, q,
                p * 1000.0 / q, d / q, pruned_flops / 1e9, pruned_flops / dense_flops, alive, pruned.n_threads());
    std::fflush(stdout);
  }
  std::printf("\nmedian of %d repetitions after a warm-up; FLOPs analytical (2 per multiply-add), speedup = dense ms / "
              "pruned ms in this run\n",
              reps);
  return 0;
}

}  // namespace sdtp::cli
