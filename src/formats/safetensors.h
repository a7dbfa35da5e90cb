// Reader for Hugging Face safetensors files: an 8-byte little-endian header length, a JSON header
// mapping tensor names to dtype, shape and data offsets, then the raw data. Memory-mapped and
// validated (header length, JSON, dtypes, shapes, offsets inside the data, no overlaps).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "formats/raw_tensor.h"

namespace sdtp {

class MappedFile;

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<RawTensor>& tensors() const { return tensors_; }
  const RawTensor* find_tensor(std::string_view name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }  // "__metadata__"

 private:
  std::string path_;
  std::unique_ptr<MappedFile> file_;
  std::vector<RawTensor> tensors_;
  std::map<std::string, size_t, std::less<>> index_;
  std::map<std::string, std::string> metadata_;
};

// All the safetensors of a Hugging Face folder: model.safetensors, or the shards listed in
// model.safetensors.index.json (every shard named there must exist; a tensor must not repeat).
class SafetensorsSet {
 public:
  explicit SafetensorsSet(const std::string& folder);
  ~SafetensorsSet();
  const RawTensor* find_tensor(std::string_view name) const;
  std::vector<const RawTensor*> tensors() const;
  const std::string& folder() const { return folder_; }

 private:
  std::string folder_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const RawTensor*, std::less<>> index_;
};

}  // namespace sdtp
