// Byte-level BPE pre-tokenizers: split text into the words that BPE merges never cross, exactly as
// the regexes of GPT-2, Llama 3, Qwen2 and SmolLM2 (Hugging Face tokenizers / llama.cpp) do, but as
// hand-written matchers over code points (no std::regex: it is slow and has no \p{L}).
#pragma once

#include <optional>
#include <string_view>
#include <vector>

namespace sdtp {

enum class PreTokenizer {
  gpt2,    // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  llama3,  // (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
           // ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
  qwen2,   // as llama3 but \p{N} (one digit per word)
  smollm,  // every \p{N} alone (Digits(individual_digits=true)), then gpt2 on the rest
};

// Maps a GGUF tokenizer.ggml.pre name to its pre-tokenizer (llama.cpp's grouping); nullopt if unknown.
std::optional<PreTokenizer> pre_tokenizer_from_name(std::string_view pre);
const char* pre_tokenizer_name(PreTokenizer p);

// Appends the words of `text` to `words` (views into `text`; together they cover it exactly).
void pretokenize(PreTokenizer kind, std::string_view text, std::vector<std::string_view>& words);

}  // namespace sdtp
