// Chat template rendering against transformers' apply_chat_template (Jinja) on the published
// templates of SmolLM2, Qwen2, Llama 2, Llama 3.0/3.1 and Mistral v0.1/v0.3
// (tests/fixtures/tokenizer/chat.json).
#include <gtest/gtest.h>

#include "sdtp/error.h"
#include "sdtp/tokenizer.h"
#include "tokenizer_test_util.h"

namespace sdtp {
namespace {

using testing::fixture_path;
using testing::read_json;

std::vector<ChatMessage> messages_of(const nlohmann::json& j) {
  std::vector<ChatMessage> out;
  for (const auto& m : j) out.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  return out;
}

TEST(ChatTemplate, MatchesTransformersRendering) {
  const auto all = read_json(fixture_path("tokenizer/chat.json"));
  ASSERT_GE(all.size(), 7u);
  for (const auto& t : all) {
    SCOPED_TRACE(t["name"].get<std::string>());
    TokenizerSpec spec =
        Tokenizer::spec_from_hf_folder(fixture_path("tokenizer/" + t["tokenizer"].get<std::string>()));
    spec.chat_template = t["template"].get<std::string>();
    const Tokenizer tok(spec);
    EXPECT_STREQ(chat_family_name(tok.chat_family()), t["family"].get<std::string>().c_str());
    for (const auto& c : t["cases"]) {
      const auto msgs = messages_of(c["messages"]);
      const bool gen = c["add_generation_prompt"].get<bool>();
      SCOPED_TRACE(c["messages"].dump() + (gen ? " +gen" : ""));
      if (c["rendered"].is_string()) {
        EXPECT_EQ(tok.apply_chat_template(msgs, gen), c["rendered"].get<std::string>());
      } else {  // the template raises (e.g. a system message for Mistral v0.1)
        EXPECT_THROW(tok.apply_chat_template(msgs, gen), UsageError);
      }
    }
  }
}

TEST(ChatTemplate, RenderedPromptEncodesSpecialTokens) {
  const Tokenizer tok = testing::hf_fixture_tokenizer("qwen2_tiny");
  const std::string prompt = tok.apply_chat_template({{"user", "Hi"}});
  const auto ids = tok.encode(prompt, /*add_bos=*/false, /*parse_special=*/true);
  EXPECT_EQ(tok.spec().tokens[ids.at(0)], "<|im_start|>");
  EXPECT_EQ(tok.decode(ids, true), prompt);
}

TEST(ChatTemplate, UnknownFamilyIsAClearError) {
  TokenizerSpec spec = Tokenizer::spec_from_hf_folder(fixture_path("tokenizer/gpt2_tiny"));
  spec.chat_template = "{% for m in messages %}### {{ m['content'] }}{% endfor %}";
  const Tokenizer tok(spec);
  EXPECT_EQ(tok.chat_family(), ChatFamily::none);
  EXPECT_THROW(tok.apply_chat_template({{"user", "hi"}}), UnsupportedError);
  spec.chat_template.clear();
  EXPECT_THROW(Tokenizer(spec).apply_chat_template({{"user", "hi"}}), UnsupportedError);
}

TEST(ChatTemplate, Llama2RejectsRolesThatDoNotAlternate) {
  TokenizerSpec spec = Tokenizer::spec_from_hf_folder(fixture_path("tokenizer/spm_legacy"));
  const Tokenizer tok(spec);
  ASSERT_EQ(tok.chat_family(), ChatFamily::llama2);
  EXPECT_THROW(tok.apply_chat_template({{"user", "a"}, {"user", "b"}}), UsageError);
}

}  // namespace
}  // namespace sdtp
