// The generation loop on the real default model: EOS, max tokens, stop strings (cut before the
// stop, nothing of it streamed), streaming pieces that are whole UTF-8 and add up to the result.
#include <gtest/gtest.h>

#include <memory>

#include "sdtp/generate.h"
#include "testing/fixtures.h"

namespace sdtp {
namespace {

bool valid_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = s[i];
    const size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (len == 0 || i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    i += len;
  }
  return true;
}

class GenerateSlow : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string path = testing::default_model_path();
    if (testing::path_exists(path)) model_ = load_model(path).release();
  }
  static void TearDownTestSuite() {
    delete model_;
    model_ = nullptr;
  }
  void SetUp() override {
    if (!model_) SDTP_NO_DEFAULT_MODEL("default model not found at " << testing::default_model_path());
  }
  std::vector<int32_t> chat(const std::string& user) const {
    const Tokenizer& t = model_->tokenizer;
    return t.encode(t.apply_chat_template({{"user", user}}), true, true);
  }
  GenerateResult run(const std::vector<int32_t>& prompt, GenerateOptions o, std::string* streamed = nullptr) const {
    Session s(*model_);
    o.sampling.temperature = 0;
    return generate(s, prompt, o, [&](std::string_view piece) {
      EXPECT_TRUE(valid_utf8(std::string(piece))) << "streamed piece is not whole UTF-8";
      if (streamed) streamed->append(piece);
      return true;
    });
  }
  static Model* model_;
};
Model* GenerateSlow::model_ = nullptr;

TEST_F(GenerateSlow, GreedyChatAnswersAndStopsAtEndOfTurn) {
  GenerateOptions o;
  o.max_tokens = 48;
  std::string streamed;
  const GenerateResult r = run(chat("What is the capital of France?"), o, &streamed);
  EXPECT_NE(r.text.find("Paris"), std::string::npos) << r.text;
  EXPECT_EQ(r.finish_reason, "stop");
  EXPECT_LT(static_cast<int>(r.tokens.size()), o.max_tokens);
  EXPECT_EQ(streamed, r.text);
}

TEST_F(GenerateSlow, MaxTokensEndsWithLength) {
  GenerateOptions o;
  o.max_tokens = 5;
  const GenerateResult r = run(chat("Write a long story about a dragon."), o);
  EXPECT_EQ(r.tokens.size(), 5u);
  EXPECT_EQ(r.finish_reason, "length");
}

TEST_F(GenerateSlow, StopStringCutsTextBeforeIt) {
  GenerateOptions o;
  o.max_tokens = 40;
  const auto prompt = chat("List five fruits, one per line.");
  const GenerateResult full = run(prompt, o);
  ASSERT_GT(full.text.size(), 20u) << full.text;
  // A stop string taken from the middle of the unstopped answer.
  const std::string stop = full.text.substr(full.text.size() / 2, 4);
  o.stop = {stop};
  std::string streamed;
  const GenerateResult cut = run(prompt, o, &streamed);
  EXPECT_EQ(cut.text, full.text.substr(0, full.text.find(stop))) << "stop=" << stop;
  EXPECT_EQ(cut.finish_reason, "stop");
  EXPECT_EQ(streamed, cut.text);
}

TEST_F(GenerateSlow, StreamsWholeUtf8ForNonAsciiOutput) {
  GenerateOptions o;
  o.max_tokens = 40;
  std::string streamed;
  const GenerateResult r = run(chat("Translate to Chinese and add an emoji: I love tea."), o, &streamed);
  EXPECT_TRUE(valid_utf8(r.text));
  EXPECT_EQ(streamed, r.text);
}

}  // namespace
}  // namespace sdtp
