// Shared pieces of the evaluation tasks: prompt rendering, the portable random source, fitting a
// prompt to a token budget, haystack loading and needle insertion, and the task registry.
#include "eval/tasks.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "eval/task_impls.h"
#include "sdtp/error.h"

namespace sdtp::eval {

bool PromptFormat::uses_chat() const {
  return chat && tokenizer && tokenizer->chat_family() != ChatFamily::none;
}

// Chat: the task text is the user turn and the answer prefix opens the assistant turn (RULER appends
// its answer_prefix after the model template). Without chat the prefix follows the text after a space.
std::string PromptFormat::render(const std::string& user_text, const std::string& answer_prefix) const {
  if (uses_chat()) return tokenizer->apply_chat_template({{"user", user_text}}, true) + answer_prefix;
  if (answer_prefix.empty()) return user_text;
  return user_text + " " + answer_prefix;
}

std::vector<int32_t> PromptFormat::encode(const std::string& rendered) const {
  return tokenizer->encode(rendered, true, true);
}

Rng::Rng(uint64_t seed, uint64_t salt) {
  std::seed_seq seq{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32),
                    static_cast<uint32_t>(salt), static_cast<uint32_t>(salt >> 32)};
  engine_.seed(seq);
}

uint64_t Rng::next() {
  return engine_();
}

uint64_t Rng::below(uint64_t n) {
  if (n <= 1) return 0;
  const uint64_t limit = UINT64_MAX - UINT64_MAX % n;  // reject the incomplete last bucket
  uint64_t x;
  do x = engine_();
  while (x >= limit);
  return x % n;
}

int64_t Rng::range(int64_t lo, int64_t hi) {
  return lo + static_cast<int64_t>(below(static_cast<uint64_t>(hi - lo) + 1));
}

// FNV-1a over the task name, mixed with the length and index: one independent stream per sample.
uint64_t mix_seed(uint64_t seed, const std::string& task, int length, int index) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : task) {
    h ^= c;
    h *= 1099511628211ull;
  }
  h ^= static_cast<uint64_t>(length) * 0x9E3779B97F4A7C15ull;
  h ^= static_cast<uint64_t>(index + 1) * 0xC2B2AE3D27D4EB4Full;
  return h ^ seed;
}

int largest_fitting(int lo, int hi, const std::function<bool(int)>& fits) {
  int best = lo - 1;
  while (lo <= hi) {
    const int mid = lo + (hi - lo) / 2;
    if (fits(mid)) {
      best = mid;
      lo = mid + 1;
    } else {
      hi = mid - 1;
    }
  }
  return best;
}

std::string clean_haystack(const std::string& raw) {
  std::string out;
  std::istringstream in(raw);
  std::string line;
  bool space = false;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line == "%") {  // fortune separator
      space = true;
      continue;
    }
    for (char c : line) {
      if (std::isspace(static_cast<unsigned char>(c)) || static_cast<unsigned char>(c) < 0x20) {
        space = true;
      } else {
        if (space && !out.empty()) out += ' ';
        space = false;
        out += c;
      }
    }
    space = true;
  }
  return out;
}

namespace {
std::string read_file_limited(const std::string& path, const std::string& what) {
  constexpr uintmax_t kMaxBytes = 256u << 20;
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) throw UsageError(what + " '" + path + "': no such file");
  const uintmax_t size = std::filesystem::file_size(path, ec);
  if (ec) throw UsageError(what + " '" + path + "': " + ec.message());
  if (size > kMaxBytes)
    throw UsageError(what + " '" + path + "' is " + std::to_string(size) + " bytes, more than the limit of " +
                     std::to_string(kMaxBytes));
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UsageError(what + " '" + path + "': cannot open");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}
}  // namespace

std::string read_task_file(const std::string& path, const std::string& what) {
  return read_file_limited(path, what);
}

std::string default_haystack_text(std::string* name) {
  const std::string dir = "/usr/share/games/fortunes";
  std::string text;
  for (const char* f : {"fortunes", "literature", "riddles"}) {
    const std::string path = dir + "/" + f;
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec)) continue;
    if (!text.empty()) text += ' ';
    text += clean_haystack(read_file_limited(path, "haystack"));
  }
  if (text.empty())
    throw UsageError(
        "no haystack text: '" + dir +
        "' has no fortune files (install the Debian package fortunes-min) and no --haystack FILE was given");
  if (name) *name = "fortunes-min (" + dir + "/{fortunes,literature,riddles})";
  return text;
}

std::vector<std::string> split_sentences(const std::string& text) {
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if ((c == '.' || c == '!' || c == '?') && i + 1 < text.size() && text[i + 1] == ' ') {
      out.push_back(text.substr(start, i + 1 - start));
      start = i + 2;
    }
  }
  if (start < text.size()) out.push_back(text.substr(start));
  return out;
}

std::string insert_needles(const std::vector<std::string>& haystack_words, int n_words,
                           const std::vector<std::string>& needles, const std::vector<double>& depths,
                           size_t* first_needle_offset) {
  std::string text;
  if (!haystack_words.empty()) {
    for (int i = 0; i < n_words; ++i) {
      if (i) text += ' ';
      text += haystack_words[static_cast<size_t>(i) % haystack_words.size()];
    }
  }
  const std::vector<std::string> sents = split_sentences(text);
  // (insertion sentence index, needle index), in document order; ties keep needle order.
  std::vector<std::pair<size_t, size_t>> at;
  for (size_t k = 0; k < needles.size(); ++k) {
    const double d = std::clamp(depths.at(k), 0.0, 1.0);
    at.emplace_back(static_cast<size_t>(static_cast<double>(sents.size()) * d), k);
  }
  std::stable_sort(at.begin(), at.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  std::string out;
  size_t next = 0;
  auto append = [&](const std::string& piece) {
    if (piece.empty()) return;
    if (!out.empty()) out += ' ';
    out += piece;
  };
  for (const auto& [pos, k] : at) {
    for (; next < pos && next < sents.size(); ++next) append(sents[next]);
    if (k == 0 && first_needle_offset) *first_needle_offset = out.empty() ? 0 : out.size() + 1;
    append(needles[k]);
  }
  for (; next < sents.size(); ++next) append(sents[next]);
  return out;
}

std::vector<std::string> vocabulary(const std::string& text) {
  std::set<std::string> words;
  std::string cur;
  bool clean = true;  // only letters since the last space
  auto flush = [&] {
    if (clean && cur.size() >= 4) words.insert(cur);
    cur.clear();
    clean = true;
  };
  for (char c : text) {
    if (std::isspace(static_cast<unsigned char>(c))) {
      flush();
    } else if (std::isalpha(static_cast<unsigned char>(c))) {
      cur += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    } else if (c == '.' || c == ',' || c == ';' || c == ':' || c == '!' || c == '?' || c == '"') {
      // trailing punctuation ends the word but does not spoil it
      if (!cur.empty()) {
        flush();
        clean = false;  // anything glued after the punctuation is not a plain word
      }
    } else {
      clean = false;
    }
  }
  flush();
  return std::vector<std::string>(words.begin(), words.end());
}

int token_position(const PromptFormat& format, const std::string& rendered, size_t char_offset) {
  return static_cast<int>(format.encode(rendered.substr(0, std::min(char_offset, rendered.size()))).size());
}

int token_start_at(const PromptFormat& format, const std::vector<int32_t>& ids, size_t char_offset) {
  const Tokenizer& tok = *format.tokenizer;
  // PromptFormat::encode prepends BOS when the tokenizer asks for it; it is no text of `rendered`.
  const int first = !ids.empty() && tok.spec().add_bos && tok.bos_id() >= 0 && ids[0] == tok.bos_id() ? 1 : 0;
  const int n = static_cast<int>(ids.size());
  return largest_fitting(first, n, [&](int k) {
    const std::vector<int32_t> prefix(ids.begin() + first, ids.begin() + k);
    return tok.decode(prefix, true).size() <= char_offset;
  });
}

void set_question_start(EvalSample& s, const PromptFormat& format, const std::string& question) {
  if (s.prompt_ids.empty() || question.empty()) return;
  const size_t at = s.prompt.rfind(question);
  if (at == std::string::npos) return;
  s.question_start = token_start_at(format, s.prompt_ids, at);
}

const std::vector<std::string>& task_names() {
  static const std::vector<std::string> kNames = {
      "passkey", "niah_single", "niah_multikey", "niah_multivalue", "vt", "cwe", "mdqa", "ppl", "longbench"};
  return kNames;
}

std::vector<std::string> expand_task_names(const std::vector<std::string>& names) {
  std::vector<std::string> out;
  auto add = [&](const std::string& n) {
    if (std::find(out.begin(), out.end(), n) == out.end()) out.push_back(n);
  };
  for (const auto& raw : names) {
    // Accept comma-separated lists too ("passkey,niah").
    std::stringstream ss(raw);
    std::string n;
    while (std::getline(ss, n, ',')) {
      if (n.empty()) continue;
      if (n == "niah") {
        for (const char* v : {"niah_single", "niah_multikey", "niah_multivalue"}) add(v);
      } else if (n == "ruler") {
        for (const char* v : {"niah_single", "niah_multikey", "niah_multivalue", "vt", "cwe"}) add(v);
      } else if (std::find(task_names().begin(), task_names().end(), n) != task_names().end()) {
        add(n);
      } else {
        std::string known;
        for (const auto& k : task_names()) known += (known.empty() ? "" : ", ") + k;
        throw UsageError("eval: unknown task '" + n + "' (known: " + known + ", niah, ruler)");
      }
    }
  }
  if (out.empty()) throw UsageError("eval: no task given (use --task NAME)");
  return out;
}

std::unique_ptr<Task> make_task(const std::string& name, const TaskSources& sources) {
  if (name == "passkey") return make_passkey_task();
  if (name == "niah_single") return make_niah_task(NiahVariant::single, sources);
  if (name == "niah_multikey") return make_niah_task(NiahVariant::multikey, sources);
  if (name == "niah_multivalue") return make_niah_task(NiahVariant::multivalue, sources);
  if (name == "vt") return make_vt_task();
  if (name == "cwe") return make_cwe_task(sources);
  if (name == "mdqa") return make_mdqa_task(sources);
  if (name == "ppl") return make_ppl_task(sources);
  if (name == "longbench") return make_longbench_task(sources);
  expand_task_names({name});  // throws the unknown-task error
  throw UsageError("eval: unknown task '" + name + "'");
}

}  // namespace sdtp::eval
