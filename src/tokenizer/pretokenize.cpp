// Pre-tokenizer matchers. Each matcher returns the end of the regex's leftmost-first match at
// position i of one segment [i, end); "end of segment" is what the regex's (?!\S) sees as the end
// of the input, as in Hugging Face's Split (each earlier split is matched separately).
#include "tokenizer/pretokenize.h"

#include <cstdint>

#include "tokenizer/unicode.h"

namespace sdtp {

namespace {

enum : uint8_t { kLetter = 1, kNumber = 2, kSpace = 4, kNewline = 8 };

struct Chars {
  std::vector<uint32_t> cp;
  std::vector<uint8_t> cls;
  std::vector<size_t> offset;  // byte offset of each char; offset[n] = text size
};

void decode_chars(std::string_view text, Chars& c) {
  c.cp.clear(), c.cls.clear(), c.offset.clear();
  for (size_t pos = 0; pos < text.size();) {
    const DecodedChar d = utf8_decode(text, pos);
    uint8_t cls = 0;
    if (is_letter(d.cp))
      cls = kLetter;
    else if (is_number(d.cp))
      cls = kNumber;
    else if (is_whitespace(d.cp))
      cls = (d.cp == '\r' || d.cp == '\n') ? (kSpace | kNewline) : kSpace;
    c.cp.push_back(d.cp);
    c.cls.push_back(cls);
    c.offset.push_back(pos);
    pos += d.size;
  }
  c.offset.push_back(text.size());
}

// Lower-cases what (?i:...) folds onto the ASCII letters of the contractions ('ſ' folds to 's').
uint32_t fold(uint32_t cp) {
  if (cp >= 'A' && cp <= 'Z') return cp + 32;
  if (cp == 0x17F) return 's';
  return cp;
}

// 's|'t|'re|'ve|'m|'ll|'d (case-insensitive when ci); returns the match end or 0.
size_t match_contraction(const Chars& c, size_t i, size_t end, bool ci) {
  if (c.cp[i] != '\'' || i + 1 >= end) return 0;
  auto f = [&](size_t k) { return ci ? fold(c.cp[k]) : c.cp[k]; };
  const uint32_t a = f(i + 1);
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
  if (i + 2 >= end) return 0;
  const uint32_t b = f(i + 2);
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
  return 0;
}

size_t run(const Chars& c, size_t j, size_t end, uint8_t cls_mask) {
  while (j < end && (c.cls[j] & cls_mask)) ++j;
  return j;
}

bool is_other(const Chars& c, size_t k) {
  return c.cls[k] == 0;
}  // [^\s\p{L}\p{N}]

size_t run_other(const Chars& c, size_t j, size_t end) {
  while (j < end && is_other(c, j)) ++j;
  return j;
}

// \s+(?!\S)|\s+ at a whitespace char i: the run minus its last char when a non-space follows.
size_t match_space_run(const Chars& c, size_t i, size_t end) {
  const size_t j = run(c, i, end, kSpace);
  if (j == end || j - i == 1) return j;
  return j - 1;
}

size_t match_gpt2(const Chars& c, size_t i, size_t end) {
  if (size_t m = match_contraction(c, i, end, false)) return m;
  const size_t j = (c.cp[i] == ' ' && i + 1 < end) ? i + 1 : i;
  if (c.cls[j] == kLetter) return run(c, j, end, kLetter);
  if (c.cls[j] == kNumber) return run(c, j, end, kNumber);
  if (is_other(c, j)) return run_other(c, j, end);
  return match_space_run(c, i, end);
}

size_t match_llama3(const Chars& c, size_t i, size_t end, size_t max_digits) {
  if (size_t m = match_contraction(c, i, end, true)) return m;
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (!(c.cls[i] & (kNewline | kLetter | kNumber)) && i + 1 < end && c.cls[i + 1] == kLetter)
    return run(c, i + 1, end, kLetter);
  if (c.cls[i] == kLetter) return run(c, i, end, kLetter);
  // \p{N}{1,max_digits}
  if (c.cls[i] == kNumber) {
    size_t j = i;
    while (j < end && j - i < max_digits && c.cls[j] == kNumber) ++j;
    return j;
  }
  //  ?[^\s\p{L}\p{N}]+[\r\n]*
  const size_t j = (c.cp[i] == ' ' && i + 1 < end) ? i + 1 : i;
  if (is_other(c, j)) {
    size_t k = run_other(c, j, end);
    while (k < end && (c.cls[k] & kNewline)) ++k;
    return k;
  }
  // \s*[\r\n]+ : the whitespace run up to and including its last newline (the \s* backtracks to
  // it; the newline run cannot extend further because the run's last newline is before k).
  const size_t k = run(c, i, end, kSpace);
  for (size_t m = k; m > i; --m) {
    if (c.cls[m - 1] & kNewline) return m;
  }
  return match_space_run(c, i, end);
}

template <class Match>
void split_segment(const Chars& c, size_t begin, size_t end, std::string_view text,
                   std::vector<std::string_view>& words, Match&& match) {
  for (size_t i = begin; i < end;) {
    size_t j = match(i, end);
    if (j <= i) j = i + 1;  // cannot happen; guarantees progress
    words.push_back(text.substr(c.offset[i], c.offset[j] - c.offset[i]));
    i = j;
  }
}

}  // namespace

std::optional<PreTokenizer> pre_tokenizer_from_name(std::string_view pre) {
  // llama.cpp (llama-vocab.cpp) groups tokenizer.ggml.pre names by the regexes they use.
  for (std::string_view n : {"gpt2", "gpt-2", "default", "mpt", "olmo", "jais", "phi-2", "jina-es", "jina-de",
                             "gigachat", "jina-v2-es", "jina-v2-de", "exaone4", "trillion", "mellum"})
    if (pre == n) return PreTokenizer::gpt2;
  for (std::string_view n : {"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0",
                             "lfm2", "dbrx", "smaug-bpe", "chatglm-bpe", "glm4"})
    if (pre == n) return PreTokenizer::llama3;
  for (std::string_view n :
       {"qwen2", "deepseek-r1-qwen", "stablelm2", "megrez", "hunyuan", "kormo", "grok-2"})
    if (pre == n) return PreTokenizer::qwen2;
  for (std::string_view n :
       {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"})
    if (pre == n) return PreTokenizer::smollm;
  return std::nullopt;
}

const char* pre_tokenizer_name(PreTokenizer p) {
  switch (p) {
    case PreTokenizer::gpt2:
      return "gpt2";
    case PreTokenizer::llama3:
      return "llama3";
    case PreTokenizer::qwen2:
      return "qwen2";
    case PreTokenizer::smollm:
      return "smollm";
  }
  return "?";
}

void pretokenize(PreTokenizer kind, std::string_view text, std::vector<std::string_view>& words) {
  if (text.empty()) return;
  thread_local Chars c;
  decode_chars(text, c);
  const size_t n = c.cp.size();
  switch (kind) {
    case PreTokenizer::gpt2:
      split_segment(c, 0, n, text, words, [&](size_t i, size_t e) { return match_gpt2(c, i, e); });
      break;
    case PreTokenizer::llama3:
      split_segment(c, 0, n, text, words, [&](size_t i, size_t e) { return match_llama3(c, i, e, 3); });
      break;
    case PreTokenizer::qwen2:
      split_segment(c, 0, n, text, words, [&](size_t i, size_t e) { return match_llama3(c, i, e, 1); });
      break;
    case PreTokenizer::smollm:
      for (size_t i = 0; i < n;) {
        if (c.cls[i] == kNumber) {
          words.push_back(text.substr(c.offset[i], c.offset[i + 1] - c.offset[i]));
          ++i;
          continue;
        }
        size_t j = i;
        while (j < n && c.cls[j] != kNumber) ++j;
        split_segment(c, i, j, text, words, [&](size_t a, size_t e) { return match_gpt2(c, a, e); });
        i = j;
      }
      break;
  }
}

}  // namespace sdtp
