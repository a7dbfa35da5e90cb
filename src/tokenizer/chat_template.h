// Chat templates: recognises the family of a model's Jinja chat template from its markers and
// renders conversations exactly as transformers' apply_chat_template does for that template
// (plain messages only: no tools). Families: ChatML (SmolLM2, Qwen2; with the template's default
// system prompt), Llama 2 ([INST] <<SYS>>), Llama 3 (3.0 and the 3.1+ "Cutting Knowledge Date"
// preamble) and Mistral ([INST] ... [/INST], v0.1/v0.2 and v0.3 spacing).
#pragma once

#include <string>
#include <vector>

#include "sdtp/tokenizer.h"

namespace sdtp {

struct ChatTemplateInfo {
  ChatFamily family = ChatFamily::none;
  bool has_default_system = false;  // ChatML: the template adds a system turn when none is given
  std::string default_system;
  bool llama3_preamble = false;    // Llama 3.1+: system turn with knowledge/today dates, always present
  bool llama3_date_today = false;  // Llama 3.2+: "Today Date" is strftime_now("%d %b %Y")
  std::string llama3_date = "26 Jul 2024";
  bool mistral_v3 = false;  // "[INST] ...[/INST]" (no space), system prepended to the last user turn
};

ChatTemplateInfo detect_chat_template(const std::string& jinja);

// Throws UnsupportedError for family none and UsageError for conversations the template rejects
// (e.g. Llama 2 / Mistral roles that do not alternate user/assistant).
std::string render_chat_template(const ChatTemplateInfo& info, const std::vector<ChatMessage>& messages,
                                 bool add_generation_prompt, const std::string& bos_token,
                                 const std::string& eos_token, const std::string& source);

}  // namespace sdtp
