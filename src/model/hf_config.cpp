// ModelConfig from a Hugging Face config.json. Defaults follow transformers' LlamaConfig,
// MistralConfig and Qwen2Config (transformers 5.x); fields our block cannot honour are rejected.
#include "model/hf_config.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "sdtp/error.h"
#include "util/json.h"

namespace sdtp {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr int kMaxJsonDepth = 32;

struct Reader {
  const std::string& file;
  const json& root;

  std::string where(const std::string& field) const { return file + ": field '" + field + "'"; }

  // nullptr when the field is absent or null.
  const json* get(const json& obj, const std::string& key) const {
    auto it = obj.find(key);
    return (it == obj.end() || it->is_null()) ? nullptr : &*it;
  }

  int to_int(const json& v, const std::string& field) const {
    if (!v.is_number_integer()) throw FormatError(where(field) + " must be an integer, got " + v.dump());
    if (v.is_number_unsigned() ? v.get<uint64_t>() > INT32_MAX
                               : (v.get<int64_t>() > INT32_MAX || v.get<int64_t>() < INT32_MIN))
      throw FormatError(where(field) + " is out of range: " + v.dump());
    return static_cast<int>(v.get<int64_t>());
  }
  double to_float(const json& v, const std::string& field) const {
    if (!v.is_number()) throw FormatError(where(field) + " must be a number, got " + v.dump());
    double d = v.get<double>();
    if (!std::isfinite(d)) throw FormatError(where(field) + " is not finite: " + v.dump());
    return d;
  }

  int req_int(const std::string& key) const {
    const json* v = get(root, key);
    if (!v) throw FormatError(file + ": missing required field '" + key + "'");
    return to_int(*v, key);
  }
  int opt_int(const std::string& key, int dflt) const {
    const json* v = get(root, key);
    return v ? to_int(*v, key) : dflt;
  }
  double opt_float(const std::string& key, double dflt) const {
    const json* v = get(root, key);
    return v ? to_float(*v, key) : dflt;
  }
  bool opt_bool(const std::string& key, bool dflt) const {
    const json* v = get(root, key);
    if (!v) return dflt;
    if (!v->is_boolean()) throw FormatError(where(key) + " must be true or false, got " + v->dump());
    return v->get<bool>();
  }
  std::string opt_string(const std::string& key, const std::string& dflt) const {
    const json* v = get(root, key);
    if (!v) return dflt;
    if (!v->is_string()) throw FormatError(where(key) + " must be a string, got " + v->dump());
    return v->get<std::string>();
  }
};


// rope_scaling (legacy) or rope_parameters (transformers >= 5): type, theta and scaling parameters.
// Like transformers, a non-null rope_scaling takes precedence over rope_parameters, and a
// rope_theta inside the dict takes precedence over the top-level one.
void read_rope(const Reader& r, ModelConfig& c) {
  c.rope_theta = static_cast<float>(r.opt_float("rope_theta", 10000.0));
  std::string key = "rope_scaling";
  const json* rp = r.get(r.root, key);
  if (!rp) {
    key = "rope_parameters";
    rp = r.get(r.root, key);
  }
  if (!rp) return;
  if (!rp->is_object()) throw FormatError(r.where(key) + " must be an object, got " + rp->dump());

  auto num = [&](const char* k) -> const json* { return r.get(*rp, k); };
  if (const json* t = num("rope_theta"))
    c.rope_theta = static_cast<float>(r.to_float(*t, key + ".rope_theta"));

  std::string type = "default";
  for (const char* tk : {"rope_type", "type"}) {
    if (const json* t = num(tk)) {
      if (!t->is_string()) throw FormatError(r.where(key + "." + tk) + " must be a string, got " + t->dump());
      type = t->get<std::string>();
      break;
    }
  }
  if (const json* p = num("partial_rotary_factor")) {
    if (r.to_float(*p, key + ".partial_rotary_factor") != 1.0)
      throw UnsupportedError(r.where(key + ".partial_rotary_factor") + ": partial rotary embeddings (" +
                             p->dump() + ") are not supported");
  }
  auto req = [&](const char* k) {
    const json* v = num(k);
    if (!v)
      throw FormatError(r.file + ": missing field '" + key + "." + k + "' for rope type '" + type + "'");
    return r.to_float(*v, key + "." + k);
  };

  if (type == "default") {
    c.rope_scaling = RopeScaling{};
  } else if (type == "linear") {
    c.rope_scaling.type = "linear";
    c.rope_scaling.factor = static_cast<float>(req("factor"));
  } else if (type == "llama3") {
    c.rope_scaling.type = "llama3";
    c.rope_scaling.factor = static_cast<float>(req("factor"));
    c.rope_scaling.low_freq_factor = static_cast<float>(req("low_freq_factor"));
    c.rope_scaling.high_freq_factor = static_cast<float>(req("high_freq_factor"));
    // transformers falls back to max_position_embeddings when the original length is absent.
    if (const json* o = num("original_max_position_embeddings"))
      c.rope_scaling.original_max_position = r.to_int(*o, key + ".original_max_position_embeddings");
    else
      c.rope_scaling.original_max_position = c.n_ctx_train;
  } else {
    throw UnsupportedError(r.where(key) + ": rope type '" + type +
                           "' is not supported (default, linear, llama3)");
  }
}

}  // namespace

ModelConfig config_from_hf_json(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) throw FormatError(path + ": no such file");
  auto size = fs::file_size(path, ec);
  if (ec || size > (16u << 20)) throw FormatError(path + ": unreadable or larger than 16 MB");
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  const json root = parse_untrusted_json(text, path, kMaxJsonDepth);
  if (!root.is_object()) throw FormatError(path + ": not a JSON object");
  const Reader r{path, root};

  ModelConfig c;
  const json* mt = r.get(root, "model_type");
  if (!mt) throw FormatError(path + ": missing required field 'model_type'");
  if (!mt->is_string()) throw FormatError(r.where("model_type") + " must be a string, got " + mt->dump());
  c.arch = mt->get<std::string>();
  if (c.arch != "llama" && c.arch != "mistral" && c.arch != "qwen2")
    throw UnsupportedError(path + ": model_type '" + c.arch + "' is not supported (llama, mistral, qwen2)");

  c.n_vocab = r.req_int("vocab_size");
  c.n_embd = r.req_int("hidden_size");
  c.n_layer = r.req_int("num_hidden_layers");
  c.n_head = r.req_int("num_attention_heads");
  c.n_ff = r.req_int("intermediate_size");
  // transformers: LlamaConfig and Qwen2Config default to multi-head attention; MistralConfig to 8 kv heads.
  c.n_head_kv = r.opt_int("num_key_value_heads", c.arch == "mistral" ? 8 : c.n_head);
  if (c.n_head <= 0)
    throw FormatError(r.where("num_attention_heads") + " must be positive, got " + std::to_string(c.n_head));
  c.head_dim = r.opt_int("head_dim", c.n_embd / c.n_head);
  const int default_ctx = c.arch == "llama" ? 2048 : c.arch == "mistral" ? 4096 * 32 : 32768;
  c.n_ctx_train = r.opt_int("max_position_embeddings", default_ctx);
  c.rms_eps = static_cast<float>(r.opt_float("rms_norm_eps", 1e-6));
  c.tied_embeddings = r.opt_bool("tie_word_embeddings", false);
  read_rope(r, c);

  const std::string act = r.opt_string("hidden_act", "silu");
  if (act != "silu")
    throw UnsupportedError(r.where("hidden_act") + ": activation '" + act + "' is not supported (silu)");
  if (c.arch == "qwen2") {
    c.qkv_bias = true;
    if (r.opt_bool("use_sliding_window", false))
      throw UnsupportedError(r.where("use_sliding_window") + ": sliding-window attention is not supported");
  } else if (c.arch == "llama") {
    c.qkv_bias = r.opt_bool("attention_bias", false);
    if (r.opt_bool("mlp_bias", false))
      throw UnsupportedError(r.where("mlp_bias") + ": MLP biases are not supported");
  }
  c.name = fs::absolute(path, ec).lexically_normal().parent_path().filename().string();  // the folder
  c.validate(path);
  return c;
}

}  // namespace sdtp
