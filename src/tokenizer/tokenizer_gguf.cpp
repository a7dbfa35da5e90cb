// Builds a TokenizerSpec from GGUF tokenizer metadata (keys as written by llama.cpp's converters).
#include "tokenizer/tokenizer_gguf.h"

#include <algorithm>
#include <cmath>

#include "formats/gguf.h"
#include "sdtp/error.h"
#include "tokenizer/pretokenize.h"

namespace sdtp {

void add_end_of_turn_ids(TokenizerSpec& spec) {
  for (size_t i = 0; i < spec.tokens.size(); ++i) {
    const std::string& t = spec.tokens[i];
    if (t == "<|eot_id|>" || t == "<|im_end|>" || t == "<|end|>" || t == "<end_of_turn>" ||
        t == "<|endoftext|>" || t == "<|end_of_text|>" || t == "<|eom_id|>" || t == "<EOT>") {
      const int32_t id = static_cast<int32_t>(i);
      if (id != spec.eos_id && std::find(spec.eot_ids.begin(), spec.eot_ids.end(), id) == spec.eot_ids.end())
        spec.eot_ids.push_back(id);
    }
  }
}

TokenizerSpec tokenizer_spec_from_gguf(const GGUFFile& f) {
  const std::string& path = f.path();
  TokenizerSpec spec;
  spec.source = path;
  auto model = f.get_string("tokenizer.ggml.model");
  if (!model) throw FormatError(path + ": tokenizer.ggml.model is missing (no tokenizer in this GGUF)");
  spec.model = *model;
  if (spec.model != "gpt2" && spec.model != "llama")
    throw UnsupportedError(path + ": tokenizer.ggml.model '" + spec.model +
                           "' is not supported (gpt2 or llama)");
  spec.pre = f.get_string("tokenizer.ggml.pre").value_or(spec.model == "gpt2" ? "default" : "");
  if (spec.model == "llama") spec.pre.clear();  // SentencePiece: llama.cpp's behaviour ("default")

  spec.tokens = f.get_string_array("tokenizer.ggml.tokens");
  const size_t n = spec.tokens.size();
  if (n == 0) throw FormatError(path + ": tokenizer.ggml.tokens is missing or empty");

  const std::vector<double> scores = f.get_float_array("tokenizer.ggml.scores");
  if (!scores.empty()) {
    if (scores.size() != n)
      throw FormatError(path + ": tokenizer.ggml.scores has " + std::to_string(scores.size()) +
                        " entries for " + std::to_string(n) + " tokens");
    spec.scores.reserve(n);
    for (double s : scores) spec.scores.push_back(std::isfinite(s) ? static_cast<float>(s) : -1e30f);
  }
  const std::vector<int64_t> types = f.get_int_array("tokenizer.ggml.token_type");
  if (!types.empty()) {
    if (types.size() != n)
      throw FormatError(path + ": tokenizer.ggml.token_type has " + std::to_string(types.size()) +
                        " entries for " + std::to_string(n) + " tokens");
    spec.types.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      if (types[i] < 0 || types[i] > 6)
        throw FormatError(path + ": tokenizer.ggml.token_type[" + std::to_string(i) +
                          "] = " + std::to_string(types[i]) + " is not 0..6");
      spec.types.push_back(static_cast<TokenType>(types[i]));
    }
  }
  spec.merges = f.get_string_array("tokenizer.ggml.merges");
  if (spec.model == "gpt2" && spec.merges.empty())
    throw FormatError(path + ": tokenizer.ggml.merges is missing for a gpt2 (byte-level BPE) tokenizer");

  auto read_id = [&](const char* key, bool strict) -> int32_t {
    auto v = f.get_int(key);
    if (!v) return -1;
    if (*v < 0 || *v >= static_cast<int64_t>(n)) {
      if (!strict) return -1;  // llama.cpp ignores an out-of-range id too
      throw FormatError(path + ": " + key + " = " + std::to_string(*v) + " is outside the vocabulary of " +
                        std::to_string(n));
    }
    return static_cast<int32_t>(*v);
  };
  spec.bos_id = read_id("tokenizer.ggml.bos_token_id", true);
  spec.eos_id = read_id("tokenizer.ggml.eos_token_id", true);
  spec.unk_id = read_id("tokenizer.ggml.unknown_token_id", false);
  spec.pad_id = read_id("tokenizer.ggml.padding_token_id", false);
  if (spec.model == "llama") {  // SentencePiece defaults (llama.cpp)
    if (spec.bos_id < 0 && n > 1) spec.bos_id = 1;
    if (spec.eos_id < 0 && n > 2) spec.eos_id = 2;
    if (spec.unk_id < 0) spec.unk_id = 0;
  }
  for (const char* key : {"tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"}) {
    const int32_t id = read_id(key, true);
    if (id >= 0) spec.eot_ids.push_back(id);
  }
  add_end_of_turn_ids(spec);

  // add_bos defaults follow llama.cpp: SentencePiece and the Llama 3 pre-tokenizers add BOS.
  bool add_bos_default = spec.model == "llama";
  for (const char* p :
       {"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"})
    if (spec.pre == p) add_bos_default = true;
  spec.add_bos = f.get_bool("tokenizer.ggml.add_bos_token").value_or(add_bos_default);
  spec.add_space_prefix = f.get_bool("tokenizer.ggml.add_space_prefix").value_or(spec.model == "llama");
  spec.chat_template = f.get_string("tokenizer.chat_template").value_or("");
  return spec;
}

}  // namespace sdtp
