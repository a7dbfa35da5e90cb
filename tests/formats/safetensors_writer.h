// Test helper: writes small safetensors files by hand (8-byte header length, JSON header, data), so
// the reader is checked against the published format rather than against itself. Also writes
// config.json files and tiny Hugging Face model folders for the loader tests.
#pragma once

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

namespace sdtp::testing {

struct StTensor {
  std::string name;
  std::string dtype;  // "F32", "F16", "BF16", "I32", ...
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

inline std::vector<uint8_t> f32_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

// Hand-rolled IEEE conversions (truncating bf16 and exact-for-our-values f16), independent of
// quants.cpp. Tests only feed values that are exactly representable in both formats.
inline std::vector<uint8_t> bf16_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> b;
  for (float f : v) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    uint16_t h = static_cast<uint16_t>(u >> 16);
    b.push_back(h & 0xff);
    b.push_back(h >> 8);
  }
  return b;
}
inline std::vector<uint8_t> f16_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> b;
  for (float f : v) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000;
    int32_t exp = int32_t((u >> 23) & 0xff) - 127 + 15;
    uint32_t mant = (u >> 13) & 0x3ff;
    uint16_t h = (f == 0.0f) ? uint16_t(sign) : uint16_t(sign | (uint32_t(exp) << 10) | mant);
    b.push_back(h & 0xff);
    b.push_back(h >> 8);
  }
  return b;
}

// The serialised file: tensors laid out in order; `metadata` becomes "__metadata__".
inline std::string safetensors_bytes(const std::vector<StTensor>& tensors,
                                     const nlohmann::json& metadata = nlohmann::json()) {
  nlohmann::json h = nlohmann::json::object();
  if (!metadata.is_null()) h["__metadata__"] = metadata;
  uint64_t off = 0;
  std::string data;
  for (const StTensor& t : tensors) {
    h[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {off, off + t.bytes.size()}}};
    data.append(reinterpret_cast<const char*>(t.bytes.data()), t.bytes.size());
    off += t.bytes.size();
  }
  std::string header = h.dump();
  while (header.size() % 8) header += ' ';  // the format pads the header with spaces
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = char((n >> (8 * i)) & 0xff);
  return out + header + data;
}

// Removes the old file first: rewriting a file in place with O_TRUNC makes ext4 flush it to disk
// (auto_da_alloc), which turns a thousand small mutants into seconds of I/O.
inline void write_file(const std::string& path, const std::string& bytes) {
  std::error_code ec;
  std::filesystem::remove(path, ec);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
}

// A fresh empty folder under the build tree for one test's files.
inline std::string scratch_dir(const std::string& name) {
  std::filesystem::path p = std::filesystem::path(SDTP_BINARY_DIR) / "test_scratch" / name;
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p.string();
}

// A tiny llama-style config.json (every field a test may want to override is present).
inline nlohmann::json tiny_llama_config() {
  return {{"model_type", "llama"},    {"vocab_size", 16},
          {"hidden_size", 8},         {"num_hidden_layers", 2},
          {"num_attention_heads", 2}, {"num_key_value_heads", 1},
          {"intermediate_size", 12},  {"max_position_embeddings", 64},
          {"rms_norm_eps", 1e-5},     {"rope_theta", 10000.0},
          {"hidden_act", "silu"},     {"tie_word_embeddings", false}};
}

// HF tensors (F32, seeded random values) for a config of the tiny_llama_config() kind.
inline std::vector<StTensor> tiny_llama_tensors(const nlohmann::json& c, uint32_t seed = 1) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const int64_t v = c["vocab_size"], d = c["hidden_size"], L = c["num_hidden_layers"],
                h = c["num_attention_heads"], kvh = c["num_key_value_heads"], ff = c["intermediate_size"];
  const int64_t hd = c.contains("head_dim") ? c["head_dim"].get<int64_t>() : d / h;
  const bool bias = c.value("model_type", "") == "qwen2" || c.value("attention_bias", false);
  std::vector<StTensor> ts;
  auto add = [&](const std::string& name, std::vector<int64_t> shape) {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    std::vector<float> vals(n);
    for (float& x : vals) x = u(rng);
    ts.push_back({name, "F32", shape, f32_bytes(vals)});
  };
  add("model.embed_tokens.weight", {v, d});
  add("model.norm.weight", {d});
  if (!c.value("tie_word_embeddings", false)) add("lm_head.weight", {v, d});
  for (int64_t i = 0; i < L; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    add(p + "input_layernorm.weight", {d});
    add(p + "self_attn.q_proj.weight", {h * hd, d});
    add(p + "self_attn.k_proj.weight", {kvh * hd, d});
    add(p + "self_attn.v_proj.weight", {kvh * hd, d});
    add(p + "self_attn.o_proj.weight", {d, h * hd});
    if (bias) {
      add(p + "self_attn.q_proj.bias", {h * hd});
      add(p + "self_attn.k_proj.bias", {kvh * hd});
      add(p + "self_attn.v_proj.bias", {kvh * hd});
    }
    add(p + "post_attention_layernorm.weight", {d});
    add(p + "mlp.gate_proj.weight", {ff, d});
    add(p + "mlp.up_proj.weight", {ff, d});
    add(p + "mlp.down_proj.weight", {d, ff});
  }
  return ts;
}

inline void write_hf_folder(const std::string& dir, const nlohmann::json& config,
                            const std::vector<StTensor>& ts) {
  write_file(dir + "/config.json", config.dump(2));
  write_file(dir + "/model.safetensors", safetensors_bytes(ts));
}

}  // namespace sdtp::testing
