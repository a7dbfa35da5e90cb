// Option declarations, argv validation and --help text for the `sdtp` subcommands.
#include "cli/args.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <sstream>

#include "sdtp/error.h"

namespace sdtp::cli {
namespace {

// Strict base-10 integer: optional sign, digits, nothing else; false on overflow.
bool parse_int64(const std::string& s, int64_t* out) {
  if (s.empty() || s.size() > 32) return false;
  size_t i = (s[0] == '-' || s[0] == '+') ? 1 : 0;
  if (i == s.size()) return false;
  for (size_t j = i; j < s.size(); ++j)
    if (s[j] < '0' || s[j] > '9') return false;
  errno = 0;
  char* end = nullptr;
  long long v = std::strtoll(s.c_str(), &end, 10);
  if (errno == ERANGE || end != s.c_str() + s.size()) return false;
  *out = v;
  return true;
}

// Finite decimal number ("0.8", "-1e-3"); rejects "nan", "inf", hex and trailing junk.
bool parse_double(const std::string& s, double* out) {
  if (s.empty() || s.size() > 64) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || c == '.' || c == '-' || c == '+' || c == 'e' || c == 'E')) return false;
  errno = 0;
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (errno == ERANGE || end != s.c_str() + s.size() || !std::isfinite(v)) return false;
  *out = v;
  return true;
}

std::string format_number(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

}  // namespace

std::string ParsedArgs::text(const std::string& long_name, const std::string& fallback) const {
  auto it = values_.find(long_name);
  return it == values_.end() ? fallback : it->second.back();
}

int64_t ParsedArgs::integer(const std::string& long_name, int64_t fallback) const {
  auto it = integers_.find(long_name);
  return it == integers_.end() ? fallback : it->second;
}

double ParsedArgs::number(const std::string& long_name, double fallback) const {
  auto it = numbers_.find(long_name);
  return it == numbers_.end() ? fallback : it->second;
}

std::vector<std::string> ParsedArgs::list(const std::string& long_name) const {
  auto it = values_.find(long_name);
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

ArgParser::ArgParser(std::string command, std::string usage, std::string summary)
    : command_(std::move(command)), usage_(std::move(usage)), summary_(std::move(summary)) {}

ArgParser& ArgParser::flag(const std::string& s, const std::string& l, const std::string& help) {
  options_.push_back({s, l, "", ArgKind::flag, help, "", 0, 0, 0, 0, false});
  return *this;
}

ArgParser& ArgParser::text(const std::string& s, const std::string& l, const std::string& metavar,
                           const std::string& help, const std::string& default_text) {
  options_.push_back({s, l, metavar, ArgKind::text, help, default_text, 0, 0, 0, 0, false});
  return *this;
}

ArgParser& ArgParser::integer(const std::string& s, const std::string& l, const std::string& metavar,
                              const std::string& help, int64_t min, int64_t max,
                              const std::string& default_text) {
  options_.push_back({s, l, metavar, ArgKind::integer, help, default_text, 0, 0, min, max, false});
  return *this;
}

ArgParser& ArgParser::number(const std::string& s, const std::string& l, const std::string& metavar,
                             const std::string& help, double min, double max,
                             const std::string& default_text) {
  options_.push_back({s, l, metavar, ArgKind::number, help, default_text, min, max, 0, 0, false});
  return *this;
}

ArgParser& ArgParser::list(const std::string& s, const std::string& l, const std::string& metavar,
                           const std::string& help, bool greedy) {
  options_.push_back({s, l, metavar, ArgKind::list, help, "", 0, 0, 0, 0, false, greedy});
  return *this;
}

ArgParser& ArgParser::required(const std::string& long_name) {
  for (auto& o : options_)
    if (o.long_name == long_name) o.required = true;
  return *this;
}

ArgParser& ArgParser::conflicts(const std::string& a, const std::string& b) {
  conflicts_.emplace_back(a, b);
  return *this;
}

ArgParser& ArgParser::one_of(const std::string& a, const std::string& b) {
  one_of_.emplace_back(a, b);
  return *this;
}

ArgParser& ArgParser::requires_option(const std::string& a, const std::string& b) {
  requires_.emplace_back(a, b);
  return *this;
}

ArgParser& ArgParser::epilog(const std::string& text) {
  epilog_ = text;
  return *this;
}

const OptionSpec* ArgParser::find(const std::string& name) const {
  for (const auto& o : options_)
    if (name == o.long_name || (!o.short_name.empty() && name == o.short_name)) return &o;
  return nullptr;
}

const OptionSpec& ArgParser::spec(const std::string& long_name) const {
  const OptionSpec* o = find(long_name);
  if (!o) throw Error("sdtp " + command_ + ": internal: option " + long_name + " is not declared");
  return *o;
}

std::string ArgParser::display(const OptionSpec& o) const {
  return o.short_name.empty() ? o.long_name : o.short_name + "/" + o.long_name;
}

void ArgParser::fail(const std::string& message) const {
  throw UsageError(command_ + ": " + message + " (see 'sdtp " + command_ + " --help')");
}

ParsedArgs ArgParser::parse(const std::vector<std::string>& args) const {
  ParsedArgs out;
  for (const auto& a : args)
    if (a == "-h" || a == "--help") {
      out.help = true;
      return out;
    }

  for (size_t i = 0; i < args.size(); ++i) {
    std::string name = args[i];
    std::string value;
    bool inline_value = false;
    if (name.rfind("--", 0) == 0) {
      size_t eq = name.find('=');
      if (eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
        inline_value = true;
      }
    } else if (name.empty() || name[0] != '-' || name == "-") {
      fail("unexpected argument '" + name + "'");
    }
    const OptionSpec* o = find(name);
    if (!o) fail("unknown option '" + name + "'");

    if (o->kind == ArgKind::flag) {
      if (inline_value) fail("option " + display(*o) + " takes no value, got '" + value + "'");
      out.values_[o->long_name].push_back("");
      continue;
    }
    if (!inline_value) {
      if (i + 1 >= args.size()) fail("option " + display(*o) + " needs a value " + o->metavar);
      value = args[++i];
    }
    if (o->kind != ArgKind::list && out.has(o->long_name))
      fail("option " + display(*o) + " given more than once");
    out.values_[o->long_name].push_back(value);
    if (o->greedy)
      while (i + 1 < args.size() && !args[i + 1].empty() && args[i + 1][0] != '-')
        out.values_[o->long_name].push_back(args[++i]);

    if (o->kind == ArgKind::integer) {
      int64_t v = 0;
      if (!parse_int64(value, &v)) fail("option " + display(*o) + " expects an integer, got '" + value + "'");
      if (v < o->imin || v > o->imax)
        fail("option " + display(*o) + " must be in [" + std::to_string(o->imin) + ", " +
             std::to_string(o->imax) + "], got " + value);
      out.integers_[o->long_name] = v;
    } else if (o->kind == ArgKind::number) {
      double v = 0;
      if (!parse_double(value, &v)) fail("option " + display(*o) + " expects a number, got '" + value + "'");
      if (v < o->min || v > o->max)
        fail("option " + display(*o) + " must be in [" + format_number(o->min) + ", " +
             format_number(o->max) + "], got " + value);
      out.numbers_[o->long_name] = v;
    }
  }

  for (const auto& o : options_)
    if (o.required && !out.has(o.long_name)) fail("missing required option " + display(o) + " " + o.metavar);
  for (const auto& [a, b] : conflicts_)
    if (out.has(a) && out.has(b))
      fail("options " + display(spec(a)) + " and " + display(spec(b)) + " cannot be used together");
  for (const auto& [a, b] : one_of_) {
    if (out.has(a) && out.has(b))
      fail("options " + display(spec(a)) + " and " + display(spec(b)) + " cannot be used together");
    if (!out.has(a) && !out.has(b))
      fail("one of " + display(spec(a)) + " or " + display(spec(b)) + " is required");
  }
  for (const auto& [a, b] : requires_)
    if (out.has(a) && !out.has(b)) fail("option " + display(spec(a)) + " requires " + display(spec(b)));
  return out;
}

std::string ArgParser::help() const {
  std::vector<std::pair<std::string, std::string>> rows;
  for (const auto& o : options_) {
    std::string left = o.short_name.empty() ? "    " + o.long_name : o.short_name + ", " + o.long_name;
    if (!o.metavar.empty()) left += " " + o.metavar;
    std::string right = o.help;
    if (o.required) right += " (required)";
    if (!o.default_text.empty()) right += " (default: " + o.default_text + ")";
    if (o.kind == ArgKind::list) right += " (repeatable)";
    rows.emplace_back(left, right);
  }
  rows.emplace_back("-h, --help", "show this help and exit");

  constexpr size_t kMaxLeft = 26;
  size_t width = 0;
  for (const auto& r : rows)
    if (r.first.size() <= kMaxLeft) width = std::max(width, r.first.size());

  std::string out = "usage: " + usage_ + "\n\n" + summary_ + "\n\noptions:\n";
  for (const auto& [left, right] : rows) {
    out += "  " + left;
    if (left.size() > kMaxLeft)
      out += "\n  " + std::string(width, ' ');
    else
      out += std::string(width - left.size(), ' ');
    out += "  " + right + "\n";
  }
  if (!epilog_.empty()) out += "\n" + epilog_;
  if (out.back() != '\n') out += "\n";
  return out;
}

namespace {

std::string bound_text(int64_t v) { return std::to_string(v); }
std::string bound_text(double v) { return format_number(v); }

// Splits a comma-separated list and parses each item with `parse`, checking [min, max].
template <typename T, typename Parse>
std::vector<T> parse_list(const std::string& what, const std::string& text, T min, T max, const char* kind,
                          Parse parse) {
  std::vector<T> out;
  size_t start = 0;
  while (true) {
    size_t comma = text.find(',', start);
    std::string item = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    T v{};
    if (!parse(item, &v))
      throw UsageError(what + ": expected a comma-separated list of " + kind + ", got '" + text + "' (bad item '" +
                       item + "')");
    if (v < min || v > max)
      throw UsageError(what + ": value " + item + " is out of range [" + bound_text(min) + ", " + bound_text(max) +
                       "]");
    out.push_back(v);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

}  // namespace

std::vector<std::string> split_items(const std::string& text, char sep) {
  std::vector<std::string> items;
  size_t start = 0;
  for (size_t i = 0; i <= text.size(); ++i)
    if (i == text.size() || text[i] == sep) {
      if (i > start) items.push_back(text.substr(start, i - start));
      start = i + 1;
    }
  return items;
}

std::vector<int64_t> parse_int_list(const std::string& what, const std::string& text, int64_t min,
                                    int64_t max) {
  return parse_list<int64_t>(what, text, min, max, "integers", parse_int64);
}

std::vector<double> parse_number_list(const std::string& what, const std::string& text, double min, double max) {
  return parse_list<double>(what, text, min, max, "numbers", parse_double);
}

}  // namespace sdtp::cli
