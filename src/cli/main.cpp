// Entry point of the `sdtp` command-line tool: dispatches to a subcommand and turns every error into
// one line `sdtp: error: <message>` on stderr (exit 2 for usage errors, 1 for everything else).
#include <algorithm>
#include <cstdio>
#include <exception>
#include <new>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "sdtp/error.h"

namespace {

std::string top_level_help() {
  std::string out =
      "usage: sdtp <command> [options]\n"
      "\n"
      "sdtp runs llama-family language models (GGUF or Hugging Face safetensors) on the CPU or a CUDA GPU,\n"
      "with dynamic token pruning of long prompts (SDTP, see docs/sdtp.md).\n"
      "\n"
      "commands:\n";
  size_t width = 0;
  for (const auto& c : sdtp::cli::subcommands()) width = std::max(width, std::string(c.name).size());
  for (const auto& c : sdtp::cli::subcommands()) {
    std::string name = c.name;
    out += "  " + name + std::string(width + 2 - name.size(), ' ') + c.summary + "\n";
  }
  out +=
      "\n"
      "options:\n"
      "  -h, --help  show this help and exit\n"
      "  --version   print the version and exit\n"
      "\n"
      "Run 'sdtp <command> --help' for the options of a command.\n";
  return out;
}

// One line, whatever the message holds.
void print_error(const std::string& message) {
  std::string line = message;
  for (char& c : line)
    if (c == '\n' || c == '\r') c = ' ';
  std::fprintf(stderr, "sdtp: error: %s\n", line.c_str());
}

int dispatch(const std::vector<std::string>& argv) {
  using namespace sdtp::cli;
  if (argv.empty()) throw sdtp::UsageError("missing command (see 'sdtp --help')");
  const std::string& first = argv[0];
  if (first == "-h" || first == "--help" || (first == "help" && argv.size() == 1)) {
    std::fputs(top_level_help().c_str(), stdout);
    return 0;
  }
  if (first == "--version" || first == "-V") {
    std::printf("sdtp %s\n", kVersion);
    return 0;
  }
  // `sdtp help CMD` is `sdtp CMD --help`.
  std::string name = first;
  std::vector<std::string> rest(argv.begin() + 1, argv.end());
  if (first == "help") {
    name = argv[1];
    rest = {"--help"};
  }
  for (const auto& c : subcommands()) {
    if (name != c.name) continue;
    ArgParser parser = c.parser();
    ParsedArgs args = parser.parse(rest);
    if (args.help) {
      std::fputs(parser.help().c_str(), stdout);
      return 0;
    }
    return c.run(args);
  }
  if (!name.empty() && name[0] == '-')
    throw sdtp::UsageError("unknown option '" + name + "' (see 'sdtp --help')");
  throw sdtp::UsageError("unknown command '" + name + "' (see 'sdtp --help')");
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + (argc > 0 ? 1 : 0), argv + argc);
  try {
    int rc = dispatch(args);
    if (std::fflush(stdout) != 0) {
      print_error("cannot write to stdout");
      return 1;
    }
    return rc;
  } catch (const sdtp::UsageError& e) {
    std::fflush(stdout);
    print_error(e.what());
    return 2;
  } catch (const sdtp::Error& e) {
    std::fflush(stdout);
    print_error(e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fflush(stdout);
    print_error("out of memory");
    return 1;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    print_error(std::string("unexpected: ") + e.what());
    return 1;
  } catch (...) {
    std::fflush(stdout);
    print_error("unexpected exception");
    return 1;
  }
}
