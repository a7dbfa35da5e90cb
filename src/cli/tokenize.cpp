// `sdtp tokenize`: encodes a text with the model's tokenizer and prints the ids as a JSON array.
#include <cstdio>

#include "cli/commands.h"

namespace sdtp::cli {

ArgParser tokenize_parser() {
  ArgParser p("tokenize", "sdtp tokenize -m MODEL (-p TEXT | -f FILE) [--no-bos] [--no-special]",
              "Prints the token ids of a text as a JSON array.");
  p.text("-m", "--model", "PATH", "model file (.gguf) or Hugging Face model folder")
      .required("--model")
      .text("-p", "--prompt", "TEXT", "text to encode")
      .text("-f", "--file", "FILE", "encode this file's text ('-': standard input), e.g. one too long for -p")
      .one_of("--prompt", "--file")
      .flag("", "--no-bos", "do not prepend BOS (by default it is prepended when the model asks for it)")
      .flag("", "--no-special", "encode special tokens written in the text (e.g. <|im_start|>) as plain text")
      .epilog(
          "examples:\n"
          "  sdtp tokenize -m model.gguf -p \"Hello world\"\n"
          "  sdtp tokenize -m model.gguf -p \"<|im_start|>user\" --no-special\n"
          "  sdtp tokenize -m model.gguf -f book.txt\n");
  return p;
}

int run_tokenize(const ParsedArgs& args) {
  const std::string text =
      args.has("--file") ? read_text_file(args.text("--file"), "tokenize: text file") : args.text("--prompt");
  std::unique_ptr<Model> model = load_model_checked(args.text("--model"));
  require_tokenizer(*model, "tokenize");
  std::vector<int32_t> ids = model->tokenizer.encode(text, !args.flag("--no-bos"), !args.flag("--no-special"));
  std::printf("%s\n", json_int_array(ids).c_str());
  return 0;
}

}  // namespace sdtp::cli
