// Typed errors. Everything a user hands us (files, options, prompts) that is wrong ends in one of
// these, with a message naming the file, field and value; the CLI prints it on one line.
#pragma once

#include <stdexcept>
#include <string>

namespace sdtp {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A model, tokenizer or predictor file that is truncated, corrupt or inconsistent.
class FormatError : public Error {
 public:
  using Error::Error;
};

// A well-formed file that asks for something we do not support (architecture, dtype, rope type).
class UnsupportedError : public Error {
 public:
  using Error::Error;
};

// A bad option or request from the user: unknown flag, value out of range, prompt over the context.
class UsageError : public Error {
 public:
  using Error::Error;
};

}  // namespace sdtp
