// The synthetic tasks: passkey retrieval (Mohtashami & Jaggi 2023) and RULER's needle-in-a-haystack
// (niah_single_2, niah_multikey_1, niah_multivalue), variable tracking (vt) and common words
// extraction (cwe), with RULER's templates, needles and answer prefixes. Every prompt is grown to
// the target length in tokens of the model's own tokenizer (prompt + answer budget <= length).
#include <algorithm>
#include <cmath>
#include <set>

#include "eval/metrics.h"
#include "eval/task_impls.h"
#include "sdtp/error.h"

namespace sdtp::eval {

EvalSample new_sample(const std::string& task, int length, int index, int max_new_tokens, const std::string& metric) {
  EvalSample s;
  s.task = task;
  s.length = length;
  s.index = index;
  s.max_new_tokens = max_new_tokens;
  s.metric = metric;
  return s;
}

double sample_depth(int index, int n) {
  return n <= 1 ? 0.5 : static_cast<double>(index) / (n - 1);
}

namespace {

// Word lists for niah keys ("adjective-noun", as RULER draws them from wonderwords).
const std::vector<std::string>& key_adjectives() {
  static const std::vector<std::string> k = {
      "abundant", "agreeable", "ancient", "bitter",  "brave",   "bright",   "broken",  "calm",     "careful",
      "cheerful", "clever",    "crooked", "curious", "damp",    "delicate", "distant", "dusty",    "eager",
      "elegant",  "empty",     "fancy",   "fierce",  "fragile", "friendly", "gentle",  "gigantic", "glossy",
      "graceful", "grumpy",    "hollow",  "humble",  "icy",     "jolly",    "lively",  "lonely",   "loud",
      "lucky",    "magnetic",  "massive", "mellow",  "misty",   "modern",   "narrow",  "nervous",  "noisy",
      "obedient", "orange",    "patient", "plain",   "polite",  "proud",    "purple",  "quiet",    "rapid",
      "rare",     "rough",     "rusty",   "scarlet", "shallow", "shiny",    "silent",  "silky",    "sleepy",
      "slippery", "smooth",    "sour",    "spicy",   "steady",  "sticky",   "stormy",  "sturdy",   "sweet",
      "swift",    "tame",      "tender",  "thirsty", "tidy",    "tiny",     "upbeat",  "vast",     "velvet",
      "vivid",    "wandering", "warm",    "wicked",  "wise",    "wooden",   "yellow",  "young",    "zealous"};
  return k;
}

const std::vector<std::string>& key_nouns() {
  static const std::vector<std::string> k = {
      "anchor",   "apple",   "arrow",    "badge",   "balloon", "basket",  "beacon",  "bicycle",  "blanket",
      "bottle",   "bridge",  "bucket",   "cabinet", "camera",  "candle",  "canyon",  "carpet",   "castle",
      "cellar",   "chimney", "circus",   "cloud",   "compass", "cottage", "crayon",  "crystal",  "curtain",
      "dolphin",  "dragon",  "drum",     "engine",  "falcon",  "feather", "fiddle",  "forest",   "fountain",
      "garden",   "glacier", "goblet",   "hammer",  "harbor",  "helmet",  "island",  "jacket",   "kettle",
      "ladder",   "lantern", "lemon",    "lizard",  "magnet",  "meadow",  "mirror",  "mountain", "needle",
      "notebook", "orchard", "oyster",   "paddle",  "parrot",  "pebble",  "pencil",  "piano",    "pillow",
      "planet",   "pocket",  "puzzle",   "quilt",   "rabbit",  "ribbon",  "river",   "rocket",   "saddle",
      "scarf",    "shovel",  "spider",   "spoon",   "statue",  "teapot",  "thimble", "tiger",    "tractor",
      "trumpet",  "tunnel",  "umbrella", "valley",  "violin",  "wagon",   "walrus",  "window",   "zebra"};
  return k;
}

std::string random_key(Rng& rng) {
  return key_adjectives()[rng.below(key_adjectives().size())] + "-" +
         key_nouns()[rng.below(key_nouns().size())];
}

std::string random_letters(Rng& rng, int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s += static_cast<char>('A' + rng.below(26));
  return s;
}

// The words of a haystack text, split at spaces (niah and mdqa fill with them).
std::vector<std::string> split_words(const std::string& text) {
  std::vector<std::string> words;
  std::string w;
  for (char c : text) {
    if (c == ' ') {
      if (!w.empty()) words.push_back(w);
      w.clear();
    } else {
      w += c;
    }
  }
  if (!w.empty()) words.push_back(w);
  return words;
}

// k distinct values of range(n), in draw order (random.sample).
std::vector<int> sample_indices(Rng& rng, int n, int k) {
  std::vector<int> out;
  std::set<int> seen;
  while (static_cast<int>(out.size()) < k && static_cast<int>(seen.size()) < n) {
    const int v = static_cast<int>(rng.below(static_cast<uint64_t>(n)));
    if (seen.insert(v).second) out.push_back(v);
  }
  return out;
}

// The largest unit count whose prompt fits the budget, searched near an estimate from a probe.
// Returns 0 when even one unit does not fit.
int fit_units(const std::function<int(int)>& n_tokens, int budget, int max_units) {
  auto fits = [&](int n) { return n_tokens(n) <= budget; };
  if (max_units < 1 || !fits(1)) return 0;
  const int probe = std::min(max_units, 1 + 32);
  const int t1 = n_tokens(1), tp = n_tokens(probe);
  const double per_unit = probe > 1 ? std::max(0.5, static_cast<double>(tp - t1) / (probe - 1)) : 1.0;
  const int est = 1 + static_cast<int>((budget - t1) / per_unit);
  int lo = std::clamp(static_cast<int>(est * 0.9), 1, max_units);
  int hi = std::clamp(static_cast<int>(est * 1.1) + 2, lo, max_units);
  if (!fits(lo)) {
    hi = lo - 1;
    lo = 1;
  } else {
    while (hi < max_units && fits(hi)) {
      lo = hi;
      hi = std::min(max_units, hi * 2);
    }
  }
  return largest_fitting(lo, hi, fits);
}

// Fills a sample from a builder of rendered prompts by unit count; sets skip_reason when the
// length is too short for the template.
// min_units: fewer units than this make no valid sample (e.g. fewer noise lines than chain links).
template <class Build>
void fit_sample(EvalSample& s, const PromptFormat& fmt, int max_units, const Build& build,
                int min_units = 1) {
  const int budget = s.length - s.max_new_tokens;
  const int n =
      fit_units([&](int k) { return static_cast<int>(fmt.encode(build(k)).size()); }, budget, max_units);
  if (n < min_units) {
    s.skip_reason = "target length " + std::to_string(s.length) + " is too short for the " + s.task +
                    " template plus " + std::to_string(s.max_new_tokens) + " answer tokens";
    return;
  }
  s.prompt = build(n);
  s.prompt_ids = fmt.encode(s.prompt);
}

void set_needle_position(EvalSample& s, const PromptFormat& fmt, const std::string& needle) {
  if (s.prompt_ids.empty()) return;
  const size_t at = s.prompt.find(needle);
  if (at == std::string::npos) return;
  s.needle_position = static_cast<double>(token_position(fmt, s.prompt, at)) / s.prompt_ids.size();
}

// --- passkey -------------------------------------------------------------------------------

// Mohtashami & Jaggi 2023 (landmark attention, run_test.py): task description, garbage, the
// information line at the chosen depth, more garbage, "What is the pass key? The pass key is".
class PasskeyTask : public Task {
 public:
  std::string name() const override { return "passkey"; }
  std::vector<EvalSample> generate(uint64_t seed, int length, int n, const PromptFormat& fmt) const override {
    static const std::string kTask =
        "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. I "
        "will quiz "
        "you about the important information there.";
    static const std::string kGarbage =
        "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";
    std::vector<EvalSample> out;
    for (int i = 0; i < n; ++i) {
      Rng rng(mix_seed(seed, name(), length, i), 0);
      EvalSample s = new_sample(name(), length, i, 16, "passkey");
      s.depth = sample_depth(i, n);
      const std::string key = std::to_string(rng.range(10000, 99999));
      const std::string info = "The pass key is " + key + ". Remember it. " + key + " is the pass key.";
      s.expected = {key};
      auto repeat = [&](int k) {
        std::string g;
        for (int j = 0; j < k; ++j) g += (j ? " " : "") + kGarbage;
        return g;
      };
      auto build = [&](int reps) {
        const int prefix = static_cast<int>(std::lround(s.depth * reps));
        const std::string text = kTask + "\n" + repeat(prefix) + "\n" + info + "\n" + repeat(reps - prefix) +
                                 "\nWhat is the pass key?";
        return fmt.render(text, "The pass key is");
      };
      fit_sample(s, fmt, 4 * length, build);
      set_needle_position(s, fmt, info);
      set_question_start(s, fmt, "What is the pass key?");
      out.push_back(std::move(s));
    }
    return out;
  }
  double score(const std::string& answer, const EvalSample& s) const override {
    return passkey_score(answer, s.expected.at(0));
  }
};

// --- niah ----------------------------------------------------------------------------------

// RULER synthetic.yaml: niah_single_2 (essay haystack, word key, number value), niah_multikey_1
// (4 keys, 1 queried), niah_multivalue (1 key, 4 values). Needle: "One of the special magic numbers
// for {key} is: {value}."; the queried needle sits at the sample's depth, the others at depths
// drawn from RULER's 40-point grid.
class NiahTask : public Task {
 public:
  NiahTask(NiahVariant v, const TaskSources& src) : variant_(v) {
    if (src.haystack_text.empty()) throw UsageError("niah: the haystack text is empty");
    words_ = split_words(src.haystack_text);
    if (words_.empty()) throw UsageError("niah: the haystack '" + src.haystack_name + "' has no words");
  }
  std::string name() const override {
    return variant_ == NiahVariant::single     ? "niah_single"
           : variant_ == NiahVariant::multikey ? "niah_multikey"
                                               : "niah_multivalue";
  }
  std::vector<EvalSample> generate(uint64_t seed, int length, int n, const PromptFormat& fmt) const override {
    const int n_keys = variant_ == NiahVariant::multikey ? 4 : 1;
    const int n_values = variant_ == NiahVariant::multivalue ? 4 : 1;
    std::vector<EvalSample> out;
    for (int i = 0; i < n; ++i) {
      Rng rng(mix_seed(seed, name(), length, i), 0);
      // RULER allows 128 tokens; one 7-digit value needs about 10, four about 40.
      EvalSample s = new_sample(name(), length, i, n_values > 1 ? 64 : 32, "string_match_all");
      s.depth = sample_depth(i, n);
      std::vector<std::string> keys;
      while (static_cast<int>(keys.size()) < n_keys) {
        std::string k = random_key(rng);
        if (std::find(keys.begin(), keys.end(), k) == keys.end()) keys.push_back(k);
      }
      std::vector<std::string> needles;
      std::vector<std::string> values_of_key0;
      std::set<int64_t> used;
      for (const auto& k : keys) {
        for (int v = 0; v < n_values; ++v) {
          int64_t value;
          do value = rng.range(1000000, 9999999);
          while (!used.insert(value).second);
          needles.push_back("One of the special magic numbers for " + k + " is: " + std::to_string(value) +
                            ".");
          if (k == keys[0]) values_of_key0.push_back(std::to_string(value));
        }
      }
      // Depths: needle 0 (queried key, first value) at the sample depth; the rest from the grid
      // round(linspace(0, 100, 40)) / 100, distinct.
      std::vector<double> depths = {s.depth};
      for (int g : sample_indices(rng, 40, static_cast<int>(needles.size()) - 1))
        depths.push_back(std::round(g * 100.0 / 39.0) / 100.0);
      s.expected = values_of_key0;
      const bool plural = n_values > 1;  // num_needle_q * num_needle_v > 1
      const std::string& query = keys[0];
      const std::string head = plural ? "Some special magic numbers are hidden within the following text. "
                                        "Make sure to memorize it. I will "
                                        "quiz you about the numbers afterwards.\n"
                                      : "A special magic number is hidden within the following text. Make "
                                        "sure to memorize it. I will quiz "
                                        "you about the number afterwards.\n";
      const std::string question =
          plural
              ? "\nWhat are all the special magic numbers for " + query + " mentioned in the provided text?"
              : "\nWhat is the special magic number for " + query + " mentioned in the provided text?";
      const std::string prefix =
          plural ? "The special magic numbers for " + query + " mentioned in the provided text are"
                 : "The special magic number for " + query + " mentioned in the provided text is";
      auto build = [&](int n_words) {
        return fmt.render(head + insert_needles(words_, n_words, needles, depths, nullptr) + question,
                          prefix);
      };
      fit_sample(s, fmt, 4 * length, build);
      set_needle_position(s, fmt, needles[0]);
      set_question_start(s, fmt, question.substr(1));  // without its leading newline
      out.push_back(std::move(s));
    }
    return out;
  }
  double score(const std::string& answer, const EvalSample& s) const override {
    return string_match_all(answer, s.expected);
  }

 private:
  NiahVariant variant_;
  std::vector<std::string> words_;
};

// --- vt ------------------------------------------------------------------------------------

// RULER variable_tracking.py with num_chains=1, num_hops=4 over the noise haystack, with one
// in-context example (5 noise lines, 3-letter variables) before the question, as RULER adds.
class VtTask : public Task {
 public:
  std::string name() const override { return "vt"; }

  static std::string context(const std::vector<std::string>& chain, int n_noise, Rng rng) {
    static const std::string kNoise =
        "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";
    std::vector<std::string> lines(static_cast<size_t>(n_noise), kNoise);
    std::vector<int> pos = sample_indices(rng, n_noise, static_cast<int>(chain.size()));
    std::sort(pos.begin(), pos.end());
    for (size_t j = 0; j < chain.size() && j < pos.size(); ++j)
      lines.insert(lines.begin() + pos[j] + j, chain[j]);
    std::string out;
    for (size_t j = 0; j < lines.size(); ++j) out += (j ? "\n" : "") + lines[j];
    return out;
  }
  static std::vector<std::string> make_chain(const std::vector<std::string>& vars, const std::string& value) {
    std::vector<std::string> chain = {"VAR " + vars[0] + " = " + value};
    for (size_t j = 1; j < vars.size(); ++j)
      chain.push_back("VAR " + vars[j] + " = VAR " + vars[j - 1] + " ");
    return chain;
  }
  static std::string question(const std::string& ctx, const std::string& value) {
    return "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n" + ctx +
           "\nQuestion: Find all variables that are assigned the value " + value + " in the text above.";
  }
  static std::string answer_prefix(const std::string& value) {
    return "Answer: According to the chain(s) of variable assignment in the text above, 5 variables are "
           "assigned "
           "the value " +
           value + ", they are:";
  }
  static std::vector<std::string> distinct_vars(Rng& rng, int n, int letters) {
    std::vector<std::string> v;
    while (static_cast<int>(v.size()) < n) {
      std::string s = random_letters(rng, letters);
      if (std::find(v.begin(), v.end(), s) == v.end()) v.push_back(s);
    }
    return v;
  }

  std::vector<EvalSample> generate(uint64_t seed, int length, int n, const PromptFormat& fmt) const override {
    std::vector<EvalSample> out;
    for (int i = 0; i < n; ++i) {
      const uint64_t sseed = mix_seed(seed, name(), length, i);
      Rng rng(sseed, 0);
      EvalSample s = new_sample(name(), length, i, 30, "string_match_all");
      const std::vector<std::string> icl_vars = distinct_vars(rng, 5, 3);
      const std::string icl_value = std::to_string(rng.range(10000, 99999));
      const std::vector<std::string> vars = distinct_vars(rng, 5, 5);
      const std::string value = std::to_string(rng.range(10000, 99999));
      s.expected = vars;
      std::string icl = question(context(make_chain(icl_vars, icl_value), 5, Rng(sseed, 1)), icl_value) +
                        " " + answer_prefix(icl_value) + " ";
      for (size_t j = 0; j < icl_vars.size(); ++j) icl += (j ? " " : "") + icl_vars[j];
      const std::vector<std::string> chain = make_chain(vars, value);
      auto build = [&](int n_noise) {
        return fmt.render(icl + "\n\n" + question(context(chain, n_noise, Rng(sseed, 2)), value),
                          answer_prefix(value));
      };
      fit_sample(s, fmt, 4 * length, build, static_cast<int>(chain.size()));
      // The last "Question:" is the sample's (the in-context example has its own before it).
      set_question_start(s, fmt, "Question: Find all variables that are assigned the value " + value);
      out.push_back(std::move(s));
    }
    return out;
  }
  double score(const std::string& answer, const EvalSample& s) const override {
    return string_match_all(answer, s.expected);
  }
};

// --- cwe -----------------------------------------------------------------------------------

// RULER common_words_extraction.py: below 4096 tokens the 10 common words appear 6 times and the
// others once (one example of 20 words, 3/1); from 4096 on, 30 and 3 times (example: 40 words, 10/3).
// Words come from the haystack's vocabulary (RULER draws them from wonderwords).
class CweTask : public Task {
 public:
  explicit CweTask(const TaskSources& src) : words_(vocabulary(src.haystack_text)) {
    if (words_.size() < 60)
      throw UsageError("cwe: the haystack '" + src.haystack_name + "' has only " +
                       std::to_string(words_.size()) +
                       " distinct words of 4+ letters; at least 60 are needed");
  }
  std::string name() const override { return "cwe"; }

  // "1. w 2. w ..." of `count` words drawn from the vocabulary: 10 common x fc, the rest x fu.
  std::pair<std::string, std::vector<std::string>> example(Rng rng, int count, int fc, int fu) const {
    std::vector<std::string> pool = words_;
    count = std::min<int>(count, static_cast<int>(pool.size()));
    for (int j = 0; j < count; ++j)
      std::swap(pool[j], pool[j + rng.below(pool.size() - j)]);  // partial shuffle
    std::vector<std::string> common(pool.begin(), pool.begin() + std::min(10, count));
    std::vector<std::string> list;
    for (int r = 0; r < fc; ++r) list.insert(list.end(), common.begin(), common.end());
    for (int j = static_cast<int>(common.size()); j < count; ++j)
      for (int r = 0; r < fu; ++r) list.push_back(pool[j]);
    rng.shuffle(list);
    std::string ctx;
    for (size_t j = 0; j < list.size(); ++j) ctx += (j ? " " : "") + std::to_string(j + 1) + ". " + list[j];
    return {ctx, common};
  }
  static std::string question(const std::string& ctx) {
    return "Below is a numbered list of words. In these words, some appear more often than others. Memorize "
           "the "
           "ones that appear most often.\n" +
           ctx + "\nQuestion: What are the 10 most common words in the above list?";
  }

  std::vector<EvalSample> generate(uint64_t seed, int length, int n, const PromptFormat& fmt) const override {
    static const std::string kPrefix = "Answer: The top 10 words that appear most often in the list are:";
    const bool short_ctx = length < 4096;
    const int fc = short_ctx ? 6 : 30, fu = short_ctx ? 1 : 3;
    std::vector<EvalSample> out;
    for (int i = 0; i < n; ++i) {
      const uint64_t sseed = mix_seed(seed, name(), length, i);
      EvalSample s = new_sample(name(), length, i, 120, "string_match_all");
      auto [ex_ctx, ex_common] =
          example(Rng(sseed, 3), short_ctx ? 20 : 40, short_ctx ? 3 : 10, short_ctx ? 1 : 3);
      std::string shot = question(ex_ctx) + " " + kPrefix;
      for (size_t j = 0; j < ex_common.size(); ++j) shot += " " + std::to_string(j + 1) + ". " + ex_common[j];
      auto build = [&](int n_words) {
        return fmt.render(shot + "\n" + question(example(Rng(sseed, 4), n_words, fc, fu).first), kPrefix);
      };
      fit_sample(s, fmt, static_cast<int>(words_.size()), build, 11);
      if (s.skip_reason.empty()) s.expected = example(Rng(sseed, 4), 10, fc, fu).second;
      // The last occurrence: the example's question comes first.
      set_question_start(s, fmt, "Question: What are the 10 most common words in the above list?");
      out.push_back(std::move(s));
    }
    return out;
  }
  double score(const std::string& answer, const EvalSample& s) const override {
    return string_match_all(answer, s.expected);
  }

 private:
  std::vector<std::string> words_;
};

// --- mdqa ----------------------------------------------------------------------------------

// Multi-document QA, RULER-style but synthetic (no QA data set can be had here): numbered
// documents of haystack text; the one at the sample's depth holds a generated fact "The access
// code of {place} is {value}.", three others (drawn at random) the same kind of fact about other
// places, as niah_multikey's distractors; the question asks for the first place's code. Exact
// match of the value.
class MdqaTask : public Task {
 public:
  explicit MdqaTask(const TaskSources& src) : words_(split_words(src.haystack_text)) {
    if (words_.size() < 64) throw UsageError("mdqa: the haystack '" + src.haystack_name + "' has too few words");
  }
  std::string name() const override { return "mdqa"; }
  std::vector<EvalSample> generate(uint64_t seed, int length, int n, const PromptFormat& fmt) const override {
    constexpr int kWordsPerDoc = 60;
    std::vector<EvalSample> out;
    for (int i = 0; i < n; ++i) {
      Rng rng(mix_seed(seed, name(), length, i), 0);
      EvalSample s = new_sample(name(), length, i, 24, "string_match_all");
      s.depth = sample_depth(i, n);
      // Enough distinct places and values for the most documents a prompt can hold.
      const int max_docs = std::max(2, 4 * length / kWordsPerDoc);
      std::vector<std::string> places, values;
      std::set<std::string> seen;
      while (static_cast<int>(places.size()) < 4) {
        std::string p = random_key(rng);
        if (!seen.insert(p).second) continue;
        places.push_back(p);
        values.push_back(std::to_string(rng.range(100, 999)) + "-" + std::to_string(rng.range(1000, 9999)));
      }
      const size_t start = static_cast<size_t>(rng.below(words_.size()));
      auto doc_text = [&](int d) {
        std::string t;
        for (int k = 0; k < kWordsPerDoc; ++k) t += (k ? " " : "") + words_[(start + size_t(d) * kWordsPerDoc + k) % words_.size()];
        return t;
      };
      // Place 0 is asked about; its fact goes into the document at the depth, places 1-3's into
      // three other documents.
      constexpr int kFacts = 4;
      const uint64_t draw = rng.next();
      std::vector<int> fact_of;  // per document: the place whose fact it holds, or -1
      auto build = [&](int docs) {
        fact_of.assign(static_cast<size_t>(docs), -1);
        const int gold = std::clamp(static_cast<int>(std::lround(s.depth * (docs - 1))), 0, docs - 1);
        fact_of[gold] = 0;
        Rng pick(draw, static_cast<uint64_t>(docs));
        for (int f = 1; f < std::min(kFacts, docs); ++f) {
          int d;
          do d = static_cast<int>(pick.below(static_cast<uint64_t>(docs)));
          while (fact_of[d] >= 0);
          fact_of[d] = f;
        }
        std::string text =
            "Answer the question using the documents below. Some of them give the access code of a place.\n\n";
        for (int d = 0; d < docs; ++d) {
          const std::string words = doc_text(d);
          if (fact_of[d] < 0) {
            text += "Document [" + std::to_string(d + 1) + "] " + words + "\n\n";
            continue;
          }
          const size_t sp = words.find(' ', words.size() / 2);  // the fact in the middle of its document
          const std::string fact = " The access code of " + places[fact_of[d]] + " is " + values[fact_of[d]] + ". ";
          text += "Document [" + std::to_string(d + 1) + "] " + words.substr(0, sp) + fact +
                  (sp == std::string::npos ? "" : words.substr(sp + 1)) + "\n\n";
        }
        text += "Question: What is the access code of " + places[0] + "?";
        return fmt.render(text, "Answer: The access code of " + places[0] + " is");
      };
      fit_sample(s, fmt, max_docs, build, kFacts);
      if (s.skip_reason.empty()) {
        s.expected = {values[0]};
        set_needle_position(s, fmt, " The access code of " + places[0] + " is " + values[0]);
        set_question_start(s, fmt, "Question: What is the access code of " + places[0] + "?");
      }
      out.push_back(std::move(s));
    }
    return out;
  }
  double score(const std::string& answer, const EvalSample& s) const override {
    return string_match_all(answer, s.expected);
  }

 private:
  std::vector<std::string> words_;
};

}  // namespace

std::unique_ptr<Task> make_passkey_task() {
  return std::make_unique<PasskeyTask>();
}
std::unique_ptr<Task> make_niah_task(NiahVariant v, const TaskSources& s) {
  return std::make_unique<NiahTask>(v, s);
}
std::unique_ptr<Task> make_vt_task() {
  return std::make_unique<VtTask>();
}
std::unique_ptr<Task> make_cwe_task(const TaskSources& s) {
  return std::make_unique<CweTask>(s);
}
std::unique_ptr<Task> make_mdqa_task(const TaskSources& s) {
  return std::make_unique<MdqaTask>(s);
}

}  // namespace sdtp::eval
