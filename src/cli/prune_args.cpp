// The pruning options shared by the subcommands that run prefills.
#include <cmath>
#include <cstdint>

#include "cli/commands.h"
#include "sdtp/error.h"

namespace sdtp::cli {

void add_prune_options(ArgParser& p) {
  p.text("", "--prune", "METHOD", "prune prompt tokens in prefill: none, random or attn", "none")
      .text("", "--prune-layers", "LIST", "comma-separated pruning layers, increasing, in [1, n_layer)")
      .text("", "--keep-ratio", "LIST", "fraction of alive tokens kept at each pruning layer, one per layer")
      .integer("", "--keep-first", "N", "always keep the first N prompt tokens (attention sinks)", 0, 1 << 30, "0")
      .integer("", "--prune-seed", "S", "seed of the random selector", 0, INT64_MAX, "0");
}

PrunePlan prune_plan_from_args(const ParsedArgs& args) {
  PrunePlan plan;
  plan.method = args.has("--prune") ? args.text("--prune") : "none";
  if (plan.method == "none") {
    if (args.has("--prune-layers") || args.has("--keep-ratio")) {
      throw UsageError("--prune-layers and --keep-ratio need --prune METHOD");
    }
    return plan;
  }
  if (!args.has("--prune-layers") || !args.has("--keep-ratio")) {
    throw UsageError("--prune " + plan.method + " needs --prune-layers and --keep-ratio");
  }
  // Ranges are checked against the model by PrunePlan::validate.
  for (int64_t l : parse_int_list("--prune-layers", args.text("--prune-layers"), INT32_MIN, INT32_MAX))
    plan.layers.push_back(static_cast<int>(l));
  for (double r : parse_number_list("--keep-ratio", args.text("--keep-ratio"), -HUGE_VAL, HUGE_VAL))
    plan.keep_ratios.push_back(static_cast<float>(r));
  plan.keep_first = static_cast<int>(args.integer("--keep-first", 0));
  plan.seed = static_cast<uint64_t>(args.integer("--prune-seed", 0));
  return plan;
}

}  // namespace sdtp::cli
