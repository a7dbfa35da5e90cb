// load_model: a GGUF file or a Hugging Face folder (config.json + safetensors) to a Model with
// float32 weights in PyTorch layout and the HF rotate-half RoPE convention. Owns the tensor-name
// tables of both formats, the shape checks against the config, and the parallel dequantisation.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include "backend/cpu/q8.h"
#include "formats/gguf.h"
#include "model/hf_config.h"
#include "formats/quants.h"
#include "formats/safetensors.h"
#include "sdtp/error.h"
#include "sdtp/model.h"
#include "tokenizer/tokenizer_gguf.h"

namespace sdtp {

namespace {

namespace fs = std::filesystem;

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// One tensor to convert: its bytes in the file, where the floats go, and (for GGUF llama Q/K) the
// head count whose rows llama.cpp's converter interleaved.
struct Load {
  const RawTensor* src = nullptr;
  Tensor* dst = nullptr;
  int permute_heads = 0;
};

// Which file tensors fill which weights, with the shapes the config demands. `find` returns nullptr
// for a tensor the file does not have.
struct WeightPlan {
  std::string source;
  std::function<const RawTensor*(const std::string&)> find;
  std::vector<Load> loads;

  void add(const std::string& name, Tensor* dst, std::vector<int64_t> shape, int permute_heads = 0) {
    const RawTensor* t = find(name);
    if (!t) throw FormatError(source + ": missing tensor '" + name + "'");
    if (t->shape != shape)
      throw FormatError(source + ": tensor '" + name + "' has shape " + shape_str(t->shape) + ", expected " +
                        shape_str(shape));
    if (!dtype_is_float_convertible(t->dtype))
      throw UnsupportedError(source + ": tensor '" + name + "' has type " + dtype_name(t->dtype) +
                             ", which cannot be converted to float weights");
    dst->shape = std::move(shape);
    loads.push_back({t, dst, permute_heads});
  }
};

// Names of one format's tensors. Layer names take the layer index.
struct TensorNames {
  std::string tok_embd, output_norm, output;
  std::function<std::string(int, const char*)> layer;  // kind: attn_norm, wq, ..., bq, ...
};

TensorNames hf_names() {
  static const std::map<std::string, std::string> kLayer = {
      {"attn_norm", "input_layernorm.weight"},
      {"wq", "self_attn.q_proj.weight"},
      {"wk", "self_attn.k_proj.weight"},
      {"wv", "self_attn.v_proj.weight"},
      {"wo", "self_attn.o_proj.weight"},
      {"bq", "self_attn.q_proj.bias"},
      {"bk", "self_attn.k_proj.bias"},
      {"bv", "self_attn.v_proj.bias"},
      {"ffn_norm", "post_attention_layernorm.weight"},
      {"w_gate", "mlp.gate_proj.weight"},
      {"w_up", "mlp.up_proj.weight"},
      {"w_down", "mlp.down_proj.weight"},
  };
  return {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight", [](int i, const char* kind) {
            return "model.layers." + std::to_string(i) + "." + kLayer.at(kind);
          }};
}

TensorNames gguf_names() {
  static const std::map<std::string, std::string> kLayer = {
      {"attn_norm", "attn_norm.weight"},
      {"wq", "attn_q.weight"},
      {"wk", "attn_k.weight"},
      {"wv", "attn_v.weight"},
      {"wo", "attn_output.weight"},
      {"bq", "attn_q.bias"},
      {"bk", "attn_k.bias"},
      {"bv", "attn_v.bias"},
      {"ffn_norm", "ffn_norm.weight"},
      {"w_gate", "ffn_gate.weight"},
      {"w_up", "ffn_up.weight"},
      {"w_down", "ffn_down.weight"},
  };
  return {"token_embd.weight", "output_norm.weight", "output.weight",
          [](int i, const char* kind) { return "blk." + std::to_string(i) + "." + kLayer.at(kind); }};
}

// Plans every weight of the config; `unpermute_qk` for GGUF llama files (see load_gguf).
void plan_weights(const ModelConfig& c, const TensorNames& n, bool unpermute_qk, ModelWeights& w,
                  WeightPlan& plan) {
  const int64_t d = c.n_embd, v = c.n_vocab, ff = c.n_ff;
  const int64_t q = int64_t(c.n_head) * c.head_dim, kv = int64_t(c.n_head_kv) * c.head_dim;
  const int qh = unpermute_qk ? c.n_head : 0, kh = unpermute_qk ? c.n_head_kv : 0;
  plan.add(n.tok_embd, &w.tok_embd, {v, d});
  plan.add(n.output_norm, &w.output_norm, {d});
  if (!c.tied_embeddings) plan.add(n.output, &w.output, {v, d});
  w.layers.resize(c.n_layer);
  for (int i = 0; i < c.n_layer; ++i) {
    LayerWeights& l = w.layers[i];
    plan.add(n.layer(i, "attn_norm"), &l.attn_norm, {d});
    plan.add(n.layer(i, "wq"), &l.wq, {q, d}, qh);
    plan.add(n.layer(i, "wk"), &l.wk, {kv, d}, kh);
    plan.add(n.layer(i, "wv"), &l.wv, {kv, d});
    plan.add(n.layer(i, "wo"), &l.wo, {d, q});
    if (c.qkv_bias) {
      plan.add(n.layer(i, "bq"), &l.bq, {q}, qh);
      plan.add(n.layer(i, "bk"), &l.bk, {kv}, kh);
      plan.add(n.layer(i, "bv"), &l.bv, {kv});
    }
    plan.add(n.layer(i, "ffn_norm"), &l.ffn_norm, {d});
    plan.add(n.layer(i, "w_gate"), &l.w_gate, {ff, d});
    plan.add(n.layer(i, "w_up"), &l.w_up, {ff, d});
    plan.add(n.layer(i, "w_down"), &l.w_down, {d, ff});
  }
}

// Undoes llama.cpp's Q/K row interleave, per head of hd rows: GGUF row 2i+j holds HF row j*hd/2+i
// (the inverse of convert_hf_to_gguf.py's LlamaModel.permute; transformers' reverse_permute).
int64_t unpermuted_row(int64_t g, int64_t rows, int heads) {
  const int64_t hd = rows / heads, half = hd / 2, h = g / hd, r = g % hd;
  return h * hd + (r % 2) * half + r / 2;
}

void unpermute_rows(const float* src, float* dst, int64_t rows, int64_t row_elems, int heads) {
  for (int64_t g = 0; g < rows; ++g) {
    std::memcpy(dst + unpermuted_row(g, rows, heads) * row_elems, src + g * row_elems, sizeof(float) * row_elems);
  }
}

// A slice of work: rows [row0, row1) of one load (all rows when the tensor is permuted).
struct Chunk {
  size_t load;
  int64_t row0, row1;
  int64_t elems;
};

void run_chunk(const Load& L, const Chunk& c) {
  const RawTensor& t = *L.src;
  const int64_t numel = t.numel();
  const int64_t rows = t.shape.empty() ? 1 : t.shape[0];
  const int64_t row_elems = rows ? numel / rows : 0;
  if (L.permute_heads) {
    std::vector<float> tmp(numel);
    dequantize(t.dtype, t.data, tmp.data(), numel);
    unpermute_rows(tmp.data(), L.dst->ptr(), rows, row_elems, L.permute_heads);
    return;
  }
  const int64_t e0 = c.row0 * row_elems, n = (c.row1 - c.row0) * row_elems;
  auto off = dtype_nbytes(t.dtype, e0);
  if (!off) throw FormatError(t.name + ": chunk offset is not a whole number of blocks");
  dequantize(t.dtype, t.data + *off, L.dst->ptr() + e0, n);
}

// Drops the mapped file's pages of [p, p + n) from this process's memory once they are copied, so
// that loading a model peaks at its blocks plus one tensor, not twice the file (they are read
// back from the file if touched again).
void release_pages(const uint8_t* p, size_t n) {
  const auto page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t a = reinterpret_cast<uintptr_t>(p), lo = (a + page - 1) / page * page, hi = (a + n) / page * page;
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
}

// Keeps the file's own blocks of the 2-D weights whose types the CPU kernels multiply directly
// (backend/cpu/q8.h), rows reordered like the floats when llama Q/K rows were interleaved. Returns
// the loads that still need float32 values: those not kept, or all of them unless `only_blocks`.
std::vector<Load> keep_file_blocks(const std::vector<Load>& loads, bool only_blocks) {
  std::vector<Load> rest;
  for (const Load& L : loads) {
    const RawTensor& t = *L.src;
    const bool kernel_type =
        t.shape.size() == 2 && cpu::quant_kind_of(dtype_name(t.dtype), t.shape[1]) != cpu::QuantMatrix::Kind::none;
    const auto row_bytes = kernel_type ? dtype_nbytes(t.dtype, t.shape[1]) : std::nullopt;
    if (!row_bytes) {
      rest.push_back(L);
      continue;
    }
    if (!only_blocks) rest.push_back(L);
    const int64_t rows = t.shape[0];
    L.dst->file_quant = dtype_name(t.dtype);
    L.dst->file_blocks.resize(static_cast<size_t>(rows * *row_bytes));
    for (int64_t g = 0; g < rows; ++g) {
      const int64_t to = L.permute_heads ? unpermuted_row(g, rows, L.permute_heads) : g;
      std::memcpy(L.dst->file_blocks.data() + to * *row_bytes, t.data + g * *row_bytes, *row_bytes);
    }
    release_pages(t.data, static_cast<size_t>(rows * *row_bytes));
  }
  return rest;
}

// Converts every planned tensor to float32, on several threads; a progress bar on stderr when asked
// and stderr is a terminal.
void dequantize_all(std::vector<Load>& loads, const LoadOptions& options, const std::string& label) {
  constexpr int64_t kChunkElems = 1 << 20;
  std::vector<Chunk> chunks;
  int64_t total = 0;
  for (size_t i = 0; i < loads.size(); ++i) {
    const RawTensor& t = *loads[i].src;
    const int64_t numel = t.numel();
    loads[i].dst->data.assign(numel, 0.0f);
    total += numel;
    const int64_t rows = t.shape.empty() ? 1 : t.shape[0];
    const int64_t row_elems = rows ? numel / rows : 0;
    // Split by rows only where a row is a whole number of quantisation blocks.
    const bool splittable =
        !loads[i].permute_heads && row_elems > 0 && row_elems % dtype_block_size(t.dtype) == 0;
    const int64_t step =
        splittable ? std::max<int64_t>(1, kChunkElems / row_elems) : std::max<int64_t>(rows, 1);
    for (int64_t r = 0; r < rows; r += step) {
      const int64_t r1 = std::min(rows, r + step);
      chunks.push_back({i, r, r1, (r1 - r) * row_elems});
    }
  }
  std::stable_sort(chunks.begin(), chunks.end(),
                   [](const Chunk& a, const Chunk& b) { return a.elems > b.elems; });

  std::atomic<size_t> next{0};
  std::atomic<int64_t> done{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  std::mutex error_mu;
  auto worker = [&] {
    for (size_t k; !failed && (k = next.fetch_add(1)) < chunks.size();) {
      try {
        run_chunk(loads[chunks[k].load], chunks[k]);
        done += chunks[k].elems;
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mu);
        if (!error) error = std::current_exception();
        failed = true;
      }
    }
  };
  const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  const size_t n_threads = std::min<size_t>({hw, 16, std::max<size_t>(chunks.size(), 1)});
  const bool bar = options.progress && isatty(STDERR_FILENO);
  auto draw = [&](int64_t d) {
    const int width = 30, pct = total ? int(100 * d / total) : 100;
    std::string b(width, ' ');
    std::fill(b.begin(), b.begin() + width * pct / 100, '#');
    std::fprintf(stderr, "\rloading %s [%s] %3d%%", label.c_str(), b.c_str(), pct);
    std::fflush(stderr);
  };
  // With a progress bar the calling thread draws while the workers convert; otherwise it works too.
  std::vector<std::thread> threads;
  for (size_t i = bar ? 0 : 1; i < n_threads; ++i) threads.emplace_back(worker);
  if (bar) {
    while (!failed && done < total) {
      draw(done);
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  } else {
    worker();
  }
  for (auto& t : threads) t.join();
  if (bar) {
    draw(done);
    std::fprintf(stderr, "\n");
  }
  if (error) std::rethrow_exception(error);
}

std::string count_types(const std::vector<Load>& loads) {
  std::map<std::string, int> counts;
  for (const Load& l : loads) counts[dtype_name(l.src->dtype)]++;
  std::vector<std::pair<std::string, int>> v(counts.begin(), counts.end());
  std::stable_sort(v.begin(), v.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
  std::string out;
  for (const auto& [name, n] : v) out += (out.empty() ? "" : ", ") + name + " x " + std::to_string(n);
  return out;
}

// Token ids the tokenizer produces index the embedding: they must all be rows of it.
void check_tokenizer(const Model& m) {
  if (m.tokenizer.n_vocab() > m.config.n_vocab)
    throw FormatError(m.path + ": tokenizer has " + std::to_string(m.tokenizer.n_vocab()) +
                      " tokens but the model's vocabulary is " + std::to_string(m.config.n_vocab));
}

std::unique_ptr<Model> load_hf(const std::string& folder, const LoadOptions& options) {
  const fs::path dir(folder);
  const fs::path config_path = dir / "config.json";
  std::error_code ec;
  if (!fs::is_regular_file(config_path, ec))
    throw FormatError(folder + ": not a GGUF file or Hugging Face folder (no config.json)");
  auto m = std::make_unique<Model>();
  m->path = folder;
  m->format = "safetensors";
  m->config = config_from_hf_json(config_path.string());
  SafetensorsSet st(folder);
  WeightPlan plan{folder, [&](const std::string& n) { return st.find_tensor(n); }, {}};
  plan_weights(m->config, hf_names(), false, m->weights, plan);
  m->weight_types = count_types(plan.loads);
  if (fs::is_regular_file(dir / "tokenizer.json", ec)) {
    m->tokenizer = Tokenizer(Tokenizer::spec_from_hf_folder(folder));
    check_tokenizer(*m);
  }
  dequantize_all(plan.loads, options, m->config.name);
  return m;
}

int gguf_int(const GGUFFile& f, const std::string& key, std::optional<int> dflt = std::nullopt) {
  auto v = f.get_int(key);
  if (!v) {
    if (dflt) return *dflt;
    throw FormatError(f.path() + ": missing metadata '" + key + "'");
  }
  if (*v < INT32_MIN || *v > INT32_MAX)
    throw FormatError(f.path() + ": metadata '" + key + "' = " + std::to_string(*v) + " is out of range");
  return static_cast<int>(*v);
}

// llama.cpp stores Llama 3 RoPE scaling as a precomputed rope_freqs.weight (one divisor per frequency)
// instead of its parameters. Recovers the parameters by matching the divisors against the llama3
// formula (transformers' _compute_llama3_parameters) for the values real models use.
RopeScaling llama3_from_rope_freqs(const GGUFFile& f, const RawTensor& t, const ModelConfig& c) {
  const int64_t n = c.head_dim / 2;
  if (t.numel() != n || !dtype_is_float_convertible(t.dtype))
    throw FormatError(f.path() + ": tensor 'rope_freqs.weight' has shape " + shape_str(t.shape) +
                      ", expected [" + std::to_string(n) + "]");
  std::vector<float> got(n);
  dequantize(t.dtype, t.data, got.data(), n);
  float factor = 1.0f;
  for (float x : got) {
    if (!(x > 0.0f) || !std::isfinite(x))
      throw FormatError(f.path() + ": rope_freqs.weight holds a non-positive value");
    factor = std::max(factor, x);
  }
  RopeScaling s;
  if (factor == 1.0f) return s;
  for (double low : {1.0, 2.0, 0.5})
    for (double high : {4.0, 2.0, 8.0})
      for (int orig : {8192, 4096, 2048, 16384, 32768, 65536, 131072}) {
        bool ok = true;
        for (int64_t i = 0; i < n && ok; ++i) {
          const double freq = 1.0 / std::pow(double(c.rope_theta), 2.0 * i / c.head_dim);
          const double wavelen = 2 * M_PI / freq;
          double want;
          if (wavelen < orig / high)
            want = 1.0;
          else if (wavelen > orig / low)
            want = factor;
          else {
            const double smooth = (orig / wavelen - low) / (high - low);
            want = 1.0 / ((1 - smooth) / factor + smooth);
          }
          ok = std::fabs(got[i] - want) <= 1e-3 * want;
        }
        if (ok) {
          s.type = "llama3";
          s.factor = factor;
          s.low_freq_factor = float(low);
          s.high_freq_factor = float(high);
          s.original_max_position = orig;
          return s;
        }
      }
  throw UnsupportedError(f.path() + ": rope_freqs.weight does not match llama3 RoPE scaling");
}

ModelConfig config_from_gguf(const GGUFFile& f) {
  const std::string& path = f.path();
  ModelConfig c;
  auto arch = f.get_string("general.architecture");
  if (!arch) throw FormatError(path + ": missing metadata 'general.architecture'");
  if (*arch != "llama" && *arch != "qwen2")
    throw UnsupportedError(path + ": general.architecture '" + *arch + "' is not supported (llama, qwen2)");
  c.arch = *arch;
  const std::string a = *arch + ".";
  c.name = f.get_string("general.name").value_or(fs::path(path).stem().string());
  c.n_ctx_train = gguf_int(f, a + "context_length");
  c.n_embd = gguf_int(f, a + "embedding_length");
  c.n_layer = gguf_int(f, a + "block_count");
  c.n_ff = gguf_int(f, a + "feed_forward_length");
  c.n_head = gguf_int(f, a + "attention.head_count");
  c.n_head_kv = gguf_int(f, a + "attention.head_count_kv", c.n_head);
  if (c.n_head <= 0) throw FormatError(path + ": metadata '" + a + "attention.head_count' must be positive");
  c.head_dim = gguf_int(f, a + "attention.key_length", c.n_embd / c.n_head);
  if (gguf_int(f, a + "attention.value_length", c.head_dim) != c.head_dim)
    throw UnsupportedError(path + ": " + a + "attention.value_length differs from key_length");
  if (gguf_int(f, a + "rope.dimension_count", c.head_dim) != c.head_dim)
    throw UnsupportedError(path + ": " + a + "rope.dimension_count = " +
                           std::to_string(gguf_int(f, a + "rope.dimension_count")) +
                           " (partial rotary embeddings) is not supported");
  auto eps = f.get_float(a + "attention.layer_norm_rms_epsilon");
  if (!eps) throw FormatError(path + ": missing metadata '" + a + "attention.layer_norm_rms_epsilon'");
  c.rms_eps = static_cast<float>(*eps);
  c.rope_theta = static_cast<float>(f.get_float(a + "rope.freq_base").value_or(10000.0));

  if (auto v = f.get_int(a + "vocab_size")) {
    c.n_vocab = gguf_int(f, a + "vocab_size");
  } else if (const GGUFValue* toks = f.find("tokenizer.ggml.tokens"); toks && toks->array_size() > 0) {
    c.n_vocab = static_cast<int>(std::min<size_t>(toks->array_size(), INT32_MAX));
  } else if (const RawTensor* te = f.find_tensor("token_embd.weight"); te && te->shape.size() == 2) {
    c.n_vocab = static_cast<int>(std::min<int64_t>(te->shape[0], INT32_MAX));
  }

  const std::string scaling = f.get_string(a + "rope.scaling.type").value_or("none");
  if (scaling == "linear") {
    auto factor = f.get_float(a + "rope.scaling.factor");
    if (!factor) throw FormatError(path + ": missing metadata '" + a + "rope.scaling.factor'");
    c.rope_scaling.type = "linear";
    c.rope_scaling.factor = static_cast<float>(*factor);
  } else if (scaling != "none") {
    throw UnsupportedError(path + ": " + a + "rope.scaling.type '" + scaling +
                           "' is not supported (none, linear)");
  } else if (auto lin = f.get_float(a + "rope.scale_linear"); lin && *lin != 1.0) {
    c.rope_scaling.type = "linear";  // older llama.cpp files
    c.rope_scaling.factor = static_cast<float>(*lin);
  }

  c.tied_embeddings = f.find_tensor("output.weight") == nullptr;
  c.qkv_bias = c.arch == "qwen2" || f.find_tensor("blk.0.attn_q.bias") != nullptr;
  c.validate(path);
  if (const RawTensor* rf = f.find_tensor("rope_freqs.weight")) {
    if (c.rope_scaling.type != "none")
      throw UnsupportedError(path + ": both rope_freqs.weight and " + a + "rope.scaling.type are set");
    c.rope_scaling = llama3_from_rope_freqs(f, *rf, c);
  }
  return c;
}

std::unique_ptr<Model> load_gguf(const std::string& path, const LoadOptions& options) {
  GGUFFile f(path);
  auto m = std::make_unique<Model>();
  m->path = path;
  m->format = "gguf";
  m->config = config_from_gguf(f);
  WeightPlan plan{path, [&](const std::string& n) { return f.find_tensor(n); }, {}};
  // llama.cpp's converter interleaves the Q/K rows of "llama" models for ggml's adjacent-pair RoPE;
  // qwen2 files keep the NeoX (rotate-half) layout.
  plan_weights(m->config, gguf_names(), m->config.arch == "llama", m->weights, plan);
  m->weight_types = count_types(plan.loads);
  if (f.find("tokenizer.ggml.model")) {
    m->tokenizer = Tokenizer(tokenizer_spec_from_gguf(f));
    check_tokenizer(*m);
  }
  std::vector<Load> floats = keep_file_blocks(plan.loads, options.keep_quantized);
  dequantize_all(floats, options, m->config.name);
  return m;
}

}  // namespace

std::unique_ptr<Model> load_model(const std::string& path, const LoadOptions& options) {
  std::error_code ec;
  const auto st = fs::status(path, ec);
  if (ec || !fs::exists(st)) throw FormatError(path + ": no such file or folder");
  if (fs::is_directory(st)) return load_hf(path, options);
  if (!fs::is_regular_file(st)) throw FormatError(path + ": not a GGUF file or Hugging Face folder");
  char magic[4] = {};
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw FormatError(path + ": cannot open: " + std::strerror(errno));
  const ssize_t got = ::read(fd, magic, 4);
  ::close(fd);
  if (got != 4 || std::memcmp(magic, "GGUF", 4) != 0)
    throw FormatError(path + ": not a GGUF file or Hugging Face folder");
  return load_gguf(path, options);
}

}  // namespace sdtp
