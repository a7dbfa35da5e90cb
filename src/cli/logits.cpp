// `sdtp logits`: runs a token sequence through the model in one prefill and prints the logits as JSON,
// with enough digits (%.9g) that every float reads back exactly. For comparisons with references.
#include <cstdint>
#include <cstdio>
#include <string>

#include "cli/commands.h"
#include "sdtp/error.h"
#include "sdtp/session.h"

namespace sdtp::cli {

ArgParser logits_parser() {
  ArgParser p("logits", "sdtp logits -m MODEL (--ids IDS | -p TEXT) [--all]",
              "Prints {\"ids\": [...], \"logits\": [[...], ...]}: the logits of the last position, or of\n"
              "every position with --all, one row of n_vocab floats per position.");
  p.text("-m", "--model", "PATH", "model file (.gguf) or Hugging Face model folder")
      .required("--model")
      .text("", "--ids", "IDS", "comma-separated token ids, e.g. 5,17,42 (no BOS is added)")
      .text("-p", "--prompt", "TEXT", "text to encode with the model's tokenizer (BOS as the model wants)")
      .one_of("--ids", "--prompt")
      .flag("", "--all", "print the logits of every position, not only the last")
      .integer("-c", "--ctx", "N", "context size in tokens", 1, 1 << 20, "the model's, at most 8192")
      ;
  add_device_options(p, /*decodes=*/false);
  p.epilog("example:\n  sdtp logits -m model.gguf --ids 1,2,3 --all\n");
  return p;
}

int run_logits(const ParsedArgs& args) {
  std::vector<int32_t> ids;
  if (args.has("--ids")) {
    for (int64_t id : parse_int_list("logits: --ids", args.text("--ids"), 0, INT32_MAX))
      ids.push_back(static_cast<int32_t>(id));
  }

  std::unique_ptr<Model> model = load_model_checked(args.text("--model"));
  const int n_vocab = model->config.n_vocab;
  if (args.has("--prompt")) {
    require_tokenizer(*model, "logits");
    ids = model->tokenizer.encode(args.text("--prompt"), /*add_bos=*/true, /*parse_special=*/true);
    if (ids.empty()) throw UsageError("logits: the prompt is empty (0 tokens)");
  }
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] >= n_vocab)
      throw UsageError("logits: --ids: id " + std::to_string(ids[i]) + " at index " + std::to_string(i) +
                       " is out of the vocabulary of " + std::to_string(n_vocab) + " tokens");

  Session session(*model, session_options_from_args(args));
  const bool all = args.flag("--all");
  const std::vector<float>& logits = session.prefill(ids, all);
  const size_t rows = all ? ids.size() : 1;
  if (logits.size() != rows * static_cast<size_t>(n_vocab))
    throw Error("logits: internal: prefill returned " + std::to_string(logits.size()) + " floats, expected " +
                std::to_string(rows) + " x " + std::to_string(n_vocab));

  std::string out = "{\"ids\": " + json_int_array(ids) + ", \"logits\": [";
  for (size_t r = 0; r < rows; ++r) {
    out += r ? ",\n[" : "\n[";
    for (int v = 0; v < n_vocab; ++v) {
      if (v) out += ", ";
      out += json_float(logits[r * n_vocab + v]);
    }
    out += "]";
    if (out.size() > (1u << 20)) {
      std::fwrite(out.data(), 1, out.size(), stdout);
      out.clear();
    }
  }
  out += "]}\n";
  std::fwrite(out.data(), 1, out.size(), stdout);
  return 0;
}

}  // namespace sdtp::cli
