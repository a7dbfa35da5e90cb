// Tokenizer: validates a TokenizerSpec and encodes/decodes with byte-level BPE (model "gpt2") or
// SentencePiece-style BPE (model "llama").
//
// Encoding first cuts the text at special/added tokens written literally in it (leftmost, then
// longest match; control and unknown tokens only when parse_special, user-defined ones always),
// then encodes each plain fragment:
//  - byte-level: pre-tokenizer words -> bytes -> GPT-2 alphabet -> merges by rank (per-call word
//    cache); with pre "llama3" a word that is itself a token is emitted whole (ignore_merges).
//  - SentencePiece: spaces become U+2581; with add_space_prefix "▁" is prepended to every fragment
//    (pre "" or "default": llama.cpp and HF's legacy Prepend normaliser), to every fragment not
//    starting with a space (pre "metaspace-always": HF Metaspace prepend_scheme "always"), or only to
//    a fragment at offset 0 not starting with a space ("metaspace-first"); merges by rank when spec.merges is
//    given (tokenizer.json), else by the score of the merged piece (GGUF / sentencepiece); characters outside
//    the vocabulary become <0xNN> byte tokens, or the unknown token (consecutive ones fused).
// Invalid UTF-8 is accepted (see unicode.h) and encodes byte for byte.
#include "sdtp/tokenizer.h"

#include <algorithm>
#include <array>
#include <unordered_map>

#include "sdtp/error.h"
#include "tokenizer/bpe.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/unicode.h"

namespace sdtp {

namespace {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

const std::string kSpmSpace = "\xE2\x96\x81";  // U+2581 "▁"

bool is_special_type(TokenType t) {
  return t == TokenType::control || t == TokenType::unknown;
}

int parse_byte_token(std::string_view t) {  // "<0xNN>" -> NN, else -1
  if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return -1;
  int v = 0;
  for (char ch : t.substr(3, 2)) {
    v <<= 4;
    if (ch >= '0' && ch <= '9')
      v |= ch - '0';
    else if (ch >= 'A' && ch <= 'F')
      v |= ch - 'A' + 10;
    else if (ch >= 'a' && ch <= 'f')
      v |= ch - 'a' + 10;
    else
      return -1;
  }
  return v;
}

}  // namespace

struct Tokenizer::Impl {
  TokenizerSpec spec;
  bool byte_level = true;
  PreTokenizer pre = PreTokenizer::gpt2;
  bool ignore_merges = false;
  enum class SpmPrefix { legacy, always, first } spm_prefix = SpmPrefix::legacy;
  bool spm_rank_merges = false;
  ChatTemplateInfo chat;

  std::vector<TokenType> types;
  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> token_to_id;
  struct Merge {
    int32_t rank, id;
  };
  std::unordered_map<uint64_t, Merge> merges;
  std::array<int32_t, 256> byte_char_id{};   // byte-level: token of each byte's GPT-2 character
  std::array<int32_t, 256> byte_token_id{};  // SentencePiece: <0xNN> byte-fallback tokens
  std::vector<std::string> pieces;           // exact bytes of each token
  std::array<std::vector<int32_t>, 256> specials_by_first_byte;  // longest first
  std::vector<bool> end_of_generation;

  void validate_and_index();
  int32_t find(std::string_view text) const {
    auto it = token_to_id.find(text);
    return it == token_to_id.end() ? -1 : it->second;
  }
  void encode_fragment(std::string_view text, bool at_start, std::vector<int32_t>& out,
                       std::unordered_map<std::string_view, std::pair<size_t, size_t>>& cache,
                       std::vector<int32_t>& cache_ids) const;
  void encode_word_bytelevel(std::string_view word, std::vector<int32_t>& out) const;
  void encode_spm(std::string_view text, bool prefix, std::vector<int32_t>& out) const;
  // Merge of two adjacent symbols by the merge list's rank (lower rank merges first).
  bool rank_merge(const BpeSymbol& l, const BpeSymbol& r, double& priority, int32_t& merged) const {
    if (l.id < 0 || r.id < 0) return false;
    auto it = merges.find((static_cast<uint64_t>(l.id) << 32) | static_cast<uint32_t>(r.id));
    if (it == merges.end()) return false;
    priority = it->second.rank;
    merged = it->second.id;
    return true;
  }
};

void Tokenizer::Impl::validate_and_index() {
  const std::string& src = spec.source.empty() ? std::string("<tokenizer spec>") : spec.source;
  auto fail = [&](const std::string& what) { throw FormatError(src + ": " + what); };
  if (spec.model == "gpt2") {
    byte_level = true;
  } else if (spec.model == "llama") {
    byte_level = false;
  } else {
    throw UnsupportedError(src + ": tokenizer model '" + spec.model + "' is not supported (gpt2 or llama)");
  }
  const size_t n = spec.tokens.size();
  if (n == 0) fail("tokenizer has no tokens");
  if (n > static_cast<size_t>(INT32_MAX)) fail("too many tokens: " + std::to_string(n));
  if (!spec.scores.empty() && spec.scores.size() != n)
    fail("scores has " + std::to_string(spec.scores.size()) + " entries for " + std::to_string(n) +
         " tokens");
  if (!spec.types.empty() && spec.types.size() != n)
    fail("token_type has " + std::to_string(spec.types.size()) + " entries for " + std::to_string(n) +
         " tokens");
  types.assign(n, TokenType::normal);
  for (size_t i = 0; i < spec.types.size(); ++i) {
    const int t = static_cast<int>(spec.types[i]);
    if (t < 0 || t > 6) fail("token_type[" + std::to_string(i) + "] = " + std::to_string(t) + " is not 0..6");
    types[i] = t == 0 ? TokenType::normal : spec.types[i];
  }
  auto check_id = [&](int32_t id, const char* field) {
    if (id < -1 || id >= static_cast<int64_t>(n))
      fail(std::string(field) + " = " + std::to_string(id) + " is outside the vocabulary of " +
           std::to_string(n));
  };
  check_id(spec.bos_id, "bos_token_id");
  check_id(spec.eos_id, "eos_token_id");
  check_id(spec.unk_id, "unknown_token_id");
  check_id(spec.pad_id, "padding_token_id");
  for (int32_t id : spec.eot_ids) check_id(id, "eot_token_id");

  if (byte_level) {
    const std::string pre = spec.pre.empty() ? "default" : spec.pre;
    auto p = pre_tokenizer_from_name(pre);
    if (!p)
      throw UnsupportedError(src + ": tokenizer.ggml.pre '" + pre + "' is not a supported pre-tokenizer");
    this->pre = *p;
    // llama.cpp: only these Llama 3 names set ignore_merges (HF "ignore_merges": true).
    for (std::string_view m :
         {"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"})
      if (pre == m) ignore_merges = true;
  } else {
    if (spec.pre.empty() || spec.pre == "default")
      spm_prefix = SpmPrefix::legacy;
    else if (spec.pre == "metaspace-always")
      spm_prefix = SpmPrefix::always;
    else if (spec.pre == "metaspace-first")
      spm_prefix = SpmPrefix::first;
    else
      throw UnsupportedError(src + ": SentencePiece pre '" + spec.pre +
                             "' is not supported (default, metaspace-always or metaspace-first)");
    spm_rank_merges = !spec.merges.empty();
    if (!spm_rank_merges && spec.scores.empty())
      fail("SentencePiece tokenizer has neither scores nor merges");
  }

  token_to_id.reserve(n);
  for (size_t i = 0; i < n; ++i)
    token_to_id.emplace(spec.tokens[i], static_cast<int32_t>(i));  // first id wins

  // Merges "a b" (rank = position); merges whose parts or result are not tokens are skipped.
  merges.reserve(spec.merges.size());
  for (size_t r = 0; r < spec.merges.size(); ++r) {
    const std::string& m = spec.merges[r];
    const size_t sp = m.size() > 1 ? m.find(' ', 1) : std::string::npos;
    if (sp == std::string::npos) fail("merge " + std::to_string(r) + " '" + m + "' is not 'left right'");
    const std::string_view left(m.data(), sp), right(m.data() + sp + 1, m.size() - sp - 1);
    const int32_t a = find(left), b = find(right);
    std::string joined;
    joined.reserve(m.size() - 1);
    joined.append(left).append(right);
    const int32_t c = find(joined);
    if (a < 0 || b < 0 || c < 0) continue;
    merges.emplace((static_cast<uint64_t>(a) << 32) | static_cast<uint32_t>(b),
                   Merge{static_cast<int32_t>(r), c});
  }

  byte_char_id.fill(-1);
  byte_token_id.fill(-1);
  for (int b = 0; b < 256; ++b) {
    std::string ch;
    utf8_append(ch, byte_to_unicode(static_cast<uint8_t>(b)));
    byte_char_id[b] = find(ch);
  }

  pieces.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const std::string& t = spec.tokens[i];
    const TokenType ty = types[i];
    if (ty == TokenType::control || ty == TokenType::unknown || ty == TokenType::user_defined) {
      pieces[i] = t;
      continue;
    }
    if (byte_level) {
      std::string bytes;
      bool ok = true;
      for (size_t pos = 0; pos < t.size() && ok;) {
        const DecodedChar d = utf8_decode(t, pos);
        const int b = unicode_to_byte(d.cp);
        if (b < 0)
          ok = false;
        else
          bytes += static_cast<char>(b);
        pos += d.size;
      }
      pieces[i] = ok ? bytes : t;  // a token outside the byte alphabet stands for its own text
    } else {
      const int b = parse_byte_token(t);
      if (b >= 0 && (ty == TokenType::byte || spec.types.empty())) {
        pieces[i] = std::string(1, static_cast<char>(b));
        if (byte_token_id[b] < 0) byte_token_id[b] = static_cast<int32_t>(i);
        continue;
      }
      std::string s;
      for (size_t pos = 0; pos < t.size();) {
        if (t.compare(pos, 3, kSpmSpace) == 0)
          s += ' ', pos += 3;
        else
          s += t[pos++];
      }
      pieces[i] = s;
    }
  }

  for (size_t i = 0; i < n; ++i) {
    const TokenType ty = types[i];
    if ((ty == TokenType::control || ty == TokenType::unknown || ty == TokenType::user_defined) &&
        !spec.tokens[i].empty())
      specials_by_first_byte[static_cast<uint8_t>(spec.tokens[i][0])].push_back(static_cast<int32_t>(i));
  }
  for (auto& v : specials_by_first_byte) {
    std::stable_sort(v.begin(), v.end(),
                     [&](int32_t a, int32_t b) { return spec.tokens[a].size() > spec.tokens[b].size(); });
  }

  end_of_generation.assign(n, false);
  if (spec.eos_id >= 0) end_of_generation[spec.eos_id] = true;
  for (int32_t id : spec.eot_ids) end_of_generation[id] = true;

  chat = detect_chat_template(spec.chat_template);
}

void Tokenizer::Impl::encode_word_bytelevel(std::string_view word, std::vector<int32_t>& out) const {
  thread_local std::vector<BpeSymbol> syms;
  thread_local BpeQueue queue;
  thread_local std::string mapped;
  if (ignore_merges) {
    mapped.clear();
    for (unsigned char b : word) utf8_append(mapped, byte_to_unicode(b));
    const int32_t id = find(mapped);
    if (id >= 0 && types[id] == TokenType::normal) {
      out.push_back(id);
      return;
    }
  }
  syms.clear();
  for (size_t k = 0; k < word.size(); ++k) {
    const int32_t k32 = static_cast<int32_t>(k);
    syms.push_back({byte_char_id[static_cast<unsigned char>(word[k])], static_cast<uint32_t>(k), 1, k32 - 1,
                    k + 1 < word.size() ? k32 + 1 : -1});
  }
  bpe_merge(syms, queue, [&](const BpeSymbol& l, const BpeSymbol& r, double& priority, int32_t& merged) {
    return rank_merge(l, r, priority, merged);
  });
  for (int32_t i = syms.empty() ? -1 : 0; i >= 0; i = syms[i].next) {
    if (syms[i].id >= 0)
      out.push_back(syms[i].id);
    else if (spec.unk_id >= 0)
      out.push_back(spec.unk_id);  // byte missing from the vocabulary
  }
}

void Tokenizer::Impl::encode_spm(std::string_view text, bool prefix, std::vector<int32_t>& out) const {
  std::string s;
  s.reserve(text.size() + 8);
  if (prefix) s += kSpmSpace;
  for (char ch : text) {
    if (ch == ' ')
      s += kSpmSpace;
    else
      s += ch;
  }
  auto normal_id = [&](std::string_view piece) {
    const int32_t id = find(piece);
    return (id >= 0 && types[id] == TokenType::normal) ? id : -1;
  };
  std::vector<BpeSymbol> syms;
  for (size_t pos = 0; pos < s.size();) {
    const size_t len = utf8_char_len(s, pos);
    const int32_t idx = static_cast<int32_t>(syms.size());
    syms.push_back({normal_id(std::string_view(s).substr(pos, len)), static_cast<uint32_t>(pos),
                    static_cast<uint32_t>(len), idx - 1, pos + len < s.size() ? idx + 1 : -1});
    pos += len;
  }
  BpeQueue queue;
  if (spm_rank_merges) {
    bpe_merge(syms, queue, [&](const BpeSymbol& l, const BpeSymbol& r, double& priority, int32_t& merged) {
      return rank_merge(l, r, priority, merged);
    });
  } else {
    bpe_merge(syms, queue, [&](const BpeSymbol& l, const BpeSymbol& r, double& priority, int32_t& merged) {
      const int32_t id = normal_id(std::string_view(s).substr(l.start, l.len + r.len));
      if (id < 0) return false;
      priority = -static_cast<double>(spec.scores[id]);
      merged = id;
      return true;
    });
  }
  bool last_unk = false;
  for (int32_t i = syms.empty() ? -1 : 0; i >= 0; i = syms[i].next) {
    const BpeSymbol& sym = syms[i];
    if (sym.id >= 0) {
      out.push_back(sym.id);
      last_unk = false;
      continue;
    }
    bool all_bytes = true;
    for (uint32_t k = 0; k < sym.len; ++k)
      all_bytes = all_bytes && byte_token_id[static_cast<unsigned char>(s[sym.start + k])] >= 0;
    if (all_bytes) {
      for (uint32_t k = 0; k < sym.len; ++k)
        out.push_back(byte_token_id[static_cast<unsigned char>(s[sym.start + k])]);
      last_unk = false;
    } else if (spec.unk_id >= 0 && !last_unk) {
      out.push_back(spec.unk_id);
      last_unk = true;
    }
  }
}

void Tokenizer::Impl::encode_fragment(std::string_view text, bool at_start, std::vector<int32_t>& out,
                                      std::unordered_map<std::string_view, std::pair<size_t, size_t>>& cache,
                                      std::vector<int32_t>& cache_ids) const {
  if (!byte_level) {
    // Every fragment starts the text or follows a special token.
    bool prefix = spec.add_space_prefix;
    if (spm_prefix == SpmPrefix::always) prefix = prefix && text.front() != ' ';
    if (spm_prefix == SpmPrefix::first) prefix = prefix && at_start && text.front() != ' ';
    encode_spm(text, prefix, out);
    return;
  }
  thread_local std::vector<std::string_view> words;
  words.clear();
  pretokenize(pre, text, words);
  for (std::string_view w : words) {
    auto it = cache.find(w);
    if (it != cache.end()) {
      out.insert(out.end(), cache_ids.begin() + it->second.first, cache_ids.begin() + it->second.second);
      continue;
    }
    const size_t start = out.size();
    encode_word_bytelevel(w, out);
    const size_t cstart = cache_ids.size();
    cache_ids.insert(cache_ids.end(), out.begin() + start, out.end());
    cache.emplace(w, std::make_pair(cstart, cache_ids.size()));
  }
}

Tokenizer::Tokenizer() : impl_(std::make_unique<Impl>()) {}

Tokenizer::Tokenizer(TokenizerSpec spec) : impl_(std::make_unique<Impl>()) {
  impl_->spec = std::move(spec);
  impl_->validate_and_index();
}

Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_bos, bool parse_special) const {
  const Impl& m = *impl_;
  if (m.pieces.empty()) throw UsageError("Tokenizer::encode: tokenizer is empty (default-constructed)");
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 2);
  if (add_bos && m.spec.add_bos && m.spec.bos_id >= 0) out.push_back(m.spec.bos_id);
  std::unordered_map<std::string_view, std::pair<size_t, size_t>> cache;
  std::vector<int32_t> cache_ids;
  size_t raw_start = 0;
  for (size_t pos = 0; pos < text.size();) {
    int32_t hit = -1;
    for (int32_t id : m.specials_by_first_byte[static_cast<unsigned char>(text[pos])]) {
      if (!parse_special && m.types[id] != TokenType::user_defined) continue;
      const std::string& t = m.spec.tokens[id];
      if (text.compare(pos, t.size(), t) == 0) {
        hit = id;
        break;
      }
    }
    if (hit < 0) {
      ++pos;
      continue;
    }
    if (pos > raw_start)
      m.encode_fragment(text.substr(raw_start, pos - raw_start), raw_start == 0, out, cache, cache_ids);
    out.push_back(hit);
    pos += m.spec.tokens[hit].size();
    raw_start = pos;
    continue;
  }
  if (raw_start < text.size())
    m.encode_fragment(text.substr(raw_start), raw_start == 0, out, cache, cache_ids);
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool render_special) const {
  std::string out;
  for (int32_t id : ids) out += token_bytes(id, render_special);
  const Impl& m = *impl_;
  if (!m.byte_level && m.spec.add_space_prefix && !out.empty() && out[0] == ' ') out.erase(0, 1);
  return out;
}

std::string Tokenizer::token_bytes(int32_t id, bool render_special) const {
  const Impl& m = *impl_;
  if (id < 0 || id >= static_cast<int32_t>(m.pieces.size()))
    throw UsageError("token id " + std::to_string(id) + " is outside the vocabulary of " +
                     std::to_string(m.pieces.size()) + " (" + m.spec.source + ")");
  if (!render_special && is_special_type(m.types[id])) return {};
  return m.pieces[id];
}

int32_t Tokenizer::n_vocab() const {
  return static_cast<int32_t>(impl_->spec.tokens.size());
}
int32_t Tokenizer::bos_id() const {
  return impl_->spec.bos_id;
}
int32_t Tokenizer::eos_id() const {
  return impl_->spec.eos_id;
}

bool Tokenizer::is_end_of_generation(int32_t id) const {
  const auto& e = impl_->end_of_generation;
  return id >= 0 && id < static_cast<int32_t>(e.size()) && e[id];
}

const TokenizerSpec& Tokenizer::spec() const {
  return impl_->spec;
}
ChatFamily Tokenizer::chat_family() const {
  return impl_->chat.family;
}

std::string Tokenizer::apply_chat_template(const std::vector<ChatMessage>& messages,
                                           bool add_generation_prompt) const {
  const Impl& m = *impl_;
  auto text_of = [&](int32_t id) { return id >= 0 ? m.spec.tokens[id] : std::string(); };
  return render_chat_template(m.chat, messages, add_generation_prompt, text_of(m.spec.bos_id),
                              text_of(m.spec.eos_id), m.spec.source);
}

}  // namespace sdtp
