// The command-line parser shared by the subcommands of `sdtp`. A subcommand declares its options
// (name, kind, range, help line); the parser validates argv against them once — unknown option,
// missing value, malformed or out-of-range number, conflicting or missing options all throw
// sdtp::UsageError — and writes the --help text from the same declarations, so help and parsing
// cannot drift apart.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace sdtp::cli {

enum class ArgKind { flag, text, integer, number, list };

struct OptionSpec {
  std::string short_name;  // "-m", or empty
  std::string long_name;   // "--model"; the key options are looked up by
  std::string metavar;     // "PATH", shown in help; empty for flags
  ArgKind kind = ArgKind::flag;
  std::string help;
  std::string default_text;    // shown as "(default: ...)" when not empty
  double min = 0, max = 0;     // inclusive range of number options
  int64_t imin = 0, imax = 0;  // inclusive range of integer options
  bool required = false;
  bool greedy = false;  // list options: also take the following arguments up to the next option
};

// The values found on the command line, keyed by long name. Getters return the fallback when the
// option was not given; they trust that the option was declared with the matching kind.
class ParsedArgs {
 public:
  bool has(const std::string& long_name) const { return values_.count(long_name) != 0; }
  bool flag(const std::string& long_name) const { return has(long_name); }
  std::string text(const std::string& long_name, const std::string& fallback = "") const;
  int64_t integer(const std::string& long_name, int64_t fallback = 0) const;
  double number(const std::string& long_name, double fallback = 0) const;
  std::vector<std::string> list(const std::string& long_name) const;

  bool help = false;  // --help / -h was given: print help and exit 0, nothing else was validated

 private:
  friend class ArgParser;
  std::map<std::string, std::vector<std::string>> values_;  // raw values in order of appearance
  std::map<std::string, int64_t> integers_;                 // parsed integer values
  std::map<std::string, double> numbers_;                   // parsed number values
};

class ArgParser {
 public:
  // `command` is e.g. "generate"; `usage` the one-line synopsis; `summary` a sentence or two.
  ArgParser(std::string command, std::string usage, std::string summary);

  ArgParser& flag(const std::string& short_name, const std::string& long_name, const std::string& help);
  ArgParser& text(const std::string& short_name, const std::string& long_name, const std::string& metavar,
                  const std::string& help, const std::string& default_text = "");
  ArgParser& integer(const std::string& short_name, const std::string& long_name, const std::string& metavar,
                     const std::string& help, int64_t min, int64_t max, const std::string& default_text = "");
  ArgParser& number(const std::string& short_name, const std::string& long_name, const std::string& metavar,
                    const std::string& help, double min, double max, const std::string& default_text = "");
  // A text option that may be repeated; every value is kept. A greedy one also takes the
  // arguments after it up to the next option (`--compare a.json b.json`).
  ArgParser& list(const std::string& short_name, const std::string& long_name, const std::string& metavar,
                  const std::string& help, bool greedy = false);
  ArgParser& required(const std::string& long_name);
  // At most one of the two may be given.
  ArgParser& conflicts(const std::string& a, const std::string& b);
  // Exactly one of the two must be given.
  ArgParser& one_of(const std::string& a, const std::string& b);
  // `a` is only meaningful together with `b`.
  ArgParser& requires_option(const std::string& a, const std::string& b);
  // Free text appended to --help (examples).
  ArgParser& epilog(const std::string& text);

  // Parses args (without the program and subcommand names). Throws UsageError.
  ParsedArgs parse(const std::vector<std::string>& args) const;
  std::string help() const;
  const std::string& command() const { return command_; }

 private:
  const OptionSpec* find(const std::string& name) const;
  const OptionSpec& spec(const std::string& long_name) const;
  std::string display(const OptionSpec& o) const;  // "-m/--model"
  [[noreturn]] void fail(const std::string& message) const;

  std::string command_, usage_, summary_, epilog_;
  std::vector<OptionSpec> options_;
  std::vector<std::pair<std::string, std::string>> conflicts_, one_of_, requires_;
};

// Splits "512,2048" into integers, each in [min, max]. Throws UsageError naming `what`.
std::vector<int64_t> parse_int_list(const std::string& what, const std::string& text, int64_t min,
                                    int64_t max);
// The same for numbers ("0.5,0.7").
std::vector<double> parse_number_list(const std::string& what, const std::string& text, double min, double max);
// The non-empty items of `text` between `sep` ("a,,b" -> {"a", "b"}).
std::vector<std::string> split_items(const std::string& text, char sep);

}  // namespace sdtp::cli
