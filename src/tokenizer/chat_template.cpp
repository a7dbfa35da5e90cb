// Chat template recognition and rendering (see chat_template.h).
#include "tokenizer/chat_template.h"

#include <ctime>

#include "sdtp/error.h"
#include "tokenizer/unicode.h"

namespace sdtp {

namespace {

// Python's str.isspace(), which Jinja's trim filter and str.strip() use.
bool py_isspace(uint32_t cp) {
  return is_whitespace(cp) || (cp >= 0x1C && cp <= 0x1F);
}

std::string py_strip(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e) {
    const DecodedChar d = utf8_decode(s, b);
    if (!py_isspace(d.cp)) break;
    b += d.size;
  }
  while (e > b) {
    size_t k = e - 1;  // find the start of the last character
    while (k > b && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80 && e - k < 4) --k;
    const DecodedChar d = utf8_decode(s, k);
    if (k + d.size != e || !py_isspace(d.cp)) break;
    e = k;
  }
  return s.substr(b, e - b);
}

bool contains(const std::string& s, const char* what) {
  return s.find(what) != std::string::npos;
}

// ChatML default system prompt: a string literal "<|im_start|>system\n<text><|im_end|>" in the
// template (newline written as-is or as the Jinja escape "\n").
bool find_default_system(const std::string& t, std::string& out) {
  const std::string head = "<|im_start|>system";
  for (size_t pos = t.find(head); pos != std::string::npos; pos = t.find(head, pos + 1)) {
    size_t p = pos + head.size();
    if (t.compare(p, 1, "\n") == 0)
      p += 1;
    else if (t.compare(p, 2, "\\n") == 0)
      p += 2;
    else
      continue;
    const size_t end = t.find("<|im_end|>", p);
    if (end == std::string::npos) continue;
    std::string lit = t.substr(p, end - p);
    if (lit.empty() || lit.find_first_of("'\"{}+") != std::string::npos) continue;  // not a plain literal
    std::string unescaped;
    for (size_t i = 0; i < lit.size(); ++i) {
      if (lit[i] == '\\' && i + 1 < lit.size() && lit[i + 1] == 'n')
        unescaped += '\n', ++i;
      else
        unescaped += lit[i];
    }
    out = unescaped;
    return true;
  }
  return false;
}

void check_alternation(const std::vector<const ChatMessage*>& loop, const std::string& source,
                       const char* family) {
  for (size_t i = 0; i < loop.size(); ++i) {
    if ((loop[i]->role == "user") != (i % 2 == 0))
      throw UsageError(std::string(family) + " chat template of " + source +
                       ": roles must alternate user/assistant after an optional system message (message " +
                       std::to_string(i) + " has role '" + loop[i]->role + "')");
  }
}

std::string today_date() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%d %b %Y", &tm);
  return buf;
}

}  // namespace

ChatTemplateInfo detect_chat_template(const std::string& t) {
  ChatTemplateInfo info;
  if (t.empty()) return info;
  if (contains(t, "<|start_header_id|>")) {
    info.family = ChatFamily::llama3;
    info.llama3_preamble = contains(t, "Cutting Knowledge Date");
    info.llama3_date_today = contains(t, "strftime_now");
  } else if (contains(t, "<|im_start|>")) {
    info.family = ChatFamily::chatml;
    info.has_default_system = find_default_system(t, info.default_system);
  } else if (contains(t, "<<SYS>>")) {
    info.family = ChatFamily::llama2;
  } else if (contains(t, "[INST]")) {
    info.family = ChatFamily::mistral;
    info.mistral_v3 = contains(t, "\"[/INST]\"") || contains(t, "'[/INST]'");
  }
  return info;
}

std::string render_chat_template(const ChatTemplateInfo& info, const std::vector<ChatMessage>& messages,
                                 bool add_generation_prompt, const std::string& bos, const std::string& eos,
                                 const std::string& source) {
  std::string out;
  switch (info.family) {
    case ChatFamily::chatml: {
      for (size_t i = 0; i < messages.size(); ++i) {
        if (i == 0 && info.has_default_system && messages[0].role != "system")
          out += "<|im_start|>system\n" + info.default_system + "<|im_end|>\n";
        out += "<|im_start|>" + messages[i].role + "\n" + messages[i].content + "<|im_end|>\n";
      }
      if (add_generation_prompt) out += "<|im_start|>assistant\n";
      return out;
    }
    case ChatFamily::llama3: {
      size_t first = 0;
      if (info.llama3_preamble) {
        std::string system;
        if (!messages.empty() && messages[0].role == "system")
          system = py_strip(messages[0].content), first = 1;
        out += bos +
               "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday "
               "Date: ";
        out += (info.llama3_date_today ? today_date() : info.llama3_date) + "\n\n" + system + "<|eot_id|>";
      }
      for (size_t i = first; i < messages.size(); ++i) {
        if (i == 0 && !info.llama3_preamble) out += bos;
        out += "<|start_header_id|>" + messages[i].role + "<|end_header_id|>\n\n" +
               py_strip(messages[i].content) + "<|eot_id|>";
      }
      if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
      return out;
    }
    case ChatFamily::llama2: {
      // The template ignores add_generation_prompt: a prompt already ends with " [/INST]".
      std::vector<const ChatMessage*> loop;
      const ChatMessage* system = nullptr;
      for (size_t i = 0; i < messages.size(); ++i) {
        if (i == 0 && messages[0].role == "system")
          system = &messages[0];
        else
          loop.push_back(&messages[i]);
      }
      check_alternation(loop, source, "Llama 2");
      for (size_t i = 0; i < loop.size(); ++i) {
        std::string content = loop[i]->content;
        if (i == 0 && system) content = "<<SYS>>\n" + system->content + "\n<</SYS>>\n\n" + content;
        if (loop[i]->role == "user")
          out += bos + "[INST] " + py_strip(content) + " [/INST]";
        else
          out += " " + py_strip(content) + " " + eos;
      }
      return out;
    }
    case ChatFamily::mistral: {
      std::vector<const ChatMessage*> loop;
      const ChatMessage* system = nullptr;
      for (size_t i = 0; i < messages.size(); ++i) {
        if (i == 0 && messages[0].role == "system" && info.mistral_v3)
          system = &messages[0];
        else
          loop.push_back(&messages[i]);
      }
      for (const ChatMessage* m : loop) {
        if (m->role != "user" && m->role != "assistant")
          throw UsageError("Mistral chat template of " + source + ": role '" + m->role +
                           "' is not supported (only user and assistant" +
                           (info.mistral_v3 ? ", after an optional first system message)" : ")"));
      }
      check_alternation(loop, source, "Mistral");
      out += bos;
      for (size_t i = 0; i < loop.size(); ++i) {
        const ChatMessage& m = *loop[i];
        if (!info.mistral_v3) {
          if (m.role == "user")
            out += "[INST] " + m.content + " [/INST]";
          else
            out += m.content + eos;
        } else if (m.role == "user") {
          if (i + 1 == loop.size() && system)
            out += "[INST] " + system->content + "\n\n" + m.content + "[/INST]";
          else
            out += "[INST] " + m.content + "[/INST]";
        } else {
          out += " " + py_strip(m.content) + eos;
        }
      }
      return out;
    }
    case ChatFamily::none:
      break;
  }
  throw UnsupportedError("chat template of " + (source.empty() ? std::string("the tokenizer") : source) +
                         " is missing or not a known family (ChatML, Llama 2, Llama 3, Mistral)");
}

const char* chat_family_name(ChatFamily f) {
  switch (f) {
    case ChatFamily::chatml:
      return "chatml";
    case ChatFamily::llama2:
      return "llama2";
    case ChatFamily::llama3:
      return "llama3";
    case ChatFamily::mistral:
      return "mistral";
    case ChatFamily::none:
      return "none";
  }
  return "none";
}

}  // namespace sdtp
