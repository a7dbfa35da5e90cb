// The scoring functions of the evaluation harness against values worked out by hand (the
// arithmetic is in the comments), following LongBench's metrics.py, the `rouge` 1.0.1 package,
// fuzzywuzzy/difflib and RULER's string matching.
#include <gtest/gtest.h>

#include <cmath>
#include <tuple>
#include <string>
#include <vector>

#include "eval/metrics.h"
#include "sdtp/error.h"
#include "sdtp/eval.h"

namespace sdtp::eval {
namespace {

const std::vector<std::string> kTrecClasses = {"Abbreviation", "Entity",   "Description",
                                               "Human",        "Location", "Numeric"};

TEST(EvalMetrics, NormalizeAnswerLowersDropsPunctuationArticlesAndSpaces) {
  // "the quick, brown fox!" -> "the quick brown fox" -> " quick brown fox" -> "quick brown fox"
  EXPECT_EQ(normalize_answer("The Quick, brown fox!"), "quick brown fox");
  // "an apple a day and the end" -> articles become spaces -> "apple day and end"
  EXPECT_EQ(normalize_answer("An apple a day, and THE end."), "apple day and end");
  // articles only as whole words: "theater" stays; "an-tenna" loses '-' first, so "antenna" stays
  EXPECT_EQ(normalize_answer("theater an-tenna"), "theater antenna");
  EXPECT_EQ(normalize_answer("  \t\n "), "");
}

TEST(EvalMetrics, QaF1) {
  // pred "cat sat on mat" (4 tokens), truth "cat on mat" (3): 3 in common,
  // P = 3/4, R = 1, F1 = 2 * 0.75 / 1.75 = 6/7
  EXPECT_NEAR(qa_f1_score("the cat sat on the mat", "a cat on a mat"), 6.0 / 7.0, 1e-12);
  // Counter({yes:2, no:1}) & Counter({yes:1, no:2}) = 2 tokens; P = R = 2/3, F1 = 2/3
  EXPECT_NEAR(qa_f1_score("yes yes no", "yes no no"), 2.0 / 3.0, 1e-12);
  EXPECT_EQ(qa_f1_score("dog", "cat"), 0.0);
  EXPECT_EQ(qa_f1_score("", "cat"), 0.0);
  EXPECT_NEAR(qa_f1_score("Paris.", "paris"), 1.0, 1e-12);
}

TEST(EvalMetrics, RougeL) {
  // hyp words {the, cat, sat, on, mat} n = 5, ref {the, cat, is, on, mat} m = 5;
  // LCS "the cat on the mat" -> word set {the, cat, on, mat} = 4; R = P = 4/5;
  // F = 2 * (0.64) / (1.6 + 1e-8)
  EXPECT_NEAR(rouge_l_score("the cat sat on the mat", "the cat is on the mat"), 1.28 / (1.6 + 1e-8), 1e-12);
  // Sentences split at '.': hyp ["police killed the gunman", "the gunman was armed"], ref ["the gunman
  // was shot dead by police"] (the empty piece after the final '.' is dropped). m = 7, n = 6.
  // LCS with sentence 1: {the, gunman}; with sentence 2: {the, gunman, was}; union = 3.
  // R = 3/7, P = 1/2, F = 2 * (3/14) / (13/14 + 1e-8) ~ 6/13
  const double r = 3.0 / 7.0, p = 0.5;
  EXPECT_NEAR(
      rouge_l_score("police killed the gunman. the gunman was armed", "the gunman was shot dead by police."),
      2.0 * (p * r) / (p + r + 1e-8), 1e-12);
  // Set semantics: hyp {a, b, c}, ref {b, a, c}, LCS of [b a c a] and [a b a b c] has 3 words, all
  // distinct -> R = P = 1, F = 2 / (2 + 1e-8)
  EXPECT_NEAR(rouge_l_score("a b a b c", "b a c a"), 2.0 / (2.0 + 1e-8), 1e-12);
  // The rouge package raises on an empty hypothesis; LongBench turns that into 0.
  EXPECT_EQ(rouge_l_score("", "x"), 0.0);
  EXPECT_EQ(rouge_l_score("...", "x"), 0.0);
}

TEST(EvalMetrics, ClassificationIncludingTheReferenceQuirks) {
  EXPECT_EQ(classification_score("Location", "Location", kTrecClasses), 1.0);
  // two classes named in the prediction, the right one among them: 1/2
  EXPECT_EQ(classification_score("Human or Location", "Location", kTrecClasses), 0.5);
  EXPECT_EQ(classification_score("Entity", "Location", kTrecClasses), 0.0);
  EXPECT_EQ(classification_score("nothing", "Location", kTrecClasses), 0.0);
  // matches [New York, York, Paris]; "York" is part of the truth and is removed -> [New York, Paris] -> 1/2
  EXPECT_EQ(classification_score("New York or Paris", "New York", {"New York", "York", "Paris"}), 0.5);
  // matches [ab, a, b, abc]: "ab" removed, so the loop's next item is "b" (skipping "a"), removed too;
  // [a, abc] remain -> 1/2 (a score of 1 would need "a" removed as well)
  EXPECT_EQ(classification_score("abc", "abc", {"ab", "a", "b", "abc"}), 0.5);
}

TEST(EvalMetrics, RetrievalAndCount) {
  EXPECT_EQ(retrieval_score("Paragraph 12", "Paragraph 12"), 1.0);
  // numbers [3, 12], one right -> 1/2
  EXPECT_EQ(retrieval_score("Paragraph 3 or Paragraph 12", "Paragraph 12"), 0.5);
  EXPECT_EQ(retrieval_score("I do not know", "Paragraph 12"), 0.0);
  EXPECT_EQ(retrieval_score("12", "no paragraph here"), 0.0);
  // numbers [7, 10], one is the truth -> 1/2
  EXPECT_EQ(count_score("There are 7 unique paragraphs out of 10", "7"), 0.5);
  EXPECT_EQ(count_score("seven", "7"), 0.0);
}

TEST(EvalMetrics, SequenceMatcherAndFuzzRatio) {
  // kitten / sitting: blocks "itt" (3) then "n" (1): M = 4, ratio 2*4/13 = 0.6154 -> round(61.54) = 62
  EXPECT_NEAR(sequence_matcher_ratio("kitten", "sitting"), 8.0 / 13.0, 1e-12);
  EXPECT_EQ(fuzz_ratio("kitten", "sitting"), 62);
  EXPECT_EQ(fuzz_ratio("", ""), 100);  // equal strings first
  EXPECT_EQ(fuzz_ratio("", "x"), 0);
  // Autojunk: b = 200 x 'a', so 'a' (200 > 1 + 200/100 occurrences) is popular and never matched: 0.
  EXPECT_EQ(sequence_matcher_ratio("x" + std::string(5, 'a'), std::string(200, 'a')), 0.0);
  // 199 characters: no autojunk, M = 5, ratio 2*5/204
  EXPECT_NEAR(sequence_matcher_ratio("aaaaa", std::string(199, 'a')), 10.0 / 204.0, 1e-12);
  // Code points, not bytes: "é" is one element; "café"/"cafe": M = 3, ratio 6/8
  EXPECT_NEAR(sequence_matcher_ratio("caf\xc3\xa9", "cafe"), 6.0 / 8.0, 1e-12);
}

TEST(EvalMetrics, CodeSimilarityTakesTheFirstPlainLine) {
  // the fence line has '`' and is skipped; the code line equals the truth -> 100
  EXPECT_EQ(code_sim_score("```python\n    return a + b\n```", "    return a + b"), 1.0);
  // "# comment" skipped; "x = 1" vs "x = 2": M = 4, 2*4/10 = 0.8 -> 80
  EXPECT_NEAR(code_sim_score("# comment\nx = 1", "x = 2"), 0.8, 1e-12);
  EXPECT_EQ(code_sim_score("", "x"), 0.0);
}

TEST(EvalMetrics, LongBenchScorer) {
  EXPECT_EQ(longbench_metric_for_dataset("hotpotqa"), "qa_f1");
  EXPECT_EQ(longbench_metric_for_dataset("gov_report_e"), "rouge_l");
  EXPECT_EQ(longbench_metric_for_dataset("lsht"), "");  // Chinese: not supported
  // trec predictions are cut at the first line (after leading newlines): "Location" -> 1
  EXPECT_EQ(longbench_score("classification", "trec", "\nLocation\nHuman", {"Location"}, kTrecClasses), 1.0);
  // without the cut both classes match -> 1/2
  EXPECT_EQ(longbench_score("classification", "other", "Location\nHuman", {"Location"}, kTrecClasses), 0.5);
  // max over the answers: "Paris" vs ["the city of Paris", "Paris"] -> max(F1 = 2*(1*1/3)/(4/3) = 0.5, 1) = 1
  EXPECT_EQ(longbench_score("qa_f1", "hotpotqa", "Paris", {"the city of Paris", "Paris"}, {}), 1.0);
  EXPECT_NEAR(longbench_score("qa_f1", "hotpotqa", "Paris", {"the city of Paris"}, {}), 0.5, 1e-12);
  EXPECT_THROW(longbench_score("bleu", "x", "a", {"a"}, {}), UsageError);
}

TEST(EvalMetrics, RulerStringMatch) {
  // post-processing: strip, control characters -> '\n', strip
  EXPECT_EQ(ruler_postprocess("  a\tb\x01"
                              "c  \n"),
            "a\nb\nc");
  // two of three references found -> 2/3
  EXPECT_NEAR(string_match_all(" The numbers are 1234567 and 7654321.\n", {"1234567", "7654321", "1111111"}),
              2.0 / 3.0, 1e-12);
  EXPECT_EQ(string_match_all("ABC-def", {"abc-DEF"}), 1.0);  // case-insensitive
  EXPECT_EQ(string_match_all("anything", {}), 0.0);
  EXPECT_EQ(string_match_part("x 7654321", {"1234567", "7654321"}), 1.0);
  EXPECT_EQ(string_match_part("nothing", {"1234567"}), 0.0);
}

TEST(EvalMetrics, Passkey) {
  EXPECT_EQ(passkey_score(" 12345.", "12345"), 1.0);
  EXPECT_EQ(passkey_score(" 123456", "12345"), 0.0);                      // longer number
  EXPECT_EQ(passkey_score("The key is 54321, not 12345", "12345"), 0.0);  // first number counts
  EXPECT_EQ(passkey_score("no digits", "12345"), 0.0);
}

TEST(EvalMetrics, TokenNllAndKl) {
  const float uniform[4] = {0, 0, 0, 0};
  EXPECT_NEAR(token_nll(uniform, 4, 2), std::log(4.0), 1e-9);  // -log(1/4)
  // logits {0, ln 3} -> p = {1/4, 3/4}
  const float skewed[2] = {0.0f, static_cast<float>(std::log(3.0))};
  const float flat[2] = {0, 0};
  EXPECT_NEAR(token_nll(skewed, 2, 0), std::log(4.0), 1e-6);
  EXPECT_EQ(argmax(skewed, 2), 1);
  // KL(p || q), q = {1/2, 1/2}: 1/4 ln(1/2) + 3/4 ln(3/2) = -0.1732868 + 0.3040988 = 0.1308120
  EXPECT_NEAR(kl_divergence(skewed, flat, 2), 0.25 * std::log(0.5) + 0.75 * std::log(1.5), 1e-6);
  EXPECT_NEAR(kl_divergence(skewed, flat, 2), 0.1308120, 1e-6);
  EXPECT_EQ(kl_divergence(skewed, skewed, 2), 0.0);
}

TEST(EvalProgress, FormatsBarElapsedAndEta) {
  // 10 of 40 after 65 s: ETA 65/10 * 30 = 195 s = 3m15s; 25% of 30 columns = 7 '=' then '>'
  EXPECT_EQ(format_eval_progress(10, 40, 65.0, 30),
            "eval [=======>                      ] 10/40  elapsed 1m05s  ETA 3m15s");
  EXPECT_EQ(format_eval_progress(0, 5, 0.0, 4), "eval [>   ] 0/5  elapsed 0s  ETA ?");
  EXPECT_EQ(format_duration(7500), "2h05m");
}

}  // namespace
}  // namespace sdtp::eval

// Wilson's interval by its definition: the p with (p̂ - p)² = z²·p(1-p)/n, the roots of
// (1 + z²/n)p² - (2p̂ + z²/n)p + p̂² = 0 (solved in double in plain Python; statsmodels'
// proportion_confint(k, n, method="wilson") gives the same on the GPU machine, where it exists):
// (45, 50) -> (0.786398, 0.956524); (0, 50) -> (0, 0.071348); (50, 50) -> (0.928652, 1).
TEST(ScoreInterval, WilsonMatchesStatsmodels) {
  auto [lo, hi] = sdtp::eval::score_interval95(0.9, 0.9, 50, true);
  EXPECT_NEAR(lo, 0.7863977, 1e-6);
  EXPECT_NEAR(hi, 0.9565242, 1e-6);
  std::tie(lo, hi) = sdtp::eval::score_interval95(0.0, 0.0, 50, true);
  EXPECT_NEAR(lo, 0.0, 1e-12);
  EXPECT_NEAR(hi, 0.0713476, 1e-6);
  std::tie(lo, hi) = sdtp::eval::score_interval95(1.0, 1.0, 50, true);
  EXPECT_NEAR(lo, 0.9286524, 1e-6);
  EXPECT_NEAR(hi, 1.0, 1e-12);
}

// Non-binary scores: mean ± 1.96·s/√n with the sample standard deviation s (NumPy's std(ddof=1)):
// scores 0.2, 0.4, 0.6, 0.8 -> mean 0.5, s 0.258199, half-width 1.959964 * 0.258199 / 2 = 0.253030.
TEST(ScoreInterval, NormalApproximationForPartialScores) {
  const double p = 0.5, p2 = (0.04 + 0.16 + 0.36 + 0.64) / 4;
  auto [lo, hi] = sdtp::eval::score_interval95(p, p2, 4, false);
  EXPECT_NEAR(lo, 0.5 - 0.253030, 1e-5);
  EXPECT_NEAR(hi, 0.5 + 0.253030, 1e-5);
}
