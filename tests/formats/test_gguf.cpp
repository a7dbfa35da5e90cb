// Tests of the GGUF reader (src/formats/gguf.cpp): metadata of every type and its getters, tensor
// infos and data placement, rejection of malformed files with messages naming path and field, and
// known facts of the real default model (SmolLM2-135M-Instruct Q4_1) checked against gguf-py.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "formats/gguf.h"
#include "formats/gguf_test_writer.h"
#include "formats/quants.h"
#include "sdtp/error.h"
#include "testing/fixtures.h"

namespace sdtp {
namespace {

using testing::GGUFTestWriter;
using W = GGUFTestWriter;

std::string temp_path(const std::string& tag) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  return ::testing::TempDir() + "sdtp_gguf_" + info->name() + "_" + tag + "_" + std::to_string(getpid()) +
         ".gguf";
}

// Writes the file, parses it, removes it.
std::unique_ptr<GGUFFile> parse(const std::vector<uint8_t>& bytes, const std::string& path) {
  testing::write_file(path, bytes);
  struct Remove {
    std::string p;
    ~Remove() { std::remove(p.c_str()); }
  } rm{path};
  return std::make_unique<GGUFFile>(path);
}

// Expects a FormatError (or `E`) whose message starts with the path and contains `needle`.
template <typename E = FormatError>
void expect_error(const std::vector<uint8_t>& bytes, const std::string& needle,
                  const std::string& tag = "x") {
  const std::string path = temp_path(tag);
  try {
    parse(bytes, path);
    ADD_FAILURE() << "no error; expected one containing '" << needle << "'";
  } catch (const E& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind(path + ": ", 0), 0u) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << "message: " << msg;
  }
}

std::vector<uint8_t> f32_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

std::vector<uint8_t> pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> b(n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(seed + i * 7);
  return b;
}

W full_writer() {
  W w;
  w.add_string("general.architecture", "llama");
  w.add_u8("t.u8", 200);
  w.add_i8("t.i8", -100);
  w.add_u16("t.u16", 60000);
  w.add_i16("t.i16", -30000);
  w.add_u32("t.u32", 4000000000u);
  w.add_i32("t.i32", -2000000000);
  w.add_u64("t.u64", 1ull << 62);
  w.add_i64("t.i64", -(1ll << 62));
  w.add_f32("t.f32", 0.1f);
  w.add_f64("t.f64", 1e-300);
  w.add_bool("t.true", true);
  w.add_bool("t.false", false);
  w.add_string("t.empty", "");
  w.add_array<int32_t>("t.ints", W::I32, {3, -4, 5});
  w.add_array<uint8_t>("t.bools", W::BOOL, {1, 0, 1});
  w.add_array<float>("t.floats", W::F32, {1.5f, -2.5f});
  w.add_array<double>("t.doubles", W::F64, {});
  w.add_string_array("t.strings", {"a", "", "héllo"});
  w.add_nested_array("t.nested", 2, 3);
  w.add_u32("t.after_nested", 7);
  w.add_tensor("tok.weight", 0, {4, 3}, f32_bytes({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}));
  w.add_tensor("q.weight", 2, {64, 2}, pattern(4 * 18, 1));
  w.add_tensor("h", 1, {3}, pattern(6, 9));
  return w;
}

TEST(Gguf, ParsesMetadataOfEveryType) {
  const auto f = parse(full_writer().build(), temp_path("f"));
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->alignment(), 32u);
  EXPECT_EQ(f->metadata().size(), 21u);
  EXPECT_EQ(f->get_string("general.architecture"), "llama");
  EXPECT_EQ(f->get_int("t.u8"), 200);
  EXPECT_EQ(f->get_int("t.i8"), -100);
  EXPECT_EQ(f->get_int("t.u16"), 60000);
  EXPECT_EQ(f->get_int("t.i16"), -30000);
  EXPECT_EQ(f->get_int("t.u32"), 4000000000ll);
  EXPECT_EQ(f->get_int("t.i32"), -2000000000);
  EXPECT_EQ(f->get_int("t.u64"), 1ll << 62);
  EXPECT_EQ(f->get_int("t.i64"), -(1ll << 62));
  EXPECT_EQ(f->get_float("t.f32"), static_cast<double>(0.1f));
  EXPECT_EQ(f->get_float("t.f64"), 1e-300);
  EXPECT_EQ(f->get_float("t.u8"), 200.0);  // integers read as numbers
  EXPECT_EQ(f->get_bool("t.true"), true);
  EXPECT_EQ(f->get_bool("t.false"), false);
  EXPECT_EQ(f->get_string("t.empty"), "");
  EXPECT_EQ(f->get_int_array("t.ints"), (std::vector<int64_t>{3, -4, 5}));
  EXPECT_EQ(f->get_float_array("t.ints"), (std::vector<double>{3, -4, 5}));
  EXPECT_EQ(f->get_float_array("t.floats"), (std::vector<double>{1.5, -2.5}));
  EXPECT_TRUE(f->get_float_array("t.doubles").empty());
  EXPECT_EQ(f->get_string_array("t.strings"), (std::vector<std::string>{"a", "", "héllo"}));
  EXPECT_EQ(f->get_int("t.after_nested"), 7);

  const GGUFValue* b = f->find("t.bools");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->type, GGUFType::ARRAY);
  EXPECT_EQ(b->array_type, GGUFType::BOOL);
  EXPECT_EQ(b->ints, (std::vector<int64_t>{1, 0, 1}));
  EXPECT_EQ(b->array_size(), 3u);
  const GGUFValue* n = f->find("t.nested");  // arrays of arrays are skipped, kept empty
  ASSERT_NE(n, nullptr);
  EXPECT_EQ(n->array_type, GGUFType::ARRAY);
  EXPECT_EQ(n->array_size(), 0u);
  EXPECT_EQ(f->find("t.u32")->type, GGUFType::UINT32);
}

TEST(Gguf, GettersOfAbsentKeysAndWrongTypes) {
  const auto f = parse(full_writer().build(), temp_path("f"));
  EXPECT_EQ(f->find("nope"), nullptr);
  EXPECT_FALSE(f->get_string("nope").has_value());
  EXPECT_FALSE(f->get_int("nope").has_value());
  EXPECT_FALSE(f->get_float("nope").has_value());
  EXPECT_FALSE(f->get_bool("nope").has_value());
  EXPECT_TRUE(f->get_string_array("nope").empty());
  EXPECT_TRUE(f->get_int_array("nope").empty());
  EXPECT_TRUE(f->get_float_array("nope").empty());

  EXPECT_THROW(f->get_string("t.u32"), FormatError);
  EXPECT_THROW(f->get_int("general.architecture"), FormatError);
  EXPECT_THROW(f->get_int("t.f32"), FormatError);
  EXPECT_THROW(f->get_int("t.true"), FormatError);
  EXPECT_THROW(f->get_float("t.strings"), FormatError);
  EXPECT_THROW(f->get_bool("t.u8"), FormatError);
  EXPECT_THROW(f->get_string_array("t.ints"), FormatError);
  EXPECT_THROW(f->get_string_array("general.architecture"), FormatError);
  EXPECT_THROW(f->get_int_array("t.floats"), FormatError);
  EXPECT_THROW(f->get_int_array("t.strings"), FormatError);
  EXPECT_THROW(f->get_float_array("t.strings"), FormatError);
  EXPECT_THROW(f->get_float_array("t.nested"), FormatError);
  try {
    f->get_int("general.architecture");
  } catch (const FormatError& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.rfind(f->path() + ": ", 0), 0u) << m;
    EXPECT_NE(m.find("general.architecture"), std::string::npos) << m;
    EXPECT_NE(m.find("string"), std::string::npos) << m;
  }
}

TEST(Gguf, TensorInfosShapesAndData) {
  W w = full_writer();
  const auto bytes = w.build();
  const auto f = parse(bytes, temp_path("f"));
  ASSERT_EQ(f->tensors().size(), 3u);
  const RawTensor* t = f->find_tensor("tok.weight");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->dtype, DType::F32);
  EXPECT_EQ(t->shape, (std::vector<int64_t>{3, 4}));  // PyTorch order: GGUF ne reversed
  EXPECT_EQ(t->nbytes, 48u);
  float v[12];
  std::memcpy(v, t->data, 48);
  EXPECT_EQ(v[0], 1.0f);
  EXPECT_EQ(v[11], 12.0f);

  const RawTensor* q = f->find_tensor("q.weight");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->dtype, DType::Q4_0);
  EXPECT_EQ(q->shape, (std::vector<int64_t>{2, 64}));
  EXPECT_EQ(q->numel(), 128);
  EXPECT_EQ(q->nbytes, 72u);
  EXPECT_EQ(std::memcmp(q->data, pattern(72, 1).data(), 72), 0);
  EXPECT_EQ((q->data - t->data) % 32, 0);
  EXPECT_EQ(q->data - t->data, 64);  // 48 bytes padded to 64

  const RawTensor* h = f->find_tensor("h");
  ASSERT_NE(h, nullptr);
  EXPECT_EQ(h->dtype, DType::F16);
  EXPECT_EQ(h->shape, (std::vector<int64_t>{3}));
  EXPECT_EQ(h->data - q->data, 96);
  EXPECT_EQ(f->find_tensor("nope"), nullptr);
  EXPECT_EQ(f->tensors()[0].name, "tok.weight");  // file order kept
  // The data section starts at the first multiple of 32 after the tensor infos (the file's tail).
  EXPECT_EQ(std::memcmp(h->data, bytes.data() + bytes.size() - 32, 6), 0);
}

TEST(Gguf, CustomAlignmentAndVersion2) {
  W w;
  w.version = 2;
  w.set_alignment(64);
  w.add_tensor("a", 0, {3}, f32_bytes({1, 2, 3}));
  w.add_tensor("b", 0, {1}, f32_bytes({4}));
  const auto bytes = w.build();
  const auto f = parse(bytes, temp_path("f"));
  EXPECT_EQ(f->version(), 2u);
  EXPECT_EQ(f->alignment(), 64u);
  EXPECT_EQ(f->find_tensor("b")->data - f->find_tensor("a")->data, 64);
  float x;
  std::memcpy(&x, f->find_tensor("b")->data, 4);
  EXPECT_EQ(x, 4.0f);
}

TEST(Gguf, EmptyFileWithoutTensors) {
  W w;
  const auto f = parse(w.build(), temp_path("f"));
  EXPECT_TRUE(f->tensors().empty());
  EXPECT_TRUE(f->metadata().empty());
}

TEST(Gguf, RejectsBadHeaders) {
  auto bytes = W().build();
  auto v1 = bytes;
  v1[4] = 1;
  expect_error(v1, "version 1");
  auto v9 = bytes;
  v9[4] = 9;
  expect_error(v9, "version 9");
  auto be = bytes;
  be[4] = 0;
  be[7] = 3;
  expect_error(be, "big-endian");
  auto magic = bytes;
  magic[0] = 'X';
  expect_error(magic, "magic");
  expect_error(std::vector<uint8_t>{'G', 'G'}, "magic");
  expect_error(std::vector<uint8_t>{}, "magic");
  expect_error(std::vector<uint8_t>(bytes.begin(), bytes.begin() + 10), "tensor count");
  try {
    GGUFFile f("/nonexistent/dir/model.gguf");
    ADD_FAILURE() << "opened a missing file";
  } catch (const FormatError& e) {
    EXPECT_EQ(std::string(e.what()).rfind("/nonexistent/dir/model.gguf: ", 0), 0u) << e.what();
  }
}

TEST(Gguf, RejectsBadAlignment) {
  for (uint32_t a : {0u, 3u, 48u, 1u << 31}) {
    W w;
    w.set_alignment(a == 0 ? 32 : a);
    auto bytes = w.build();
    if (a == 0) {  // the writer needs a nonzero alignment to pad: write the zero afterwards
      const auto& type_field = w.fields[4];
      ASSERT_EQ(type_field.what, "kv 'general.alignment' value type");
      std::memset(bytes.data() + type_field.offset + 4, 0, 4);
    }
    expect_error(bytes, "general.alignment", std::to_string(a));
  }
  W w;
  w.add_string("general.alignment", "32");
  expect_error(w.build(), "general.alignment");
}

TEST(Gguf, RejectsDuplicatesAndBadValues) {
  {
    W w;
    w.add_u32("k", 1);
    w.add_string("k", "x");
    expect_error(w.build(), "duplicate key");
  }
  {
    W w;
    w.add_tensor("t", 0, {1}, f32_bytes({1}));
    w.add_tensor("t", 0, {1}, f32_bytes({2}));
    expect_error(w.build(), "tensor 't': duplicate tensor name");
  }
  {
    W w;
    w.add_u64("k", 1ull << 63);
    expect_error(w.build(), "uint64 value");
  }
  {
    W w;
    w.add_raw_kv("k", 13, {0, 0, 0, 0});
    expect_error(w.build(), "kv #0 'k': value type 13");
  }
  {
    W w;
    w.add_raw_kv("k", W::ARR, {99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0});
    expect_error(w.build(), "array element type 99");
  }
  {
    W w;  // a string claims more bytes than the file has
    w.add_raw_kv("k", W::STR, {0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F, 'a'});
    expect_error(w.build(), "kv #0 'k': string value length 9223372036854775807");
  }
  {
    W w;  // 2^60 int32s
    w.add_raw_kv("k", W::ARR, {5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10});
    expect_error(w.build(), "array of 1152921504606846976 int32");
  }
}

TEST(Gguf, RejectsBadTensorInfos) {
  auto one = [](uint32_t type, std::vector<uint64_t> ne, std::vector<uint8_t> data, int64_t off = -1) {
    W w;
    w.add_tensor("blk.0.attn_q.weight", type, std::move(ne), std::move(data), off);
    return w.build();
  };
  auto cut = one(0, {4}, pattern(16, 0));  // 16 bytes of data in a 32-byte padded tail
  cut.resize(cut.size() - 32 + 8);
  expect_error(cut, "tensor 'blk.0.attn_q.weight': data [offset 0, 16 bytes] runs past end of file (size " +
                        std::to_string(cut.size()));
  expect_error(one(0, {4}, pattern(16, 0), 8), "data offset 8 is not a multiple of the alignment 32");
  expect_error(one(0, {1, 1, 1, 1, 1}, pattern(4, 0)), "n_dims 5");
  expect_error(one(0, {}, pattern(4, 0)), "n_dims 0");
  expect_error(one(0, {4, 0}, {}), "ne[1] = 0");
  expect_error(one(0, {1ull << 40, 1ull << 40}, pattern(4, 0)), "overflows");
  expect_error(one(77, {4}, pattern(16, 0)), "unknown ggml type 77");
  expect_error<UnsupportedError>(one(16, {256}, pattern(66, 0)), "IQ2_XXS");
  expect_error(one(2, {48}, pattern(36, 0)), "not a multiple of the Q4_0 block size 32");
  expect_error(one(0, {16}, pattern(16, 0)), "runs past end of file");  // 64 bytes declared, 32 present
  {
    W w;
    w.add_tensor("a", 0, {16}, pattern(64, 0));
    w.add_tensor("b", 0, {4}, pattern(16, 0), 32);
    expect_error(w.build(), "tensor 'b': data [offset 32] overlaps tensor 'a' [offset 0, 64 bytes]");
  }
  {
    W w;  // tensor count far beyond what the file could hold
    auto b = w.build();
    const uint64_t big = 1ull << 60;
    std::memcpy(b.data() + 8, &big, 8);
    expect_error(b, "tensor count 1152921504606846976");
    std::memset(b.data() + 8, 0, 8);
    std::memcpy(b.data() + 16, &big, 8);
    expect_error(b, "kv count 1152921504606846976");
  }
}

// --- The real default model (slow: needs ~/.cache/sdtp/models/SmolLM2-135M-Instruct.Q4_1.gguf).

const char kModelName[] = "SmolLM2-135M-Instruct.Q4_1.gguf";

std::string real_model_or_skip() {
  const std::string p = testing::default_model_path();
  if (!testing::path_exists(p)) return "";
  if (p.size() < sizeof(kModelName) - 1 ||
      p.compare(p.size() - (sizeof(kModelName) - 1), std::string::npos, kModelName) != 0) {
    return "";
  }
  return p;
}

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

TEST(GgufSlow, RealModelKnownFacts) {
  const std::string path = real_model_or_skip();
  if (path.empty())
    SDTP_NO_DEFAULT_MODEL("real model " << kModelName << " not found at " << testing::default_model_path());
  GGUFFile f(path);
  // Facts read with gguf-py's GGUFReader.
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.metadata().size(), 33u);
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.get_int("llama.block_count"), 30);
  EXPECT_EQ(f.get_int("llama.embedding_length"), 576);
  EXPECT_EQ(f.get_int("llama.attention.head_count_kv"), 3);
  EXPECT_EQ(f.get_float("llama.rope.freq_base"), 100000.0);
  EXPECT_EQ(f.get_float("llama.attention.layer_norm_rms_epsilon"), static_cast<double>(1e-5f));
  EXPECT_EQ(f.get_string("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(f.get_string("tokenizer.ggml.pre"), "smollm");
  EXPECT_EQ(f.get_bool("tokenizer.ggml.add_bos_token"), false);
  EXPECT_EQ(f.get_string_array("tokenizer.ggml.tokens").size(), 49152u);
  EXPECT_EQ(f.get_string_array("tokenizer.ggml.merges").size(), 48900u);
  EXPECT_EQ(f.get_int_array("tokenizer.ggml.token_type").size(), 49152u);
  EXPECT_EQ(f.get_string_array("general.languages"), (std::vector<std::string>{"en"}));

  ASSERT_EQ(f.tensors().size(), 272u);
  std::map<DType, int> counts;
  for (const auto& t : f.tensors()) counts[t.dtype]++;
  EXPECT_EQ(counts[DType::Q4_1], 210);
  EXPECT_EQ(counts[DType::F32], 61);
  EXPECT_EQ(counts[DType::Q8_0], 1);
  const RawTensor* emb = f.find_tensor("token_embd.weight");
  ASSERT_NE(emb, nullptr);
  EXPECT_EQ(emb->dtype, DType::Q8_0);
  EXPECT_EQ(emb->shape, (std::vector<int64_t>{49152, 576}));
  const RawTensor* q = f.find_tensor("blk.0.attn_q.weight");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->dtype, DType::Q4_1);
  EXPECT_EQ(q->shape, (std::vector<int64_t>{576, 576}));
  EXPECT_EQ(q->nbytes, 207360u);
  EXPECT_EQ(f.find_tensor("blk.29.ffn_down.weight")->shape, (std::vector<int64_t>{576, 1536}));
  EXPECT_EQ(f.find_tensor("output_norm.weight")->dtype, DType::F32);
  EXPECT_EQ(f.find_tensor("output.weight"), nullptr);  // tied embeddings

  // Data placement: absolute file offsets as gguf-py reports them.
  EXPECT_EQ(q->data - emb->data, 33806656 - 1785664);

  // Dequantised rows against gguf-py's gguf.quants.dequantize (bit patterns).
  const uint32_t q_row3[16] = {0xbd80a000, 0x3e142000, 0x3bd00000, 0xbed13000, 0x3ed7b000, 0xbd80a000,
                               0x3bd00000, 0xbe072000, 0x3e142000, 0x3bd00000, 0x3d9aa000, 0x3e90e000,
                               0xbf0c0000, 0xbe4df000, 0xbe4df000, 0x3d9aa000};
  const uint32_t emb_row1000[16] = {0xbde54000, 0xbd977800, 0x3d1b9000, 0xbc936000, 0xbe25cc00, 0xbc23c000,
                                    0x3cf5a000, 0x3e75a000, 0x3d654000, 0xbe0d3c00, 0xbd23c000, 0x3d4cb000,
                                    0xbe58f800, 0x3d8b3000, 0xbe81fa00, 0xbd0b3000};
  std::vector<float> row(576);
  dequantize(DType::Q4_1, q->data + 3 * (576 / 32) * 20, row.data(), 576);
  for (int i = 0; i < 16; ++i) EXPECT_EQ(bits(row[i]), q_row3[i]) << i;
  dequantize(DType::Q8_0, emb->data + 1000 * (576 / 32) * 34, row.data(), 576);
  for (int i = 0; i < 16; ++i) EXPECT_EQ(bits(row[i]), emb_row1000[i]) << i;
}

}  // namespace
}  // namespace sdtp
