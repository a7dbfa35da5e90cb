// Tests for SafetensorsFile / SafetensorsSet on hand-written files: dtypes, shapes, metadata,
// offsets, and sharded folders with model.safetensors.index.json.
#include <gtest/gtest.h>

#include <filesystem>

#include "formats/quants.h"
#include "formats/safetensors.h"
#include "formats/safetensors_writer.h"
#include "sdtp/error.h"

namespace sdtp {
namespace {

using namespace sdtp::testing;
using nlohmann::json;

std::string header_file(const std::string& dir, const std::string& name, const std::string& header,
                        size_t data_bytes) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = char((uint64_t(header.size()) >> (8 * i)) & 0xff);
  out += header + std::string(data_bytes, '\0');
  const std::string p = dir + "/" + name;
  write_file(p, out);
  return p;
}

TEST(Safetensors, ReadsFloatTypesShapesAndMetadata) {
  const std::string dir = scratch_dir("st_basic");
  const std::vector<float> vals = {1.0f, -2.0f, 0.5f, 3.25f, -0.125f, 64.0f};
  std::vector<StTensor> ts = {
      {"a.f32", "F32", {2, 3}, f32_bytes(vals)},
      {"b.f16", "F16", {3, 2}, f16_bytes(vals)},
      {"c.bf16", "BF16", {6}, bf16_bytes(vals)},
      {"d.i64", "I64", {2}, std::vector<uint8_t>(16, 7)},
      {"e.bool", "BOOL", {3}, std::vector<uint8_t>(3, 1)},
      {"f.scalar", "F32", {}, f32_bytes({42.0f})},
      {"g.empty", "F32", {0, 4}, {}},
  };
  write_file(dir + "/m.safetensors", safetensors_bytes(ts, json{{"format", "pt"}, {"note", "hi"}}));
  SafetensorsFile f(dir + "/m.safetensors");
  ASSERT_EQ(f.tensors().size(), ts.size());
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("note"), "hi");

  const RawTensor* a = f.find_tensor("a.f32");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->dtype, DType::F32);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(a->nbytes, 24u);
  for (const char* name : {"a.f32", "b.f16", "c.bf16"}) {
    const RawTensor* t = f.find_tensor(name);
    ASSERT_NE(t, nullptr) << name;
    std::vector<float> out(t->numel());
    dequantize(t->dtype, t->data, out.data(), t->numel());
    EXPECT_EQ(out, vals) << name;
  }
  EXPECT_EQ(f.find_tensor("b.f16")->dtype, DType::F16);
  EXPECT_EQ(f.find_tensor("c.bf16")->dtype, DType::BF16);
  EXPECT_EQ(f.find_tensor("d.i64")->dtype, DType::I64);
  EXPECT_EQ(f.find_tensor("e.bool")->nbytes, 3u);
  EXPECT_TRUE(f.find_tensor("f.scalar")->shape.empty());
  EXPECT_EQ(f.find_tensor("f.scalar")->numel(), 1);
  EXPECT_EQ(f.find_tensor("g.empty")->numel(), 0);
  EXPECT_EQ(f.find_tensor("nope"), nullptr);
}

TEST(Safetensors, RejectsBadHeaders) {
  const std::string dir = scratch_dir("st_bad");
  auto expect_format_error = [&](const std::string& header, size_t data, const char* what) {
    const std::string p = header_file(dir, "x.safetensors", header, data);
    EXPECT_THROW(SafetensorsFile f(p), FormatError) << what << ": " << header;
  };
  expect_format_error("{", 0, "malformed JSON");
  expect_format_error("[]", 0, "not an object");
  expect_format_error(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", 8, "size mismatch");
  expect_format_error(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4, "past the end");
  expect_format_error(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8, "begin > end");
  expect_format_error(R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8, "negative dim");
  expect_format_error(R"({"t":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", 8, "float dim");
  expect_format_error(R"({"t":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8,
                      "shape overflow");
  expect_format_error(R"({"t":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,8]}})", 8,
                      "byte-size overflow");
  expect_format_error(R"({"t":{"dtype":"F32","shape":[2]}})", 8, "no offsets");
  expect_format_error(R"({"t":{"shape":[2],"data_offsets":[0,8]}})", 8, "no dtype");
  expect_format_error(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", 8, "one offset");
  expect_format_error(R"({"t":[1,2]})", 8, "entry not object");
  expect_format_error(R"({"__metadata__":{"a":1}})", 0, "non-string metadata");
  expect_format_error(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                      R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                      12, "overlap");
  expect_format_error(std::string(1000, '[') + std::string(1000, ']'), 0, "deep nesting");

  // Unknown dtypes are well-formed but unsupported.
  const std::string p =
      header_file(dir, "y.safetensors", R"({"t":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}})", 2);
  EXPECT_THROW(SafetensorsFile f(p), UnsupportedError);
}

TEST(Safetensors, RejectsBadHeaderLengths) {
  const std::string dir = scratch_dir("st_len");
  write_file(dir + "/short", std::string(5, '\0'));
  EXPECT_THROW(SafetensorsFile f(dir + "/short"), FormatError);
  // Header length far past the end of the file.
  std::string huge(8, '\xff');
  write_file(dir + "/huge", huge + "{}");
  EXPECT_THROW(SafetensorsFile f(dir + "/huge"), FormatError);
  EXPECT_THROW(SafetensorsFile f(dir + "/does_not_exist"), FormatError);
}

TEST(Safetensors, ShardedFolderWithIndex) {
  const std::string dir = scratch_dir("st_sharded");
  std::vector<StTensor> s1 = {{"w1", "BF16", {2, 2}, bf16_bytes({1, 2, 3, 4})},
                              {"w2", "F32", {1}, f32_bytes({5})}};
  std::vector<StTensor> s2 = {{"w3", "F16", {3}, f16_bytes({6, 7, 8})}};
  write_file(dir + "/model-00001-of-00002.safetensors", safetensors_bytes(s1));
  write_file(dir + "/model-00002-of-00002.safetensors", safetensors_bytes(s2));
  json index = {{"metadata", {{"total_size", 18}}},
                {"weight_map",
                 {{"w1", "model-00001-of-00002.safetensors"},
                  {"w2", "model-00001-of-00002.safetensors"},
                  {"w3", "model-00002-of-00002.safetensors"}}}};
  write_file(dir + "/model.safetensors.index.json", index.dump());
  SafetensorsSet set(dir);
  EXPECT_EQ(set.tensors().size(), 3u);
  const RawTensor* w3 = set.find_tensor("w3");
  ASSERT_NE(w3, nullptr);
  std::vector<float> out(3);
  dequantize(w3->dtype, w3->data, out.data(), 3);
  EXPECT_EQ(out, (std::vector<float>{6, 7, 8}));
  EXPECT_EQ(set.find_tensor("w1")->dtype, DType::BF16);

  // A tensor the index places in the wrong shard.
  json wrong = index;
  wrong["weight_map"]["w3"] = "model-00001-of-00002.safetensors";
  write_file(dir + "/model.safetensors.index.json", wrong.dump());
  EXPECT_THROW(SafetensorsSet s(dir), FormatError);

  // A missing shard.
  json missing = index;
  missing["weight_map"]["w3"] = "model-00009-of-00009.safetensors";
  write_file(dir + "/model.safetensors.index.json", missing.dump());
  EXPECT_THROW(SafetensorsSet s(dir), FormatError);

  // Path traversal and absolute paths, even to files that exist.
  write_file(dir + "/../outside.safetensors", safetensors_bytes(s2));
  for (const char* evil : {"../outside.safetensors", "/etc/passwd", "sub/../../outside.safetensors"}) {
    json bad = index;
    bad["weight_map"]["w3"] = evil;
    write_file(dir + "/model.safetensors.index.json", bad.dump());
    EXPECT_THROW(SafetensorsSet s(dir), FormatError) << evil;
  }

  // The same tensor in two shards.
  std::vector<StTensor> s2dup = {{"w3", "F16", {3}, f16_bytes({6, 7, 8})},
                                 {"w1", "F32", {1}, f32_bytes({1})}};
  write_file(dir + "/model-00002-of-00002.safetensors", safetensors_bytes(s2dup));
  write_file(dir + "/model.safetensors.index.json", index.dump());
  EXPECT_THROW(SafetensorsSet s(dir), FormatError);

  // Malformed index.
  write_file(dir + "/model.safetensors.index.json", R"({"weight_map": [1,2]})");
  EXPECT_THROW(SafetensorsSet s(dir), FormatError);
  write_file(dir + "/model.safetensors.index.json", R"({"weight_map": {"w1": 3}})");
  EXPECT_THROW(SafetensorsSet s(dir), FormatError);
}

TEST(Safetensors, FolderWithoutWeights) {
  const std::string dir = scratch_dir("st_empty");
  EXPECT_THROW(SafetensorsSet s(dir), FormatError);
}

}  // namespace
}  // namespace sdtp
