// Scoring functions of the evaluation harness: LongBench, RULER, passkey, and the token-level
// quantities of the ppl task. Each function says which reference line it mirrors.
#include "eval/metrics.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <unordered_map>

#include "sdtp/error.h"

namespace sdtp::eval {
namespace {

// Python's string.punctuation.
bool is_ascii_punct(unsigned char c) {
  static const std::string kPunct = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
  return kPunct.find(static_cast<char>(c)) != std::string::npos;
}

// str.split() separators: ASCII whitespace and the information separators \x1c-\x1f.
bool is_space(unsigned char c) {
  return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f);
}

// \w of Python's re on str: letters, digits, underscore; any non-ASCII byte counts as a letter.
bool is_word_char(unsigned char c) {
  return std::isalnum(c) || c == '_' || c >= 0x80;
}

std::string ascii_lower(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

// str.split() with no argument.
std::vector<std::string> split_ws(std::string_view s) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && is_space(static_cast<unsigned char>(s[i]))) ++i;
    size_t j = i;
    while (j < s.size() && !is_space(static_cast<unsigned char>(s[j]))) ++j;
    if (j > i) out.emplace_back(s.substr(i, j - i));
    i = j;
  }
  return out;
}

std::string join(const std::vector<std::string>& parts, const std::string& sep) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (i) out += sep;
    out += parts[i];
  }
  return out;
}

// str.split(sep) with an explicit one-character separator: keeps empty pieces.
std::vector<std::string> split_char(std::string_view s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t i = 0; i <= s.size(); ++i) {
    if (i == s.size() || s[i] == sep) {
      out.emplace_back(s.substr(start, i - start));
      start = i + 1;
    }
  }
  return out;
}

// re.findall(r"\d+", s) with ASCII digits.
std::vector<std::string> find_numbers(std::string_view s) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < s.size()) {
    if (std::isdigit(static_cast<unsigned char>(s[i]))) {
      size_t j = i;
      while (j < s.size() && std::isdigit(static_cast<unsigned char>(s[j]))) ++j;
      out.emplace_back(s.substr(i, j - i));
      i = j;
    } else {
      ++i;
    }
  }
  return out;
}

// Python str.strip() (whitespace) and lstrip('\n').
std::string_view strip(std::string_view s) {
  size_t a = 0, b = s.size();
  while (a < b && is_space(static_cast<unsigned char>(s[a]))) ++a;
  while (b > a && is_space(static_cast<unsigned char>(s[b - 1]))) --b;
  return s.substr(a, b - a);
}

std::string_view lstrip_newlines(std::string_view s) {
  size_t a = 0;
  while (a < s.size() && s[a] == '\n') ++a;
  return s.substr(a);
}

// UTF-8 to code points; a byte that does not start a valid sequence stands for itself (+0xDC00,
// Python's surrogateescape), so that any byte string compares consistently.
std::vector<uint32_t> code_points(std::string_view s) {
  std::vector<uint32_t> out;
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    int len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    bool ok = len > 0 && i + len <= s.size();
    uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
    for (int k = 1; ok && k < len; ++k) {
      const unsigned char cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) ok = false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if (!ok) {
      out.push_back(0xDC00u + c);
      i += 1;
    } else {
      out.push_back(cp);
      i += static_cast<size_t>(len);
    }
  }
  return out;
}

}  // namespace

// metrics.py normalize_answer: white_space_fix(remove_articles(remove_punc(lower(s)))).
std::string normalize_answer(std::string_view s) {
  std::string lowered = ascii_lower(s);
  std::string no_punc;
  no_punc.reserve(lowered.size());
  for (char c : lowered)
    if (!is_ascii_punct(static_cast<unsigned char>(c))) no_punc += c;
  // re.sub(r"\b(a|an|the)\b", " ", text)
  std::string no_articles;
  no_articles.reserve(no_punc.size());
  size_t i = 0;
  while (i < no_punc.size()) {
    const bool boundary_before = i == 0 || !is_word_char(static_cast<unsigned char>(no_punc[i - 1]));
    bool replaced = false;
    if (boundary_before) {
      for (std::string_view w : {std::string_view("a"), std::string_view("an"), std::string_view("the")}) {
        if (no_punc.compare(i, w.size(), w) != 0) continue;
        const size_t end = i + w.size();
        if (end < no_punc.size() && is_word_char(static_cast<unsigned char>(no_punc[end]))) continue;
        no_articles += ' ';
        i = end;
        replaced = true;
        break;
      }
    }
    if (!replaced) no_articles += no_punc[i++];
  }
  return join(split_ws(no_articles), " ");
}

// metrics.py f1_score.
double token_f1(const std::vector<std::string>& prediction, const std::vector<std::string>& ground_truth) {
  std::map<std::string, int> counts;
  for (const auto& t : ground_truth) ++counts[t];
  int same = 0;
  for (const auto& t : prediction) {
    auto it = counts.find(t);
    if (it != counts.end() && it->second > 0) {
      --it->second;
      ++same;
    }
  }
  if (same == 0) return 0.0;
  const double precision = 1.0 * same / prediction.size();
  const double recall = 1.0 * same / ground_truth.size();
  return 2 * precision * recall / (precision + recall);
}

double qa_f1_score(std::string_view prediction, std::string_view ground_truth) {
  return token_f1(split_ws(normalize_answer(prediction)), split_ws(normalize_answer(ground_truth)));
}

// rouge 1.0.1: Rouge().get_scores([hyp], [ref], avg=True)["rouge-l"]["f"], i.e.
// rouge_l_summary_level with exclusive=True (word sets). LongBench returns 0 when it raises.
double rouge_l_score(std::string_view prediction, std::string_view ground_truth) {
  // [" ".join(_.split()) for _ in text.split(".") if len(_) > 0], then each sentence .split(" ").
  auto sentences = [](std::string_view text) {
    std::vector<std::vector<std::string>> out;
    for (const std::string& piece : split_char(text, '.')) {
      if (piece.empty()) continue;
      out.push_back(split_char(join(split_ws(piece), " "), ' '));
    }
    return out;
  };
  const auto hyp = sentences(prediction);
  const auto ref = sentences(ground_truth);
  if (hyp.empty() || ref.empty()) return 0.0;  // "Collections must contain at least 1 sentence."

  std::set<std::string> ref_words, hyp_words;
  for (const auto& s : ref) ref_words.insert(s.begin(), s.end());
  for (const auto& s : hyp) hyp_words.insert(s.begin(), s.end());
  const double m = static_cast<double>(ref_words.size());
  const double n = static_cast<double>(hyp_words.size());

  // Union over (reference sentence, candidate sentence) of the words of _recon_lcs(ref, cand).
  std::set<std::string> lcs_union;
  for (const auto& x : ref) {
    for (const auto& y : hyp) {
      const size_t nx = x.size(), ny = y.size();
      std::vector<std::vector<int>> table(nx + 1, std::vector<int>(ny + 1, 0));
      for (size_t i = 1; i <= nx; ++i)
        for (size_t j = 1; j <= ny; ++j)
          table[i][j] =
              x[i - 1] == y[j - 1] ? table[i - 1][j - 1] + 1 : std::max(table[i - 1][j], table[i][j - 1]);
      // _recon: equal -> take and go diagonal; table[i-1][j] > table[i][j-1] -> up; else left.
      size_t i = nx, j = ny;
      while (i > 0 && j > 0) {
        if (x[i - 1] == y[j - 1]) {
          lcs_union.insert(x[i - 1]);
          --i;
          --j;
        } else if (table[i - 1][j] > table[i][j - 1]) {
          --i;
        } else {
          --j;
        }
      }
    }
  }
  const double llcs = static_cast<double>(lcs_union.size());
  const double r = llcs / m, p = llcs / n;
  return 2.0 * ((p * r) / (p + r + 1e-8));
}

// metrics.py classification_score, including its quirks: the list is edited while it is iterated
// (so the element after a removed one is not examined) and the similarity fallback is never
// reached (`em_match_list != 0` is always true).
double classification_score(std::string_view prediction, std::string_view ground_truth,
                            const std::vector<std::string>& all_classes) {
  std::vector<std::string> em;
  for (const auto& c : all_classes)
    if (prediction.find(c) != std::string_view::npos) em.push_back(c);
  for (size_t i = 0; i < em.size(); ++i) {
    const std::string term = em[i];
    if (ground_truth.find(term) != std::string_view::npos && term != ground_truth) {
      em.erase(std::find(em.begin(), em.end(), term));  // list.remove: first occurrence
    }
  }
  if (std::find(em.begin(), em.end(), std::string(ground_truth)) != em.end()) return 1.0 / em.size();
  return 0.0;
}

// metrics.py retrieval_score: the paragraph number of "Paragraph N" in the ground truth, against
// every number in the prediction. A ground truth without "Paragraph N" scores 0 (the reference raises).
double retrieval_score(std::string_view prediction, std::string_view ground_truth) {
  static const std::string kPrefix = "Paragraph ";
  std::string id;
  for (size_t pos = ground_truth.find(kPrefix); pos != std::string_view::npos;
       pos = ground_truth.find(kPrefix, pos + 1)) {
    size_t j = pos + kPrefix.size();
    while (j < ground_truth.size() && std::isdigit(static_cast<unsigned char>(ground_truth[j]))) ++j;
    if (j > pos + kPrefix.size()) {
      id = std::string(ground_truth.substr(pos + kPrefix.size(), j - pos - kPrefix.size()));
      break;
    }
  }
  if (id.empty()) return 0.0;
  const auto numbers = find_numbers(prediction);
  if (numbers.empty()) return 0.0;
  const auto right = std::count(numbers.begin(), numbers.end(), id);
  return static_cast<double>(right) / numbers.size();
}

// metrics.py count_score.
double count_score(std::string_view prediction, std::string_view ground_truth) {
  const auto numbers = find_numbers(prediction);
  if (numbers.empty()) return 0.0;
  const auto right = std::count(numbers.begin(), numbers.end(), std::string(ground_truth));
  return static_cast<double>(right) / numbers.size();
}

// difflib.SequenceMatcher(None, a, b).ratio(): Ratcliff/Obershelp matching blocks, with autojunk
// (elements of b that occur more than 1 + len(b)//100 times are "popular" when len(b) >= 200).
double sequence_matcher_ratio(std::string_view a_text, std::string_view b_text) {
  const std::vector<uint32_t> a = code_points(a_text), b = code_points(b_text);
  const int la = static_cast<int>(a.size()), lb = static_cast<int>(b.size());
  if (la + lb == 0) return 1.0;
  std::unordered_map<uint32_t, std::vector<int>> b2j;
  for (int j = 0; j < lb; ++j) b2j[b[j]].push_back(j);
  if (lb >= 200) {
    const size_t ntest = static_cast<size_t>(lb / 100 + 1);
    for (auto it = b2j.begin(); it != b2j.end();)
      it = it->second.size() > ntest ? b2j.erase(it) : std::next(it);
  }
  auto find_longest_match = [&](int alo, int ahi, int blo, int bhi, int& besti, int& bestj, int& bestsize) {
    besti = alo;
    bestj = blo;
    bestsize = 0;
    std::unordered_map<int, int> j2len, newj2len;
    for (int i = alo; i < ahi; ++i) {
      newj2len.clear();
      auto it = b2j.find(a[i]);
      if (it != b2j.end()) {
        for (int j : it->second) {
          if (j < blo) continue;
          if (j >= bhi) break;
          auto prev = j2len.find(j - 1);
          const int k = (prev == j2len.end() ? 0 : prev->second) + 1;
          newj2len[j] = k;
          if (k > bestsize) {
            besti = i - k + 1;
            bestj = j - k + 1;
            bestsize = k;
          }
        }
      }
      std::swap(j2len, newj2len);
    }
    // No junk (isjunk is None), so popular elements are extended over like any other.
    while (besti > alo && bestj > blo && a[besti - 1] == b[bestj - 1]) {
      --besti;
      --bestj;
      ++bestsize;
    }
    while (besti + bestsize < ahi && bestj + bestsize < bhi && a[besti + bestsize] == b[bestj + bestsize])
      ++bestsize;
  };
  long matches = 0;
  struct Range {
    int alo, ahi, blo, bhi;
  };
  std::vector<Range> queue = {{0, la, 0, lb}};
  while (!queue.empty()) {
    const Range r = queue.back();
    queue.pop_back();
    int i, j, k;
    find_longest_match(r.alo, r.ahi, r.blo, r.bhi, i, j, k);
    if (k == 0) continue;
    matches += k;
    if (r.alo < i && r.blo < j) queue.push_back({r.alo, i, r.blo, j});
    if (i + k < r.ahi && j + k < r.bhi) queue.push_back({i + k, r.ahi, j + k, r.bhi});
  }
  return 2.0 * static_cast<double>(matches) / (la + lb);
}

// fuzzywuzzy fuzz.ratio without python-Levenshtein (LongBench's requirements do not install it):
// check_for_equivalence -> 100, check_empty_string -> 0, else utils.intr(100 * ratio), where intr
// is int(round(x)) with Python's round-half-to-even.
int fuzz_ratio(std::string_view a, std::string_view b) {
  if (a == b) return 100;
  if (a.empty() || b.empty()) return 0;
  return static_cast<int>(std::nearbyint(100.0 * sequence_matcher_ratio(a, b)));
}

// metrics.py code_sim_score: the first line of the prediction (after leading newlines) with no
// '`', '#' or '//', against the ground truth.
double code_sim_score(std::string_view prediction, std::string_view ground_truth) {
  std::string line;
  for (const std::string& l : split_char(lstrip_newlines(prediction), '\n')) {
    if (l.find('`') == std::string::npos && l.find('#') == std::string::npos &&
        l.find("//") == std::string::npos) {
      line = l;
      break;
    }
  }
  return fuzz_ratio(line, ground_truth) / 100.0;
}

// LongBench eval.py dataset2metric (Chinese datasets need jieba and are not supported).
std::string longbench_metric_for_dataset(const std::string& dataset) {
  static const std::map<std::string, std::string> kMetric = {
      {"narrativeqa", "qa_f1"},
      {"qasper", "qa_f1"},
      {"multifieldqa_en", "qa_f1"},
      {"hotpotqa", "qa_f1"},
      {"2wikimqa", "qa_f1"},
      {"musique", "qa_f1"},
      {"gov_report", "rouge_l"},
      {"qmsum", "rouge_l"},
      {"multi_news", "rouge_l"},
      {"trec", "classification"},
      {"triviaqa", "qa_f1"},
      {"samsum", "rouge_l"},
      {"passage_retrieval_en", "retrieval"},
      {"passage_count", "count"},
      {"lcc", "code_sim"},
      {"repobench-p", "code_sim"},
  };
  // LongBench-E names the same datasets with an "_e" suffix.
  std::string name = dataset;
  if (name.size() > 2 && name.compare(name.size() - 2, 2, "_e") == 0) name.resize(name.size() - 2);
  auto it = kMetric.find(name);
  return it == kMetric.end() ? "" : it->second;
}

const std::vector<std::string>& longbench_metric_names() {
  static const std::vector<std::string> kNames = {"qa_f1",     "rouge_l", "classification",
                                                  "retrieval", "count",   "code_sim"};
  return kNames;
}

// eval.py scorer() for one prediction.
double longbench_score(const std::string& metric, const std::string& dataset, std::string_view prediction,
                       const std::vector<std::string>& answers, const std::vector<std::string>& all_classes) {
  std::string base = dataset;
  if (base.size() > 2 && base.compare(base.size() - 2, 2, "_e") == 0) base.resize(base.size() - 2);
  std::string pred(prediction);
  if (base == "trec" || base == "triviaqa" || base == "samsum" || base == "lsht") {
    std::string_view p = lstrip_newlines(pred);
    pred = std::string(p.substr(0, p.find('\n')));
  }
  double score = 0.0;
  for (const auto& truth : answers) {
    double s = 0;
    if (metric == "qa_f1")
      s = qa_f1_score(pred, truth);
    else if (metric == "rouge_l")
      s = rouge_l_score(pred, truth);
    else if (metric == "classification")
      s = classification_score(pred, truth, all_classes);
    else if (metric == "retrieval")
      s = retrieval_score(pred, truth);
    else if (metric == "count")
      s = count_score(pred, truth);
    else if (metric == "code_sim")
      s = code_sim_score(pred, truth);
    else
      throw UsageError("longbench: unknown metric '" + metric + "'");
    score = std::max(score, s);
  }
  return score;
}

// RULER postprocess_pred: strip, [\x00-\x1f] -> '\n', strip.
std::string ruler_postprocess(std::string_view prediction) {
  std::string s(strip(prediction));
  for (char& c : s)
    if (static_cast<unsigned char>(c) < 0x20) c = '\n';
  return std::string(strip(s));
}

// RULER string_match_all for one sample: sum(r.lower() in pred.lower()) / len(refs).
double string_match_all(std::string_view prediction, const std::vector<std::string>& references) {
  if (references.empty()) return 0.0;
  const std::string pred = ascii_lower(ruler_postprocess(prediction));
  int found = 0;
  for (const auto& r : references)
    if (pred.find(ascii_lower(r)) != std::string::npos) ++found;
  return static_cast<double>(found) / references.size();
}

double string_match_part(std::string_view prediction, const std::vector<std::string>& references) {
  const std::string pred = ascii_lower(ruler_postprocess(prediction));
  for (const auto& r : references)
    if (pred.find(ascii_lower(r)) != std::string::npos) return 1.0;
  return 0.0;
}

double passkey_score(std::string_view prediction, std::string_view key) {
  const auto numbers = find_numbers(prediction);
  return !numbers.empty() && numbers.front() == key ? 1.0 : 0.0;
}

int argmax(const float* logits, int n_vocab) {
  int best = 0;
  for (int i = 1; i < n_vocab; ++i)
    if (logits[i] > logits[best]) best = i;
  return best;
}

namespace {
double log_sum_exp(const float* logits, int n_vocab) {
  double mx = logits[0];
  for (int i = 1; i < n_vocab; ++i) mx = std::max(mx, static_cast<double>(logits[i]));
  double s = 0;
  for (int i = 0; i < n_vocab; ++i) s += std::exp(static_cast<double>(logits[i]) - mx);
  return mx + std::log(s);
}
}  // namespace

double token_nll(const float* logits, int n_vocab, int32_t target) {
  return log_sum_exp(logits, n_vocab) - static_cast<double>(logits[target]);
}

// KL(P || Q) = sum_i p_i (log p_i - log q_i), with log p_i = x_i - lse(x).
double kl_divergence(const float* reference_logits, const float* logits, int n_vocab) {
  const double lse_p = log_sum_exp(reference_logits, n_vocab);
  const double lse_q = log_sum_exp(logits, n_vocab);
  double kl = 0;
  for (int i = 0; i < n_vocab; ++i) {
    const double lp = reference_logits[i] - lse_p;
    const double lq = logits[i] - lse_q;
    kl += std::exp(lp) * (lp - lq);
  }
  return std::max(kl, 0.0);
}

std::pair<double, double> score_interval95(double p, double p2, double n, bool binary) {
  constexpr double z = 1.959963984540054;  // the 97.5% quantile of the standard normal
  if (!(n > 0)) return {NAN, NAN};
  if (binary) {
    const double denom = 1 + z * z / n;
    const double centre = (p + z * z / (2 * n)) / denom;
    const double half = z * std::sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom;
    return {std::max(0.0, centre - half), std::min(1.0, centre + half)};
  }
  const double var = n > 1 ? std::max(0.0, (p2 - p * p) * n / (n - 1)) : 0.0;
  const double half = z * std::sqrt(var / n);
  return {std::max(0.0, p - half), std::min(1.0, p + half)};
}

}  // namespace sdtp::eval
