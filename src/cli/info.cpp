// `sdtp info`: what a model file holds — configuration, weight types, tokenizer — as text or JSON.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <nlohmann/json.hpp>
#include <string>

#include "cli/commands.h"
#include "sdtp/session.h"

namespace sdtp::cli {
namespace {

std::string token_text(const Tokenizer& tok, int32_t id) {
  if (id < 0 || id >= tok.n_vocab()) return "none";
  return std::to_string(id) + " " +
         nlohmann::json(tok.spec().tokens[id]).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string human_count(int64_t n) {
  char buf[64];
  if (n >= 1000000000)
    std::snprintf(buf, sizeof buf, "%.2f B", n / 1e9);
  else
    std::snprintf(buf, sizeof buf, "%.2f M", n / 1e6);
  return buf;
}

}  // namespace

ArgParser info_parser() {
  ArgParser p(
      "info", "sdtp info -m MODEL [--json]",
      "Prints a model's configuration, weight types, tokenizer and the memory of its float32 weights.");
  p.text("-m", "--model", "PATH", "model file (.gguf) or Hugging Face model folder")
      .required("--model")
      .flag("", "--json", "print one JSON object instead of text")
      .text("", "--device", "DEV",
            "also print the memory the model needs on this device (cpu, cuda or cuda:N) and what is free there")
      .epilog("examples:\n  sdtp info -m model.gguf --json\n  sdtp info -m model.gguf --device cuda\n");
  return p;
}

int run_info(const ParsedArgs& args) {
  std::unique_ptr<Model> model = load_model_checked(args.text("--model"));
  const ModelConfig& c = model->config;
  const Tokenizer& tok = model->tokenizer;
  const bool has_tokenizer = tok.n_vocab() > 0;
  const int64_t weight_bytes = static_cast<int64_t>(weight_host_bytes(model->weights));

  using nlohmann::json;
  json j;
  j["path"] = model->path;
  j["format"] = model->format;
  j["arch"] = c.arch;
  j["name"] = c.name;
  j["n_params"] = c.n_params();
  j["n_layer"] = c.n_layer;
  j["n_embd"] = c.n_embd;
  j["n_head"] = c.n_head;
  j["n_head_kv"] = c.n_head_kv;
  j["head_dim"] = c.head_dim;
  j["n_ff"] = c.n_ff;
  j["n_vocab"] = c.n_vocab;
  j["n_ctx_train"] = c.n_ctx_train;
  j["rms_eps"] = c.rms_eps;
  j["rope_theta"] = c.rope_theta;
  j["rope_scaling"] = {{"type", c.rope_scaling.type},
                       {"factor", c.rope_scaling.factor},
                       {"low_freq_factor", c.rope_scaling.low_freq_factor},
                       {"high_freq_factor", c.rope_scaling.high_freq_factor},
                       {"original_max_position", c.rope_scaling.original_max_position}};
  j["tied_embeddings"] = c.tied_embeddings;
  j["qkv_bias"] = c.qkv_bias;
  j["weight_types"] = model->weight_types;
  j["weight_host_bytes"] = weight_bytes;
  if (has_tokenizer) {
    const TokenizerSpec& spec = tok.spec();
    j["tokenizer"] = {{"model", spec.model},
                      {"pre", spec.pre},
                      {"n_vocab", tok.n_vocab()},
                      {"bos_id", tok.bos_id()},
                      {"eos_id", tok.eos_id()},
                      {"add_bos", spec.add_bos},
                      {"chat_family", chat_family_name(tok.chat_family())}};
  } else {
    j["tokenizer"] = nullptr;
  }

  std::optional<DeviceMemory> mem;
  if (args.has("--device")) {
    mem = device_memory(c, args.text("--device"));
    j["device"] = {{"name", mem->device},
                   {"weight_bytes", mem->weight_bytes},
                   {"kv_bytes_per_token", mem->kv_bytes_per_token},
                   {"free_bytes", mem->free_bytes == SIZE_MAX ? json(nullptr) : json(mem->free_bytes)}};
  }

  if (args.flag("--json")) {
    std::printf("%s\n", j.dump(2, ' ', false, json::error_handler_t::replace).c_str());
    return 0;
  }

  auto line = [](const char* key, const std::string& value) {
    std::printf("%-17s %s\n", key, value.c_str());
  };
  auto num = [](double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%g", v);
    return std::string(buf);
  };
  line("path:", model->path);
  line("format:", model->format);
  line("architecture:", c.arch);
  line("name:", c.name.empty() ? "(none)" : c.name);
  line("parameters:", human_count(c.n_params()) + " (" + std::to_string(c.n_params()) + ")");
  line("layers:", std::to_string(c.n_layer));
  line("embedding size:", std::to_string(c.n_embd));
  line("heads:", std::to_string(c.n_head));
  line("kv heads:", std::to_string(c.n_head_kv));
  line("head dim:", std::to_string(c.head_dim));
  line("ffn size:", std::to_string(c.n_ff));
  line("vocab:", std::to_string(c.n_vocab));
  line("context length:", std::to_string(c.n_ctx_train));
  line("rms eps:", num(c.rms_eps));
  line("rope theta:", num(c.rope_theta));
  std::string scaling = c.rope_scaling.type;
  if (scaling == "linear") scaling += " (factor " + num(c.rope_scaling.factor) + ")";
  if (scaling == "llama3")
    scaling += " (factor " + num(c.rope_scaling.factor) + ", low " + num(c.rope_scaling.low_freq_factor) +
               ", high " + num(c.rope_scaling.high_freq_factor) + ", original context " +
               std::to_string(c.rope_scaling.original_max_position) + ")";
  line("rope scaling:", scaling);
  line("tied embeddings:", c.tied_embeddings ? "yes" : "no");
  line("qkv bias:", c.qkv_bias ? "yes" : "no");
  line("weight types:", model->weight_types);
  char mib[64];
  std::snprintf(mib, sizeof mib, "%.1f MiB", weight_bytes / 1048576.0);
  line("weights in memory:", mib);
  if (mem) {
    char buf[160];
    const double gib = 1024.0 * 1024.0 * 1024.0;
    std::snprintf(buf, sizeof buf, "%.2f GiB of weights + %.1f KiB of KV cache per token (%.2f GiB at %d tokens)",
                  mem->weight_bytes / gib, mem->kv_bytes_per_token / 1024.0,
                  (mem->weight_bytes + static_cast<double>(mem->kv_bytes_per_token) * std::max(c.n_ctx_train, 1)) / gib,
                  std::max(c.n_ctx_train, 1));
    line(("on " + mem->device + ":").c_str(), buf);
    if (mem->free_bytes != SIZE_MAX) {
      std::snprintf(buf, sizeof buf, "%.2f GiB", mem->free_bytes / gib);
      line("free there:", buf);
    }
  }
  if (has_tokenizer) {
    const TokenizerSpec& spec = tok.spec();
    line("tokenizer:", spec.model + " (pre " + (spec.pre.empty() ? "default" : spec.pre) + "), " +
                           std::to_string(tok.n_vocab()) + " tokens");
    line("bos:", token_text(tok, tok.bos_id()) + (spec.add_bos ? " (added)" : " (not added)"));
    line("eos:", token_text(tok, tok.eos_id()));
    line("chat template:", chat_family_name(tok.chat_family()));
  } else {
    line("tokenizer:", "none");
  }
  return 0;
}

}  // namespace sdtp::cli
