// The tasks read from files: ppl (windows of a text, the last tokens of each scored by
// teacher-forced decoding; the harness runs them) and longbench (LongBench jsonl with LongBench's
// prompts, middle truncation to the target length and LongBench's metrics).
#include <algorithm>
#include <map>

#include "eval/longbench.h"
#include "eval/metrics.h"
#include "eval/task_impls.h"
#include "sdtp/error.h"

namespace sdtp::eval {
namespace {

// Windows of `length` tokens laid end to end from the start of the text (BOS first when the
// tokenizer adds one); the last min(ppl_tail, length/2) tokens of each are scored.
class PplTask : public Task {
 public:
  explicit PplTask(const TaskSources& src)
      : text_(src.ppl_text), text_name_(src.ppl_name), tail_(src.ppl_tail) {
    if (text_.empty()) throw UsageError("ppl: the text '" + text_name_ + "' is empty");
    if (tail_ < 1)
      throw UsageError("ppl: the scored tail must be at least 1 token, got " + std::to_string(tail_));
  }
  std::string name() const override { return "ppl"; }
  std::vector<EvalSample> generate(uint64_t, int length, int n, const PromptFormat& fmt) const override {
    if (cached_for_ != fmt.tokenizer) {
      ids_ = fmt.tokenizer->encode(text_, false, false);
      cached_for_ = fmt.tokenizer;
    }
    const Tokenizer& tok = *fmt.tokenizer;
    const bool bos = tok.spec().add_bos && tok.bos_id() >= 0;
    const int body = length - (bos ? 1 : 0);
    std::vector<EvalSample> out;
    const int n_windows = body > 1 ? std::min<int>(n, static_cast<int>(ids_.size() / body)) : 0;
    for (int w = 0; w < std::max(n_windows, 1); ++w) {
      EvalSample s;
      s.task = name();
      s.length = length;
      s.index = w;
      s.kind = EvalSample::Kind::perplexity;
      s.metric = "ppl";
      s.n_scored = std::max(1, std::min(tail_, length / 2));
      if (n_windows == 0) {
        s.skip_reason = "text '" + text_name_ + "' has " + std::to_string(ids_.size()) +
                        " tokens, fewer than one window of " + std::to_string(length);
      } else {
        if (bos) s.prompt_ids.push_back(tok.bos_id());
        s.prompt_ids.insert(s.prompt_ids.end(), ids_.begin() + static_cast<size_t>(w) * body,
                            ids_.begin() + static_cast<size_t>(w + 1) * body);
      }
      out.push_back(std::move(s));
    }
    return out;
  }
  double score(const std::string&, const EvalSample&) const override { return 0.0; }

 private:
  std::string text_, text_name_;
  int tail_;
  mutable const Tokenizer* cached_for_ = nullptr;
  mutable std::vector<int32_t> ids_;
};

bool chinese_dataset(const std::string& d) {
  std::string n = d;
  if (n.size() > 2 && n.compare(n.size() - 2, 2, "_e") == 0) n.resize(n.size() - 2);
  return n == "multifieldqa_zh" || n == "dureader" || n == "vcsum" || n == "lsht" ||
         n == "passage_retrieval_zh";
}

// The query part of a record's prompt, as kvpress's LongBench split has it: the template's text
// after {context} (the instruction, the question, "Answer:"), leading whitespace dropped; empty when
// the template has no {context}.
std::string question_part(const LongBenchRecord& r) {
  const std::string templ = longbench_prompt_template(r.dataset);
  const size_t at = templ.find("{context}");
  if (at == std::string::npos) return "";
  const std::string tail = format_longbench_prompt(templ.substr(at + 9), r);
  const size_t start = tail.find_first_not_of(" \t\r\n");
  return start == std::string::npos ? "" : tail.substr(start);
}

// LongBench pred.py: the dataset's prompt, truncated in the middle to fit (first half + last half of
// its tokens), then the chat template except for the few-shot/code datasets; greedy answers of the
// dataset's maximum length; eval.py's metric.
class LongBenchTask : public Task {
 public:
  explicit LongBenchTask(const TaskSources& src) : metric_(src.longbench_metric) {
    if (src.longbench_path.empty()) throw UsageError("longbench: give the jsonl file with --longbench FILE");
    if (!metric_.empty()) {
      const auto& names = longbench_metric_names();
      if (std::find(names.begin(), names.end(), metric_) == names.end()) {
        std::string known;
        for (const auto& n : names) known += (known.empty() ? "" : ", ") + n;
        throw UsageError("longbench: unknown metric '" + metric_ + "' (known: " + known + ")");
      }
    }
    records_ = load_longbench_jsonl(src.longbench_path);
  }
  std::string name() const override { return "longbench"; }
  std::vector<EvalSample> generate(uint64_t, int length, int n, const PromptFormat& fmt) const override {
    std::vector<EvalSample> out;
    const int count = std::min<int>(n, static_cast<int>(records_.size()));
    for (int i = 0; i < count; ++i) {
      const LongBenchRecord& r = records_[i];
      EvalSample s = new_sample(name(), length, i, longbench_max_new_tokens(r.dataset), metric_);
      s.dataset = r.dataset;
      s.expected = r.answers;
      s.all_classes = r.all_classes;
      if (s.metric.empty()) s.metric = longbench_metric_for_dataset(r.dataset);
      if (s.metric.empty()) {
        if (chinese_dataset(r.dataset)) {
          s.skip_reason =
              "dataset '" + r.dataset + "' needs LongBench's Chinese metrics (jieba), not supported";
          out.push_back(std::move(s));
          continue;
        }
        s.metric = r.all_classes.empty() ? "qa_f1" : "classification";
      }
      PromptFormat f = fmt;
      f.chat = fmt.chat && !longbench_skips_chat(r.dataset);
      const int overhead = static_cast<int>(f.encode(f.render("", "")).size());
      const int budget = length - s.max_new_tokens - overhead;
      if (budget < 16) {
        s.skip_reason = "target length " + std::to_string(length) + " leaves no room for the prompt after " +
                        std::to_string(s.max_new_tokens) + " answer tokens";
        out.push_back(std::move(s));
        continue;
      }
      std::string prompt = format_longbench_prompt(longbench_prompt_template(r.dataset), r);
      const std::vector<int32_t> raw = f.tokenizer->encode(prompt, false, false);
      if (static_cast<int>(raw.size()) > budget) {
        const size_t half = static_cast<size_t>(budget / 2);
        prompt = f.tokenizer->decode(std::vector<int32_t>(raw.begin(), raw.begin() + half)) +
                 f.tokenizer->decode(std::vector<int32_t>(raw.end() - half, raw.end()));
      }
      s.prompt = f.render(prompt, "");
      s.prompt_ids = f.encode(s.prompt);
      set_question_start(s, f, question_part(r));
      out.push_back(std::move(s));
    }
    return out;
  }
  double score(const std::string& answer, const EvalSample& s) const override {
    return longbench_score(s.metric, s.dataset, answer, s.expected, s.all_classes);
  }

 private:
  std::string metric_;
  std::vector<LongBenchRecord> records_;
};

}  // namespace

std::unique_ptr<Task> make_ppl_task(const TaskSources& s) {
  return std::make_unique<PplTask>(s);
}
std::unique_ptr<Task> make_longbench_task(const TaskSources& s) {
  return std::make_unique<LongBenchTask>(s);
}

}  // namespace sdtp::eval
