// Loading tokenizers from files: malformed and unsupported tokenizer.json files, and the real
// SmolLM2 GGUF (tests named *Slow*: skipped visibly when the model is not on this machine).
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>

#include "formats/gguf.h"
#include "sdtp/error.h"
#include "sdtp/tokenizer.h"
#include "tokenizer/tokenizer_gguf.h"
#include "tokenizer_test_util.h"

namespace sdtp {
namespace {

namespace fs = std::filesystem;
using testing::escaped;
using testing::fixture_path;
using testing::json_ids;
using testing::read_json;

// A scratch folder holding a tokenizer.json derived from gpt2_tiny.
class HfFolder : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("sdtp_tok_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
    base_ = read_json(fixture_path("tokenizer/gpt2_tiny/tokenizer.json"));
  }
  void TearDown() override { fs::remove_all(dir_); }
  void write(const std::string& text, const std::string& name = "tokenizer.json") {
    std::ofstream(dir_ / name, std::ios::binary) << text;
  }
  TokenizerSpec load() { return Tokenizer::spec_from_hf_folder(dir_.string()); }
  fs::path dir_;
  nlohmann::json base_;
};

TEST_F(HfFolder, MissingFileIsFormatError) {
  EXPECT_THROW(load(), FormatError);
}

TEST_F(HfFolder, MalformedJsonIsFormatError) {
  write("{\"model\": {\"type\": \"BPE\", ");
  EXPECT_THROW(load(), FormatError);
}

TEST_F(HfFolder, AbsurdNestingIsFormatError) {
  write(std::string(100000, '[') + std::string(100000, ']'));
  try {
    load();
    FAIL() << "expected FormatError";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer.json"), std::string::npos) << e.what();
  }
}

TEST_F(HfFolder, UnknownSplitRegexIsUnsupportedNamingTheFile) {
  base_["pre_tokenizer"] = {{"type", "Sequence"},
                            {"pretokenizers",
                             {{{"type", "Split"},
                               {"pattern", {{"Regex", "\\w+|[^\\w\\s]+"}}},
                               {"behavior", "Isolated"},
                               {"invert", false}},
                              {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
  write(base_.dump());
  try {
    load();
    FAIL() << "expected UnsupportedError";
  } catch (const UnsupportedError& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer.json"), std::string::npos) << e.what();
  }
}

TEST_F(HfFolder, OtherModelTypesAreUnsupported) {
  base_["model"]["type"] = "WordPiece";
  write(base_.dump());
  EXPECT_THROW(load(), UnsupportedError);
}

TEST_F(HfFolder, BadIdsAreFormatErrors) {
  base_["model"]["vocab"]["Ġthe"] = -3;
  write(base_.dump());
  EXPECT_THROW(load(), FormatError);
  base_["model"]["vocab"]["Ġthe"] = 1LL << 40;
  write(base_.dump());
  EXPECT_THROW(load(), FormatError);
}

TEST_F(HfFolder, MergesAsPairsEqualMergesAsStrings) {
  auto pairs = nlohmann::json::array();
  for (const auto& m : base_["model"]["merges"]) {
    if (m.is_array()) {
      pairs.push_back(m);
    } else {
      const std::string s = m.get<std::string>();
      const size_t sp = s.find(' ', 1);
      pairs.push_back({s.substr(0, sp), s.substr(sp + 1)});
    }
  }
  base_["model"]["merges"] = pairs;
  write(base_.dump());
  const Tokenizer tok(load());
  const Tokenizer ref = testing::hf_fixture_tokenizer("gpt2_tiny");
  for (const std::string& s : testing::tokenizer_strings()) EXPECT_EQ(tok.encode(s), ref.encode(s));
}

TEST_F(HfFolder, ConfigSuppliesBosEosAndTemplate) {
  write(base_.dump());
  write(R"({"bos_token": {"content": "<|endoftext|>"}, "eos_token": "<|endoftext|>", "add_bos_token": true,
           "chat_template": [{"name": "default", "template": "<|im_start|>x"}]})",
        "tokenizer_config.json");
  const TokenizerSpec spec = load();
  EXPECT_TRUE(spec.add_bos);
  EXPECT_EQ(spec.tokens.at(spec.bos_id), "<|endoftext|>");
  EXPECT_EQ(spec.chat_template, "<|im_start|>x");
  EXPECT_EQ(Tokenizer(spec).encode("hi").at(0), spec.bos_id);
}

// ---- The real model (default ~/.cache/sdtp/models/SmolLM2-135M-Instruct.Q4_1.gguf) ----

std::unique_ptr<Tokenizer> real_model_tokenizer() {
  const std::string path = testing::default_model_path();
  if (!testing::path_exists(path)) return nullptr;
  GGUFFile f(path);
  return std::make_unique<Tokenizer>(tokenizer_spec_from_gguf(f));
}

TEST(TokenizerSlow, SmolLM2MatchesReference) {
  auto tok = real_model_tokenizer();
  if (!tok) SDTP_NO_DEFAULT_MODEL("model not found at " << testing::default_model_path());
  const auto ref = read_json(fixture_path("tokenizer/smollm2_reference.json"));
  EXPECT_EQ(tok->n_vocab(), ref["n_vocab"].get<int32_t>());
  EXPECT_EQ(tok->spec().pre, "smollm");
  EXPECT_FALSE(tok->spec().add_bos);
  EXPECT_EQ(tok->spec().tokens[tok->eos_id()], "<|im_end|>");
  EXPECT_TRUE(tok->is_end_of_generation(0));  // <|endoftext|>
  EXPECT_EQ(tok->chat_family(), ChatFamily::chatml);
  const auto& strings = ref["strings"];
  for (size_t i = 0; i < strings.size(); ++i) {
    const std::string s = strings[i].get<std::string>();
    SCOPED_TRACE("\"" + escaped(s) + "\"");
    const auto ids = json_ids(ref["ids"][i]);
    EXPECT_EQ(tok->encode(s), ids);
    EXPECT_EQ(tok->decode(ids, true), ref["decoded"][i].get<std::string>());
    EXPECT_EQ(tok->decode(ids, false), ref["decoded_skip_special"][i].get<std::string>());
    EXPECT_EQ(tok->decode(tok->encode(s, false, false)), s);
    EXPECT_EQ(tok->decode(tok->encode(s), true), s);
  }
  for (const auto& c : ref["chat"]) {
    std::vector<ChatMessage> msgs;
    for (const auto& m : c["messages"])
      msgs.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
    EXPECT_EQ(tok->apply_chat_template(msgs, c["add_generation_prompt"].get<bool>()),
              c["rendered"].get<std::string>());
  }
}

TEST(TokenizerSlow, SmolLM2Encodes100KBQuickly) {
  auto tok = real_model_tokenizer();
  if (!tok) SDTP_NO_DEFAULT_MODEL("model not found at " << testing::default_model_path());
  std::mt19937 rng(11);
  const auto strings = testing::tokenizer_strings();
  std::string text;
  while (text.size() < 100 * 1024) text += strings[rng() % strings.size()] + "\n";
  const auto t0 = std::chrono::steady_clock::now();
  const auto ids = tok->encode(text, false, false);
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(ms, 1000.0);
  EXPECT_EQ(tok->decode(ids), text);
  std::printf("[ perf ] SmolLM2: %zu bytes -> %zu ids in %.1f ms\n", text.size(), ids.size(), ms);
}

}  // namespace
}  // namespace sdtp
