// Tokenizer::spec_from_hf_folder: a TokenizerSpec from a Hugging Face tokenizer.json (+ the optional
// tokenizer_config.json and chat_template.jinja of the same folder).
//
// Supported pipelines (anything else is an UnsupportedError naming the file):
//  - byte-level BPE: pre_tokenizer ByteLevel(use_regex) -> "gpt2"; Sequence[Digits(individual),
//    ByteLevel(use_regex)] -> "smollm"; Sequence[Split(Regex P, Isolated), ByteLevel(no regex)] with P
//    the GPT-2, Llama 3 or Qwen2 pattern. normalizer null or NFC (NFC is not applied; llama.cpp does
//    not apply it either, so inputs that are not NFC may tokenize differently from HF).
//  - SentencePiece-style BPE (byte_fallback): normalizer Sequence[Prepend("▁"), Replace(" ", "▁")]
//    (legacy Llama) or Replace only, or pre_tokenizer Metaspace(split=false).
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "sdtp/error.h"
#include "util/json.h"
#include "sdtp/tokenizer.h"
#include "tokenizer/tokenizer_gguf.h"

namespace sdtp {

namespace {

using nlohmann::json;

constexpr size_t kMaxJsonBytes = size_t{1} << 30;
constexpr int kMaxJsonDepth = 64;
constexpr int64_t kMaxVocab = 1 << 24;

const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
const char* kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

std::string read_file(const std::string& path, bool required, bool& found) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  found = static_cast<bool>(in);
  if (!in) {
    if (required) throw FormatError(path + ": cannot open file");
    return {};
  }
  const std::streamoff size = in.tellg();
  if (size < 0 || static_cast<uint64_t>(size) > kMaxJsonBytes)
    throw FormatError(path + ": file size " + std::to_string(size) +
                      " is not plausible for a tokenizer file");
  std::string text(static_cast<size_t>(size), '\0');
  in.seekg(0);
  if (!in.read(text.data(), size)) throw FormatError(path + ": read failed");
  return text;
}


std::string type_of(const json& j) {
  if (!j.is_object()) return "";
  auto it = j.find("type");
  return (it != j.end() && it->is_string()) ? it->get<std::string>() : "";
}

bool get_bool(const json& j, const char* key, bool def) {
  if (!j.is_object()) return def;
  auto it = j.find(key);
  return (it != j.end() && it->is_boolean()) ? it->get<bool>() : def;
}

std::string get_string(const json& j, const char* key) {
  if (!j.is_object()) return "";
  auto it = j.find(key);
  return (it != j.end() && it->is_string()) ? it->get<std::string>() : "";
}

// tokenizer_config.json writes special tokens as "text" or {"content": "text", ...}.
std::string token_content(const json& j) {
  if (j.is_string()) return j.get<std::string>();
  if (j.is_object()) return get_string(j, "content");
  return "";
}

struct PipelineKind {
  std::string model;  // gpt2 | llama
  std::string pre;
  bool add_space_prefix = false;
};

PipelineKind classify(const json& root, const std::string& path) {
  const json& norm = root.contains("normalizer") ? root["normalizer"] : json();
  const json& pt = root.contains("pre_tokenizer") ? root["pre_tokenizer"] : json();
  const std::string nt = type_of(norm), ptt = type_of(pt);
  auto unsupported = [&](const std::string& what) -> PipelineKind {
    throw UnsupportedError(path + ": " + what + " is not a supported tokenizer pipeline");
  };
  auto is_byte_level = [](const json& j, bool use_regex) {
    return type_of(j) == "ByteLevel" && get_bool(j, "use_regex", true) == use_regex &&
           !get_bool(j, "add_prefix_space", false);
  };
  PipelineKind k;
  if (ptt == "ByteLevel" || ptt == "Sequence") {
    if (!norm.is_null() && nt != "NFC")
      return unsupported("normalizer '" + nt + "' with a byte-level pre_tokenizer");
    k.model = "gpt2";
    if (ptt == "ByteLevel") {
      if (!is_byte_level(pt, true))
        return unsupported("pre_tokenizer ByteLevel with add_prefix_space or without use_regex");
      k.pre = "gpt2";
      return k;
    }
    const json& list = pt.contains("pretokenizers") ? pt["pretokenizers"] : json();
    if (!list.is_array() || list.size() != 2) return unsupported("pre_tokenizer Sequence of this shape");
    const json& a = list[0];
    const json& b = list[1];
    if (type_of(a) == "Digits" && get_bool(a, "individual_digits", false) && is_byte_level(b, true)) {
      k.pre = "smollm";
      return k;
    }
    if (type_of(a) == "Split" && is_byte_level(b, false) && get_string(a, "behavior") == "Isolated" &&
        !get_bool(a, "invert", false) && a.contains("pattern") && a["pattern"].is_object()) {
      const std::string re = get_string(a["pattern"], "Regex");
      if (re == kLlama3Pattern)
        k.pre = "llama3";
      else if (re == kQwen2Pattern)
        k.pre = "qwen2";
      else if (re == kGpt2Pattern)
        k.pre = "gpt2";
      else
        return unsupported("pre_tokenizer Split regex '" + re + "'");
      return k;
    }
    return unsupported("pre_tokenizer Sequence [" + type_of(a) + ", " + type_of(b) + "]");
  }
  // SentencePiece-style.
  k.model = "llama";
  auto is_replace_space = [](const json& j) {
    return type_of(j) == "Replace" && j.contains("pattern") && get_string(j["pattern"], "String") == " " &&
           get_string(j, "content") == "\xE2\x96\x81";
  };
  auto is_prepend = [](const json& j) {
    return type_of(j) == "Prepend" && get_string(j, "prepend") == "\xE2\x96\x81";
  };
  if (pt.is_null()) {
    if (nt == "Sequence" && norm.contains("normalizers") && norm["normalizers"].is_array()) {
      const json& n = norm["normalizers"];
      if (n.size() == 2 && is_prepend(n[0]) && is_replace_space(n[1])) {
        k.pre = "default", k.add_space_prefix = true;
        return k;
      }
      if (n.size() == 1 && is_replace_space(n[0])) {
        k.pre = "default", k.add_space_prefix = false;
        return k;
      }
    } else if (is_replace_space(norm)) {
      k.pre = "default", k.add_space_prefix = false;
      return k;
    }
    return unsupported("normalizer '" + nt + "' without a pre_tokenizer");
  }
  if (ptt == "Metaspace") {
    if (!norm.is_null()) return unsupported("normalizer '" + nt + "' with a Metaspace pre_tokenizer");
    if (get_string(pt, "replacement") != "\xE2\x96\x81")
      return unsupported("Metaspace replacement other than U+2581");
    if (get_bool(pt, "split", false)) return unsupported("Metaspace with split=true");
    std::string scheme = get_string(pt, "prepend_scheme");
    if (scheme.empty()) scheme = get_bool(pt, "add_prefix_space", true) ? "always" : "never";
    if (scheme == "always")
      k.pre = "metaspace-always", k.add_space_prefix = true;
    else if (scheme == "first")
      k.pre = "metaspace-first", k.add_space_prefix = true;
    else if (scheme == "never")
      k.pre = "default", k.add_space_prefix = false;
    else
      return unsupported("Metaspace prepend_scheme '" + scheme + "'");
    return k;
  }
  return unsupported("pre_tokenizer '" + ptt + "'");
}

// BOS from a TemplateProcessing post-processor whose single-sequence template starts with a special token.
std::string template_bos(const json& pp) {
  if (type_of(pp) == "Sequence" && pp.contains("processors") && pp["processors"].is_array()) {
    for (const json& p : pp["processors"]) {
      std::string b = template_bos(p);
      if (!b.empty()) return b;
    }
    return "";
  }
  if (type_of(pp) != "TemplateProcessing" || !pp.contains("single") || !pp["single"].is_array() ||
      pp["single"].empty())
    return "";
  const json& first = pp["single"][0];
  if (first.is_object() && first.contains("SpecialToken") && first["SpecialToken"].is_object())
    return get_string(first["SpecialToken"], "id");
  return "";
}

TokenizerSpec spec_from_hf_folder_unchecked(const std::string& folder, const std::string& path) {
  bool found = false;
  const json root = parse_untrusted_json(read_file(path, true, found), path, kMaxJsonDepth);
  if (!root.is_object()) throw FormatError(path + ": top level is not a JSON object");
  if (!root.contains("model") || !root["model"].is_object())
    throw FormatError(path + ": field 'model' is missing");
  const json& model = root["model"];
  const std::string mtype = type_of(model);
  if (!mtype.empty() && mtype != "BPE")
    throw UnsupportedError(path + ": model.type '" + mtype + "' is not supported (BPE)");
  if (!get_string(model, "continuing_subword_prefix").empty() ||
      !get_string(model, "end_of_word_suffix").empty())
    throw UnsupportedError(path + ": model.continuing_subword_prefix / end_of_word_suffix are not supported");
  if (model.contains("dropout") && model["dropout"].is_number() && model["dropout"].get<double>() != 0.0)
    throw UnsupportedError(path + ": model.dropout is not supported");

  const PipelineKind kind = classify(root, path);
  TokenizerSpec spec;
  spec.source = path;
  spec.model = kind.model;
  spec.pre = kind.pre;
  spec.add_space_prefix = kind.add_space_prefix;

  const bool byte_fallback = get_bool(model, "byte_fallback", false);
  const bool ignore_merges = get_bool(model, "ignore_merges", false);
  if (spec.model == "gpt2") {
    if (byte_fallback) throw UnsupportedError(path + ": model.byte_fallback with a byte-level pre_tokenizer");
    if (ignore_merges && spec.pre != "llama3")
      throw UnsupportedError(path + ": model.ignore_merges with the " + spec.pre + " pre-tokenizer");
    if (!ignore_merges && spec.pre == "llama3") spec.pre = "dbrx";  // Llama 3 regex without ignore_merges
  } else if (ignore_merges) {
    throw UnsupportedError(path + ": model.ignore_merges with a SentencePiece-style pipeline");
  }

  // Vocabulary and added tokens -> id-indexed token list.
  if (!model.contains("vocab") || !model["vocab"].is_object())
    throw FormatError(path + ": model.vocab is missing");
  const json& vocab = model["vocab"];
  const json added =
      root.contains("added_tokens") && root["added_tokens"].is_array() ? root["added_tokens"] : json::array();
  int64_t max_id = -1;
  auto check_id = [&](const json& v, const std::string& what) -> int64_t {
    if (!v.is_number_integer()) throw FormatError(path + ": " + what + " has a non-integer id");
    const int64_t id = v.get<int64_t>();
    if (id < 0 || id >= kMaxVocab)
      throw FormatError(path + ": " + what + " has id " + std::to_string(id) + " out of range");
    max_id = std::max(max_id, id);
    return id;
  };
  for (auto it = vocab.begin(); it != vocab.end(); ++it)
    check_id(it.value(), "model.vocab['" + it.key() + "']");
  for (const json& a : added) {
    if (!a.is_object() || !a.contains("id") || !a.contains("content") || !a["content"].is_string())
      throw FormatError(path + ": added_tokens entry without id/content");
    check_id(a["id"], "added_tokens '" + a["content"].get<std::string>() + "'");
  }
  if (max_id < 0) throw FormatError(path + ": model.vocab is empty");
  const size_t n = static_cast<size_t>(max_id + 1);
  spec.tokens.assign(n, std::string());
  spec.types.assign(n, TokenType::unused);
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    const size_t id = it.value().get<size_t>();
    if (spec.types[id] != TokenType::unused)
      throw FormatError(path + ": model.vocab maps two tokens to id " + std::to_string(id));
    spec.tokens[id] = it.key();
    spec.types[id] = TokenType::normal;
    if (spec.model == "llama" && byte_fallback) {
      const std::string& t = it.key();
      if (t.size() == 6 && t.rfind("<0x", 0) == 0 && t[5] == '>' &&
          isxdigit(static_cast<unsigned char>(t[3])) && isxdigit(static_cast<unsigned char>(t[4])))
        spec.types[id] = TokenType::byte;
    }
  }
  for (const json& a : added) {
    const size_t id = a["id"].get<size_t>();
    spec.tokens[id] = a["content"].get<std::string>();
    spec.types[id] = get_bool(a, "special", false) ? TokenType::control : TokenType::user_defined;
  }

  // Merges: "a b" strings or [a, b] pairs.
  if (model.contains("merges") && model["merges"].is_array()) {
    const json& merges = model["merges"];
    spec.merges.reserve(merges.size());
    for (size_t i = 0; i < merges.size(); ++i) {
      const json& m = merges[i];
      if (m.is_string()) {
        spec.merges.push_back(m.get<std::string>());
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        const std::string a = m[0].get<std::string>(), b = m[1].get<std::string>();
        if (a.find(' ') != std::string::npos || b.find(' ') != std::string::npos)
          throw UnsupportedError(path + ": model.merges[" + std::to_string(i) +
                                 "] has a token containing a space");
        spec.merges.push_back(a + " " + b);
      } else {
        throw FormatError(path + ": model.merges[" + std::to_string(i) + "] is neither \"a b\" nor [a, b]");
      }
    }
  }
  if (spec.merges.empty()) throw FormatError(path + ": model.merges is missing or empty");

  auto id_of = [&](const std::string& text) -> int32_t {
    if (text.empty()) return -1;
    for (size_t i = 0; i < n; ++i)
      if (spec.tokens[i] == text && spec.types[i] != TokenType::unused) return static_cast<int32_t>(i);
    return -1;
  };
  spec.unk_id = id_of(get_string(model, "unk_token"));

  // tokenizer_config.json: BOS/EOS names, add_bos_token, chat_template.
  const std::string cfg_path = folder + "/tokenizer_config.json";
  const std::string cfg_text = read_file(cfg_path, false, found);
  json cfg = json::object();
  if (found) {
    cfg = parse_untrusted_json(cfg_text, cfg_path, kMaxJsonDepth);
    if (!cfg.is_object()) throw FormatError(cfg_path + ": top level is not a JSON object");
  }
  const std::string post_bos = root.contains("post_processor") ? template_bos(root["post_processor"]) : "";
  std::string bos_text = cfg.contains("bos_token") ? token_content(cfg["bos_token"]) : "";
  if (bos_text.empty()) bos_text = post_bos;
  spec.bos_id = id_of(bos_text);
  spec.eos_id = cfg.contains("eos_token") ? id_of(token_content(cfg["eos_token"])) : -1;
  spec.pad_id = cfg.contains("pad_token") ? id_of(token_content(cfg["pad_token"])) : -1;
  if (cfg.contains("add_bos_token") && cfg["add_bos_token"].is_boolean())
    spec.add_bos = cfg["add_bos_token"].get<bool>();
  else
    spec.add_bos = !post_bos.empty();
  if (spec.add_bos && spec.bos_id < 0)
    throw FormatError(cfg_path + ": add_bos_token is set but bos_token is unknown");

  if (cfg.contains("chat_template")) {
    const json& ct = cfg["chat_template"];
    if (ct.is_string()) {
      spec.chat_template = ct.get<std::string>();
    } else if (ct.is_array()) {  // [{"name": "default", "template": "..."}, ...]
      for (const json& e : ct)
        if (get_string(e, "name") == "default") spec.chat_template = get_string(e, "template");
    }
  }
  if (spec.chat_template.empty())
    spec.chat_template = read_file(folder + "/chat_template.jinja", false, found);

  add_end_of_turn_ids(spec);
  return spec;
}

}  // namespace

TokenizerSpec Tokenizer::spec_from_hf_folder(const std::string& folder) {
  const std::string path = folder + "/tokenizer.json";
  try {
    return spec_from_hf_folder_unchecked(folder, path);
  } catch (const nlohmann::json::exception& e) {  // a field of an unexpected JSON type
    throw FormatError(path + ": unexpected JSON content: " + e.what());
  }
}

}  // namespace sdtp
