// SafetensorsFile / SafetensorsSet: validated readers for Hugging Face safetensors files and
// sharded folders (model.safetensors.index.json). See safetensors.h for the format.
#include "formats/safetensors.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "sdtp/error.h"
#include "util/json.h"
#include "util/mapped_file.h"

namespace sdtp {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 100ull << 20;  // the reference implementation's limit
constexpr int kMaxJsonDepth = 16;                   // a safetensors header needs 3


// Element size of a safetensors dtype, and the DType the rest of the engine knows it by. Unsigned
// and bool types are mapped to the signed integer type of the same width: the loader never converts
// integer tensors, they only need a size so that files holding them still parse.
bool st_dtype(const std::string& s, DType* t, uint64_t* elem_bytes) {
  struct Entry {
    const char* name;
    DType type;
    uint64_t bytes;
  };
  static const Entry kTable[] = {
      {"F32", DType::F32, 4}, {"F16", DType::F16, 2}, {"BF16", DType::BF16, 2}, {"F64", DType::F64, 8},
      {"I8", DType::I8, 1},   {"I16", DType::I16, 2}, {"I32", DType::I32, 4},   {"I64", DType::I64, 8},
      {"U8", DType::I8, 1},   {"BOOL", DType::I8, 1}, {"U16", DType::I16, 2},   {"U32", DType::I32, 4},
      {"U64", DType::I64, 8},
  };
  for (const Entry& e : kTable) {
    if (s == e.name) {
      *t = e.type;
      *elem_bytes = e.bytes;
      return true;
    }
  }
  return false;
}

// A JSON integer >= 0 (unsigned or non-negative signed), as uint64.
bool json_uint(const json& j, uint64_t* out) {
  if (j.is_number_unsigned()) {
    *out = j.get<uint64_t>();
    return true;
  }
  if (j.is_number_integer() && j.get<int64_t>() >= 0) {
    *out = static_cast<uint64_t>(j.get<int64_t>());
    return true;
  }
  return false;
}

std::string read_small_file(const fs::path& p, uint64_t max_bytes) {
  std::error_code ec;
  auto size = fs::file_size(p, ec);
  if (ec) throw FormatError(p.string() + ": cannot read: " + ec.message());
  if (size > max_bytes)
    throw FormatError(p.string() + ": file too large (" + std::to_string(size) + " bytes)");
  std::ifstream in(p, std::ios::binary);
  if (!in) throw FormatError(p.string() + ": cannot open");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  file_ = std::make_unique<MappedFile>(path);
  const uint8_t* base = file_->data();
  const uint64_t size = file_->size();
  if (size < 8) throw FormatError(path + ": not a safetensors file (" + std::to_string(size) + " bytes)");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | base[i];
  if (header_len > size - 8)
    throw FormatError(path + ": header length " + std::to_string(header_len) + " exceeds the file size " +
                      std::to_string(size));
  if (header_len > kMaxHeaderBytes)
    throw FormatError(path + ": header length " + std::to_string(header_len) + " exceeds 100 MB");

  std::string_view text(reinterpret_cast<const char*>(base + 8), header_len);
  json header = parse_untrusted_json(text, path + ": header", kMaxJsonDepth);
  if (!header.is_object()) throw FormatError(path + ": header is not a JSON object");

  const uint8_t* data = base + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;
  struct Span {
    uint64_t begin, end;
    size_t tensor;
  };
  std::vector<Span> spans;

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) throw FormatError(path + ": __metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          throw FormatError(path + ": __metadata__." + m.key() + " is not a string");
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = path + ": tensor '" + name + "'";
    if (!v.is_object()) throw FormatError(where + ": entry is not an object");
    auto dt = v.find("dtype");
    auto sh = v.find("shape");
    auto off = v.find("data_offsets");
    if (dt == v.end() || !dt->is_string()) throw FormatError(where + ": missing or non-string 'dtype'");
    if (sh == v.end() || !sh->is_array()) throw FormatError(where + ": missing or non-array 'shape'");
    if (off == v.end() || !off->is_array() || off->size() != 2)
      throw FormatError(where + ": 'data_offsets' must be an array [begin, end]");

    RawTensor t;
    t.name = name;
    uint64_t elem_bytes = 0;
    const std::string dtype = dt->get<std::string>();
    if (!st_dtype(dtype, &t.dtype, &elem_bytes))
      throw UnsupportedError(where + ": unsupported dtype '" + dtype + "'");

    uint64_t numel = 1;
    for (const json& d : *sh) {
      uint64_t n = 0;
      if (!json_uint(d, &n) || n > static_cast<uint64_t>(INT64_MAX))
        throw FormatError(where + ": shape entry " + d.dump() + " is not a non-negative integer");
      if (__builtin_mul_overflow(numel, n, &numel) || numel > static_cast<uint64_t>(INT64_MAX))
        throw FormatError(where + ": shape " + sh->dump() + " overflows");
      t.shape.push_back(static_cast<int64_t>(n));
    }
    uint64_t nbytes = 0;
    if (__builtin_mul_overflow(numel, elem_bytes, &nbytes))
      throw FormatError(where + ": shape " + sh->dump() + " overflows");

    uint64_t begin = 0, end = 0;
    if (!json_uint((*off)[0], &begin) || !json_uint((*off)[1], &end))
      throw FormatError(where + ": data_offsets " + off->dump() + " are not non-negative integers");
    if (begin > end || end > data_size)
      throw FormatError(where + ": data_offsets " + off->dump() + " outside the data section of " +
                        std::to_string(data_size) + " bytes");
    if (end - begin != nbytes)
      throw FormatError(where + ": data_offsets " + off->dump() + " hold " + std::to_string(end - begin) +
                        " bytes but " + dtype + " " + sh->dump() + " needs " + std::to_string(nbytes));
    t.data = data + begin;
    t.nbytes = nbytes;
    spans.push_back({begin, end, tensors_.size()});
    tensors_.push_back(std::move(t));
  }

  // No two tensors may share bytes (empty tensors occupy nothing).
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) { return a.begin < b.begin; });
  uint64_t prev_end = 0;
  size_t prev = SIZE_MAX;
  for (const Span& s : spans) {
    if (s.begin == s.end) continue;
    if (prev != SIZE_MAX && s.begin < prev_end)
      throw FormatError(path + ": tensors '" + tensors_[prev].name + "' and '" + tensors_[s.tensor].name +
                        "' overlap");
    prev_end = s.end;
    prev = s.tensor;
  }
  for (size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
}

SafetensorsFile::~SafetensorsFile() = default;

const RawTensor* SafetensorsFile::find_tensor(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

SafetensorsSet::SafetensorsSet(const std::string& folder) : folder_(folder) {
  const fs::path dir(folder);
  const fs::path index_path = dir / "model.safetensors.index.json";
  const fs::path single_path = dir / "model.safetensors";
  std::error_code ec;

  if (fs::exists(index_path, ec)) {
    const std::string ip = index_path.string();
    json index = parse_untrusted_json(read_small_file(index_path, kMaxHeaderBytes), ip, kMaxJsonDepth);
    if (!index.is_object()) throw FormatError(ip + ": not a JSON object");
    auto wm = index.find("weight_map");
    if (wm == index.end() || !wm->is_object()) throw FormatError(ip + ": missing or non-object 'weight_map'");

    std::map<std::string, size_t> shard_of_file;                // shard file name -> files_ index
    std::vector<std::pair<std::string, std::string>> expected;  // tensor, shard
    for (auto it = wm->begin(); it != wm->end(); ++it) {
      if (!it.value().is_string()) throw FormatError(ip + ": weight_map['" + it.key() + "'] is not a string");
      const std::string shard = it.value().get<std::string>();
      // Shards must live inside the folder: a relative path with no ".." component.
      const fs::path sp(shard);
      bool bad = shard.empty() || sp.is_absolute() || sp.has_root_name() || sp.has_root_directory();
      for (const auto& part : sp) bad = bad || part == "..";
      if (bad)
        throw FormatError(ip + ": weight_map['" + it.key() + "'] names shard '" + shard +
                          "' outside the folder");
      if (!shard_of_file.count(shard)) {
        const fs::path full = dir / sp;
        if (!fs::is_regular_file(full, ec))
          throw FormatError(ip + ": shard '" + shard + "' (for tensor '" + it.key() + "') does not exist");
        shard_of_file[shard] = files_.size();
        files_.push_back(std::make_unique<SafetensorsFile>(full.string()));
      }
      expected.emplace_back(it.key(), shard);
    }
    if (files_.empty()) throw FormatError(ip + ": weight_map is empty");
    for (const auto& [tensor, shard] : expected) {
      if (!files_[shard_of_file[shard]]->find_tensor(tensor))
        throw FormatError(ip + ": tensor '" + tensor + "' is not in shard '" + shard + "'");
    }
  } else if (fs::exists(single_path, ec)) {
    files_.push_back(std::make_unique<SafetensorsFile>(single_path.string()));
  } else {
    throw FormatError(folder + ": no model.safetensors or model.safetensors.index.json");
  }

  for (const auto& f : files_) {
    for (const RawTensor& t : f->tensors()) {
      auto [it, inserted] = index_.emplace(t.name, &t);
      if (!inserted)
        throw FormatError(folder + ": tensor '" + t.name + "' appears in more than one shard (" + f->path() +
                          ")");
    }
  }
}

SafetensorsSet::~SafetensorsSet() = default;

const RawTensor* SafetensorsSet::find_tensor(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

std::vector<const RawTensor*> SafetensorsSet::tensors() const {
  std::vector<const RawTensor*> out;
  for (const auto& f : files_)
    for (const RawTensor& t : f->tensors()) out.push_back(&t);
  return out;
}

}  // namespace sdtp
