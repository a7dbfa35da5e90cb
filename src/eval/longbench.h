// LongBench-format jsonl (THUDM/LongBench): one JSON object per line with "input", "context",
// "answers" (list of strings) and "all_classes" (list of strings or null), optionally "dataset",
// "length" and "_id". The loader validates every line and reports the first bad one as file:line.
#pragma once

#include <string>
#include <vector>

namespace sdtp::eval {

struct LongBenchRecord {
  int line = 0;  // 1-based line in the file
  std::string input;
  std::string context;
  std::vector<std::string> answers;
  std::vector<std::string> all_classes;
  std::string dataset;  // empty when the line has none
  std::string id;
};

// Throws UsageError when the file is missing, FormatError "<path>:<line>: <what>" for a malformed
// line (not JSON, not an object, a field missing or of the wrong type, no answers) and for a file
// without records. Blank lines are skipped.
std::vector<LongBenchRecord> load_longbench_jsonl(const std::string& path);

// LongBench's prompt for a dataset (config/dataset2prompt.json, English datasets), with {context}
// and {input}; a generic QA prompt for other names.
std::string longbench_prompt_template(const std::string& dataset);
// LongBench's config/dataset2maxlen.json; 64 for other names.
int longbench_max_new_tokens(const std::string& dataset);
// Datasets that LongBench runs without the chat template (few-shot and code completion).
bool longbench_skips_chat(const std::string& dataset);
// "{context}" and "{input}" replaced (once each, left to right; other braces left alone).
std::string format_longbench_prompt(const std::string& templ, const LongBenchRecord& r);

}  // namespace sdtp::eval
