// The tasks of the evaluation harness behind one small interface: a task turns (seed, target
// length, sample count) into samples — prompt text and ids, expected answers, metadata such as the
// needle depth — and scores a generated answer against a sample. Generators are deterministic: the
// same seed, length, tokenizer and sources give the same prompts on every platform (our own
// mt19937_64-based draws, no std:: distributions).
//
//   passkey          Mohtashami & Jaggi 2023 (landmark attention) passkey retrieval
//   niah_single      RULER niah_single_2: one word key, one 7-digit value, essay-style haystack
//   niah_multikey    RULER niah_multikey_1: four keys, one asked for
//   niah_multivalue  RULER niah_multivalue: one key with four values, all must be returned
//   vt               RULER variable tracking: one chain of four hops in repeated noise, one-shot
//   cwe              RULER common words extraction: the ten most frequent words of a numbered list
//   mdqa             multi-document QA: numbered haystack documents, each with one place's access code
//   ppl              perplexity of the last tokens of windows of a text, with dense agreement
//   longbench        LongBench-format jsonl, scored with LongBench's metrics
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "sdtp/tokenizer.h"

namespace sdtp::eval {

// Renders prompts the way the model expects them: the task text as one user message of the chat
// template (when the model has one and chat is on), then the task's answer prefix, which opens the
// assistant's answer as RULER does.
struct PromptFormat {
  const Tokenizer* tokenizer = nullptr;
  bool chat = true;

  bool uses_chat() const;
  std::string render(const std::string& user_text, const std::string& answer_prefix) const;
  std::vector<int32_t> encode(const std::string& rendered) const;
};

struct EvalSample {
  enum class Kind { generate, perplexity };
  std::string task;
  int length = 0;  // target length in tokens: prompt + max_new_tokens (ppl: window)
  int index = 0;
  Kind kind = Kind::generate;
  std::string prompt;               // rendered text (generate); empty for ppl
  std::vector<int32_t> prompt_ids;  // generate: the prompt; ppl: the whole window
  int max_new_tokens = 0;
  int n_scored = 0;  // ppl: tokens at the end of the window that are predicted and scored
  std::vector<std::string> expected;
  std::vector<std::string> all_classes;  // longbench classification
  std::string metric;
  std::string dataset;          // longbench
  double depth = -1;            // requested needle depth in [0, 1]
  double needle_position = -1;  // first needle's token index / prompt tokens
  // Token index in prompt_ids where the question part begins (the query after the context, up to
  // the answer prefix); -1 when the task has none (ppl). A query-aware run prefills
  // prompt_ids[0, question_start) first, then the rest: the same tokens as one prefill.
  int question_start = -1;
  std::string skip_reason;  // not empty: the sample cannot be run
};

// Where the text-based tasks get their inputs; read once by the harness.
struct TaskSources {
  std::string haystack_text;  // niah / cwe filler (already cleaned, see load_haystack)
  std::string haystack_name;  // for messages
  std::string longbench_path;
  std::string longbench_metric;  // empty: by dataset (LongBench's dataset2metric)
  std::string ppl_text;
  std::string ppl_name;
  int ppl_tail = 128;
};

class Task {
 public:
  virtual ~Task() = default;
  virtual std::string name() const = 0;
  // Samples for one target length; may return fewer than n_samples (a short file).
  virtual std::vector<EvalSample> generate(uint64_t seed, int target_length, int n_samples,
                                           const PromptFormat& format) const = 0;
  // Score in [0, 1] of a generated answer (not used for ppl).
  virtual double score(const std::string& answer, const EvalSample& sample) const = 0;
};

// All task names (after alias expansion), in a fixed order.
const std::vector<std::string>& task_names();
// "niah" -> its three variants; "ruler" -> niah variants, vt, cwe. Throws UsageError on unknown.
std::vector<std::string> expand_task_names(const std::vector<std::string>& names);
// Throws UsageError for an unknown name, FormatError for bad task inputs.
std::unique_ptr<Task> make_task(const std::string& name, const TaskSources& sources);

// --- building blocks, exposed for tests ---

// A deterministic random source (mt19937_64 seeded from seed and a salt) with portable draws.
class Rng {
 public:
  Rng(uint64_t seed, uint64_t salt);
  uint64_t next();
  uint64_t below(uint64_t n);             // uniform in [0, n), n > 0, by rejection
  int64_t range(int64_t lo, int64_t hi);  // uniform in [lo, hi]
  template <class T>
  void shuffle(std::vector<T>& v) {
    for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[below(i)]);
  }

 private:
  std::mt19937_64 engine_;
};

uint64_t mix_seed(uint64_t seed, const std::string& task, int length, int index);

// The largest n in [lo, hi] with fits(n) true, assuming fits is monotone (true then false); lo - 1
// when none fits.
int largest_fitting(int lo, int hi, const std::function<bool(int)>& fits);

// Cleans a haystack file: fortune-file separators ("%" lines) dropped, whitespace collapsed.
std::string clean_haystack(const std::string& raw);
// The default haystack: the Debian fortunes files (fortunes-min), concatenated and cleaned. Throws
// UsageError naming the folder when they are missing.
std::string default_haystack_text(std::string* name);

// Sentences of a text (split after . ! ? followed by a space).
std::vector<std::string> split_sentences(const std::string& text);

// Inserts needles into the first n_words words of the haystack (repeated as needed) at sentence
// boundaries: needle i goes after sentence floor(n_sentences * depths[i]). Returns the context and
// the character offset of the first needle (in insertion order of depths[0]).
std::string insert_needles(const std::vector<std::string>& haystack_words, int n_words,
                           const std::vector<std::string>& needles, const std::vector<double>& depths,
                           size_t* first_needle_offset);

// Distinct lower-case alphabetic words of at least 4 letters of a text, sorted (cwe's vocabulary).
std::vector<std::string> vocabulary(const std::string& text);

// Token index of the character offset `char_offset` of `rendered` (tokens of the prefix).
int token_position(const PromptFormat& format, const std::string& rendered, size_t char_offset);

// The first token of `ids` (format.encode(rendered)) whose text reaches past `char_offset`: the
// largest k with the text of ids[0, k) no longer than char_offset bytes (special tokens counted as
// written, the BOS encode() prepends as no text), found by binary search. A token that straddles
// the offset belongs to the part after it. Unlike token_position, the ids are not re-encoded.
int token_start_at(const PromptFormat& format, const std::vector<int32_t>& ids, size_t char_offset);

// Sets s.question_start to the token where the last occurrence of `question` in s.prompt begins;
// leaves -1 when the prompt is empty or does not contain it.
void set_question_start(EvalSample& s, const PromptFormat& format, const std::string& question);

}  // namespace sdtp::eval
