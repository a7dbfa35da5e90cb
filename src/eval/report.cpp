// Reports of the evaluation harness: the JSON file ("summary", "by_depth", "samples"), the summary
// table printed to stdout, the output-path check made before any work, and `--compare`.
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "eval/run_config.h"
#include "sdtp/error.h"
#include "sdtp/eval.h"

namespace sdtp {
namespace {

using ojson = nlohmann::ordered_json;

// NaN (no scored sample) becomes null, which JSON has and NaN is not.
ojson number(double v) {
  return std::isfinite(v) ? ojson(v) : ojson(nullptr);
}

std::string fmt(const char* f, double v) {
  if (!std::isfinite(v)) return "-";
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

}  // namespace

std::string EvalReport::to_json() const {
  const ojson cfg = eval::run_config_json(config, query_aware);
  ojson j;
  j["format"] = "sdtp-eval";
  j["version"] = 1;
  j["model"] = {{"path", model_path}, {"name", model_name}};
  j["config"] = cfg;
  j["seed"] = seed;
  j["chat"] = chat;
  j["n_threads"] = n_threads;
  j["wall_s"] = wall_s;
  ojson rows = ojson::array();
  for (const auto& r : summary) {
    ojson o;
    o["task"] = r.task;
    o["length"] = r.length;
    o["samples"] = r.samples;
    o["score"] = number(r.score);
    if (r.task != "ppl") o["ci95"] = {number(r.ci_low), number(r.ci_high)};
    o["ttft_ms"] = r.ttft_ms;
    o["prefill_flops"] = r.prefill_flops;
    o["kv_bytes"] = r.kv_bytes;
    o["kv_peak_bytes"] = r.kv_peak_bytes;
    o["computed_pairs"] = r.computed_pairs;
    o["dense_pairs"] = r.dense_pairs;
    o["revived_total"] = r.revived_total;
    o["aux_bytes"] = r.aux_bytes;
    o["config"] = cfg;
    o["skipped"] = r.skipped;
    o["decode_ms"] = r.decode_ms;
    if (r.task == "ppl") {
      o["top1_agreement"] = number(r.top1_agreement);
      o["kl_mean"] = number(r.kl_mean);
    }
    rows.push_back(o);
  }
  j["summary"] = rows;
  ojson depth = ojson::array();
  for (const auto& d : by_depth)
    depth.push_back({{"task", d.task},
                     {"length", d.length},
                     {"depth", d.depth},
                     {"samples", d.samples},
                     {"score", d.score}});
  j["by_depth"] = depth;
  ojson recs = ojson::array();
  for (const auto& s : samples) {
    ojson o;
    o["task"] = s.task;
    o["length"] = s.length;
    o["index"] = s.index;
    o["skipped"] = s.skipped;
    if (s.skipped) o["skip_reason"] = s.skip_reason;
    if (s.depth >= 0) o["depth"] = s.depth;
    if (s.needle_position >= 0) o["needle_position"] = s.needle_position;
    o["n_prompt"] = s.n_prompt;
    if (s.n_question > 0) o["n_question"] = s.n_question;
    o["alive_per_layer"] = s.alive_per_layer;
    o["prefill_flops"] = s.prefill_flops;
    o["ttft_ms"] = s.ttft_ms;
    o["decode_ms"] = s.decode_ms;
    o["n_decoded"] = s.n_decoded;
    o["kv_bytes"] = s.kv_bytes;
    o["kv_peak_bytes"] = s.kv_peak_bytes;
    o["computed_pairs"] = s.computed_pairs;
    o["dense_pairs"] = s.dense_pairs;
    o["revived_total"] = s.revived_total;
    o["aux_bytes"] = s.aux_bytes;
    o["metric"] = s.metric;
    o["expected"] = s.expected;
    o["answer"] = s.answer;
    o["score"] = s.skipped ? ojson(nullptr) : number(s.score);
    if (s.metric == "ppl" && !s.skipped) {
      o["nll_sum"] = s.nll_sum;
      o["n_scored"] = s.n_scored;
      o["top1_agreement"] = number(s.top1_agreement);
      o["kl_mean"] = number(s.kl_mean);
    }
    recs.push_back(o);
  }
  j["samples"] = recs;
  // Generated text may hold invalid UTF-8 (a token cut in the middle of a character): replace it.
  return j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

std::string format_summary_table(const EvalReport& report) {
  std::ostringstream out;
  // computed %: the (token, layer) pairs computed over the whole sample (prefill and decode) as a
  // share of dense's.
  out << "| task | length | samples | skipped | score | 95% interval | TTFT ms | decode ms | prefill GFLOP | "
         "computed % | KV MiB | peak KV MiB | top-1 agree | KL |\n";
  out << "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n";
  for (const auto& r : report.summary) {
    const bool ppl = r.task == "ppl";
    out << "| " << r.task << " | " << r.length << " | " << r.samples << " | " << r.skipped << " | "
        << (ppl ? "ppl " : "") << fmt("%.3f", r.score) << " | "
        << (ppl || !r.samples ? std::string("-") : fmt("%.2f", r.ci_low) + "–" + fmt("%.2f", r.ci_high)) << " | "
        << fmt("%.1f", r.samples ? r.ttft_ms : NAN)
        << " | " << fmt("%.1f", r.samples ? r.decode_ms : NAN) << " | "
        << fmt("%.2f", r.samples ? r.prefill_flops / 1e9 : NAN) << " | "
        << fmt("%.1f", r.samples && r.dense_pairs > 0 ? 100.0 * r.computed_pairs / r.dense_pairs : NAN) << " | "
        << fmt("%.1f", r.samples ? r.kv_bytes / (1024.0 * 1024.0) : NAN) << " | "
        << fmt("%.1f", r.samples ? r.kv_peak_bytes / (1024.0 * 1024.0) : NAN) << " | "
        << (ppl ? fmt("%.4f", r.top1_agreement) : "-") << " | " << (ppl ? fmt("%.5f", r.kl_mean) : "-")
        << " |\n";
  }
  // Needle tasks: accuracy by length x depth.
  std::vector<double> depths;
  for (const auto& d : report.by_depth)
    if (std::find_if(depths.begin(), depths.end(), [&](double x) { return std::abs(x - d.depth) < 1e-9; }) ==
        depths.end())
      depths.push_back(d.depth);
  if (!depths.empty()) {
    std::sort(depths.begin(), depths.end());
    out << "\n| task | length |";
    for (double d : depths) out << " depth " << fmt("%.2f", d) << " |";
    out << "\n| --- | ---: |";
    for (size_t i = 0; i < depths.size(); ++i) out << " ---: |";
    out << "\n";
    for (size_t i = 0; i < report.by_depth.size();) {
      const DepthRow& first = report.by_depth[i];
      out << "| " << first.task << " | " << first.length << " |";
      size_t j = i;
      for (double d : depths) {
        if (j < report.by_depth.size() && report.by_depth[j].task == first.task &&
            report.by_depth[j].length == first.length && std::abs(report.by_depth[j].depth - d) < 1e-9) {
          out << " " << fmt("%.2f", report.by_depth[j].score) << " |";
          ++j;
        } else {
          out << " - |";
        }
      }
      out << "\n";
      while (j < report.by_depth.size() && report.by_depth[j].task == first.task &&
             report.by_depth[j].length == first.length)
        ++j;  // depths not in the header cannot happen, but never loop forever
      i = j;
    }
  }
  return out.str();
}

void check_output_writable(const std::string& path) {
  if (path.empty()) throw UsageError("eval: --out needs a file name");
  namespace fs = std::filesystem;
  std::error_code ec;
  const bool existed = fs::exists(path, ec);
  if (existed && fs::is_directory(path, ec))
    throw UsageError("eval: cannot write --out '" + path + "': is a directory");
  {
    std::ofstream f(path, std::ios::app);
    if (!f) throw UsageError("eval: cannot write --out '" + path + "': " + std::strerror(errno));
  }
  if (!existed) fs::remove(path, ec);
}

void write_report(const EvalReport& report, const std::string& path) {
  const std::string text = report.to_json();
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) throw Error("eval: cannot write '" + path + "': " + std::strerror(errno));
  f << text;
  f.flush();
  if (!f) throw Error("eval: error while writing '" + path + "'");
}

namespace {

struct ParsedRow {
  std::string task;
  int length = 0;
  double score = NAN, ttft_ms = NAN, prefill_flops = NAN, top1 = NAN, kl = NAN;
  int samples = 0;
};

struct ParsedReport {
  std::string path, label;
  std::vector<ParsedRow> rows;
};

double get_number(const nlohmann::json& o, const char* key) {
  auto it = o.find(key);
  return it != o.end() && it->is_number() ? it->get<double>() : NAN;
}

ParsedReport read_report_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UsageError("eval --compare: '" + path + "': cannot open");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw FormatError("eval --compare: '" + path + "' is not JSON: " + e.what());
  }
  if (!j.is_object() || !j.contains("summary") || !j["summary"].is_array())
    throw FormatError("eval --compare: '" + path + "' is not an sdtp eval report (no \"summary\" list)");
  ParsedReport r;
  r.path = path;
  if (j.contains("config") && j["config"].is_object() && j["config"].contains("label") &&
      j["config"]["label"].is_string())
    r.label = j["config"]["label"].get<std::string>();
  const std::string file = std::filesystem::path(path).filename().string();
  r.label = r.label.empty() ? file : r.label + " (" + file + ")";
  for (size_t i = 0; i < j["summary"].size(); ++i) {
    const auto& o = j["summary"][i];
    if (!o.is_object() || !o.contains("task") || !o["task"].is_string() || !o.contains("length") ||
        !o["length"].is_number_integer())
      throw FormatError("eval --compare: '" + path + "': summary row " + std::to_string(i) +
                        " lacks a string \"task\" or an integer \"length\"");
    ParsedRow row;
    row.task = o["task"].get<std::string>();
    row.length = o["length"].get<int>();
    row.score = get_number(o, "score");
    row.ttft_ms = get_number(o, "ttft_ms");
    row.prefill_flops = get_number(o, "prefill_flops");
    row.top1 = get_number(o, "top1_agreement");
    row.kl = get_number(o, "kl_mean");
    const double n = get_number(o, "samples");
    row.samples = std::isfinite(n) ? static_cast<int>(n) : 0;
    r.rows.push_back(row);
  }
  return r;
}

std::string pct(double now, double base) {
  if (!std::isfinite(now) || !std::isfinite(base) || base == 0) return "-";
  return fmt("%+.1f%%", 100.0 * (now - base) / base);
}

}  // namespace

std::string compare_report_files(const std::vector<std::string>& paths) {
  if (paths.size() < 2) throw UsageError("eval --compare needs at least two result files");
  std::vector<ParsedReport> reports;
  for (const auto& p : paths) reports.push_back(read_report_file(p));
  std::ostringstream out;
  out << "baseline: " << reports[0].label << "\n\n";
  out << "| task | length | run | score | Δ score | TTFT ms | Δ TTFT | prefill GFLOP | Δ FLOPs | top-1 agree "
         "| KL |\n";
  out << "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n";
  for (const auto& base : reports[0].rows) {
    for (size_t k = 0; k < reports.size(); ++k) {
      const ParsedRow* row = nullptr;
      for (const auto& r : reports[k].rows)
        if (r.task == base.task && r.length == base.length) row = &r;
      out << "| " << base.task << " | " << base.length << " | " << reports[k].label << " | ";
      if (!row) {
        out << "missing | - | - | - | - | - | - | - |\n";
        continue;
      }
      const bool first = k == 0;
      out << fmt("%.3f", row->score) << " | " << (first ? "-" : fmt("%+.3f", row->score - base.score))
          << " | " << fmt("%.1f", row->ttft_ms) << " | " << (first ? "-" : pct(row->ttft_ms, base.ttft_ms))
          << " | " << fmt("%.2f", row->prefill_flops / 1e9) << " | "
          << (first ? "-" : pct(row->prefill_flops, base.prefill_flops)) << " | " << fmt("%.4f", row->top1)
          << " | " << fmt("%.5f", row->kl) << " |\n";
    }
  }
  // Rows that only later files have.
  for (size_t k = 1; k < reports.size(); ++k)
    for (const auto& r : reports[k].rows) {
      bool in_base = false;
      for (const auto& b : reports[0].rows) in_base |= b.task == r.task && b.length == r.length;
      if (!in_base)
        out << "| " << r.task << " | " << r.length << " | " << reports[k].label << " | "
            << fmt("%.3f", r.score) << " | (not in baseline) | " << fmt("%.1f", r.ttft_ms) << " | - | "
            << fmt("%.2f", r.prefill_flops / 1e9) << " | - | " << fmt("%.4f", r.top1) << " | "
            << fmt("%.5f", r.kl) << " |\n";
    }
  return out.str();
}

}  // namespace sdtp
