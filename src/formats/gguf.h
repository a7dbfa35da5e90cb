// Reader for GGUF files (versions 2 and 3). The file is memory-mapped; every length, count, offset,
// type and shape is validated against the file size before use, so a truncated or corrupt file
// throws FormatError (naming the file and the field) instead of reading out of bounds.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "formats/raw_tensor.h"

namespace sdtp {

class MappedFile;

// GGUF metadata value types (gguf_type).
enum class GGUFType : uint32_t {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};

struct GGUFValue {
  GGUFType type = GGUFType::UINT8;
  GGUFType array_type = GGUFType::UINT8;  // element type when type == ARRAY
  // Scalars: integers widened to int64 (uint64 above INT64_MAX is rejected), floats to double.
  std::variant<std::monostate, int64_t, double, bool, std::string> scalar;
  // Arrays: exactly one of these is filled, by element type.
  std::vector<int64_t> ints;
  std::vector<double> floats;
  std::vector<std::string> strings;
  size_t array_size() const;  // elements in an array value
};

class GGUFFile {
 public:
  explicit GGUFFile(const std::string& path);
  ~GGUFFile();
  GGUFFile(const GGUFFile&) = delete;
  GGUFFile& operator=(const GGUFFile&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }

  const GGUFValue* find(std::string_view key) const;  // nullptr when absent
  // Typed getters: nullopt when absent; FormatError when present with an incompatible type.
  std::optional<std::string> get_string(std::string_view key) const;
  std::optional<int64_t> get_int(std::string_view key) const;    // any integer type
  std::optional<double> get_float(std::string_view key) const;   // float32/float64 or integer
  std::optional<bool> get_bool(std::string_view key) const;
  // Array getters: empty when absent; FormatError when present but not an array of that kind.
  std::vector<std::string> get_string_array(std::string_view key) const;
  std::vector<double> get_float_array(std::string_view key) const;  // accepts integer arrays too
  std::vector<int64_t> get_int_array(std::string_view key) const;
  const std::map<std::string, GGUFValue, std::less<>>& metadata() const { return kv_; }

  const std::vector<RawTensor>& tensors() const { return tensors_; }
  const RawTensor* find_tensor(std::string_view name) const;  // nullptr when absent

 private:
  std::string path_;
  std::unique_ptr<MappedFile> file_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  std::map<std::string, GGUFValue, std::less<>> kv_;
  std::vector<RawTensor> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

}  // namespace sdtp
