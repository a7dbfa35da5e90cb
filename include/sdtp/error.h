// Typed errors. Everything a user hands us (files, options, prompts) that is wrong ends in one of
// these, with a message naming the file, field and value; the CLI prints it on one line.
#pragma once

#include <cstddef>
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

// A device (GPU) failed: a runtime call, a kernel, a driver; the message names the op and the reason.
class DeviceError : public Error {
 public:
  using Error::Error;
};

// A device allocation would not fit; the message names what was being allocated, the bytes asked
// for and the bytes free ("model needs 13.5 GiB on cuda:0, 9.1 GiB free").
class DeviceOutOfMemoryError : public DeviceError {
 public:
  using DeviceError::DeviceError;
  size_t bytes_requested = 0;
};

}  // namespace sdtp
