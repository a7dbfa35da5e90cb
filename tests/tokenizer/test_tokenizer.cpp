// Tokenizer tests against Hugging Face `tokenizers` and `sentencepiece` references (tiny tokenizers
// trained by scripts/fixtures/gen_tokenizer_fixtures.py): ids, decoding, round trips, invalid UTF-8.
#include <gtest/gtest.h>

#include <chrono>
#include <random>

#include "formats/gguf.h"
#include "sdtp/error.h"
#include "sdtp/tokenizer.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/tokenizer_gguf.h"
#include "tokenizer_test_util.h"

namespace sdtp {
namespace {

using testing::escaped;
using testing::fixture_path;
using testing::json_ids;
using testing::read_json;

// Compares encode/decode with a <name>_ids.json reference for every test string.
void expect_matches_reference(const Tokenizer& tok, const std::string& ids_file, bool parse_special) {
  const auto strings = testing::tokenizer_strings();
  const auto ref = read_json(fixture_path("tokenizer/" + ids_file));
  ASSERT_EQ(ref["ids"].size(), strings.size());
  for (size_t i = 0; i < strings.size(); ++i) {
    SCOPED_TRACE("string " + std::to_string(i) + ": \"" + escaped(strings[i]) + "\"");
    const std::vector<int32_t> want = json_ids(ref["ids"][i]);
    EXPECT_EQ(tok.encode(strings[i], /*add_bos=*/false, parse_special), want);
    if (ref.contains("ids_with_bos")) {
      const std::vector<int32_t> with_bos = json_ids(ref["ids_with_bos"][i]);
      EXPECT_EQ(tok.encode(strings[i], true, parse_special), with_bos);
      EXPECT_EQ(tok.decode(with_bos, true), ref["decoded_with_bos"][i].get<std::string>());
    }
    if (ref.contains("decoded_skip_special")) {
      EXPECT_EQ(tok.decode(want, /*render_special=*/true), ref["decoded"][i].get<std::string>());
      EXPECT_EQ(tok.decode(want, false), ref["decoded_skip_special"][i].get<std::string>());
    } else {
      EXPECT_EQ(tok.decode(want), ref["decoded"][i].get<std::string>());
    }
  }
}

class HfFixture : public ::testing::TestWithParam<const char*> {};

TEST_P(HfFixture, IdsAndDecodeMatchHuggingFaceTokenizers) {
  const std::string name = GetParam();
  const Tokenizer tok = testing::hf_fixture_tokenizer(name);
  expect_matches_reference(tok, name + "_ids.json", /*parse_special=*/true);
}

TEST_P(HfFixture, RoundTripsEveryValidString) {
  const std::string name = GetParam();
  const Tokenizer tok = testing::hf_fixture_tokenizer(name);
  const bool spm = tok.spec().model == "llama";
  for (const std::string& s : testing::tokenizer_strings()) {
    SCOPED_TRACE("\"" + escaped(s) + "\"");
    // Metaspace "first" drops a leading space on decode, like HF: nothing to round-trip there.
    if (tok.spec().pre == "metaspace-first" && !s.empty() && s[0] == ' ') continue;
    if (!spm) {
      EXPECT_EQ(tok.decode(tok.encode(s, false, true), true), s);
    }
    EXPECT_EQ(tok.decode(tok.encode(s, false, false), true), s);
  }
}

TEST_P(HfFixture, InvalidUtf8EncodesByteForByte) {
  const Tokenizer tok = testing::hf_fixture_tokenizer(GetParam());
  const std::vector<std::string> bad = {"\xff\xfe",
                                        "abc\x80"
                                        "def",
                                        "\xc3",
                                        "end\xe2\x82",
                                        "\xed\xa0\x80 surrogate",
                                        "\xf4\x90\x80\x80 above",
                                        "\xc0\xaf overlong",
                                        "mix \xe4\xbd\xa0\xe5 \xa5\xbd",
                                        std::string("nul\0byte", 8)};
  for (const std::string& s : bad) {
    SCOPED_TRACE("\"" + escaped(s) + "\"");
    std::vector<int32_t> ids;
    ASSERT_NO_THROW(ids = tok.encode(s, false, true));
    EXPECT_FALSE(ids.empty());
    EXPECT_EQ(tok.decode(ids), s);  // byte-level: raw bytes; SentencePiece: <0xNN> byte fallback
  }
}

TEST_P(HfFixture, RandomBytesRoundTrip) {
  // Arbitrary bytes (mostly invalid UTF-8, sometimes special-token text) never crash and round-trip.
  const Tokenizer tok = testing::hf_fixture_tokenizer(GetParam());
  std::mt19937 rng(2024);
  const std::string pieces[] = {"<s>", "<|im_end|>", " ", "\n", "a", "\xe4\xbd\xa0"};
  for (int n = 0; n < 300; ++n) {
    std::string s;
    const int len = static_cast<int>(rng() % 40);
    for (int k = 0; k < len; ++k) {
      if (rng() % 4 == 0)
        s += pieces[rng() % 6];
      else
        s += static_cast<char>(rng() & 0xFF);
    }
    SCOPED_TRACE("\"" + escaped(s) + "\"");
    EXPECT_NO_THROW(tok.decode(tok.encode(s, true, true), true));
    if (tok.spec().pre == "metaspace-first" && !s.empty() && s[0] == ' ') continue;
    EXPECT_EQ(tok.decode(tok.encode(s, false, false)), s);
  }
}

INSTANTIATE_TEST_SUITE_P(Tokenizer, HfFixture,
                         ::testing::Values("gpt2_tiny", "llama3_tiny", "qwen2_tiny", "smollm_tiny",
                                           "spm_legacy", "spm_first"));

TEST(Tokenizer, HfFolderRecognisesEachPipeline) {
  EXPECT_EQ(Tokenizer::spec_from_hf_folder(fixture_path("tokenizer/gpt2_tiny")).pre, "gpt2");
  const TokenizerSpec l3 = Tokenizer::spec_from_hf_folder(fixture_path("tokenizer/llama3_tiny"));
  EXPECT_EQ(l3.pre, "llama3");  // ignore_merges
  EXPECT_TRUE(l3.add_bos);      // from the TemplateProcessing post-processor
  EXPECT_EQ(l3.tokens[l3.bos_id], "<|begin_of_text|>");
  EXPECT_EQ(l3.tokens[l3.eos_id], "<|eot_id|>");
  const TokenizerSpec q = Tokenizer::spec_from_hf_folder(fixture_path("tokenizer/qwen2_tiny"));
  EXPECT_EQ(q.pre, "qwen2");
  EXPECT_FALSE(q.add_bos);
  EXPECT_EQ(q.bos_id, -1);
  EXPECT_EQ(Tokenizer::spec_from_hf_folder(fixture_path("tokenizer/smollm_tiny")).pre, "smollm");
  const TokenizerSpec s = Tokenizer::spec_from_hf_folder(fixture_path("tokenizer/spm_legacy"));
  EXPECT_EQ(s.model, "llama");
  EXPECT_TRUE(s.add_space_prefix);
  EXPECT_TRUE(s.add_bos);
  EXPECT_EQ(Tokenizer::spec_from_hf_folder(fixture_path("tokenizer/spm_first")).pre, "metaspace-first");
}

TEST(Tokenizer, SpecialTokensOnlyWhenParseSpecial) {
  const Tokenizer tok = testing::hf_fixture_tokenizer("qwen2_tiny");
  const int32_t im_start = tok.encode("<|im_start|>", false, true).at(0);
  EXPECT_EQ(tok.encode("<|im_start|>", false, true).size(), 1u);
  EXPECT_EQ(tok.spec().tokens[im_start], "<|im_start|>");
  const auto plain = tok.encode("<|im_start|>", false, false);
  EXPECT_GT(plain.size(), 1u);
  EXPECT_EQ(tok.decode(plain), "<|im_start|>");
  EXPECT_EQ(tok.decode({im_start}, false), "");
  EXPECT_EQ(tok.decode({im_start}, true), "<|im_start|>");
  EXPECT_EQ(tok.token_bytes(im_start, false), "");
  EXPECT_TRUE(tok.is_end_of_generation(tok.eos_id()));
  EXPECT_TRUE(tok.is_end_of_generation(tok.encode("<|endoftext|>", false, true).at(0)));
  EXPECT_FALSE(tok.is_end_of_generation(im_start));
  EXPECT_THROW(tok.token_bytes(tok.n_vocab()), UsageError);
  EXPECT_THROW(tok.decode({-1}), UsageError);
}

TEST(Tokenizer, TokenBytesConcatenateToDecode) {
  // Streaming: the bytes of each token (possibly partial UTF-8) concatenate to the full text.
  const Tokenizer tok = testing::hf_fixture_tokenizer("llama3_tiny");
  const std::string s = "Emoji 👨‍👩‍👧 and 中文 text";
  const auto ids = tok.encode(s, false, true);
  std::string streamed;
  for (int32_t id : ids) streamed += tok.token_bytes(id);
  EXPECT_EQ(streamed, s);
}

TEST(Tokenizer, SentencePieceScoresMatchSentencePiece) {
  // The GGUF path (tokenizer.ggml.scores, merge by the merged piece's score) against sentencepiece.
  GGUFFile f(fixture_path("tokenizer/spm_tiny.gguf"));
  const TokenizerSpec spec = tokenizer_spec_from_gguf(f);
  EXPECT_EQ(spec.model, "llama");
  EXPECT_TRUE(spec.merges.empty());
  EXPECT_TRUE(spec.add_bos);
  EXPECT_EQ(spec.bos_id, 1);
  EXPECT_EQ(spec.eos_id, 2);
  EXPECT_EQ(spec.unk_id, 0);
  const Tokenizer tok(spec);
  EXPECT_EQ(tok.chat_family(), ChatFamily::llama2);
  // sentencepiece treats "<s>" in text as text: compare without parse_special.
  expect_matches_reference(tok, "spm_tiny_ids.json", /*parse_special=*/false);
  EXPECT_EQ(tok.encode("Hi", true, true).at(0), 1);
}

TEST(Tokenizer, ByteLevelGgufMatchesTokenizerJson) {
  GGUFFile f(fixture_path("tokenizer/llama3_tiny.gguf"));
  const TokenizerSpec spec = tokenizer_spec_from_gguf(f);
  EXPECT_EQ(spec.pre, "llama-bpe");
  EXPECT_TRUE(spec.add_bos);
  const Tokenizer tok(spec);
  EXPECT_EQ(tok.chat_family(), ChatFamily::llama3);
  expect_matches_reference(tok, "llama3_tiny_ids.json", true);
}

TEST(Tokenizer, SpecValidation) {
  TokenizerSpec base = Tokenizer::spec_from_hf_folder(fixture_path("tokenizer/gpt2_tiny"));
  {
    TokenizerSpec s = base;
    s.model = "bert";
    EXPECT_THROW(Tokenizer{s}, UnsupportedError);
  }
  {
    TokenizerSpec s = base;
    s.pre = "some-new-pre";
    EXPECT_THROW(Tokenizer{s}, UnsupportedError);
  }
  {
    TokenizerSpec s = base;
    s.bos_id = static_cast<int32_t>(s.tokens.size());
    EXPECT_THROW(Tokenizer{s}, FormatError);
  }
  {
    TokenizerSpec s = base;
    s.types.pop_back();
    EXPECT_THROW(Tokenizer{s}, FormatError);
  }
  {
    TokenizerSpec s = base;
    s.types[5] = static_cast<TokenType>(42);
    EXPECT_THROW(Tokenizer{s}, FormatError);
  }
  {
    TokenizerSpec s = base;
    s.merges.push_back("nospace");
    EXPECT_THROW(Tokenizer{s}, FormatError);
  }
  {
    TokenizerSpec s = base;
    s.tokens.clear();
    s.types.clear();
    EXPECT_THROW(Tokenizer{s}, FormatError);
  }
  EXPECT_THROW(Tokenizer().encode("x"), UsageError);
}

TEST(Tokenizer, EncodesLargeTextQuickly) {
  // 100 KB of mixed text: well under a second (per-call word cache + heap-based merges).
  const Tokenizer bl = testing::hf_fixture_tokenizer("llama3_tiny");
  const Tokenizer spm = testing::hf_fixture_tokenizer("spm_legacy");
  std::mt19937 rng(7);
  const auto strings = testing::tokenizer_strings();
  std::string text;
  while (text.size() < 100 * 1024) text += strings[rng() % strings.size()] + " ";
  for (const Tokenizer* tok : {&bl, &spm}) {
    const auto t0 = std::chrono::steady_clock::now();
    const auto ids = tok->encode(text, false, false);
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_EQ(tok->decode(ids), text);
    EXPECT_LT(ms, 1000.0) << tok->spec().source;
    std::printf("[ perf ] %s: %zu bytes -> %zu ids in %.1f ms\n", tok->spec().source.c_str(), text.size(),
                ids.size(), ms);
  }
}

// The pre-tokenizer words against HF's Split with the same regexes (Oniguruma), including fuzz strings.
TEST(Pretokenize, MatchesHuggingFaceSplit) {
  const auto ref = read_json(fixture_path("tokenizer/pretokenize.json"));
  const auto& strings = ref["strings"];
  for (const char* name : {"gpt2", "llama3", "qwen2", "smollm"}) {
    const auto kind = pre_tokenizer_from_name(name);
    ASSERT_TRUE(kind.has_value());
    size_t failures = 0;
    for (size_t i = 0; i < strings.size() && failures < 10; ++i) {
      const std::string s = strings[i].get<std::string>();
      std::vector<std::string_view> words;
      pretokenize(*kind, s, words);
      std::vector<std::string> got(words.begin(), words.end());
      std::vector<std::string> want = ref[name][i].get<std::vector<std::string>>();
      if (got != want) ++failures;
      EXPECT_EQ(got, want) << name << " on \"" << escaped(s) << "\"";
    }
  }
}

TEST(Pretokenize, PreNamesFollowLlamaCpp) {
  EXPECT_EQ(pre_tokenizer_from_name("default"), PreTokenizer::gpt2);
  EXPECT_EQ(pre_tokenizer_from_name("llama-bpe"), PreTokenizer::llama3);
  EXPECT_EQ(pre_tokenizer_from_name("qwen2"), PreTokenizer::qwen2);
  EXPECT_EQ(pre_tokenizer_from_name("smollm"), PreTokenizer::smollm);
  EXPECT_FALSE(pre_tokenizer_from_name("tekken").has_value());
}

}  // namespace
}  // namespace sdtp
