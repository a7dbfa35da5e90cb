// Tests for config_from_hf_json (config.json variants as transformers 4.x and 5.x write them) and
// for ModelConfig::validate / n_params.
#include <gtest/gtest.h>

#include "model/hf_config.h"
#include "formats/safetensors_writer.h"
#include "sdtp/error.h"
#include "testing/fixtures.h"

namespace sdtp {
namespace {

using namespace sdtp::testing;
using nlohmann::json;

ModelConfig parse(const json& j, const std::string& test) {
  const std::string dir = scratch_dir("cfg_" + test);
  write_file(dir + "/config.json", j.dump());
  return config_from_hf_json(dir + "/config.json");
}

// Expects `E` with a message that mentions every string in `words`.
template <class E>
void expect_error(const json& j, const std::string& test, std::vector<std::string> words) {
  try {
    parse(j, test);
    ADD_FAILURE() << test << ": no exception";
  } catch (const E& e) {
    for (const auto& w : words) EXPECT_NE(std::string(e.what()).find(w), std::string::npos) << e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << test << ": wrong exception: " << e.what();
  }
}

TEST(HfConfig, LlamaBasicsAndDefaults) {
  json j = tiny_llama_config();
  j.erase("num_key_value_heads");
  j.erase("max_position_embeddings");
  j.erase("rms_norm_eps");
  j.erase("rope_theta");
  j.erase("tie_word_embeddings");
  j.erase("hidden_act");
  ModelConfig c = parse(j, "defaults");
  EXPECT_EQ(c.arch, "llama");
  EXPECT_EQ(c.name, "cfg_defaults");
  EXPECT_EQ(c.n_vocab, 16);
  EXPECT_EQ(c.n_embd, 8);
  EXPECT_EQ(c.n_layer, 2);
  EXPECT_EQ(c.n_head, 2);
  EXPECT_EQ(c.n_head_kv, 2);  // defaults to n_head
  EXPECT_EQ(c.head_dim, 4);
  EXPECT_EQ(c.n_ff, 12);
  EXPECT_EQ(c.n_ctx_train, 2048);  // LlamaConfig default
  EXPECT_FLOAT_EQ(c.rms_eps, 1e-6f);
  EXPECT_FLOAT_EQ(c.rope_theta, 10000.0f);
  EXPECT_EQ(c.rope_scaling.type, "none");
  EXPECT_FALSE(c.tied_embeddings);
  EXPECT_FALSE(c.qkv_bias);
}

TEST(HfConfig, RopeThetaTopLevelOrInRopeParameters) {
  json a = tiny_llama_config();
  a["rope_theta"] = 500000.0;
  EXPECT_FLOAT_EQ(parse(a, "theta_top").rope_theta, 500000.0f);

  json b = tiny_llama_config();
  b.erase("rope_theta");
  b["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1e6}};
  ModelConfig cb = parse(b, "theta_params");
  EXPECT_FLOAT_EQ(cb.rope_theta, 1e6f);
  EXPECT_EQ(cb.rope_scaling.type, "none");

  // Inside the dict wins over the top level; null scaling means none.
  json c = tiny_llama_config();
  c["rope_theta"] = 1.0;
  c["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 2e5}};
  c["rope_scaling"] = nullptr;
  EXPECT_FLOAT_EQ(parse(c, "theta_both").rope_theta, 2e5f);
}

TEST(HfConfig, Llama3ScalingBothSpellings) {
  json params = {{"rope_type", "llama3"},
                 {"factor", 8.0},
                 {"low_freq_factor", 1.0},
                 {"high_freq_factor", 4.0},
                 {"original_max_position_embeddings", 8192},
                 {"rope_theta", 500000.0}};
  json a = tiny_llama_config();
  a["rope_parameters"] = params;
  json b = tiny_llama_config();
  params.erase("rope_theta");
  params.erase("rope_type");
  params["type"] = "llama3";  // transformers 4.x wrote "type" in early Llama 3.1 configs
  b["rope_scaling"] = params;
  b["rope_theta"] = 500000.0;
  for (const ModelConfig& c : {parse(a, "l3_params"), parse(b, "l3_scaling")}) {
    EXPECT_EQ(c.rope_scaling.type, "llama3");
    EXPECT_FLOAT_EQ(c.rope_scaling.factor, 8.0f);
    EXPECT_FLOAT_EQ(c.rope_scaling.low_freq_factor, 1.0f);
    EXPECT_FLOAT_EQ(c.rope_scaling.high_freq_factor, 4.0f);
    EXPECT_EQ(c.rope_scaling.original_max_position, 8192);
    EXPECT_FLOAT_EQ(c.rope_theta, 500000.0f);
  }
  // original_max_position_embeddings falls back to max_position_embeddings, as in transformers.
  json d = a;
  d["rope_parameters"].erase("original_max_position_embeddings");
  EXPECT_EQ(parse(d, "l3_noorig").rope_scaling.original_max_position, 64);
  // A llama3 entry without its factors is malformed.
  json e = a;
  e["rope_parameters"].erase("low_freq_factor");
  expect_error<FormatError>(e, "l3_nolow", {"config.json", "low_freq_factor"});
}

TEST(HfConfig, LinearScalingAndUnsupportedRope) {
  json a = tiny_llama_config();
  a["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  ModelConfig c = parse(a, "linear");
  EXPECT_EQ(c.rope_scaling.type, "linear");
  EXPECT_FLOAT_EQ(c.rope_scaling.factor, 2.0f);
  for (const char* t : {"yarn", "dynamic", "longrope"}) {
    json b = tiny_llama_config();
    b["rope_scaling"] = {{"rope_type", t}, {"factor", 2.0}};
    expect_error<UnsupportedError>(b, std::string("rope_") + t, {"config.json", t});
  }
}

TEST(HfConfig, HeadDimTiedAndBias) {
  json a = tiny_llama_config();
  a["head_dim"] = 6;
  a["tie_word_embeddings"] = true;
  a["attention_bias"] = true;
  ModelConfig c = parse(a, "headdim");
  EXPECT_EQ(c.head_dim, 6);
  EXPECT_TRUE(c.tied_embeddings);
  EXPECT_TRUE(c.qkv_bias);
  json b = tiny_llama_config();
  b["head_dim"] = nullptr;
  EXPECT_EQ(parse(b, "headdim_null").head_dim, 4);

  json q = tiny_llama_config();
  q["model_type"] = "qwen2";
  q.erase("tie_word_embeddings");
  ModelConfig cq = parse(q, "qwen2");
  EXPECT_TRUE(cq.qkv_bias);
  EXPECT_FALSE(cq.tied_embeddings);  // Qwen2Config defaults to untied
  EXPECT_EQ(cq.arch, "qwen2");

  json m = tiny_llama_config();
  m["model_type"] = "mistral";
  m["sliding_window"] = nullptr;
  EXPECT_EQ(parse(m, "mistral").arch, "mistral");
}

TEST(HfConfig, RejectsMalformed) {
  const std::string dir = scratch_dir("cfg_malformed");
  write_file(dir + "/config.json", "{\"model_type\": \"llama\",");
  EXPECT_THROW(config_from_hf_json(dir + "/config.json"), FormatError);
  write_file(dir + "/config.json", "[1, 2]");
  EXPECT_THROW(config_from_hf_json(dir + "/config.json"), FormatError);
  write_file(dir + "/config.json", std::string(100000, '[') + std::string(100000, ']'));
  EXPECT_THROW(config_from_hf_json(dir + "/config.json"), FormatError);
  EXPECT_THROW(config_from_hf_json(dir + "/missing.json"), FormatError);

  json a = tiny_llama_config();
  a.erase("hidden_size");
  expect_error<FormatError>(a, "no_hidden", {"config.json", "hidden_size"});
  json b = tiny_llama_config();
  b["num_hidden_layers"] = "2";
  expect_error<FormatError>(b, "str_layers", {"config.json", "num_hidden_layers", "\"2\""});
  json c = tiny_llama_config();
  c["vocab_size"] = 16.5;
  expect_error<FormatError>(c, "float_vocab", {"vocab_size"});
  json d = tiny_llama_config();
  d["tie_word_embeddings"] = 1;
  expect_error<FormatError>(d, "int_tied", {"tie_word_embeddings"});
  json e = tiny_llama_config();
  e["vocab_size"] = 1e12;
  expect_error<FormatError>(e, "huge_vocab", {"vocab_size"});
  json f = tiny_llama_config();
  f["num_key_value_heads"] = 3;  // 2 heads are not a multiple of 3
  expect_error<FormatError>(f, "bad_gqa", {"config.json", "n_head"});
  json g = tiny_llama_config();
  g["num_attention_heads"] = 0;
  expect_error<FormatError>(g, "zero_heads", {"num_attention_heads"});
  json h = tiny_llama_config();
  h["rms_norm_eps"] = "tiny";
  expect_error<FormatError>(h, "str_eps", {"rms_norm_eps"});
  json i = tiny_llama_config();
  i["vocab_size"] = -3;
  expect_error<FormatError>(i, "neg_vocab", {"n_vocab"});
}

TEST(HfConfig, RejectsUnsupported) {
  json a = tiny_llama_config();
  a["model_type"] = "gpt2";
  expect_error<UnsupportedError>(a, "gpt2", {"config.json", "gpt2"});
  json b = tiny_llama_config();
  b["hidden_act"] = "gelu";
  expect_error<UnsupportedError>(b, "gelu", {"hidden_act", "gelu"});
  json c = tiny_llama_config();
  c.erase("model_type");
  expect_error<FormatError>(c, "no_type", {"model_type"});
  json d = tiny_llama_config();
  d["mlp_bias"] = true;
  expect_error<UnsupportedError>(d, "mlp_bias", {"mlp_bias"});
}

// SmolLM2-135M: 134,515,008 parameters per transformers' num_parameters() (tied embeddings).
TEST(ModelConfig, NParamsMatchesTransformers) {
  ModelConfig c;
  c.arch = "llama";
  c.n_vocab = 49152;
  c.n_embd = 576;
  c.n_layer = 30;
  c.n_head = 9;
  c.n_head_kv = 3;
  c.head_dim = 64;
  c.n_ff = 1536;
  c.n_ctx_train = 8192;
  c.tied_embeddings = true;
  EXPECT_NO_THROW(c.validate("test"));
  EXPECT_EQ(c.n_params(), 134515008);
  c.tied_embeddings = false;
  EXPECT_EQ(c.n_params(), 134515008 + 49152LL * 576);
}

TEST(ModelConfig, ValidateRejectsInconsistent) {
  ModelConfig c;
  c.arch = "llama";
  c.n_vocab = 16;
  c.n_embd = 8;
  c.n_layer = 1;
  c.n_head = 2;
  c.n_head_kv = 2;
  c.head_dim = 4;
  c.n_ff = 8;
  c.n_ctx_train = 16;
  EXPECT_NO_THROW(c.validate("x"));
  ModelConfig bad = c;
  bad.head_dim = 3;
  EXPECT_THROW(bad.validate("x"), FormatError);
  bad = c;
  bad.n_ff = 0;
  EXPECT_THROW(bad.validate("x"), FormatError);
  bad = c;
  bad.rms_eps = 0.0f;
  EXPECT_THROW(bad.validate("x"), FormatError);
  bad = c;
  bad.rope_scaling.type = "yarn";
  EXPECT_THROW(bad.validate("x"), UnsupportedError);
  bad = c;
  bad.arch = "gpt2";
  EXPECT_THROW(bad.validate("x"), UnsupportedError);
}

// The tiny transformers-made models: config.json must give what transformers itself reported.
TEST(HfConfig, TinyFixturesMatchTransformers) {
  const std::string root = fixture_path("tiny");
  if (!path_exists(root)) GTEST_SKIP() << "no tests/fixtures/tiny";
  int n = 0;
  for (const auto& entry : std::filesystem::directory_iterator(root)) {
    const std::string ref_path = entry.path().string() + "/reference.json";
    if (!path_exists(ref_path)) continue;
    const json ref = read_json(ref_path);
    if (!ref.contains("expected_config")) continue;
    const json& e = ref["expected_config"];
    SCOPED_TRACE(entry.path().string());
    ModelConfig c = config_from_hf_json(entry.path().string() + "/config.json");
    EXPECT_EQ(c.arch, e["arch"].get<std::string>());
    EXPECT_EQ(c.n_vocab, e["n_vocab"]);
    EXPECT_EQ(c.n_embd, e["n_embd"]);
    EXPECT_EQ(c.n_layer, e["n_layer"]);
    EXPECT_EQ(c.n_head, e["n_head"]);
    EXPECT_EQ(c.n_head_kv, e["n_head_kv"]);
    EXPECT_EQ(c.head_dim, e["head_dim"]);
    EXPECT_EQ(c.n_ff, e["n_ff"]);
    EXPECT_EQ(c.n_ctx_train, e["n_ctx_train"]);
    EXPECT_FLOAT_EQ(c.rms_eps, e["rms_eps"].get<float>());
    EXPECT_FLOAT_EQ(c.rope_theta, e["rope_theta"].get<float>());
    EXPECT_EQ(c.tied_embeddings, e["tied_embeddings"]);
    EXPECT_EQ(c.qkv_bias, e["qkv_bias"]);
    const json& rs = e["rope_scaling"];
    EXPECT_EQ(c.rope_scaling.type, rs["type"].get<std::string>());
    if (rs.contains("factor")) {
      EXPECT_FLOAT_EQ(c.rope_scaling.factor, rs["factor"].get<float>());
    }
    if (rs.contains("low_freq_factor")) {
      EXPECT_FLOAT_EQ(c.rope_scaling.low_freq_factor, rs["low_freq_factor"].get<float>());
    }
    if (rs.contains("high_freq_factor")) {
      EXPECT_FLOAT_EQ(c.rope_scaling.high_freq_factor, rs["high_freq_factor"].get<float>());
    }
    if (rs.contains("original_max_position")) {
      EXPECT_EQ(c.rope_scaling.original_max_position, rs["original_max_position"]);
    }
    ++n;
  }
  EXPECT_GT(n, 0);
}

}  // namespace
}  // namespace sdtp
