// Tokenizers of the llama family: byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM2 pre-tokenizers) and
// SentencePiece-style BPE (Llama 2, Mistral), built from plain data that the model loaders fill in
// from GGUF metadata (tokenizer.ggml.*) or from a Hugging Face tokenizer.json.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace sdtp {

// Token kinds, numbered as GGUF's tokenizer.ggml.token_type.
enum class TokenType : int32_t {
  normal = 1,
  unknown = 2,
  control = 3,
  user_defined = 4,
  unused = 5,
  byte = 6,
};

// Everything needed to build a tokenizer; plain data, validated by Tokenizer's constructor.
struct TokenizerSpec {
  std::string model;  // "gpt2" (byte-level BPE) or "llama" (SentencePiece BPE)
  std::string pre;    // byte-level pre-tokenizer: "gpt2", "llama3", "qwen2", "smollm", ... ("default" = gpt2)
  std::vector<std::string> tokens;   // id -> token text (byte-level: in GPT-2's byte-to-unicode alphabet)
  std::vector<float> scores;         // SentencePiece merge priorities (may be empty for gpt2)
  std::vector<TokenType> types;      // may be empty: all normal
  std::vector<std::string> merges;   // byte-level BPE merges "a b", highest priority first
  int32_t bos_id = -1;
  int32_t eos_id = -1;
  int32_t unk_id = -1;
  int32_t pad_id = -1;
  std::vector<int32_t> eot_ids;  // further end-of-turn ids that stop generation (e.g. <|eot_id|>)
  bool add_bos = false;          // prepend BOS when encoding a prompt
  bool add_space_prefix = true;  // SentencePiece: prepend "▁" to the text
  std::string chat_template;     // the model's Jinja template, used only to recognise its family
  std::string source;            // file the spec came from, for error messages
};

enum class ChatFamily { chatml, llama2, llama3, mistral, none };

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

class Tokenizer {
 public:
  Tokenizer();
  explicit Tokenizer(TokenizerSpec spec);  // throws FormatError on an inconsistent spec
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // Text to ids. Special/added tokens written literally in `text` (e.g. "<|im_start|>") are matched
  // as single ids when parse_special is true. BOS is prepended when add_bos and spec().add_bos.
  std::vector<int32_t> encode(std::string_view text, bool add_bos = true, bool parse_special = true) const;
  // Ids to the exact UTF-8 bytes they stand for (control tokens skipped unless render_special).
  std::string decode(const std::vector<int32_t>& ids, bool render_special = false) const;
  // The bytes of one token, for streaming; may be an incomplete UTF-8 sequence.
  std::string token_bytes(int32_t id, bool render_special = false) const;

  int32_t n_vocab() const;
  int32_t bos_id() const;
  int32_t eos_id() const;
  bool is_end_of_generation(int32_t id) const;  // EOS or an end-of-turn token
  const TokenizerSpec& spec() const;

  ChatFamily chat_family() const;
  // Renders a conversation with the model's chat template, ending with the assistant's turn opened.
  std::string apply_chat_template(const std::vector<ChatMessage>& messages, bool add_generation_prompt = true) const;

  // Builds a spec from a Hugging Face tokenizer.json (+ tokenizer_config.json for BOS/EOS/chat template
  // when present in the same folder). Throws FormatError naming the file on malformed input.
  static TokenizerSpec spec_from_hf_folder(const std::string& folder);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

const char* chat_family_name(ChatFamily f);

// `s` with every byte that does not start a well-formed UTF-8 sequence replaced by U+FFFD, as
// transformers' decode does (errors="replace"): what terminals and JSON are given.
std::string valid_utf8(std::string_view s);
// The offset of the first such byte in `s`, or std::string_view::npos when all of it is UTF-8.
size_t first_invalid_utf8(std::string_view s);

}  // namespace sdtp
