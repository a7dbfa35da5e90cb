// `sdtp bench`: prefill and decode speed on any device, dense and pruned side by side in one run,
// in the manner of llama-bench. For each prompt length p and method (dense, then the --prune plan
// when given): one warm-up run, then r repetitions that each prefill p random valid token ids
// (fixed seed) and decode n tokens on top. One table for every device: median time, tokens/s, the
// speedup over dense measured in this run, analytical GFLOP and the FLOPs ratio (dense FLOPs / this
// run's FLOPs: the speedup pruning could give at equal efficiency), the KV cache held, and the
// tokens alive after the last pruning stage; with a method that revives (lazyllm) also the tokens
// revived, the (token, layer) pairs computed against dense and the aux cache held. Models come from
// a file (-m) or are random weights of a real model's shape made on the device (--random-weights).
#include <sys/resource.h>

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

namespace sdtp::cli {

namespace {

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t h = v.size() / 2;
  return v.size() % 2 ? v[h] : 0.5 * (v[h - 1] + v[h]);
}

struct BenchRow {
  std::string method, test;
  int n_prompt = 0, n_gen = 0;
  std::vector<double> ms;             // per repetition: prefill ms, or decode ms per token
  double flops = 0, dense_flops = 0;  // of one repetition (per token for decode)
  size_t kv_bytes = 0;                // KV cache held at the end of the repetition
  size_t kv_peak = 0;                 // the most it held during the repetition
  double evict_ms = 0;                // host time evicting, per repetition (per token for decode)
  int final_alive = 0;
  // (token, layer) pairs one repetition computed since its sequence began (the rows alive summed
  // over layers; a decode row: prefill and decode steps, revival computing what the prefill
  // skipped) and what dense computes for the same tokens; tokens revived in its decode steps; the
  // aux cache of pruned hidden states at the end of the repetition and at most during it.
  int64_t computed_pairs = 0, dense_pairs = 0, revived = 0;
  size_t aux_bytes = 0, aux_peak = 0;
  std::string note;                   // "out of memory: ..." when the run did not fit
  int tokens() const { return n_gen > 0 ? 1 : n_prompt; }  // tokens per timed unit
  double median_ms() const { return median(ms); }
  double tokens_per_s() const { return median_ms() > 0 ? tokens() * 1000.0 / median_ms() : 0; }
  double computed_pct() const { return dense_pairs > 0 ? 100.0 * static_cast<double>(computed_pairs) / dense_pairs : 100.0; }
};

// The pruned run's plan: the pruning options with the model's defaults for what is not given;
// sdtp without --predictor (random weights only) gets a random predictor of the right shape.
PrunePlan bench_plan(const ParsedArgs& args, const Model& model) {
  PrunePlan plan = prune_plan_from_args(args);
  if (!find_prune_method(plan.method).prunes()) return plan;
  if (model.random_weights && find_prune_method(plan.method).needs_saliency_oracle)
    throw UsageError("bench: --prune " + plan.method + " needs a model file (-m), not random weights");
  resolve_prune_plan(args, model, plan);
  if (find_prune_method(plan.method).needs_predictor && !plan.predictor)
    plan.predictor = std::make_shared<const Predictor>(Predictor::random(model.config, plan, 42));
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
  if (p.keep_recent > 0.0f) {
    std::snprintf(buf, sizeof buf, ", keep-recent %.2f", p.keep_recent);
    s += buf;
  }
  if (find_prune_method(p.method).needs_predictor) s += p.predictor && p.predictor->model.fingerprint.empty() ? ", random predictor" : ", predictor file";
  return s;
}

double mib(size_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0); }

// The most resident memory this process has held (getrusage: kilobytes on Linux).
size_t peak_rss_bytes() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<size_t>(u.ru_maxrss) * 1024;
}

}  // namespace

ArgParser bench_parser() {
  ArgParser p("bench", "sdtp bench (-m MODEL | --random-weights PRESET) [-p 512,2048] [-n 128] [-r 3] [options]",
              "Measures prefill (ppP) and decode (tgN @ dP: N tokens decoded after a P-token prompt) speed on\n"
              "random token ids, dense and (with --prune) pruned side by side in one run, and prints a markdown\n"
              "table. Progress goes to stderr when it is a TTY.");
  p.text("-m", "--model", "PATH", "model file (.gguf) or Hugging Face model folder")
      .text("", "--device", "DEV", "cpu, cuda or cuda:N", "cpu")
      .text("", "--random-weights", "PRESET",
            "random weights of a model shape made on the device instead of -m: llama2-7b, llama3-8b, "
            "mistral-7b or smollm2-135m")
      .one_of("--model", "--random-weights")
      .text("-p", "--prompt-lengths", "LIST", "comma-separated prompt lengths; 0 = decode only", "512,2048")
      .integer("-n", "--n-gen", "N", "tokens to decode after each prompt; 0 = prefill only", 0, 1 << 20, "128")
      .integer("-r", "--repetitions", "N", "timed repetitions after one warm-up run", 1, 1000, "3")
      .integer("-t", "--threads", "N", "CPU threads", 1, 1024, "all hardware threads")
      .flag("", "--f32-decode", "CPU: decode in float32 (weights dequantised on the fly) instead of the 8-bit kernels (slower, exact)")
      .text("", "--kv-type", "T", "KV cache element type: auto (f16 on the CPU, bf16 on CUDA), f32, f16 or bf16",
            "auto")
      .flag("", "--f32-weights",
            "dequantise every weight to float32 on load (Q4_0, Q4_1, Q8_0, Q4_K and Q6_K blocks are otherwise "
            "kept as they are)")
      .flag("", "--json", "print a JSON array instead of the table");
  add_prune_options(p);
  add_kv_options(p);
  p.epilog(
      "--prune METHOD adds a pruned run next to each dense one (sdtp with --random-weights and no\n"
      "--predictor: a randomly initialised predictor of the right shape; layers and ratios default to\n"
      "the predictor's, else 1/4, 1/2, 3/4 of the depth keeping 0.7 each). --kv-policy adds a run with\n"
      "KV-cache compression (and one with both when --prune is given too, unless the method revives).\n"
      "With a method that revives (lazyllm) the decode rows revive pruned tokens, and the table adds the\n"
      "tokens revived, the (token, layer) pairs computed against dense and the aux cache held. A run\n"
      "that does not fit in the device's memory is a row saying so, and the others go on.\n"
      "examples:\n  sdtp bench -m model.gguf -p 128,512 -n 32 -r 5\n"
      "  sdtp bench -m model.gguf -p 4096 -n 0 --prune sdtp --predictor model.sdtp.safetensors\n"
      "  sdtp bench --device cuda --random-weights llama2-7b -p 4096,8192 -n 32 --prune sdtp\n"
      "  sdtp bench --device cuda --random-weights llama2-7b -p 8192,32768 -n 32 --kv-policy vatp --kv-budget 0.25\n");
  return p;
}

int run_bench(const ParsedArgs& args) {
  const std::vector<int64_t> lengths =
      parse_int_list("bench: --prompt-lengths", args.text("--prompt-lengths", "512,2048"), 0, 1 << 20);
  const int n_gen = static_cast<int>(args.integer("--n-gen", 128));
  const int reps = static_cast<int>(args.integer("--repetitions", 3));
  for (int64_t p : lengths)
    if (p == 0 && n_gen == 0) throw UsageError("bench: prompt length 0 with -n 0 measures nothing");
  const std::string device = args.text("--device", "cpu");
  if (device != "cpu" && (args.has("--threads") || args.has("--f32-decode")))
    throw UsageError("bench: --threads and --f32-decode are CPU options (not with --device " + device + ")");

  std::unique_ptr<Model> model;
  std::string model_name;
  if (args.has("--random-weights")) {
    model = random_model(preset_config(args.text("--random-weights")), 1234);
    model_name = args.text("--random-weights") + " (random)";
  } else {
    model = load_model_checked(args.text("--model"), !args.flag("--f32-weights"));
    model_name =
        model->config.name.empty() ? std::filesystem::path(model->path).filename().string() : model->config.name;
  }
  const ModelConfig& c = model->config;
  if (c.n_vocab <= 0) throw Error("bench: model '" + model->path + "' has an empty vocabulary");
  const PrunePlan pruned = bench_plan(args, *model);
  const KVPolicyOptions kv = kv_options_from_args(args);

  SessionOptions options;
  options.device = device;
  options.n_ctx = static_cast<int>(*std::max_element(lengths.begin(), lengths.end()) + std::max(n_gen, 1));
  options.n_threads = static_cast<int>(args.integer("--threads", 0));
  options.decode_q8 = !args.flag("--f32-decode");
  options.kv_type = args.text("--kv-type", "auto");
  Session session(*model, options);

  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> random_id(0, c.n_vocab - 1);
  const bool tty = stderr_is_tty();
  // The runs side by side: dense, pruned, KV-compressed, both.
  struct Run {
    PrunePlan plan;
    KVPolicyOptions kv;
    std::string method;
  };
  std::vector<Run> runs = {{PrunePlan{}, KVPolicyOptions{}, "dense"}};
  if (pruned.enabled()) runs.push_back({pruned, KVPolicyOptions{}, pruned.method});
  if (kv.enabled()) runs.push_back({PrunePlan{}, kv, "kv " + kv.describe()});
  // A reviving method does not combine with a KV policy (the session refuses it): no such run.
  const bool revives = pruned.enabled() && find_prune_method(pruned.method).revives;
  if (kv.enabled() && pruned.enabled() && !revives)
    runs.push_back({pruned, kv, pruned.method + " + kv " + kv.describe()});
  else if (kv.enabled() && revives)
    std::fprintf(stderr, "bench: no %s + kv run (--prune %s does not combine with --kv-policy)\n",
                 pruned.method.c_str(), pruned.method.c_str());

  std::vector<BenchRow> rows;
  for (int64_t p64 : lengths) {
    const int p = static_cast<int>(p64);
    std::vector<int32_t> ids(static_cast<size_t>(p));
    for (const Run& run : runs) {
      session.set_prune(run.plan);
      session.set_kv_policy(run.kv);
      const std::string& method = run.method;
      BenchRow pp, tg;
      pp.method = tg.method = method;
      pp.test = "pp" + std::to_string(p);
      tg.test = "tg" + std::to_string(n_gen) + (p > 0 ? " @ d" + std::to_string(p) : "");
      pp.n_prompt = tg.n_prompt = p;
      tg.n_gen = n_gen;
      pp.final_alive = p;
      std::mt19937 prompt_rng(static_cast<uint32_t>(p));  // the same prompts for every method
      try {
        for (int rep = 0; rep <= reps; ++rep) {  // rep 0 is the warm-up
          if (tty)
            std::fprintf(stderr, "\r\033[Kbench: %s p=%d n=%d %s %d/%d", method.c_str(), p, n_gen,
                         rep == 0 ? "warm-up" : "run", rep, reps);
          session.reset();
          for (auto& id : ids) id = random_id(prompt_rng);
          if (p > 0) {
            const double t = now_ms();
            session.prefill(ids);
            const double ms = now_ms() - t;
            const ForwardStats& st = session.last_stats();
            if (rep > 0) pp.ms.push_back(ms);
            pp.flops = st.flops;
            pp.dense_flops = st.dense_flops;
            pp.kv_bytes = session.kv_bytes();
            pp.kv_peak = session.kv_peak_bytes();
            pp.evict_ms = st.kv_evict_ms;
            pp.final_alive = st.alive_per_layer.empty() ? p : st.alive_per_layer.back();
            pp.computed_pairs = st.computed_pairs;
            pp.dense_pairs = st.dense_pairs;
            pp.aux_bytes = pp.aux_peak = st.aux_bytes;
          }
          const int steps = rep == 0 ? std::min(n_gen, 1) : n_gen;
          double ms = 0, flops = 0, dense = 0, evict = 0;
          size_t aux_peak = 0;
          for (int i = 0; i < steps; ++i) {
            const int32_t id = random_id(rng);
            const double t = now_ms();
            session.decode(id);
            ms += now_ms() - t;
            const ForwardStats& st = session.last_stats();
            flops += st.flops;
            evict += st.kv_evict_ms;
            dense += dense_forward_flops(c, p + i, 1, 1);
            aux_peak = std::max(aux_peak, st.aux_bytes);
          }
          if (rep > 0 && n_gen > 0) {
            tg.ms.push_back(ms / n_gen);
            tg.flops = flops / n_gen;
            tg.dense_flops = dense / n_gen;
            tg.kv_bytes = session.kv_bytes();
            tg.kv_peak = session.kv_peak_bytes();
            tg.evict_ms = evict / n_gen;
            // The session's counts since reset(): the prefill and these decode steps.
            const ForwardStats& last = session.last_stats();
            tg.computed_pairs = last.computed_pairs;
            tg.dense_pairs = last.dense_pairs;
            tg.revived = last.revived_total;
            tg.aux_bytes = last.aux_bytes;
            tg.aux_peak = std::max(aux_peak, pp.aux_peak);
          }
        }
      } catch (const DeviceOutOfMemoryError& e) {
        pp.note = tg.note = std::string("out of memory: ") + e.what();
        session.reset();
      }
      if (p > 0) rows.push_back(pp);
      if (n_gen > 0) rows.push_back(tg);
    }
  }
  if (tty) std::fprintf(stderr, "\r\033[K");

  // Speedups against the dense row of the same test.
  const auto dense_of = [&](const BenchRow& r) -> const BenchRow* {
    for (const BenchRow& d : rows)
      if (d.method == "dense" && d.test == r.test) return &d;
    return nullptr;
  };
  const auto speedup = [&](const BenchRow& r) {
    const BenchRow* d = dense_of(r);
    return d && r.median_ms() > 0 ? d->median_ms() / r.median_ms() : 1.0;
  };
  const auto flops_ratio = [](const BenchRow& r) { return r.flops > 0 ? r.dense_flops / r.flops : 1.0; };
  const std::string plan_desc = plan_text(pruned);

  if (args.flag("--json")) {
    nlohmann::json out = nlohmann::json::array();
    for (const BenchRow& r : rows) {
      out.push_back({{"model", model_name},
                     {"path", model->path},
                     {"weight_types", model->weight_types},
                     {"device", session.device()},
                     {"n_params", c.n_params()},
                     {"n_threads", session.n_threads()},
                     {"cpu_isa", cpu_isa()},
                     {"method", r.method},
                     {"plan", r.method == "dense" ? "dense" : plan_desc},
                     {"test", r.test},
                     {"n_prompt", r.n_prompt},
                     {"n_gen", r.n_gen},
                     {"repetitions", reps},
                     {"samples_ms", r.ms},
                     {"median_ms", r.median_ms()},
                     {"tokens_per_s", r.tokens_per_s()},
                     {"speedup", speedup(r)},
                     {"flops", r.flops},
                     {"dense_flops", r.dense_flops},
                     {"flops_ratio", flops_ratio(r)},
                     {"kv_bytes", r.kv_bytes},
                     {"kv_peak_bytes", r.kv_peak},
                     {"aux_bytes", r.aux_bytes},
                     {"aux_peak_bytes", r.aux_peak},
                     {"revived", r.revived},
                     {"computed_pairs", r.computed_pairs},
                     {"dense_pairs", r.dense_pairs},
                     {"computed_pairs_pct", r.computed_pct()},
                     {"evict_ms", r.evict_ms},
                     {"final_alive", r.final_alive},
                     {"note", r.note},
                     {"weight_host_bytes", weight_host_bytes(model->weights)},
                     {"kv_type", session.kv_type()},
                     {"peak_rss_bytes", peak_rss_bytes()}});
    }
    std::printf("%s\n", out.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    return 0;
  }

  std::printf("device: %s (%d threads; cpu kernels: %s; KV cache %s)\nmodel: %s, %.2f M params, %s; %.1f MiB of "
              "weights in host memory\npruned: %s\n\n",
              session.device().c_str(), session.n_threads(), cpu_isa(), session.kv_type(), model_name.c_str(),
              c.n_params() / 1e6,
              model->weight_types.c_str(), mib(weight_host_bytes(model->weights)), plan_desc.c_str());
  // A reviving method adds three columns: tokens revived (per repetition), the (token, layer) pairs
  // computed as a share of dense's, and the aux cache held at the end.
  std::printf("| method | test | ms (median of %d) | t/s | speedup vs dense | GFLOP | FLOPs ratio | KV MiB | KV peak MiB | evict ms | alive at end |%s\n",
              reps, revives ? " revived | pairs computed | aux MiB |" : "");
  std::printf("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |%s\n",
              revives ? " ---: | ---: | ---: |" : "");
  for (const BenchRow& r : rows) {
    if (!r.note.empty()) {
      std::printf("| %s | %s | %s | | | | | | | | |%s\n", r.method.c_str(), r.test.c_str(), r.note.c_str(),
                  revives ? " | | |" : "");
      continue;
    }
    char ms_text[48];
    if (r.n_gen > 0) std::snprintf(ms_text, sizeof ms_text, "%.2f /token", r.median_ms());
    else std::snprintf(ms_text, sizeof ms_text, "%.1f", r.median_ms());
    char alive[32] = "";
    if (r.n_gen == 0 && r.n_prompt > 0)
      std::snprintf(alive, sizeof alive, "%d (%.1f%%)", r.final_alive, 100.0 * r.final_alive / r.n_prompt);
    char revival[96] = "";
    if (revives)
      std::snprintf(revival, sizeof revival, " %lld | %.1f%% | %.2f |", static_cast<long long>(r.revived),
                    r.computed_pct(), mib(r.aux_bytes));
    std::printf("| %s | %s | %s | %.1f | %.2fx | %.2f | %.2fx | %.1f | %.1f | %.2f | %s |%s\n", r.method.c_str(),
                r.test.c_str(), ms_text, r.tokens_per_s(), speedup(r), r.flops / 1e9, flops_ratio(r), mib(r.kv_bytes),
                mib(r.kv_peak), r.evict_ms, alive, revival);
  }
  std::printf("\nFLOPs analytical (2 per multiply-add; per token for decode rows); FLOPs ratio = dense FLOPs / this "
              "row's FLOPs; speedup = dense ms / this row's ms, both measured in this run; KV MiB: the cache held at the end "
              "(after eviction), KV peak: the most it held; evict ms: host time the KV policy took (per token for decode "
              "rows).\n");
  std::printf("peak RSS of this process: %.1f MiB\n", mib(peak_rss_bytes()));
  if (revives)
    std::printf("revived: tokens brought back from the aux cache in one repetition's decode steps (a token counts "
                "once per stage); pairs computed: (token, layer) pairs computed / dense's since the sequence began (decode "
                "rows: prefill and decode steps); aux MiB: the hidden states of pruned tokens held at the end.\n");
  return 0;
}

}  // namespace sdtp::cli
