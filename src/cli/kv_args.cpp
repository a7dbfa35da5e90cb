// --kv-policy and the options of KV-cache compression (sdtp/kv.h), shared by the subcommands that
// run the model; the help lines are made from the policy registry.
#include <climits>
#include <string>

#include "cli/commands.h"
#include "sdtp/error.h"
#include "sdtp/kv.h"

namespace sdtp::cli {

void add_kv_options(ArgParser& p) {
  std::string policies;
  for (const KVPolicy& k : kv_policies()) policies += (policies.empty() ? "" : ", ") + k.name + " (" + k.help + ")";
  const KVPolicyOptions d;
  p.text("", "--kv-policy", "NAME", "KV-cache eviction policy: " + policies, d.policy)
      .number("", "--kv-budget", "B",
              "entries each KV head keeps: a fraction in (0, 1] of the prompt's, or a whole number >= 16", 0, 1e9,
              "1")
      .integer("", "--kv-sinks", "N", "the first N positions are never evicted", 0, INT32_MAX, "4")
      .integer("", "--kv-window", "N",
               "the N most recent entries are never evicted (snapkv/pyramidkv: also the observation window)", 0,
               INT32_MAX, "half the budget for h2o and vatp, 64 for snapkv and pyramidkv, else 0")
      .integer("", "--kv-interval", "N", "decode steps between evictions; 0: after prefill only", 0, INT32_MAX,
               std::to_string(d.interval))
      .flag("", "--kv-adaptive", "AdaKV: spread each layer's budget over its KV heads by score")
      .integer("", "--kv-score-window", "N",
               "vatp/h2o: accumulate the attention of the last N queries only (Scissorhands' window); 0: all", 0,
               INT32_MAX, "0")
      .integer("", "--kv-seed", "S", "seed of the random policy", 0, INT64_MAX, "0");
}

KVPolicyOptions kv_options_from_args(const ParsedArgs& args) {
  KVPolicyOptions o;
  o.policy = args.text("--kv-policy", o.policy);
  o.budget = args.number("--kv-budget", o.budget);
  o.sinks = static_cast<int>(args.integer("--kv-sinks", KVPolicyOptions::kDefault));
  o.window = static_cast<int>(args.integer("--kv-window", KVPolicyOptions::kDefault));
  o.interval = static_cast<int>(args.integer("--kv-interval", o.interval));
  o.adaptive = args.flag("--kv-adaptive");
  o.score_window = static_cast<int>(args.integer("--kv-score-window", 0));
  o.seed = static_cast<uint64_t>(args.integer("--kv-seed", 0));
  if (!o.enabled()) {
    for (const char* opt : {"--kv-budget", "--kv-sinks", "--kv-window", "--kv-interval", "--kv-adaptive",
                            "--kv-score-window", "--kv-seed"})
      if (args.has(opt)) throw UsageError(std::string(opt) + " needs --kv-policy (other than none)");
  }
  o.validate();
  return o;
}

}  // namespace sdtp::cli
