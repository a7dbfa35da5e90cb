// The task generators (same seed -> same prompts; prompts fill the target length in tokens; the
// needle sits at the requested depth, checked by token position and character offset) and the
// LongBench jsonl loader's error paths. Uses the tiny Qwen2 tokenizer fixture (ChatML template).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "eval/longbench.h"
#include "eval/task_impls.h"
#include "eval/tasks.h"
#include "sdtp/error.h"
#include "testing/fixtures.h"

namespace sdtp::eval {
namespace {

const Tokenizer& tiny_tokenizer() {
  static const Tokenizer tok(Tokenizer::spec_from_hf_folder(testing::fixture_path("tokenizer/qwen2_tiny")));
  return tok;
}

// 200 numbered sentences, each with a made-up word of two or three syllables (cwe's vocabulary);
// needles land between the sentences.
std::string test_haystack() {
  const char* syl[] = {"ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "pe", "du"};
  std::string s;
  for (int i = 0; i < 200; ++i) {
    std::string word = std::string(syl[i % 10]) + syl[(i / 10) % 10] + (i >= 100 ? syl[(i * 7) % 10] : "");
    s += (i ? " " : "") + std::string("Line ") + std::to_string(i) + " tells of the " + word +
         " near the river.";
  }
  return s;
}

TaskSources sources() {
  TaskSources src;
  src.haystack_text = test_haystack();
  src.haystack_name = "test haystack";
  src.ppl_text = test_haystack();
  src.ppl_name = "test text";
  src.ppl_tail = 16;
  return src;
}

PromptFormat chat_format() {
  return PromptFormat{&tiny_tokenizer(), true};
}

int n_tokens(const std::string& text) {
  return static_cast<int>(tiny_tokenizer().encode(text, true, true).size());
}

TEST(EvalTasks, ChatTemplateIsUsedAndAnswerPrefixOpensTheAnswer) {
  const PromptFormat f = chat_format();
  ASSERT_TRUE(f.uses_chat());
  const std::string r = f.render("question", "The answer is");
  EXPECT_NE(r.find("<|im_start|>user\nquestion<|im_end|>"), std::string::npos) << r;
  EXPECT_EQ(r.substr(r.size() - std::string("<|im_start|>assistant\nThe answer is").size()),
            "<|im_start|>assistant\nThe answer is");
  const PromptFormat plain{&tiny_tokenizer(), false};
  EXPECT_EQ(plain.render("question", "The answer is"), "question The answer is");
}

TEST(EvalTasks, RegistryExpandsAliasesAndRejectsUnknownNames) {
  EXPECT_EQ(expand_task_names({"niah"}),
            (std::vector<std::string>{"niah_single", "niah_multikey", "niah_multivalue"}));
  EXPECT_EQ(expand_task_names({"passkey,vt", "passkey"}), (std::vector<std::string>{"passkey", "vt"}));
  EXPECT_THROW(expand_task_names({"passkey", "needle"}), UsageError);
  try {
    make_task("nope", sources());
    FAIL() << "no error";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("unknown task 'nope'"), std::string::npos) << e.what();
  }
}

TEST(EvalTasks, GeneratorsAreDeterministicAndFillTheTargetLength) {
  for (const std::string name : {"passkey", "niah_single", "niah_multikey", "niah_multivalue", "vt", "cwe"}) {
    SCOPED_TRACE(name);
    auto task = make_task(name, sources());
    const auto a = task->generate(7, 2048, 3, chat_format());
    const auto b = task->generate(7, 2048, 3, chat_format());
    const auto c = task->generate(8, 2048, 3, chat_format());
    ASSERT_EQ(a.size(), 3u);
    for (size_t i = 0; i < a.size(); ++i) {
      ASSERT_TRUE(a[i].skip_reason.empty()) << a[i].skip_reason;
      EXPECT_EQ(a[i].prompt, b[i].prompt);
      EXPECT_EQ(a[i].prompt_ids, b[i].prompt_ids);
      EXPECT_EQ(a[i].expected, b[i].expected);
      EXPECT_NE(a[i].expected, c[i].expected) << "another seed should draw other answers";
      // prompt + answer budget fits, and not by much: one more unit of filler would not fit
      const int used = static_cast<int>(a[i].prompt_ids.size()) + a[i].max_new_tokens;
      EXPECT_LE(used, 2048);
      EXPECT_GE(used, 2048 - 60) << "prompt of " << a[i].prompt_ids.size()
                                 << " tokens is far from the target";
      EXPECT_EQ(static_cast<int>(a[i].prompt_ids.size()), n_tokens(a[i].prompt));
      for (const auto& e : a[i].expected) EXPECT_NE(a[i].prompt.find(e), std::string::npos) << e;
    }
  }
}

TEST(EvalTasks, TooShortLengthIsASkippedSampleNotAnError) {
  auto task = make_task("vt", sources());
  const auto s = task->generate(1, 64, 1, chat_format());
  ASSERT_EQ(s.size(), 1u);
  EXPECT_NE(s[0].skip_reason.find("too short"), std::string::npos) << s[0].skip_reason;
}

// Position of `needle` inside the filler between `begin_marker` and `end_marker`, as a fraction of
// the filler, in characters and in tokens.
void expect_depth(const std::string& prompt, const std::string& begin_marker, const std::string& end_marker,
                  const std::string& needle, double depth, double tol) {
  const size_t begin = prompt.find(begin_marker) + begin_marker.size();
  const size_t end = prompt.rfind(end_marker);
  const size_t at = prompt.find(needle);
  ASSERT_NE(at, std::string::npos);
  ASSERT_LT(begin, end);
  const double char_ratio =
      static_cast<double>(at - begin) / static_cast<double>(end - begin - needle.size());
  EXPECT_NEAR(char_ratio, depth, tol) << "character offset ratio";
  const int t_begin = n_tokens(prompt.substr(0, begin)), t_at = n_tokens(prompt.substr(0, at)),
            t_end = n_tokens(prompt.substr(0, end)), t_needle = n_tokens(needle) - 1;
  const double token_ratio = static_cast<double>(t_at - t_begin) / (t_end - t_begin - t_needle);
  EXPECT_NEAR(token_ratio, depth, tol) << "token position ratio";
}

TEST(EvalTasks, PasskeyIsAtTheRequestedDepth) {
  auto task = make_task("passkey", sources());
  const auto samples = task->generate(3, 2048, 5, chat_format());
  ASSERT_EQ(samples.size(), 5u);
  double last = -1;
  for (const auto& s : samples) {
    SCOPED_TRACE(s.depth);
    EXPECT_NEAR(s.depth, s.index * 0.25, 1e-12);  // 0, .25, .5, .75, 1
    const std::string key = s.expected.at(0);
    ASSERT_EQ(key.size(), 5u);
    // Mohtashami & Jaggi's wording, in order
    EXPECT_EQ(s.prompt.find("There is an important info hidden inside a lot of irrelevant text."),
              s.prompt.find("<|im_start|>user\n") + 17);
    expect_depth(s.prompt, "the important information there.\n", "\nWhat is the pass key?",
                 "The pass key is " + key + ". Remember it. " + key + " is the pass key.", s.depth, 0.02);
    EXPECT_GT(s.needle_position, last);
    last = s.needle_position;
    EXPECT_EQ(s.prompt.substr(s.prompt.size() - 15), "The pass key is");
  }
}

// mdqa: numbered documents, one fact each about a different place; the question asks for the place
// whose document sits at the sample's depth; its value appears once, the prompt fills the length.
TEST(EvalTasks, MultiDocumentQaAsksForTheDocumentAtTheDepth) {
  auto task = make_task("mdqa", sources());
  const auto a = task->generate(3, 2048, 5, chat_format());
  const auto b = task->generate(3, 2048, 5, chat_format());
  ASSERT_EQ(a.size(), 5u);
  for (size_t i = 0; i < a.size(); ++i) {
    const EvalSample& s = a[i];
    SCOPED_TRACE(s.depth);
    ASSERT_TRUE(s.skip_reason.empty()) << s.skip_reason;
    EXPECT_EQ(s.prompt_ids, b[i].prompt_ids) << "deterministic";
    const int used = static_cast<int>(s.prompt_ids.size()) + s.max_new_tokens;
    EXPECT_LE(used, 2048);
    ASSERT_EQ(s.expected.size(), 1u);
    const std::string& value = s.expected[0];
    const size_t at = s.prompt.find(" is " + value + ".");
    ASSERT_NE(at, std::string::npos);
    EXPECT_EQ(s.prompt.find(" is " + value + ".", at + 1), std::string::npos) << "the value is stated once";
    // The place of that fact is the one the question asks about.
    const size_t of = s.prompt.rfind("The access code of ", at);
    const std::string place = s.prompt.substr(of + 19, at - of - 19);
    EXPECT_NE(s.prompt.find("Question: What is the access code of " + place + "?"), std::string::npos) << place;
    // Its document's number follows the depth: [1] at depth 0, the last at depth 1.
    int docs = 0;
    for (size_t p = s.prompt.find("Document ["); p != std::string::npos; p = s.prompt.find("Document [", p + 1)) ++docs;
    const size_t doc_at = s.prompt.rfind("Document [", at);
    const int doc = std::stoi(s.prompt.substr(doc_at + 10));
    EXPECT_EQ(doc, 1 + static_cast<int>(std::lround(s.depth * (docs - 1)))) << docs << " documents";
    EXPECT_GE(docs, 10);
    // Four facts (the asked one and three distractors), all before the question.
    const std::string context = s.prompt.substr(0, s.prompt.find("Question:"));
    int facts = 0;
    for (size_t p = context.find("The access code of "); p != std::string::npos; p = context.find("The access code of ", p + 1)) ++facts;
    EXPECT_EQ(facts, 4);
    // Filled: the room left is less than one more document (1.5 times the mean document's tokens).
    EXPECT_LT(2048 - used, 1.5 * static_cast<double>(s.prompt_ids.size()) / docs) << "one more document would fit";
    // The question part starts where question_start says.
    ASSERT_GT(s.question_start, 0);
    const std::string tail = tiny_tokenizer().decode(
        std::vector<int32_t>(s.prompt_ids.begin() + s.question_start, s.prompt_ids.end()), true);
    EXPECT_EQ(tail.rfind("Question: What is the access code of", 0), 0u) << tail.substr(0, 60);
    EXPECT_EQ(task->score("Answer: the code is " + value + ".", s), 1.0);
    EXPECT_EQ(task->score("Answer: 000-0000", s), 0.0);
  }
}

TEST(EvalTasks, NiahSingleNeedleIsAtTheRequestedDepth) {
  auto task = make_task("niah_single", sources());
  const auto samples = task->generate(5, 2048, 5, chat_format());
  for (const auto& s : samples) {
    SCOPED_TRACE(s.depth);
    ASSERT_EQ(s.expected.size(), 1u);
    const size_t at = s.prompt.find("One of the special magic numbers for ");
    ASSERT_NE(at, std::string::npos);
    const std::string needle = s.prompt.substr(at, s.prompt.find('.', at) + 1 - at);
    EXPECT_NE(needle.find("is: " + s.expected[0] + "."), std::string::npos) << needle;
    // the key asked for is the needle's key
    const std::string key = needle.substr(37, needle.find(" is: ") - 37);
    EXPECT_NE(
        s.prompt.find("What is the special magic number for " + key + " mentioned in the provided text?"),
        std::string::npos);
    expect_depth(s.prompt, "about the number afterwards.\n", "\nWhat is the special magic number", needle,
                 s.depth, 0.03);
  }
}

// The text of ids[from, to), special tokens as written, without the BOS that encode() prepends.
std::string text_of(const Tokenizer& tok, const std::vector<int32_t>& ids, int from, int to) {
  if (from == 0 && !ids.empty() && tok.spec().add_bos && ids[0] == tok.bos_id()) from = 1;
  return tok.decode(std::vector<int32_t>(ids.begin() + from, ids.begin() + to), true);
}

// A sample's question part: the text of prompt_ids[question_start..) begins with `question` (after
// the whitespace a token may carry), the text before it ends where the question starts in the
// prompt and holds `question` only `before` times (cwe's in-context example asks it too), and the
// ids are still the whole prompt's.
void expect_question_split(const EvalSample& s, const PromptFormat& f, const std::string& question,
                           int before = 0) {
  ASSERT_TRUE(s.skip_reason.empty()) << s.skip_reason;
  const int n = static_cast<int>(s.prompt_ids.size());
  ASSERT_GT(s.question_start, 0);
  ASSERT_LT(s.question_start, n);
  EXPECT_EQ(s.prompt_ids, f.encode(s.prompt)) << "the split must not change the tokens";
  const std::string head = text_of(*f.tokenizer, s.prompt_ids, 0, s.question_start);
  const std::string tail = text_of(*f.tokenizer, s.prompt_ids, s.question_start, n);
  const size_t at = tail.find(question);
  ASSERT_NE(at, std::string::npos) << "question '" << question << "' not in the tail: " << tail;
  EXPECT_EQ(tail.find_first_not_of(" \n"), at) << "the tail should start with the question: " << tail;
  int count = 0;
  for (size_t p = head.find(question); p != std::string::npos; p = head.find(question, p + 1)) ++count;
  EXPECT_EQ(count, before) << "the question in the context part";
  // Tight: the head is the prompt up to the question, less at most the whitespace before it.
  EXPECT_EQ(s.prompt.compare(0, head.size(), head), 0);
  EXPECT_EQ(head.size() + at, s.prompt.rfind(question));
}

// The key of the needle that holds `value`: "One of the special magic numbers for KEY is: VALUE."
std::string needle_key(const std::string& prompt, const std::string& value) {
  const size_t end = prompt.find(" is: " + value + ".");
  if (end == std::string::npos) return "(no needle holds " + value + ")";
  const std::string lead = "special magic numbers for ";
  const size_t start = prompt.rfind(lead, end) + lead.size();
  return prompt.substr(start, end - start);
}

TEST(EvalTasks, QuestionStartSplitsTheContextFromTheQuestion) {
  const Tokenizer llama3(Tokenizer::spec_from_hf_folder(testing::fixture_path("tokenizer/llama3_tiny")));
  ASSERT_TRUE(llama3.spec().add_bos);  // BOS prepended, and the template writes one too
  const std::vector<PromptFormat> formats = {chat_format(), PromptFormat{&tiny_tokenizer(), false},
                                             PromptFormat{&llama3, true}};
  for (size_t fi = 0; fi < formats.size(); ++fi) {
    const PromptFormat& f = formats[fi];
    SCOPED_TRACE("format " + std::to_string(fi));
    for (const auto& s : make_task("passkey", sources())->generate(3, 512, 2, f))
      expect_question_split(s, f, "What is the pass key?");
    for (const auto& s : make_task("niah_single", sources())->generate(3, 512, 2, f)) {
      ASSERT_TRUE(s.skip_reason.empty()) << s.skip_reason;
      const std::string key = needle_key(s.prompt, s.expected.at(0));
      expect_question_split(
          s, f, "What is the special magic number for " + key + " mentioned in the provided text?");
    }
    for (const auto& s : make_task("niah_multikey", sources())->generate(3, 512, 2, f)) {
      ASSERT_TRUE(s.skip_reason.empty()) << s.skip_reason;
      const std::string key = needle_key(s.prompt, s.expected.at(0));
      expect_question_split(
          s, f, "What is the special magic number for " + key + " mentioned in the provided text?");
      // the distractor keys are in the context only
      for (size_t p = s.prompt.find(" is: "); p != std::string::npos; p = s.prompt.find(" is: ", p + 1)) {
        const std::string value = s.prompt.substr(p + 5, 7);
        if (value == s.expected[0] || value.find_first_not_of("0123456789") != std::string::npos) continue;
        const std::string other = needle_key(s.prompt, value);
        EXPECT_EQ(text_of(*f.tokenizer, s.prompt_ids, s.question_start, static_cast<int>(s.prompt_ids.size()))
                      .find(other),
                  std::string::npos)
            << other;
      }
    }
    for (const auto& s : make_task("niah_multivalue", sources())->generate(3, 512, 2, f)) {
      ASSERT_TRUE(s.skip_reason.empty()) << s.skip_reason;
      const std::string key = needle_key(s.prompt, s.expected.at(0));
      expect_question_split(
          s, f, "What are all the special magic numbers for " + key + " mentioned in the provided text?");
    }
    for (const auto& s : make_task("vt", sources())->generate(3, 1024, 2, f)) {
      ASSERT_TRUE(s.skip_reason.empty()) << s.skip_reason;
      // the chain's value: "VAR <first name> = 12345"
      const std::string lead = "VAR " + s.expected.at(0) + " = ";
      const std::string value = s.prompt.substr(s.prompt.rfind(lead) + lead.size(), 5);
      ASSERT_EQ(value.find_first_not_of("0123456789"), std::string::npos) << value;
      expect_question_split(
          s, f, "Question: Find all variables that are assigned the value " + value + " in the text above.");
    }
    for (const auto& s : make_task("cwe", sources())->generate(3, 2048, 2, f))
      expect_question_split(s, f, "Question: What are the 10 most common words in the above list?", 1);
    TaskSources lb = sources();
    lb.longbench_path = testing::fixture_path("eval/tiny_longbench.jsonl");
    const auto records = make_task("longbench", lb)->generate(0, 512, 2, f);
    ASSERT_EQ(records.size(), 2u);
    // hotpotqa: everything after the passages (the instruction repeats, then the question)
    expect_question_split(
        records[0], f,
        "Answer the question based on the given passages. Only give me the answer and do not "
        "output any other words.\n\nQuestion: Which city is the Louvre in?\nAnswer:",
        0);
    // trec: "{context}\n{input}": the input alone
    expect_question_split(records[1], f, "Where is the Eiffel Tower ?");
  }
  // ppl has no question
  for (const auto& s : make_task("ppl", sources())->generate(0, 64, 2, chat_format()))
    EXPECT_EQ(s.question_start, -1);
}

TEST(EvalTasks, TokenStartAtFindsTheTokenThatReachesPastAnOffset) {
  const PromptFormat f = chat_format();
  const std::string text = "The grass is green. The sky is blue.";
  const std::vector<int32_t> ids = f.encode(text);
  const Tokenizer& tok = tiny_tokenizer();
  for (size_t off = 0; off <= text.size(); ++off) {
    const int k = token_start_at(f, ids, off);
    ASSERT_GE(k, 0);
    ASSERT_LE(k, static_cast<int>(ids.size()));
    // the first k tokens end at or before the offset, one more would pass it
    EXPECT_LE(tok.decode({ids.begin(), ids.begin() + k}, true).size(), off);
    if (k < static_cast<int>(ids.size()))
      EXPECT_GT(tok.decode({ids.begin(), ids.begin() + k + 1}, true).size(), off);
  }
  EXPECT_EQ(token_start_at(f, ids, text.size()), static_cast<int>(ids.size()));
  EXPECT_EQ(token_start_at(f, ids, 0), 0);
}

TEST(EvalTasks, InsertNeedlesPutsThemAfterTheRightSentence) {
  const std::vector<std::string> words = {"s0.", "s1.", "s2.", "s3."};
  size_t off = 0;
  // 4 sentences; depth 0.5 -> after sentence 2, depth 0 -> before sentence 0, 1 -> at the end
  EXPECT_EQ(insert_needles(words, 4, {"N0", "N1", "N2"}, {0.5, 0.0, 1.0}, &off), "N1 s0. s1. N0 s2. s3. N2");
  EXPECT_EQ(off, std::string("N1 s0. s1. ").size());
  // the haystack repeats when more words are asked for than it has
  EXPECT_EQ(insert_needles(words, 6, {"N"}, {1.0}, nullptr), "s0. s1. s2. s3. s0. s1. N");
}

TEST(EvalTasks, NiahMultikeyAndMultivalue) {
  auto mk = make_task("niah_multikey", sources())->generate(9, 2048, 2, chat_format());
  for (const auto& s : mk) {
    ASSERT_EQ(s.expected.size(), 1u);
    int needles = 0;
    for (size_t p = s.prompt.find("One of the special magic numbers"); p != std::string::npos;
         p = s.prompt.find("One of the special magic numbers", p + 1))
      ++needles;
    EXPECT_EQ(needles, 4);  // one queried key and three distractor keys
  }
  auto mv = make_task("niah_multivalue", sources())->generate(9, 2048, 2, chat_format());
  for (const auto& s : mv) {
    ASSERT_EQ(s.expected.size(), 4u);
    EXPECT_NE(s.prompt.find("What are all the special magic numbers for "), std::string::npos);
    EXPECT_EQ(s.prompt.substr(s.prompt.size() - 4), " are");
  }
}

TEST(EvalTasks, VariableTrackingChainIsInOrder) {
  auto samples = make_task("vt", sources())->generate(11, 2048, 2, chat_format());
  for (const auto& s : samples) {
    ASSERT_EQ(s.expected.size(), 5u);
    const size_t question = s.prompt.rfind("Memorize and track");
    size_t prev = s.prompt.find("VAR " + s.expected[0] + " = ", question);
    ASSERT_NE(prev, std::string::npos);
    for (size_t j = 1; j < 5; ++j) {
      const size_t at = s.prompt.find("VAR " + s.expected[j] + " = VAR " + s.expected[j - 1], question);
      ASSERT_NE(at, std::string::npos) << j;
      EXPECT_GT(at, prev);
      prev = at;
    }
    EXPECT_EQ(s.expected[0].size(), 5u);
    // the one-shot example comes first and carries its answer
    EXPECT_LT(s.prompt.find("Memorize and track"), question);
  }
}

TEST(EvalTasks, CommonWordsHaveTheRuleredFrequencies) {
  auto samples = make_task("cwe", sources())->generate(13, 2048, 1, chat_format());
  ASSERT_EQ(samples.size(), 1u);
  const auto& s = samples[0];
  ASSERT_EQ(s.expected.size(), 10u);
  // the list being asked about is the last one; below 4096 tokens common words appear 6 times
  const size_t begin = s.prompt.rfind("appear most often.\n");
  const size_t end = s.prompt.rfind("\nQuestion:");
  const std::string list = " " + s.prompt.substr(begin, end - begin) + " ";
  for (const auto& w : s.expected) {
    int count = 0;
    for (size_t p = list.find(". " + w + " "); p != std::string::npos; p = list.find(". " + w + " ", p + 1))
      ++count;
    EXPECT_EQ(count, 6) << w;
  }
}

TEST(EvalTasks, PplWindowsAreConsecutiveSlicesOfTheText) {
  auto task = make_task("ppl", sources());
  const std::vector<int32_t> all = tiny_tokenizer().encode(test_haystack(), false, false);
  const auto w = task->generate(0, 256, 3, chat_format());
  ASSERT_EQ(w.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(w[i].kind, EvalSample::Kind::perplexity);
    EXPECT_EQ(w[i].n_scored, 16);
    ASSERT_EQ(w[i].prompt_ids.size(), 256u);
    EXPECT_TRUE(std::equal(w[i].prompt_ids.begin(), w[i].prompt_ids.end(), all.begin() + 256 * i));
  }
  // a window longer than the text: one skipped sample with the reason
  const auto big = task->generate(0, 1 << 20, 2, chat_format());
  ASSERT_EQ(big.size(), 1u);
  EXPECT_NE(big[0].skip_reason.find("fewer than one window"), std::string::npos) << big[0].skip_reason;
}

// --- LongBench jsonl ---

std::string write_temp(const std::string& name, const std::string& text) {
  const std::string path = (std::filesystem::temp_directory_path() / ("sdtp_eval_" + name)).string();
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

void expect_format_error(const std::string& path, const std::string& where, const std::string& what) {
  try {
    load_longbench_jsonl(path);
    FAIL() << "no error for " << path;
  } catch (const FormatError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(where), std::string::npos) << msg;
    EXPECT_NE(msg.find(what), std::string::npos) << msg;
  }
}

TEST(EvalLongBench, LoadsTheTinyFileAndSkipsBlankLines) {
  const auto recs = load_longbench_jsonl(testing::fixture_path("eval/tiny_longbench.jsonl"));
  ASSERT_EQ(recs.size(), 6u);
  EXPECT_EQ(recs[0].dataset, "hotpotqa");
  EXPECT_EQ(recs[0].answers, std::vector<std::string>{"Paris"});
  EXPECT_TRUE(recs[0].all_classes.empty());  // null
  EXPECT_EQ(recs[1].all_classes.size(), 6u);
  EXPECT_EQ(recs[2].line, 4);  // line 3 is blank
  EXPECT_EQ(recs[2].id, "tiny-ret-1");
}

TEST(EvalLongBench, EveryMetricOnTheTinyFile) {
  // A prediction per record and its LongBench score, worked out by hand.
  TaskSources src = sources();
  src.longbench_path = testing::fixture_path("eval/tiny_longbench.jsonl");
  auto task = make_task("longbench", src);
  const auto s = task->generate(0, 1024, 10, PromptFormat{&tiny_tokenizer(), false});
  ASSERT_EQ(s.size(), 6u);
  EXPECT_EQ(s[0].metric, "qa_f1");
  EXPECT_EQ(s[1].metric, "classification");
  EXPECT_EQ(s[2].metric, "retrieval");
  EXPECT_EQ(s[3].metric, "code_sim");
  EXPECT_EQ(s[4].metric, "rouge_l");
  EXPECT_EQ(s[5].metric, "count");
  // "in Paris" -> [in, paris] vs [paris]: P = 1/2, R = 1, F1 = 2/3
  EXPECT_NEAR(task->score("in Paris", s[0]), 2.0 / 3.0, 1e-12);
  // trec: first line only -> "Location" -> 1
  EXPECT_EQ(task->score("Location\nNumeric", s[1]), 1.0);
  // numbers [2] -> 1; [1, 2] -> 1/2
  EXPECT_EQ(task->score("Paragraph 2", s[2]), 1.0);
  EXPECT_EQ(task->score("Paragraph 1 or 2", s[2]), 0.5);
  // "    return a+b" vs "    return a + b": 14 and 16 chars, M = 14 ("    return a" + "+" + "b"),
  // ratio 28/30 = 0.9333 -> 93
  EXPECT_NEAR(task->score("    return a+b", s[3]), 0.93, 1e-12);
  // hyp [The agency found gaps] n = 4; ref [The agency found that 12 of 40 programs lacked performance
  // measures] m = 11; LCS {The, agency, found} = 3 (case kept); R = 3/11, P = 3/4
  const double r = 3.0 / 11.0, p = 0.75;
  EXPECT_NEAR(task->score("The agency found gaps.", s[4]), 2 * p * r / (p + r + 1e-8), 1e-12);
  // numbers [2, 3] -> 1/2
  EXPECT_EQ(task->score("2 (of 3 paragraphs)", s[5]), 0.5);
  // prompts: LongBench's template, no chat for trec/lcc
  EXPECT_NE(s[0].prompt.find("Answer the question based on the given passages."), std::string::npos);
  EXPECT_EQ(s[3].prompt.rfind("Please complete the code given below. \n", 0), 0u);
  EXPECT_EQ(s[0].max_new_tokens, 32);
  EXPECT_EQ(s[4].max_new_tokens, 512);
}

TEST(EvalLongBench, LongContextIsTruncatedInTheMiddle) {
  std::string ctx;
  for (int i = 0; i < 400; ++i) ctx += "Filler sentence number " + std::to_string(i) + ". ";
  const std::string path =
      write_temp("long.jsonl", "{\"input\": \"What is the END marker?\", \"context\": \"" + ctx +
                                   "\", \"answers\": [\"x\"], \"dataset\": \"hotpotqa\"}\n");
  TaskSources src = sources();
  src.longbench_path = path;
  const auto s = make_task("longbench", src)->generate(0, 512, 1, chat_format());
  ASSERT_EQ(s.size(), 1u);
  EXPECT_LE(static_cast<int>(s[0].prompt_ids.size()) + s[0].max_new_tokens, 512 + 4);
  EXPECT_NE(s[0].prompt.find("Answer the question based on the given passages."),
            std::string::npos);                                                   // head kept
  EXPECT_NE(s[0].prompt.find("What is the END marker?"), std::string::npos);      // tail kept
  EXPECT_EQ(s[0].prompt.find("Filler sentence number 200."), std::string::npos);  // middle cut
  std::remove(path.c_str());
}

TEST(EvalLongBench, MalformedLinesAreReportedWithFileAndLine) {
  expect_format_error(testing::fixture_path("eval/malformed_longbench.jsonl"),
                      "malformed_longbench.jsonl:3:", "not valid JSON");
  const std::string ok = R"({"input": "q", "context": "c", "answers": ["a"], "all_classes": null})";
  struct Case {
    std::string name, text, what;
  };
  const std::vector<Case> cases = {
      {"missing_context", ok + "\n" + R"({"input": "q", "answers": ["a"]})", "missing field \"context\""},
      {"answers_string", ok + "\n" + R"({"input": "q", "context": "c", "answers": "a"})",
       "\"answers\" must be a list"},
      {"answers_item", ok + "\n" + R"({"input": "q", "context": "c", "answers": ["a", 3]})",
       "item 1 must be a string"},
      {"answers_empty", ok + "\n" + R"({"input": "q", "context": "c", "answers": []})",
       "\"answers\" is empty"},
      {"classes_type", ok + "\n" + R"({"input": "q", "context": "c", "answers": ["a"], "all_classes": "x"})",
       "\"all_classes\" must be a list"},
      {"not_object", ok + "\n" + R"(["input", "context"])", "expected a JSON object"},
      {"input_number", ok + "\n" + R"({"input": 5, "context": "c", "answers": ["a"]})",
       "\"input\" must be a string"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string path = write_temp(c.name + ".jsonl", c.text + "\n");
    expect_format_error(path, "sdtp_eval_" + c.name + ".jsonl:2:", c.what);
    std::remove(path.c_str());
  }
  const std::string empty = write_temp("empty.jsonl", "\n\n");
  expect_format_error(empty, "sdtp_eval_empty.jsonl", "no records");
  std::remove(empty.c_str());
  EXPECT_THROW(load_longbench_jsonl("/nonexistent/file.jsonl"), UsageError);
}

}  // namespace
}  // namespace sdtp::eval
