// The pruning options shared by the subcommands that run prefills: parsed and checked before the
// model is read (prune_plan_from_args, which also loads an sdtp predictor and takes its defaults),
// then given the saliency oracle where the method needs one and completed with the model's
// defaults (resolve_prune_plan). The defaults themselves are sdtp/prune.h's complete_prune_plan.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>

#include "cli/commands.h"
#include "sdtp/error.h"
#include "sdtp/predictor.h"
#include "sdtp/train.h"

namespace sdtp::cli {

namespace {

// "sdtp (learned predictor, ...), random (...) or saliency (...)": the registry's methods that pass `keep`.
template <class Keep>
std::string method_list(Keep keep, bool with_help) {
  std::vector<const PruneMethod*> methods;
  for (const PruneMethod& m : prune_methods())
    if (keep(m)) methods.push_back(&m);
  std::string s;
  for (size_t i = 0; i < methods.size(); ++i) {
    s += i == 0 ? "" : i + 1 == methods.size() ? " or " : ", ";
    s += methods[i]->name + (with_help ? " (" + methods[i]->help + ")" : "");
  }
  return s;
}

// "sdtp": the methods that take --predictor.
std::string predictor_methods() {
  return method_list([](const PruneMethod& m) { return m.needs_predictor; }, false);
}

// "lazyllm": the methods that revive pruned tokens (and take --aux-budget).
std::string reviving_methods() {
  return method_list([](const PruneMethod& m) { return m.revives; }, false);
}

// Where predictors shipped with sdtp are looked for: $SDTP_PREDICTORS (folders separated by ':'),
// then predictors/ beside the binary's folder (a build tree inside the source tree) and
// share/sdtp/predictors of an install prefix.
std::vector<std::string> shipped_predictor_dirs() {
  namespace fs = std::filesystem;
  std::vector<std::string> dirs;
  if (const char* env = std::getenv("SDTP_PREDICTORS")) dirs = split_items(env, ':');
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    dirs.push_back((exe.parent_path().parent_path() / "predictors").string());
    dirs.push_back((exe.parent_path().parent_path() / "share" / "sdtp" / "predictors").string());
  }
  return dirs;
}

// --prune sdtp without --predictor: the first predictor shipped for this model whose modules fit
// the plan's layers (with none given: the one whose name ends in .sdtp.safetensors). Says which.
void choose_shipped_predictor(const Model& model, PrunePlan& plan) {
  const std::vector<std::string> dirs = shipped_predictor_dirs();
  const std::vector<std::string> found = find_predictors_for(model, dirs);
  std::string where;
  for (const std::string& d : dirs) where += (where.empty() ? "" : ", ") + d;
  if (found.empty())
    throw UsageError("--prune " + plan.method + " needs --predictor FILE: no predictor for this model in " + where +
                     " (train one with `sdtp train-predictor`, see docs/sdtp.md)");
  for (const std::string& path : found) {
    PrunePlan trial = plan;
    trial.predictor = std::make_shared<const Predictor>(load_predictor(path));
    try {
      complete_prune_plan_from_predictor(trial);
    } catch (const UsageError&) {
      continue;  // no modules for the layers asked for
    }
    plan = trial;
    std::fprintf(stderr, "sdtp: --prune %s: using %s, shipped for this model (--predictor FILE to choose another)\n",
                 plan.method.c_str(), path.c_str());
    return;
  }
  std::string names;
  for (const std::string& f : found) names += (names.empty() ? "" : ", ") + f;
  throw UsageError("--prune " + plan.method + ": the predictors shipped for this model (" + names +
                   ") have no modules for the layers asked for; give --predictor FILE");
}

}  // namespace

std::shared_ptr<const Predictor> shipped_predictor(const Model& model) {
  for (const std::string& path : find_predictors_for(model, shipped_predictor_dirs())) {
    try {
      return std::make_shared<const Predictor>(load_predictor(path));
    } catch (const Error&) {
      continue;  // an unreadable file: try the next
    }
  }
  return nullptr;
}

void add_prune_options(ArgParser& p) {
  const std::string methods = method_list([](const PruneMethod&) { return true; }, true);
  p.text("", "--prune", "METHOD", "prune prompt tokens in prefill: " + methods, PrunePlan{}.method)
      .text("", "--predictor", "FILE",
            "SDTP predictor file (safetensors, from sdtp train-predictor) for --prune " + predictor_methods() +
                " (default: the one shipped for the model, found by its fingerprint in $SDTP_PREDICTORS or "
                "predictors/ beside the build folder)")
      .text("", "--prune-schedule", "NAME",
            "the layers, ratios and kept tokens of a named schedule: " + prune_schedule_names() +
                " (paper: a stage at ceil(L/8) and every ceil(3L/32) layers after, keep 0.9 each, the last 10% "
                "kept; quarters: 1/4, 1/2, 3/4 of the depth, keep 0.7; default: the predictor's plan, else "
                "lazyllm for --prune lazyllm and paper for the others)")
      .text("", "--prune-layers", "LIST",
            "comma-separated pruning layers, increasing, in [1, n_layer) (default: the schedule's)")
      .text("", "--keep-ratio", "LIST",
            "fraction of alive tokens kept at each pruning layer, one per layer or one for all (default: the "
            "schedule's, else 0.9)")
      .integer("", "--keep-first", "N",
               "always keep the first N prompt tokens (attention sinks) (default: the schedule's, 4)", 0, 1 << 30)
      .number("", "--keep-recent", "F",
              "always keep the last ceil(F·n) of a prompt's n tokens, F in [0, 1) (default: the schedule's: 0.1 "
              "for paper, 0 for quarters and lazyllm)",
              0, 0.999999)
      .integer("", "--prune-seed", "S", "seed of the random selector", 0, INT64_MAX, "0")
      .integer("", "--aux-budget", "N",
               "most hidden states the aux cache of --prune " + reviving_methods() +
                   " holds; the oldest are dropped and never revived; 0 = no limit",
               0, INT64_MAX, "0");
}

PrunePlan prune_plan_from_args(const ParsedArgs& args) {
  PrunePlan plan;
  if (args.has("--prune")) plan.method = args.text("--prune");
  const PruneMethod* method = nullptr;
  try {
    method = &find_prune_method(plan.method);
  } catch (const UsageError& e) {
    throw UsageError(std::string("--prune: ") + e.what());
  }
  if (!method->prunes()) {
    if (args.has("--prune-layers") || args.has("--keep-ratio") || args.has("--keep-first") ||
        args.has("--keep-recent") || args.has("--prune-schedule") || args.has("--predictor") ||
        args.has("--aux-budget")) {
      throw UsageError(
          "--prune-schedule, --prune-layers, --keep-ratio, --keep-first, --keep-recent, --predictor and "
          "--aux-budget need --prune METHOD");
    }
    return plan;
  }
  if (!method->needs_predictor && args.has("--predictor"))
    throw UsageError("--predictor is only used with --prune " + predictor_methods() + ", not with --prune " +
                     plan.method);

  if (!method->revives && args.has("--aux-budget"))
    throw UsageError("--aux-budget is only used with --prune " + reviving_methods() + ", not with --prune " +
                     plan.method + " (it does not revive pruned tokens)");
  plan.aux_budget = args.integer("--aux-budget", 0);

  // Ranges are checked against the model by PrunePlan::validate.
  if (args.has("--prune-layers"))
    for (int64_t l : parse_int_list("--prune-layers", args.text("--prune-layers"), INT32_MIN, INT32_MAX))
      plan.layers.push_back(static_cast<int>(l));
  if (args.has("--keep-ratio"))
    for (double r : parse_number_list("--keep-ratio", args.text("--keep-ratio"), -HUGE_VAL, HUGE_VAL))
      plan.keep_ratios.push_back(static_cast<float>(r));
  plan.seed = static_cast<uint64_t>(args.integer("--prune-seed", 0));

  plan.keep_first = static_cast<int>(args.integer("--keep-first", PrunePlan::kKeepFirstUnset));
  plan.keep_recent = static_cast<float>(args.number("--keep-recent", PrunePlan::kKeepRecentUnset));
  if (args.has("--prune-schedule")) {
    if (args.has("--predictor"))
      throw UsageError("--prune-schedule and --predictor: a predictor brings the plan it was trained with");
    if (args.has("--prune-layers"))
      throw UsageError("--prune-schedule and --prune-layers: give one of them");
    ModelConfig probe;  // the name is checked now; the layers need the model (resolve_prune_plan)
    probe.n_layer = 32;
    try {
      (void)named_prune_schedule(args.text("--prune-schedule"), probe);
    } catch (const UsageError& e) {
      throw UsageError(std::string("--prune-schedule: ") + e.what());
    }
  }
  if (args.has("--predictor")) {
    const std::string path = args.text("--predictor");
    plan.predictor = std::make_shared<const Predictor>(load_predictor(path));
    // Its layers, ratios and keep-first for what the options leave out, checked now, before the
    // model is read; resolve_prune_plan adds the model's defaults.
    try {
      complete_prune_plan_from_predictor(plan);
    } catch (const UsageError& e) {
      throw UsageError("predictor " + path + ": " + e.what());
    }
  }
  return plan;
}

void resolve_prune_plan(const ParsedArgs& args, const Model& model, PrunePlan& plan) {
  const PruneMethod& method = find_prune_method(plan.method);
  if (!method.prunes()) return;
  // A predictor for another model: say so before its layers fail to fit this one.
  if (plan.predictor)
    plan.predictor->model.check_matches(ModelIdentity::of(model), "predictor " + args.text("--predictor"));
  if (method.needs_saliency_oracle) plan.saliency_oracle = make_saliency_oracle(model);
  if (args.has("--prune-schedule")) {
    const PrunePlan d = named_prune_schedule(args.text("--prune-schedule"), model.config);
    plan.layers = d.layers;
    if (plan.keep_ratios.empty()) plan.keep_ratios = d.keep_ratios;
    if (plan.keep_first == PrunePlan::kKeepFirstUnset) plan.keep_first = d.keep_first;
    if (plan.keep_recent == PrunePlan::kKeepRecentUnset) plan.keep_recent = d.keep_recent;
  }
  // Random weights (bench) get a random predictor of the plan's shape from their caller.
  if (method.needs_predictor && !plan.predictor && !model.random_weights) choose_shipped_predictor(model, plan);
  complete_prune_plan(model.config, plan);
}

}  // namespace sdtp::cli
