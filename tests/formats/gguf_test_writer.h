// A tiny GGUF writer for tests: builds a v2/v3 file in memory from metadata and tensors, and
// records where every length, count, type and offset field sits so that mutation tests can corrupt
// exactly those fields. It writes what the GGUF spec says and nothing clever; valid output is
// checked against the real reader (tests/formats/test_gguf.cpp) and, by hand, against gguf-py.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace sdtp::testing {

// Position of one integer field inside the built file.
struct GGUFField {
  size_t offset;
  size_t size;       // 4 or 8 bytes
  std::string what;  // e.g. "kv 'general.name' string length"
};

class GGUFTestWriter {
 public:
  // GGUF value type numbers (as GGUFType).
  enum : uint32_t { U8 = 0, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 };

  uint32_t version = 3;
  uint64_t alignment = 32;  // used for padding; written as general.alignment only if set_alignment()

  void set_alignment(uint32_t a) {
    alignment = a;
    Bytes p;
    p.put(a);
    add_kv("general.alignment", U32, p);
  }

  void add_u8(const std::string& k, uint8_t v) { scalar(k, U8, v); }
  void add_i8(const std::string& k, int8_t v) { scalar(k, I8, v); }
  void add_u16(const std::string& k, uint16_t v) { scalar(k, U16, v); }
  void add_i16(const std::string& k, int16_t v) { scalar(k, I16, v); }
  void add_u32(const std::string& k, uint32_t v) { scalar(k, U32, v); }
  void add_i32(const std::string& k, int32_t v) { scalar(k, I32, v); }
  void add_u64(const std::string& k, uint64_t v) { scalar(k, U64, v); }
  void add_i64(const std::string& k, int64_t v) { scalar(k, I64, v); }
  void add_f32(const std::string& k, float v) { scalar(k, F32, v); }
  void add_f64(const std::string& k, double v) { scalar(k, F64, v); }
  void add_bool(const std::string& k, bool v) { scalar(k, BOOL, static_cast<uint8_t>(v ? 1 : 0)); }
  void add_string(const std::string& k, const std::string& v) {
    Bytes p;
    p.str(v, "string length");
    add_kv(k, STR, p);
  }

  template <typename T>
  void add_array(const std::string& k, uint32_t elem_type, const std::vector<T>& v) {
    Bytes p;
    p.put(elem_type, "array type");
    p.put(static_cast<uint64_t>(v.size()), "array length");
    for (const T& x : v) p.put(x);
    add_kv(k, ARR, p);
  }
  void add_string_array(const std::string& k, const std::vector<std::string>& v) {
    Bytes p;
    p.put(static_cast<uint32_t>(STR), "array type");
    p.put(static_cast<uint64_t>(v.size()), "array length");
    for (const auto& s : v) p.str(s, "array string length");
    add_kv(k, ARR, p);
  }
  // An array of `outer` arrays of int32 {0, 1, ..., inner-1}.
  void add_nested_array(const std::string& k, int outer, int inner) {
    Bytes p;
    p.put(static_cast<uint32_t>(ARR), "array type");
    p.put(static_cast<uint64_t>(outer), "array length");
    for (int i = 0; i < outer; ++i) {
      p.put(static_cast<uint32_t>(I32), "inner array type");
      p.put(static_cast<uint64_t>(inner), "inner array length");
      for (int j = 0; j < inner; ++j) p.put(static_cast<int32_t>(j));
    }
    add_kv(k, ARR, p);
  }
  // Any type number and payload, for malformed values.
  void add_raw_kv(const std::string& k, uint32_t type, const std::vector<uint8_t>& payload) {
    Bytes p;
    p.data = payload;
    add_kv(k, type, p);
  }

  // ne in GGUF order (innermost first). data must already have the type's byte size unless the
  // test wants it otherwise; offset_override replaces the computed offset.
  void add_tensor(const std::string& name, uint32_t ggml_type, std::vector<uint64_t> ne,
                  std::vector<uint8_t> data, int64_t offset_override = -1) {
    tensors_.push_back({name, ggml_type, std::move(ne), std::move(data), offset_override});
  }

  // Builds the file; fills `fields`. tensor_count/kv_count may be overridden for tests.
  std::vector<uint8_t> build() {
    fields.clear();
    Bytes out;
    out.data = {'G', 'G', 'U', 'F'};
    out.put(version, "version");
    out.put(static_cast<uint64_t>(tensors_.size()), "tensor count");
    out.put(static_cast<uint64_t>(kvs_.size()), "kv count");
    for (const auto& kv : kvs_) {
      out.str(kv.key, "kv '" + kv.key + "' key length");
      out.put(kv.type, "kv '" + kv.key + "' value type");
      const size_t base = out.data.size();
      out.data.insert(out.data.end(), kv.payload.data.begin(), kv.payload.data.end());
      for (const auto& f : kv.payload.fields) {
        out.fields.push_back({base + f.offset, f.size, "kv '" + kv.key + "' " + f.what});
      }
    }
    // Data offsets: each tensor starts at the next multiple of the alignment.
    std::vector<uint64_t> offsets;
    uint64_t next = 0;
    for (const auto& t : tensors_) {
      offsets.push_back(t.offset_override >= 0 ? static_cast<uint64_t>(t.offset_override) : next);
      next = align(next + t.data.size());
    }
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const auto& t = tensors_[i];
      const std::string w = "tensor '" + t.name + "' ";
      out.str(t.name, w + "name length");
      out.put(static_cast<uint32_t>(t.ne.size()), w + "n_dims");
      for (size_t d = 0; d < t.ne.size(); ++d) out.put(t.ne[d], w + "ne[" + std::to_string(d) + "]");
      out.put(t.ggml_type, w + "type");
      out.put(offsets[i], w + "offset");
    }
    if (!tensors_.empty()) out.data.resize(align(out.data.size()), 0);
    const size_t data_start = out.data.size();
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const size_t at = data_start + offsets[i];
      if (out.data.size() < at + tensors_[i].data.size()) out.data.resize(at + tensors_[i].data.size(), 0);
      if (!tensors_[i].data.empty())
        std::memcpy(out.data.data() + at, tensors_[i].data.data(), tensors_[i].data.size());
    }
    if (!tensors_.empty() && out.data.size() < data_start + next) out.data.resize(data_start + next, 0);
    fields = out.fields;
    return out.data;
  }

  std::vector<GGUFField> fields;

 private:
  struct Bytes {
    std::vector<uint8_t> data;
    std::vector<GGUFField> fields;
    template <typename T>
    void put(const T& v, const std::string& what = "") {
      if (!what.empty()) fields.push_back({data.size(), sizeof(T), what});
      const size_t at = data.size();
      data.resize(at + sizeof(T));
      std::memcpy(data.data() + at, &v, sizeof(T));
    }
    void str(const std::string& s, const std::string& what) {
      put(static_cast<uint64_t>(s.size()), what);
      data.insert(data.end(), s.begin(), s.end());
    }
  };
  struct KV {
    std::string key;
    uint32_t type;
    Bytes payload;
  };
  struct Tensor {
    std::string name;
    uint32_t ggml_type;
    std::vector<uint64_t> ne;
    std::vector<uint8_t> data;
    int64_t offset_override;
  };

  template <typename T>
  void scalar(const std::string& k, uint32_t type, T v) {
    Bytes p;
    p.put(v);
    add_kv(k, type, p);
  }
  void add_kv(const std::string& k, uint32_t type, const Bytes& p) { kvs_.push_back({k, type, p}); }
  uint64_t align(uint64_t x) const { return (x + alignment - 1) / alignment * alignment; }

  std::vector<KV> kvs_;
  std::vector<Tensor> tensors_;
};

// Writes bytes to a file (replacing it); throws std::runtime_error on failure. The old file is
// removed first: truncating a written file on ext4 forces a flush (auto_da_alloc), ~5 ms each.
inline void write_file(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::remove(path.c_str());
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) throw std::runtime_error("cannot write " + path);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  if (!f) throw std::runtime_error("cannot write " + path);
}

}  // namespace sdtp::testing
