// GGUFFile: parses a memory-mapped GGUF v2/v3 file (header, metadata, tensor infos, data section).
// Layout (little-endian): "GGUF", u32 version, u64 n_tensors, u64 n_kv, then n_kv of
// {string key, u32 type, value}, then n_tensors of {string name, u32 n_dims, u64 ne[n_dims],
// u32 ggml type, u64 offset}, then padding to general.alignment, then the data section.
// A string is u64 length + bytes; an array is u32 element type + u64 count + elements.
// Nothing is read or allocated before the bytes it needs are known to lie inside the file.
#include "formats/gguf.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <new>
#include <stdexcept>

#include "formats/quants.h"
#include "sdtp/error.h"
#include "util/mapped_file.h"

namespace sdtp {

namespace {

constexpr int kMaxDims = 4;
constexpr int kMaxArrayDepth = 8;  // nested arrays are skipped up to this depth
constexpr uint64_t kMaxAlignment = 1ull << 30;
constexpr size_t kMaxReserve = 1u << 16;  // never pre-reserve more elements than this

const char* type_name(GGUFType t) {
  switch (t) {
    case GGUFType::UINT8:
      return "uint8";
    case GGUFType::INT8:
      return "int8";
    case GGUFType::UINT16:
      return "uint16";
    case GGUFType::INT16:
      return "int16";
    case GGUFType::UINT32:
      return "uint32";
    case GGUFType::INT32:
      return "int32";
    case GGUFType::FLOAT32:
      return "float32";
    case GGUFType::BOOL:
      return "bool";
    case GGUFType::STRING:
      return "string";
    case GGUFType::ARRAY:
      return "array";
    case GGUFType::UINT64:
      return "uint64";
    case GGUFType::INT64:
      return "int64";
    case GGUFType::FLOAT64:
      return "float64";
  }
  return "unknown";
}

bool is_int_type(GGUFType t) {
  switch (t) {
    case GGUFType::UINT8:
    case GGUFType::INT8:
    case GGUFType::UINT16:
    case GGUFType::INT16:
    case GGUFType::UINT32:
    case GGUFType::INT32:
    case GGUFType::UINT64:
    case GGUFType::INT64:
      return true;
    default:
      return false;
  }
}

bool is_float_type(GGUFType t) {
  return t == GGUFType::FLOAT32 || t == GGUFType::FLOAT64;
}

// Bytes of one scalar of a fixed-size type; 0 for string and array.
uint64_t scalar_size(GGUFType t) {
  switch (t) {
    case GGUFType::UINT8:
    case GGUFType::INT8:
    case GGUFType::BOOL:
      return 1;
    case GGUFType::UINT16:
    case GGUFType::INT16:
      return 2;
    case GGUFType::UINT32:
    case GGUFType::INT32:
    case GGUFType::FLOAT32:
      return 4;
    case GGUFType::UINT64:
    case GGUFType::INT64:
    case GGUFType::FLOAT64:
      return 8;
    default:
      return 0;
  }
}

// ggml types that exist but that we cannot load, for a clearer message than "unknown type".
const char* unsupported_ggml_type_name(uint32_t v) {
  switch (v) {
    case 9:
      return "Q8_1";
    case 16:
      return "IQ2_XXS";
    case 17:
      return "IQ2_XS";
    case 18:
      return "IQ3_XXS";
    case 19:
      return "IQ1_S";
    case 20:
      return "IQ4_NL";
    case 21:
      return "IQ3_S";
    case 22:
      return "IQ2_S";
    case 23:
      return "IQ4_XS";
    case 29:
      return "IQ1_M";
    case 34:
      return "TQ1_0";
    case 35:
      return "TQ2_0";
    case 39:
      return "MXFP4";
    default:
      return nullptr;
  }
}

// Bounds-checked little-endian reader over the mapped bytes; `context` names the item being parsed
// for error messages ("kv #3 'general.name'").
class Cursor {
 public:
  Cursor(const std::string& path, const uint8_t* data, uint64_t size)
      : path_(path), data_(data), size_(size) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }
  std::string context;  // what is being parsed, for messages

  [[noreturn]] void fail(const std::string& what) const {
    throw FormatError(path_ + ": " + (context.empty() ? "" : context + ": ") + what);
  }

  void need(uint64_t n, const char* field) const {
    if (n > remaining()) {
      fail(std::string(field) + " (" + std::to_string(n) + " bytes at offset " + std::to_string(pos_) +
           ") runs past end of file (size " + std::to_string(size_) + ")");
    }
  }

  template <typename T>
  T read(const char* field) {
    need(sizeof(T), field);
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  void skip(uint64_t n, const char* field) {
    need(n, field);
    pos_ += n;
  }

  std::string read_string(const char* field) {
    const uint64_t len = read<uint64_t>(field);
    if (len > remaining()) {
      fail(std::string(field) + " length " + std::to_string(len) + " at offset " + std::to_string(pos_ - 8) +
           " runs past end of file (size " + std::to_string(size_) + ")");
    }
    std::string s(reinterpret_cast<const char*>(data_ + pos_), static_cast<size_t>(len));
    pos_ += len;
    return s;
  }

 private:
  const std::string& path_;
  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

GGUFType read_value_type(Cursor& c, const char* field) {
  const uint32_t t = c.read<uint32_t>(field);
  if (t > static_cast<uint32_t>(GGUFType::FLOAT64)) {
    c.fail(std::string(field) + " " + std::to_string(t) + " is not a GGUF value type (0..12)");
  }
  return static_cast<GGUFType>(t);
}

// Reads one scalar of fixed-size integer type t, widened to int64.
int64_t read_int(Cursor& c, GGUFType t) {
  switch (t) {
    case GGUFType::UINT8:
      return c.read<uint8_t>("uint8 value");
    case GGUFType::INT8:
      return c.read<int8_t>("int8 value");
    case GGUFType::UINT16:
      return c.read<uint16_t>("uint16 value");
    case GGUFType::INT16:
      return c.read<int16_t>("int16 value");
    case GGUFType::UINT32:
      return c.read<uint32_t>("uint32 value");
    case GGUFType::INT32:
      return c.read<int32_t>("int32 value");
    case GGUFType::INT64:
      return c.read<int64_t>("int64 value");
    case GGUFType::UINT64: {
      const uint64_t v = c.read<uint64_t>("uint64 value");
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        c.fail("uint64 value " + std::to_string(v) + " is above the supported maximum 2^63-1");
      }
      return static_cast<int64_t>(v);
    }
    case GGUFType::BOOL:
      return c.read<uint8_t>("bool value") != 0 ? 1 : 0;
    default:
      break;
  }
  c.fail(std::string("internal: read_int on type ") + type_name(t));
}

double read_float(Cursor& c, GGUFType t) {
  if (t == GGUFType::FLOAT32) return c.read<float>("float32 value");
  return c.read<double>("float64 value");
}

// Walks over an array value without storing it (used for arrays of arrays).
void skip_array(Cursor& c, int depth) {
  if (depth > kMaxArrayDepth) c.fail("arrays nested deeper than " + std::to_string(kMaxArrayDepth));
  const GGUFType et = read_value_type(c, "array element type");
  const uint64_t n = c.read<uint64_t>("array length");
  if (et == GGUFType::STRING || et == GGUFType::ARRAY) {
    // Each element needs at least 8 (string length) or 12 (type + length) bytes.
    const uint64_t min_elem = et == GGUFType::STRING ? 8 : 12;
    if (n > c.remaining() / min_elem) {
      c.fail("array length " + std::to_string(n) + " needs more bytes than the " +
             std::to_string(c.remaining()) + " left in the file");
    }
    for (uint64_t i = 0; i < n; ++i) {
      if (et == GGUFType::STRING) {
        c.skip(c.read<uint64_t>("string length"), "string");
      } else {
        skip_array(c, depth + 1);
      }
    }
    return;
  }
  const uint64_t es = scalar_size(et);
  if (n > c.remaining() / es) {
    c.fail("array of " + std::to_string(n) + " " + type_name(et) + " runs past end of file");
  }
  c.skip(n * es, "array data");
}

GGUFValue read_value(Cursor& c, GGUFType type) {
  GGUFValue v;
  v.type = type;
  if (type == GGUFType::STRING) {
    v.scalar = c.read_string("string value");
  } else if (type == GGUFType::BOOL) {
    v.scalar = c.read<uint8_t>("bool value") != 0;
  } else if (is_float_type(type)) {
    v.scalar = read_float(c, type);
  } else if (is_int_type(type)) {
    v.scalar = read_int(c, type);
  } else {  // ARRAY
    const GGUFType et = read_value_type(c, "array element type");
    v.array_type = et;
    if (et == GGUFType::ARRAY) {
      // Arrays of arrays appear in no model we load: walk over them safely, keep an empty value.
      const uint64_t n = c.read<uint64_t>("array length");
      if (n > c.remaining() / 12) {
        c.fail("array length " + std::to_string(n) + " needs more bytes than the " +
               std::to_string(c.remaining()) + " left in the file");
      }
      for (uint64_t i = 0; i < n; ++i) skip_array(c, 1);
      return v;
    }
    const uint64_t n = c.read<uint64_t>("array length");
    const uint64_t min_elem = et == GGUFType::STRING ? 8 : scalar_size(et);
    if (n > c.remaining() / min_elem) {
      c.fail("array of " + std::to_string(n) + " " + type_name(et) + " needs at least " +
             std::to_string(min_elem) + " bytes each, but only " + std::to_string(c.remaining()) +
             " bytes are left in the file");
    }
    if (et == GGUFType::STRING) {
      v.strings.reserve(std::min<uint64_t>(n, kMaxReserve));
      for (uint64_t i = 0; i < n; ++i) v.strings.push_back(c.read_string("array string"));
    } else if (is_float_type(et)) {
      v.floats.reserve(std::min<uint64_t>(n, kMaxReserve));
      for (uint64_t i = 0; i < n; ++i) v.floats.push_back(read_float(c, et));
    } else {  // integers and bools
      v.ints.reserve(std::min<uint64_t>(n, kMaxReserve));
      for (uint64_t i = 0; i < n; ++i) v.ints.push_back(read_int(c, et));
    }
  }
  return v;
}

}  // namespace

size_t GGUFValue::array_size() const {
  return ints.size() + floats.size() + strings.size();
}

GGUFFile::GGUFFile(const std::string& path) : path_(path) {
  file_ = std::make_unique<MappedFile>(path);
  const uint8_t* base = file_->data();
  const uint64_t size = file_->size();
  Cursor c(path_, base, size);
  try {
    c.context = "header";
    c.need(4, "magic");
    if (std::memcmp(base, "GGUF", 4) != 0) {
      c.fail("not a GGUF file (magic is not \"GGUF\")");
    }
    c.skip(4, "magic");
    version_ = c.read<uint32_t>("version");
    if (version_ == 1) c.fail("GGUF version 1 is not supported (only versions 2 and 3)");
    if (version_ == 0x02000000u || version_ == 0x03000000u) {
      c.fail("big-endian GGUF files are not supported");
    }
    if (version_ != 2 && version_ != 3) {
      c.fail("unsupported GGUF version " + std::to_string(version_) + " (only 2 and 3)");
    }
    const uint64_t n_tensors = c.read<uint64_t>("tensor count");
    const uint64_t n_kv = c.read<uint64_t>("kv count");
    // A kv needs >= 8 (key length) + 4 (type) + 1 bytes; a tensor info >= 8 + 4 + 8 + 4 + 8.
    if (n_kv > c.remaining() / 13) {
      c.fail("kv count " + std::to_string(n_kv) + " is impossible in a file of " + std::to_string(size) +
             " bytes");
    }
    if (n_tensors > c.remaining() / 32) {
      c.fail("tensor count " + std::to_string(n_tensors) + " is impossible in a file of " +
             std::to_string(size) + " bytes");
    }

    for (uint64_t i = 0; i < n_kv; ++i) {
      c.context = "kv #" + std::to_string(i);
      std::string key = c.read_string("key");
      c.context += " '" + key + "'";
      const GGUFType type = read_value_type(c, "value type");
      GGUFValue value = read_value(c, type);
      if (kv_.count(key)) c.fail("duplicate key");
      kv_.emplace(std::move(key), std::move(value));
    }

    c.context = "metadata";
    if (const GGUFValue* a = find("general.alignment")) {
      if (!is_int_type(a->type)) {
        c.fail(std::string("general.alignment has type ") + type_name(a->type) + ", expected an integer");
      }
      const int64_t al = std::get<int64_t>(a->scalar);
      if (al <= 0 || (al & (al - 1)) != 0 || static_cast<uint64_t>(al) > kMaxAlignment) {
        c.fail("general.alignment " + std::to_string(al) + " is not a power of two in [1, 2^30]");
      }
      alignment_ = static_cast<uint64_t>(al);
    }

    struct Pending {
      uint64_t offset;
      uint64_t nbytes;
    };
    std::vector<Pending> pending;
    tensors_.reserve(std::min<uint64_t>(n_tensors, kMaxReserve));
    for (uint64_t i = 0; i < n_tensors; ++i) {
      c.context = "tensor #" + std::to_string(i);
      RawTensor t;
      t.name = c.read_string("name");
      c.context = "tensor '" + t.name + "'";
      const uint32_t n_dims = c.read<uint32_t>("n_dims");
      if (n_dims == 0 || n_dims > kMaxDims) {
        c.fail("n_dims " + std::to_string(n_dims) + " is not in 1.." + std::to_string(kMaxDims));
      }
      uint64_t ne[kMaxDims];
      int64_t numel = 1;
      for (uint32_t d = 0; d < n_dims; ++d) {
        ne[d] = c.read<uint64_t>("ne");
        if (ne[d] == 0 || ne[d] > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
          c.fail("ne[" + std::to_string(d) + "] = " + std::to_string(ne[d]) + " is not a positive size");
        }
        if (static_cast<uint64_t>(numel) >
            static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / ne[d]) {
          c.fail("element count overflows (ne[" + std::to_string(d) + "] = " + std::to_string(ne[d]) + ")");
        }
        numel *= static_cast<int64_t>(ne[d]);
      }
      for (uint32_t d = 0; d < n_dims; ++d) t.shape.push_back(static_cast<int64_t>(ne[n_dims - 1 - d]));
      const uint32_t ggml_type = c.read<uint32_t>("type");
      const auto dtype = dtype_from_ggml(ggml_type);
      if (!dtype) {
        if (const char* nm = unsupported_ggml_type_name(ggml_type)) {
          throw UnsupportedError(path_ + ": " + c.context + ": ggml type " + std::to_string(ggml_type) +
                                 " (" + nm + ") is not supported");
        }
        c.fail("unknown ggml type " + std::to_string(ggml_type));
      }
      t.dtype = *dtype;
      const int64_t bs = dtype_block_size(t.dtype);
      if (static_cast<int64_t>(ne[0]) % bs != 0) {
        c.fail("row length ne[0] = " + std::to_string(ne[0]) + " is not a multiple of the " +
               dtype_name(t.dtype) + " block size " + std::to_string(bs));
      }
      const auto nbytes = dtype_nbytes(t.dtype, numel);
      if (!nbytes) c.fail("byte size of " + std::to_string(numel) + " elements overflows");
      t.nbytes = *nbytes;
      const uint64_t offset = c.read<uint64_t>("offset");
      if (offset % alignment_ != 0) {
        c.fail("data offset " + std::to_string(offset) + " is not a multiple of the alignment " +
               std::to_string(alignment_));
      }
      if (tensor_index_.count(t.name)) c.fail("duplicate tensor name");
      tensor_index_.emplace(t.name, tensors_.size());
      tensors_.push_back(std::move(t));
      pending.push_back({offset, *nbytes});
    }

    // The data section starts at the next multiple of the alignment after the tensor infos.
    c.context = "data section";
    const uint64_t end_of_infos = c.pos();
    const uint64_t data_start = (end_of_infos + alignment_ - 1) / alignment_ * alignment_;
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const uint64_t off = pending[i].offset, nb = pending[i].nbytes;
      const bool fits = data_start <= size && off <= size - data_start && nb <= size - data_start - off;
      if (!fits) {
        throw FormatError(path_ + ": tensor '" + tensors_[i].name + "': data [offset " + std::to_string(off) +
                          ", " + std::to_string(nb) + " bytes] runs past end of file (size " +
                          std::to_string(size) + ", data section at " + std::to_string(data_start) + ")");
      }
      tensors_[i].data = base + data_start + off;
    }
    // No two tensors may share bytes (ggml writes them back to back, each aligned).
    std::vector<size_t> order(tensors_.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(),
              [&](size_t a, size_t b) { return pending[a].offset < pending[b].offset; });
    for (size_t k = 1; k < order.size(); ++k) {
      const Pending& prev = pending[order[k - 1]];
      if (pending[order[k]].offset < prev.offset + prev.nbytes) {
        throw FormatError(path_ + ": tensor '" + tensors_[order[k]].name + "': data [offset " +
                          std::to_string(pending[order[k]].offset) + "] overlaps tensor '" +
                          tensors_[order[k - 1]].name + "' [offset " + std::to_string(prev.offset) + ", " +
                          std::to_string(prev.nbytes) + " bytes]");
      }
    }
  } catch (const std::bad_alloc&) {
    throw FormatError(path_ + ": " + c.context + ": out of memory while reading metadata");
  } catch (const std::length_error&) {
    throw FormatError(path_ + ": " + c.context + ": metadata too large");
  }
}

GGUFFile::~GGUFFile() = default;

const GGUFValue* GGUFFile::find(std::string_view key) const {
  auto it = kv_.find(key);
  return it == kv_.end() ? nullptr : &it->second;
}

namespace {

[[noreturn]] void wrong_type(const std::string& path, std::string_view key, const GGUFValue& v,
                             const char* expected) {
  std::string got = type_name(v.type);
  if (v.type == GGUFType::ARRAY) got += std::string(" of ") + type_name(v.array_type);
  throw FormatError(path + ": metadata '" + std::string(key) + "' has type " + got + ", expected " +
                    expected);
}

}  // namespace

std::optional<std::string> GGUFFile::get_string(std::string_view key) const {
  const GGUFValue* v = find(key);
  if (!v) return std::nullopt;
  if (v->type != GGUFType::STRING) wrong_type(path_, key, *v, "string");
  return std::get<std::string>(v->scalar);
}

std::optional<int64_t> GGUFFile::get_int(std::string_view key) const {
  const GGUFValue* v = find(key);
  if (!v) return std::nullopt;
  if (!is_int_type(v->type)) wrong_type(path_, key, *v, "an integer");
  return std::get<int64_t>(v->scalar);
}

std::optional<double> GGUFFile::get_float(std::string_view key) const {
  const GGUFValue* v = find(key);
  if (!v) return std::nullopt;
  if (is_float_type(v->type)) return std::get<double>(v->scalar);
  if (is_int_type(v->type)) return static_cast<double>(std::get<int64_t>(v->scalar));
  wrong_type(path_, key, *v, "a number");
}

std::optional<bool> GGUFFile::get_bool(std::string_view key) const {
  const GGUFValue* v = find(key);
  if (!v) return std::nullopt;
  if (v->type != GGUFType::BOOL) wrong_type(path_, key, *v, "bool");
  return std::get<bool>(v->scalar);
}

std::vector<std::string> GGUFFile::get_string_array(std::string_view key) const {
  const GGUFValue* v = find(key);
  if (!v) return {};
  if (v->type != GGUFType::ARRAY || v->array_type != GGUFType::STRING) {
    wrong_type(path_, key, *v, "array of string");
  }
  return v->strings;
}

std::vector<double> GGUFFile::get_float_array(std::string_view key) const {
  const GGUFValue* v = find(key);
  if (!v) return {};
  if (v->type != GGUFType::ARRAY) wrong_type(path_, key, *v, "array of numbers");
  if (is_float_type(v->array_type)) return v->floats;
  if (is_int_type(v->array_type)) return std::vector<double>(v->ints.begin(), v->ints.end());
  wrong_type(path_, key, *v, "array of numbers");
}

std::vector<int64_t> GGUFFile::get_int_array(std::string_view key) const {
  const GGUFValue* v = find(key);
  if (!v) return {};
  if (v->type != GGUFType::ARRAY || !is_int_type(v->array_type)) {
    wrong_type(path_, key, *v, "array of integers");
  }
  return v->ints;
}

const RawTensor* GGUFFile::find_tensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

}  // namespace sdtp
