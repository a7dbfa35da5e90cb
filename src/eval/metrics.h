// Scoring functions of the evaluation harness, each reproducing the reference implementation it is
// named after: LongBench's metrics.py (qa_f1 with SQuAD answer normalisation, rouge_l as computed by
// the `rouge` 1.0.1 package that LongBench calls, classification, retrieval, count, code edit
// similarity as fuzzywuzzy's fuzz.ratio over difflib), RULER's string_match_all/part (with its
// prediction post-processing), the passkey check, and the token-level quantities of the ppl task
// (negative log-likelihood, top-1 agreement and KL divergence between two next-token distributions).
//
// Text is UTF-8; lower-casing and punctuation follow Python's ASCII sets (string.punctuation), and
// every byte >= 0x80 counts as a word character for the \b of LongBench's article regex.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <string_view>
#include <vector>

namespace sdtp::eval {

// --- LongBench (THUDM/LongBench metrics.py) ---

// lower -> remove ASCII punctuation -> remove the articles a/an/the -> collapse whitespace.
std::string normalize_answer(std::string_view s);
// Token F1 between whitespace-split lists (Counter intersection).
double token_f1(const std::vector<std::string>& prediction, const std::vector<std::string>& ground_truth);
double qa_f1_score(std::string_view prediction, std::string_view ground_truth);
// ROUGE-L F (summary level, set semantics, sentences split at '.'), 0 when either side is empty.
double rouge_l_score(std::string_view prediction, std::string_view ground_truth);
double classification_score(std::string_view prediction, std::string_view ground_truth,
                            const std::vector<std::string>& all_classes);
double retrieval_score(std::string_view prediction, std::string_view ground_truth);
double count_score(std::string_view prediction, std::string_view ground_truth);
double code_sim_score(std::string_view prediction, std::string_view ground_truth);
// difflib.SequenceMatcher(None, a, b).ratio() over Unicode code points (with autojunk).
double sequence_matcher_ratio(std::string_view a, std::string_view b);
// fuzzywuzzy fuzz.ratio: round(100 * ratio), 100 for equal strings, 0 when one is empty.
int fuzz_ratio(std::string_view a, std::string_view b);

// The metric LongBench uses for a dataset name ("hotpotqa" -> "qa_f1"); empty when unknown.
std::string longbench_metric_for_dataset(const std::string& dataset);
// Metric names accepted by longbench_score.
const std::vector<std::string>& longbench_metric_names();
// LongBench's scorer for one sample: max over the ground truths, with the prediction cut at its
// first line for trec/triviaqa/samsum/lsht. Throws UsageError for an unknown metric.
double longbench_score(const std::string& metric, const std::string& dataset, std::string_view prediction,
                       const std::vector<std::string>& answers, const std::vector<std::string>& all_classes);

// --- RULER (NVIDIA/RULER scripts/eval/synthetic/constants.py) ---

// strip, control characters -> '\n', strip.
std::string ruler_postprocess(std::string_view prediction);
// Fraction of references found (case-insensitive substring) in the post-processed prediction.
double string_match_all(std::string_view prediction, const std::vector<std::string>& references);
// 1 if any reference is found, else 0.
double string_match_part(std::string_view prediction, const std::vector<std::string>& references);

// --- passkey ---

// 1 if the first run of ASCII digits in the prediction is exactly the key, else 0.
double passkey_score(std::string_view prediction, std::string_view key);

// --- ppl task: next-token distributions given as logits ---

int argmax(const float* logits, int n_vocab);
// -log softmax(logits)[target], computed in double.
double token_nll(const float* logits, int n_vocab, int32_t target);
// KL(P_reference || P) in nats, where both are softmax of the logits.
double kl_divergence(const float* reference_logits, const float* logits, int n_vocab);

// 95% interval of a mean score over n samples with mean `p` and mean square `p2`: Wilson's score
// interval when every score is 0 or 1 (sound at small n and near 0 or 1, where p ± 1.96·√(p(1-p)/n)
// collapses to a point), else the normal approximation with the sample standard deviation; both
// clipped to [0, 1].
std::pair<double, double> score_interval95(double p, double p2, double n, bool binary);

}  // namespace sdtp::eval
