// LongBench jsonl loading with per-line validation, and LongBench's per-dataset prompts and answer
// lengths (config/dataset2prompt.json, config/dataset2maxlen.json; English datasets only).
#include "eval/longbench.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "sdtp/error.h"

namespace sdtp::eval {
namespace {

[[noreturn]] void bad_line(const std::string& path, int line, const std::string& what) {
  throw FormatError(path + ":" + std::to_string(line) + ": " + what);
}

std::string string_field(const nlohmann::json& j, const char* key, const std::string& path, int line,
                         bool required) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (required) bad_line(path, line, std::string("missing field \"") + key + "\"");
    return "";
  }
  if (!it->is_string())
    bad_line(path, line, std::string("field \"") + key + "\" must be a string, got " + it->type_name());
  return it->get<std::string>();
}

std::vector<std::string> string_list(const nlohmann::json& j, const char* key, const std::string& path,
                                     int line, bool required) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (required) bad_line(path, line, std::string("missing field \"") + key + "\"");
    return {};
  }
  if (!it->is_array())
    bad_line(path, line,
             std::string("field \"") + key + "\" must be a list of strings, got " + it->type_name());
  std::vector<std::string> out;
  for (size_t i = 0; i < it->size(); ++i) {
    const auto& e = (*it)[i];
    if (!e.is_string())
      bad_line(path, line,
               std::string("field \"") + key + "\" item " + std::to_string(i) + " must be a string, got " +
                   e.type_name());
    out.push_back(e.get<std::string>());
  }
  return out;
}

}  // namespace

std::vector<LongBenchRecord> load_longbench_jsonl(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    throw UsageError("longbench: '" + path + "': no such file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UsageError("longbench: '" + path + "': cannot open");
  std::vector<LongBenchRecord> out;
  std::string text;
  int line = 0;
  while (std::getline(in, text)) {
    ++line;
    if (!text.empty() && text.back() == '\r') text.pop_back();
    if (text.find_first_not_of(" \t") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::parse_error& e) {
      // e.what() is "[json.exception.parse_error.101] parse error at line 1, column N: ..."; the line
      // is ours, so keep the column and the reason.
      std::string msg = e.what();
      const size_t col = msg.find("column ");
      const size_t p = msg.find("] ");
      msg = col != std::string::npos ? msg.substr(col) : p != std::string::npos ? msg.substr(p + 2) : msg;
      bad_line(path, line, "not valid JSON (" + msg + ")");
    }
    if (!j.is_object()) bad_line(path, line, std::string("expected a JSON object, got ") + j.type_name());
    LongBenchRecord r;
    r.line = line;
    r.input = string_field(j, "input", path, line, true);
    r.context = string_field(j, "context", path, line, true);
    r.answers = string_list(j, "answers", path, line, true);
    if (r.answers.empty()) bad_line(path, line, "field \"answers\" is empty");
    r.all_classes = string_list(j, "all_classes", path, line, false);
    r.dataset = string_field(j, "dataset", path, line, false);
    auto id = j.find("_id");
    if (id != j.end() && id->is_string()) r.id = id->get<std::string>();
    out.push_back(std::move(r));
  }
  if (in.bad()) throw UsageError("longbench: '" + path + "': read error");
  if (out.empty()) throw FormatError(path + ": no records (expected one JSON object per line)");
  return out;
}

std::string longbench_prompt_template(const std::string& dataset) {
  static const std::map<std::string, std::string> kPrompts = {
      {"narrativeqa",
       "You are given a story, which can be either a novel or a movie script, and a question. Answer the "
       "question as "
       "concisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nStory: "
       "{context}\n\nNow, answer the question based on the story as concisely as you can, using a single "
       "phrase if "
       "possible. Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:"},
      {"qasper",
       "You are given a scientific article and a question. Answer the question as concisely as you can, "
       "using a "
       "single phrase or sentence if possible. If the question cannot be answered based on the information "
       "in the "
       "article, write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or "
       "\"unanswerable\". Do not provide any explanation.\n\nArticle: {context}\n\n Answer the question "
       "based on the "
       "above article as concisely as you can, using a single phrase or sentence if possible. If the "
       "question cannot "
       "be answered based on the information in the article, write \"unanswerable\". If the question is a "
       "yes/no "
       "question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nQuestion: "
       "{input}\n\nAnswer:"},
      {"multifieldqa_en",
       "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following question based "
       "on the "
       "above text, only give me the answer and do not output any other words.\n\nQuestion: "
       "{input}\nAnswer:"},
      {"hotpotqa",
       "Answer the question based on the given passages. Only give me the answer and do not output any other "
       "words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given "
       "passages. "
       "Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:"},
      {"2wikimqa",
       "Answer the question based on the given passages. Only give me the answer and do not output any other "
       "words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given "
       "passages. "
       "Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:"},
      {"musique",
       "Answer the question based on the given passages. Only give me the answer and do not output any other "
       "words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given "
       "passages. "
       "Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:"},
      {"gov_report",
       "You are given a report by a government agency. Write a one-page summary of the report.\n\nReport:\n"
       "{context}\n\nNow, write a one-page summary of the report.\n\nSummary:"},
      {"qmsum",
       "You are given a meeting transcript and a query containing a question or instruction. Answer the "
       "query in one "
       "or more sentences.\n\nTranscript:\n{context}\n\nNow, answer the query based on the above meeting "
       "transcript "
       "in one or more sentences.\n\nQuery: {input}\nAnswer:"},
      {"multi_news",
       "You are given several news passages. Write a one-page summary of all news. "
       "\n\nNews:\n{context}\n\nNow, "
       "write a one-page summary of all the news.\n\nSummary:"},
      {"trec",
       "Please determine the type of the question below. Here are some examples of "
       "questions.\n\n{context}\n{input}"},
      {"triviaqa",
       "Answer the question based on the given passage. Only give me the answer and do not output any other "
       "words. "
       "The following are some examples.\n\n{context}\n\n{input}"},
      {"samsum",
       "Summarize the dialogue into a few short sentences. The following are some "
       "examples.\n\n{context}\n\n{input}"},
      {"passage_count",
       "There are some paragraphs below sourced from Wikipedia. Some of them may be duplicates. Please "
       "carefully read "
       "these paragraphs and determine how many unique paragraphs there are after removing duplicates. In "
       "other "
       "words, how many non-repeating paragraphs are there in total?\n\n{context}\n\nPlease enter the final "
       "count of "
       "unique paragraphs after removing duplicates. The output format should only contain the number, such "
       "as 1, 2, "
       "3, and so on.\n\nThe final answer is: "},
      {"passage_retrieval_en",
       "Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine which paragraph the "
       "abstract "
       "is from.\n\n{context}\n\nThe following is an abstract.\n\n{input}\n\nPlease enter the number of the "
       "paragraph "
       "that the abstract is from. The answer format must be like \"Paragraph 1\", \"Paragraph 2\", "
       "etc.\n\nThe "
       "answer is: "},
      {"lcc", "Please complete the code given below. \n{context}Next line of code:\n"},
      {"repobench-p", "Please complete the code given below. \n{context}{input}Next line of code:\n"},
  };
  std::string name = dataset;
  if (name.size() > 2 && name.compare(name.size() - 2, 2, "_e") == 0) name.resize(name.size() - 2);
  auto it = kPrompts.find(name);
  if (it != kPrompts.end()) return it->second;
  return "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following question "
         "based on "
         "the above text, only give me the answer and do not output any other words.\n\nQuestion: "
         "{input}\nAnswer:";
}

int longbench_max_new_tokens(const std::string& dataset) {
  static const std::map<std::string, int> kMax = {{"passage_count", 32}, {"passage_retrieval_en", 32},
                                                  {"trec", 64},          {"triviaqa", 32},
                                                  {"hotpotqa", 32},      {"musique", 32},
                                                  {"2wikimqa", 32},      {"narrativeqa", 128},
                                                  {"qasper", 128},       {"gov_report", 512},
                                                  {"qmsum", 512},        {"multi_news", 512},
                                                  {"samsum", 128},       {"multifieldqa_en", 64},
                                                  {"lcc", 64},           {"repobench-p", 64}};
  std::string name = dataset;
  if (name.size() > 2 && name.compare(name.size() - 2, 2, "_e") == 0) name.resize(name.size() - 2);
  auto it = kMax.find(name);
  return it == kMax.end() ? 64 : it->second;
}

bool longbench_skips_chat(const std::string& dataset) {
  std::string name = dataset;
  if (name.size() > 2 && name.compare(name.size() - 2, 2, "_e") == 0) name.resize(name.size() - 2);
  return name == "trec" || name == "triviaqa" || name == "samsum" || name == "lsht" || name == "lcc" ||
         name == "repobench-p";
}

std::string format_longbench_prompt(const std::string& templ, const LongBenchRecord& r) {
  std::string out;
  size_t i = 0;
  while (i < templ.size()) {
    if (templ.compare(i, 9, "{context}") == 0) {
      out += r.context;
      i += 9;
    } else if (templ.compare(i, 7, "{input}") == 0) {
      out += r.input;
      i += 7;
    } else {
      out += templ[i++];
    }
  }
  return out;
}

}  // namespace sdtp::eval
