// CudaBackend: backend.h on the CUDA kernels (ops.h, model_ops.h). Tensors own DeviceBuffers;
// weights are CudaMatrix (bf16, Q|K|V and gate|up fused); activations are bf16, the residual
// stream float32 (embedding, rmsnorm and the accumulating matmuls take either); decode steps are
// replayed as CUDA graphs keyed by their launch shapes (see cuda_backend.h); the profiler marks
// each op.
#include "backend/cuda/cuda_backend.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "backend/cuda/device.h"
#include "backend/cuda/model_ops.h"
#include "backend/cuda/ops.h"
#include "model/rope.h"
#include "sdtp/error.h"
#include "sdtp/model.h"

namespace sdtp::cuda {

namespace {

std::string gib(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f GiB", bytes / (1024.0 * 1024.0 * 1024.0));
  return buf;
}

void check_rt(cudaError_t e, const char* op, const char* call) {
  if (e != cudaSuccess)
    throw CudaError(std::string("cuda: ") + op + ": " + call + " failed: " + cudaGetErrorName(e) + " (" +
                    cudaGetErrorString(e) + ")");
}

// Argument checks: the Session is internal, but a wrong shape here is a bug worth a message.
void need(bool ok, const char* op, const std::string& what) {
  if (!ok) throw Error(std::string("cuda backend: ") + op + ": " + what);
}

std::string shape(const DeviceTensor& t) {
  return std::string(elem_name(t.type())) + " [" + std::to_string(t.rows()) + " x " + std::to_string(t.cols()) + "]";
}

// A KVView's shape against the heads: k, v bf16 [cap x n_head_kv·head_dim], pos i32 [cap x
// n_head_kv], len i32 [1 x n_head_kv] with its host copy n, every head with room for `appended`
// more entries, mass (optional) f32 [cap x n_head_kv].
void need_cache(const KVView& c, int n_head_kv, int head_dim, int64_t appended, const char* op) {
  const int64_t kv_dim = int64_t(n_head_kv) * head_dim, cap = c.k.rows();
  bool ok = n_head_kv > 0 && appended >= 0 && c.k.type() == ElemType::bf16 && c.v.type() == ElemType::bf16 &&
            c.k.cols() == kv_dim && c.v.cols() == kv_dim && c.v.rows() == cap && c.pos.type() == ElemType::i32 &&
            c.pos.cols() == n_head_kv && c.pos.rows() >= cap && c.len.type() == ElemType::i32 &&
            c.len.numel() >= n_head_kv && static_cast<int64_t>(c.n.size()) == n_head_kv &&
            (c.mass.empty() || (c.mass.type() == ElemType::f32 && c.mass.cols() == n_head_kv && c.mass.rows() >= cap));
  std::string counts;
  for (size_t g = 0; g < c.n.size(); ++g) {
    ok = ok && c.n[g] >= 0 && c.n[g] + appended <= cap;
    if (g) counts += ',';
    counts += std::to_string(c.n[g]);
  }
  need(ok, op,
       "cache k " + shape(c.k) + ", v " + shape(c.v) + ", pos " + shape(c.pos) + ", len " + shape(c.len) +
           ", mass " + shape(c.mass) + ", n [" + counts + "] + " + std::to_string(appended) + " appended, " +
           std::to_string(n_head_kv) + " KV heads x " + std::to_string(head_dim));
}

// The kernels' view of a checked KVView: head g holds len[g] + appended entries, len read on the
// device; `bound` (>= every count) sizes the grids of the kernels that loop over entries.
KvHeads kv_heads(const KVView& c, int n_head_kv, int64_t appended, int64_t bound) {
  KvHeads kv;
  kv.k = c.k.as<bf16>();
  kv.v = c.v.as<bf16>();
  kv.pos = c.pos.as<int32_t>();
  kv.pos_stride = n_head_kv;
  kv.pos_head_stride = 1;
  kv.len = c.len.as<int32_t>();
  kv.appended = appended;
  kv.max_n = bound;
  kv.rows = c.k.rows();
  return kv;
}

bool env_on(const char* name) {
  const char* v = std::getenv(name);
  return v && *v && std::strcmp(v, "0") != 0;
}

// A weight matrix W [m x k] in bf16, with its bias in bf16 (bf16 outputs) and float32 (float32
// outputs) when it has one.
class CudaMatrix final : public Matrix {
 public:
  DeviceArray<bf16> w, bias;
  DeviceArray<float> bias_f32;
  size_t bytes() const override { return w.bytes() + bias.bytes() + bias_f32.bytes(); }
};

const CudaMatrix& cuda_matrix(const Matrix& m, const char* op) {
  const auto* cm = dynamic_cast<const CudaMatrix*>(&m);
  need(cm != nullptr, op, "the matrix was not made by the CUDA backend");
  return *cm;
}

// With SDTP_CUDA_PROFILE=1: an event before the first op of an interval and after each op; the
// device time per op name is printed after the interval ends (synchronize, download, step). The
// events add no host synchronisation between ops.
class OpProfile {
 public:
  OpProfile() : on_(env_on("SDTP_CUDA_PROFILE")) {}
  ~OpProfile() {
    for (cudaEvent_t e : pool_) cudaEventDestroy(e);
  }
  bool on() const { return on_; }
  void start(cudaStream_t s) {
    if (on_ && used_ == 0) record(s);
  }
  void mark(cudaStream_t s, const char* op) {
    if (!on_) return;
    groups_.push_back(op);
    record(s);
  }
  void report() {
    if (!on_ || used_ < 2) {
      used_ = 0;
      groups_.clear();
      return;
    }
    check_rt(cudaEventSynchronize(pool_[used_ - 1]), "profile", "cudaEventSynchronize");
    std::vector<std::pair<std::string, double>> total;
    double all = 0;
    for (size_t i = 0; i + 1 < used_; ++i) {
      float ms = 0;
      check_rt(cudaEventElapsedTime(&ms, pool_[i], pool_[i + 1]), "profile", "cudaEventElapsedTime");
      auto it = std::find_if(total.begin(), total.end(), [&](const auto& t) { return t.first == groups_[i]; });
      if (it == total.end()) total.emplace_back(groups_[i], ms);
      else it->second += ms;
      all += ms;
    }
    std::fprintf(stderr, "[cuda-profile] %zu ops, %.3f ms on the device:", groups_.size(), all);
    for (const auto& [name, ms] : total)
      std::fprintf(stderr, " %s %.3f (%.0f%%);", name.c_str(), ms, all > 0 ? 100 * ms / all : 0.0);
    std::fprintf(stderr, "\n");
    used_ = 0;
    groups_.clear();
  }

 private:
  void record(cudaStream_t s) {
    if (used_ == pool_.size()) {
      cudaEvent_t e;
      check_rt(cudaEventCreate(&e), "profile", "cudaEventCreate");
      pool_.push_back(e);
    }
    check_rt(cudaEventRecord(pool_[used_++], s), "profile", "cudaEventRecord");
  }
  bool on_ = false;
  std::vector<cudaEvent_t> pool_;
  size_t used_ = 0;
  std::vector<const char*> groups_;
};

// Op codes of the launch-shape record (a step's graph key).
enum OpCode : uint64_t {
  kEmbedding = 1,
  kRmsnorm,
  kMatmul,
  kQkvRopeAppend,
  kAttention,
  kSwiglu,
  kGatherRows,
  kTopK,
  kForceRows,
  kGeluDot,
  kEntryNorms,
  kGatherEntries,
  kCopy,
  kFill,
};

uint64_t key_of(const void* p) { return static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p)); }
uint64_t key_of(int64_t v) { return static_cast<uint64_t>(v); }
uint64_t key_of(float f) {
  uint32_t b = 0;
  std::memcpy(&b, &f, sizeof b);
  return b;
}

constexpr size_t kMaxGraphs = 4;  // decode graphs kept (distinct step shapes, e.g. several sessions)

struct Graph {
  std::vector<uint64_t> key;
  cudaGraphExec_t exec = nullptr;
  uint64_t last_used = 0;
};

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) : ctx_(device), device_(device) {
    graphs_on_ = !(std::getenv("SDTP_CUDA_GRAPHS") && std::string(std::getenv("SDTP_CUDA_GRAPHS")) == "0") &&
                 !prof_.on() && !ctx_.sync_each_op();
    if (const char* v = std::getenv("SDTP_CUDA_ATTN_VARIANT")) attn_variant_ = std::atoi(v);
  }
  ~CudaBackend() override {
    for (Graph& g : graphs_)
      if (g.exec) cudaGraphExecDestroy(g.exec);
  }

  std::string name() const override { return "cuda:" + std::to_string(device_); }
  ElemType activation_type() const override { return ElemType::bf16; }
  // float32, as llama.cpp keeps activations between ops: 2·n_layer residual adds rounded to bf16
  // moved SmolLM2-135M's logits by up to 5e-2 (relative) and flipped near-tied top-1 tokens.
  ElemType residual_type() const override { return ElemType::f32; }

  // --- memory ---

  DeviceTensor alloc(ElemType type, int64_t rows, int64_t cols, const std::string& what) override {
    need(rows >= 0 && cols >= 0, "alloc", what + ": negative shape");
    not_capturable();
    use_device();
    const size_t bytes = static_cast<size_t>(rows) * static_cast<size_t>(cols) * elem_bytes(type);
    auto buf = std::make_shared<DeviceBuffer>(bytes, what + " on " + name());
    void* data = buf->data();
    return DeviceTensor(std::move(buf), data, type, rows, cols);
  }

  size_t free_bytes() const override {
    use_device();
    size_t free_b = 0, total_b = 0;
    check_rt(cudaMemGetInfo(&free_b, &total_b), "free_bytes", "cudaMemGetInfo");
    return free_b;
  }

  void upload(const DeviceTensor& dst, const void* host, ElemType host_type) override {
    if (!not_capturable()) return;
    use_device();
    if (dst.numel() == 0) return;
    std::vector<bf16> converted;
    if (host_type == ElemType::f32 && dst.type() == ElemType::bf16) {
      const auto* f = static_cast<const float*>(host);
      converted.resize(static_cast<size_t>(dst.numel()));
      for (size_t i = 0; i < converted.size(); ++i) converted[i] = to_bf16(f[i]);
      host = converted.data();
    } else {
      need(host_type == dst.type(), "upload",
           std::string("host ") + elem_name(host_type) + " data into a " + shape(dst) + " tensor");
    }
    check_rt(cudaMemcpyAsync(dst.data(), host, dst.bytes(), cudaMemcpyHostToDevice, ctx_.stream()), "upload",
             "cudaMemcpyAsync");
    ctx_.synchronize("upload");
  }

  void download(void* host, const DeviceTensor& src, ElemType host_type) override {
    if (!not_capturable()) return;
    use_device();
    if (src.numel() > 0) {
      const bool widen = host_type == ElemType::f32 && src.type() == ElemType::bf16;
      need(widen || host_type == src.type(), "download",
           "a " + shape(src) + " tensor into host " + elem_name(host_type) + " data");
      std::vector<bf16> staged(widen ? static_cast<size_t>(src.numel()) : 0);
      check_rt(cudaMemcpyAsync(widen ? staged.data() : host, src.data(), src.bytes(), cudaMemcpyDeviceToHost,
                               ctx_.stream()),
               "download", "cudaMemcpyAsync");
      ctx_.synchronize("download");
      if (widen) {
        auto* f = static_cast<float*>(host);
        for (size_t i = 0; i < staged.size(); ++i) f[i] = to_float(staged[i]);
      }
    } else {
      ctx_.synchronize("download");
    }
    prof_.report();
  }

  void copy(const DeviceTensor& dst, const DeviceTensor& src) override {
    need(dst.type() == src.type() && dst.bytes() == src.bytes(), "copy", shape(src) + " into " + shape(dst));
    if (collect({kCopy, key_of(dst.data()), key_of(src.data()), dst.bytes()})) return;
    begin();
    if (dst.bytes() > 0)
      check_rt(cudaMemcpyAsync(dst.data(), src.data(), dst.bytes(), cudaMemcpyDeviceToDevice, ctx_.stream()), "copy",
               "cudaMemcpyAsync");
    end("copy");
  }

  void fill(const DeviceTensor& dst, float value) override {
    need(dst.type() == ElemType::f32 || value == 0.0f, "fill", "a " + shape(dst) + " tensor with " + std::to_string(value));
    if (collect({kFill, key_of(dst.data()), dst.bytes(), key_of(value)})) return;
    begin();
    if (value == 0.0f) {
      if (dst.bytes() > 0)
        check_rt(cudaMemsetAsync(dst.data(), 0, dst.bytes(), ctx_.stream()), "fill", "cudaMemsetAsync");
    } else {
      fill_value(ctx_, dst.as<float>(), dst.numel(), value);
    }
    end("fill");
  }

  void synchronize() override {
    if (!not_capturable()) return;
    use_device();
    ctx_.synchronize("synchronize");
    prof_.report();
  }

  // --- weights ---

  size_t model_bytes(const ModelConfig& c) const override {
    const auto d = static_cast<size_t>(c.n_embd), ff = static_cast<size_t>(c.n_ff);
    const auto qkv = static_cast<size_t>(c.n_head + 2 * c.n_head_kv) * static_cast<size_t>(c.head_dim);
    const auto q_dim = static_cast<size_t>(c.n_head) * static_cast<size_t>(c.head_dim);
    size_t layer = 2 * d * sizeof(float) + qkv * d * sizeof(bf16) + d * q_dim * sizeof(bf16) +
                   3 * ff * d * sizeof(bf16);
    if (c.qkv_bias) layer += qkv * (sizeof(bf16) + sizeof(float));
    const size_t embd = static_cast<size_t>(c.n_vocab) * d * sizeof(bf16);
    return embd * (c.tied_embeddings ? 1 : 2) + d * sizeof(float) +
           static_cast<size_t>(c.head_dim / 2) * sizeof(float) + static_cast<size_t>(c.n_layer) * layer;
  }

  std::shared_ptr<const DeviceWeights> upload_model(const Model& model) override {
    need(mode_ == Mode::eager, "upload_model", "called inside run_step");
    use_device();
    const ModelConfig& c = model.config;
    c.validate(model.path.empty() ? "model" : model.path);
    const ModelWeights& w = model.weights;
    const bool tied = model.random_weights ? c.tied_embeddings : w.output.empty();
    ModelConfig sized = c;
    sized.tied_embeddings = tied;
    const size_t want = model_bytes(sized), free_b = free_bytes();
    if (want > free_b) {
      DeviceOutOfMemoryError e("model needs " + gib(static_cast<double>(want)) + " on " + name() + ", " +
                               gib(static_cast<double>(free_b)) + " free");
      e.bytes_requested = want;
      throw e;
    }
    if (!model.random_weights && static_cast<int>(w.layers.size()) != c.n_layer)
      throw FormatError("cuda upload: model has " + std::to_string(w.layers.size()) + " layers, config says " +
                        std::to_string(c.n_layer));
    const int64_t d = c.n_embd, q_dim = int64_t(c.n_head) * c.head_dim, kv_dim = int64_t(c.n_head_kv) * c.head_dim;
    const int64_t qkv = q_dim + 2 * kv_dim, ff = c.n_ff;
    auto dw = std::make_shared<DeviceWeights>();

    // Uniform with standard deviation 0.02 (Hugging Face's initializer_range), one seed per tensor,
    // drawn in CudaModel::random's order so the same seed gives the same model.
    const float bound = 0.02f * std::sqrt(3.0f);
    uint64_t tensor = model.random_seed * 1000003u;
    std::vector<bf16> host;
    // A matrix [m x k] from host parts stacked by rows (fused projections), or random.
    const auto matrix = [&](int64_t m, int64_t k, std::initializer_list<std::pair<const Tensor*, int64_t>> parts,
                            std::initializer_list<std::pair<const Tensor*, int64_t>> bias_parts,
                            const std::string& what) {
      auto cm = std::make_shared<CudaMatrix>();
      cm->m = m;
      cm->k = k;
      cm->has_bias = bias_parts.size() > 0;
      cm->w = DeviceArray<bf16>(static_cast<size_t>(m * k), what + " on " + name());
      if (model.random_weights) {
        fill_uniform(ctx_, cm->w.data(), m * k, ++tensor, bound);
      } else {
        stack(host, parts, what);
        copy_to_device(cm->w.data(), host.data(), host.size() * sizeof(bf16), what.c_str());
      }
      if (cm->has_bias) {
        cm->bias = DeviceArray<bf16>(static_cast<size_t>(m), what + " bias on " + name());
        cm->bias_f32 = DeviceArray<float>(static_cast<size_t>(m), what + " bias on " + name());
        if (model.random_weights) {
          fill_uniform(ctx_, cm->bias.data(), m, ++tensor, bound);
        } else {
          stack(host, bias_parts, what + " bias");
          copy_to_device(cm->bias.data(), host.data(), host.size() * sizeof(bf16), what.c_str());
        }
        bf16_to_f32(ctx_, cm->bias.data(), m, cm->bias_f32.data());
      }
      dw->bytes += cm->bytes();
      return cm;
    };
    const auto vec = [&](const Tensor* t, int64_t count, const std::string& what) {
      DeviceTensor v = alloc(ElemType::f32, 1, count, what);
      if (model.random_weights) {
        fill_value(ctx_, v.as<float>(), count, 1.0f);
      } else {
        if (static_cast<int64_t>(t->data.size()) != count)
          throw FormatError("cuda upload: " + what + " has " + std::to_string(t->data.size()) + " values, expected " +
                            std::to_string(count));
        upload(v, t->data.data(), ElemType::f32);
      }
      dw->bytes += v.bytes();
      return v;
    };

    dw->tok_embd = matrix(c.n_vocab, d, {{&w.tok_embd, int64_t(c.n_vocab) * d}}, {}, "token embedding");
    dw->lm_head = tied ? dw->tok_embd : matrix(c.n_vocab, d, {{&w.output, int64_t(c.n_vocab) * d}}, {}, "lm head");
    dw->output_norm = vec(&w.output_norm, d, "output norm");
    static const LayerWeights kNoLayer;
    for (int l = 0; l < c.n_layer; ++l) {
      const LayerWeights& lw = model.random_weights ? kNoLayer : w.layers[l];
      const std::string layer = "layer " + std::to_string(l);
      DeviceLayer dl;
      dl.attn_norm = vec(&lw.attn_norm, d, layer + " attn_norm");
      dl.ffn_norm = vec(&lw.ffn_norm, d, layer + " ffn_norm");
      if (c.qkv_bias)
        dl.wqkv = matrix(qkv, d, {{&lw.wq, q_dim * d}, {&lw.wk, kv_dim * d}, {&lw.wv, kv_dim * d}},
                         {{&lw.bq, q_dim}, {&lw.bk, kv_dim}, {&lw.bv, kv_dim}}, layer + " wq|wk|wv");
      else
        dl.wqkv = matrix(qkv, d, {{&lw.wq, q_dim * d}, {&lw.wk, kv_dim * d}, {&lw.wv, kv_dim * d}}, {},
                         layer + " wq|wk|wv");
      dl.wo = matrix(d, q_dim, {{&lw.wo, d * q_dim}}, {}, layer + " wo");
      dl.wgu = matrix(2 * ff, d, {{&lw.w_gate, ff * d}, {&lw.w_up, ff * d}}, {}, layer + " w_gate|w_up");
      dl.wdown = matrix(d, ff, {{&lw.w_down, d * ff}}, {}, layer + " w_down");
      dw->layers.push_back(std::move(dl));
    }
    const std::vector<float> inv_freq = rope_inv_freq(c);
    dw->inv_freq = alloc(ElemType::f32, 1, static_cast<int64_t>(inv_freq.size()), "rope inv_freq");
    upload(dw->inv_freq, inv_freq.data(), ElemType::f32);
    dw->bytes += dw->inv_freq.bytes();
    ctx_.synchronize("upload_model");
    return dw;
  }

  std::shared_ptr<const Matrix> upload_matrix(const float* w, int64_t m, int64_t k, const float* bias) override {
    need(m > 0 && k > 0 && w, "upload_matrix", "bad shape " + std::to_string(m) + " x " + std::to_string(k));
    need(mode_ == Mode::eager, "upload_matrix", "called inside run_step");
    use_device();
    auto cm = std::make_shared<CudaMatrix>();
    cm->m = m;
    cm->k = k;
    cm->has_bias = bias != nullptr;
    std::vector<bf16> host(static_cast<size_t>(m * k));
    for (size_t i = 0; i < host.size(); ++i) host[i] = to_bf16(w[i]);
    cm->w = upload_array(host, "matrix");
    if (bias) {
      std::vector<bf16> hb(static_cast<size_t>(m));
      for (size_t i = 0; i < hb.size(); ++i) hb[i] = to_bf16(bias[i]);
      cm->bias = upload_array(hb, "matrix bias");
      cm->bias_f32 = upload_array(std::vector<float>(bias, bias + m), "matrix bias");
    }
    return cm;
  }

  // --- ops ---

  void embedding(const Matrix& table, const DeviceTensor& ids, const DeviceTensor& out) override {
    const CudaMatrix& t = cuda_matrix(table, "embedding");
    const bool f32_out = out.type() == ElemType::f32;
    need(ids.type() == ElemType::i32 && (f32_out || out.type() == ElemType::bf16) && out.cols() == t.k &&
             out.rows() >= ids.numel(),
         "embedding", "ids " + shape(ids) + ", out " + shape(out) + " (bf16 or f32), table [" + std::to_string(t.m) +
                          " x " + std::to_string(t.k) + "]");
    if (collect({kEmbedding, key_of(t.w.data()), key_of(ids.data()), key_of(ids.numel()), key_of(out.data()),
                 key_of(int64_t(f32_out))}))
      return;
    begin();
    if (f32_out)
      cuda::embedding(ctx_, t.w.data(), t.m, t.k, ids.as<int32_t>(), ids.numel(), out.as<float>());
    else
      cuda::embedding(ctx_, t.w.data(), t.m, t.k, ids.as<int32_t>(), ids.numel(), out.as<bf16>());
    end("embedding");
  }

  void rmsnorm(const DeviceTensor& x, const DeviceTensor& weight, float eps, const DeviceTensor& y) override {
    // x bf16 or f32 (the residual stream) into bf16 y; a y aliasing x must be x's own type.
    const bool f32_in = x.type() == ElemType::f32;
    need((f32_in || x.type() == ElemType::bf16) && y.type() == ElemType::bf16 && y.cols() == x.cols() &&
             y.rows() >= x.rows() && (!f32_in || x.data() != y.data()) &&
             (weight.empty() || (weight.type() == ElemType::f32 && weight.numel() == x.cols())),
         "rmsnorm", "x " + shape(x) + " (bf16 or f32), weight " + shape(weight) + ", y " + shape(y) + " (bf16)");
    const float* w = weight.empty() ? ones(x.cols()) : weight.as<float>();
    if (collect({kRmsnorm, key_of(x.data()), key_of(x.rows()), key_of(x.cols()), key_of(w), key_of(eps),
                 key_of(y.data()), key_of(int64_t(f32_in))}))
      return;
    begin();
    if (f32_in)
      cuda::rmsnorm(ctx_, x.as<float>(), w, x.rows(), x.cols(), eps, y.as<bf16>());
    else
      cuda::rmsnorm(ctx_, x.as<bf16>(), w, x.rows(), x.cols(), eps, y.as<bf16>());
    end("rmsnorm");
  }

  void matmul(const DeviceTensor& x, const Matrix& w, const DeviceTensor& y, bool accumulate) override {
    const CudaMatrix& m = cuda_matrix(w, "matmul");
    const bool f32_out = y.type() == ElemType::f32;
    need(x.type() == ElemType::bf16 && (f32_out || y.type() == ElemType::bf16) && x.cols() == m.k && y.cols() == m.m &&
             y.rows() >= x.rows(),
         "matmul", "x " + shape(x) + " · W^T [" + std::to_string(m.m) + " x " + std::to_string(m.k) + "] into " +
                       shape(y));
    if (accumulate && m.has_bias)
      throw UnsupportedError("cuda backend: matmul: accumulating into " + shape(y) +
                             " with a bias is not implemented");
    if (collect({kMatmul, key_of(x.data()), key_of(x.rows()), key_of(m.w.data()), key_of(y.data()),
                 key_of(int64_t(f32_out)), key_of(int64_t(accumulate))}))
      return;
    begin();
    if (accumulate && f32_out) {  // the float32 residual stream
      matmul_residual(ctx_, x.as<bf16>(), x.rows(), m.k, m.w.data(), m.m, y.as<float>());
      end("matmul+residual");
    } else if (accumulate) {
      matmul_residual(ctx_, x.as<bf16>(), x.rows(), m.k, m.w.data(), m.m, y.as<bf16>());
      end("matmul+residual");
    } else if (f32_out) {
      matmul_f32(ctx_, x.as<bf16>(), x.rows(), m.k, m.w.data(), m.m, m.has_bias ? m.bias_f32.data() : nullptr,
                 y.as<float>());
      end("matmul f32");
    } else {
      cuda::matmul(ctx_, x.as<bf16>(), x.rows(), m.k, m.w.data(), m.m, m.has_bias ? m.bias.data() : nullptr,
                   y.as<bf16>());
      end("matmul");
    }
  }

  void qkv_rope_append(const DeviceTensor& qkv, const DeviceTensor& positions, const DeviceTensor& inv_freq,
                       int n_head, int n_head_kv, int head_dim, const DeviceTensor& q, const KVView& cache) override {
    const int64_t n = qkv.rows();
    const int64_t q_dim = int64_t(n_head) * head_dim, kv_dim = int64_t(n_head_kv) * head_dim;
    need(qkv.type() == ElemType::bf16 && qkv.cols() == q_dim + 2 * kv_dim && positions.type() == ElemType::i32 &&
             positions.numel() >= n && inv_freq.type() == ElemType::f32 && inv_freq.numel() >= head_dim / 2 &&
             q.type() == ElemType::bf16 && q.cols() == q_dim && q.rows() >= n,
         "qkv_rope_append",
         "qkv " + shape(qkv) + ", positions " + shape(positions) + ", q " + shape(q) + ", heads " +
             std::to_string(n_head) + "/" + std::to_string(n_head_kv) + " x " + std::to_string(head_dim));
    need_cache(cache, n_head_kv, head_dim, n, "qkv_rope_append");
    // Every head's entry comes from the device len: one graph serves every step of a decode.
    if (collect({kQkvRopeAppend, key_of(qkv.data()), key_of(n), key_of(positions.data()), key_of(inv_freq.data()),
                 key_of(int64_t(n_head)), key_of(int64_t(n_head_kv)), key_of(int64_t(head_dim)), key_of(q.data()),
                 key_of(cache.k.data()), key_of(cache.v.data()), key_of(cache.pos.data()), key_of(cache.len.data())}))
      return;
    begin();
    cuda::qkv_rope_append(ctx_, qkv.as<bf16>(), n, n_head, n_head_kv, head_dim, positions.as<int32_t>(),
                          inv_freq.as<float>(), q.as<bf16>(), cache.k.as<bf16>(), cache.v.as<bf16>(),
                          cache.pos.as<int32_t>(), cache.len.as<int32_t>());
    end("qkv_rope_append");
  }

  // One query row: the split decode kernel (it reads q_pos and every head's length from the
  // device). More rows: the wgmma kernel on Hopper for head_dim 128, else the mma.sync flash kernel
  // (head_dim 64/128), else the generic one. SDTP_CUDA_ATTN_VARIANT 1-4 forces a flash kernel shape
  // for every row count, 10-13 a wgmma variant. Every kernel reads the per-head lengths from
  // cache.len, so only the decode split count (from the host's longest head) enters the graph key.
  void attention(const DeviceTensor& q, const DeviceTensor& q_pos, const KVView& cache, int64_t appended, int n_head,
                 int n_head_kv, int head_dim, const DeviceTensor& out, AttentionStats* stats) override {
    const int64_t n = q.rows();
    const int64_t q_dim = int64_t(n_head) * head_dim;
    need(q.type() == ElemType::bf16 && q.cols() == q_dim && q_pos.type() == ElemType::i32 && q_pos.numel() >= n &&
             out.type() == ElemType::bf16 && out.cols() == q_dim && out.rows() >= n && n_head_kv > 0 &&
             n_head % n_head_kv == 0,
         "attention",
         "q " + shape(q) + ", q_pos " + shape(q_pos) + ", out " + shape(out) + ", heads " + std::to_string(n_head) +
             "/" + std::to_string(n_head_kv) + " x " + std::to_string(head_dim));
    need_cache(cache, n_head_kv, head_dim, appended, "attention");
    const int64_t most = cache.max_n() + appended, cap = cache.k.rows();
    const bool flash_forced = attn_variant_ >= 1 && attn_variant_ <= kAttentionVariants;
    enum Kernel : int64_t { kDecode, kWgmma, kFlash, kGeneric };
    Kernel kernel = kGeneric;
    if (n == 1 && !flash_forced && attention_decode_supported(head_dim)) kernel = kDecode;
    else if (!flash_forced && attention_wgmma_supported(head_dim)) kernel = kWgmma;
    else if (head_dim == 64 || head_dim == 128) kernel = kFlash;
    const DeviceTensor* mean = stats && !stats->last_row_mean.empty() ? &stats->last_row_mean : nullptr;
    const DeviceTensor* mass = stats && !stats->key_mass.empty() ? &stats->key_mass : nullptr;
    const int64_t mass_from = stats ? stats->mass_from : 0;
    if (mean)
      need(mean->type() == ElemType::f32 && mean->numel() >= appended && n > 0, "attention",
           "last_row_mean " + shape(*mean) + " for " + std::to_string(appended) + " appended entries, " +
               std::to_string(n) + " rows");
    if (mass)
      need(mass->type() == ElemType::f32 && mass->rows() >= most && mass->cols() >= n_head_kv && mass_from >= 0 &&
               mass_from <= n,
           "attention",
           "key_mass " + shape(*mass) + " for " + std::to_string(most) + " x " + std::to_string(n_head_kv) +
               ", mass_from " + std::to_string(mass_from) + " of " + std::to_string(n) + " rows");
    const int splits = kernel == kDecode ? attention_decode_splits(ctx_, most, n_head) : 0;
    float* scratch = kernel == kDecode ? decode_scratch(attention_decode_scratch(n_head, head_dim)) : nullptr;
    // The statistics' kernels loop over the allocated rows (each stops at its head's count), so
    // their launches do not depend on the host counts either.
    float* probs = mean ? probs_scratch(int64_t(n_head) * cap) : nullptr;
    float* row_stats = mass ? row_stats_scratch(2 * (n - mass_from) * n_head) : nullptr;
    const int64_t mass_rows = mass ? std::min(cap, mass->rows()) : 0;
    if (collect({kAttention, key_of(q.data()), key_of(n), key_of(q_pos.data()), key_of(cache.k.data()),
                 key_of(cache.v.data()), key_of(cache.pos.data()), key_of(cache.len.data()), key_of(cap),
                 key_of(appended), key_of(int64_t(splits)), key_of(int64_t(n_head)), key_of(int64_t(n_head_kv)),
                 key_of(int64_t(head_dim)), key_of(out.data()), key_of(int64_t(kernel)), key_of(scratch),
                 key_of(mean ? mean->data() : nullptr), key_of(probs), key_of(mass ? mass->data() : nullptr),
                 key_of(mass ? mass->cols() : 0), key_of(mass_rows), key_of(mass_from), key_of(row_stats)}))
      return;
    begin();
    const auto* qp = q_pos.as<int32_t>();
    const KvHeads kv = kv_heads(cache, n_head_kv, appended, most);
    switch (kernel) {
      case kDecode:
        attention_decode(ctx_, q.as<bf16>(), 0, kv, n_head, n_head_kv, head_dim, out.as<bf16>(), scratch, qp);
        end("attention (decode)");
        break;
      case kWgmma:
        attention_wgmma(ctx_, q.as<bf16>(), qp, n, kv, n_head, n_head_kv, head_dim, out.as<bf16>(),
                        attn_variant_ >= 10 ? attn_variant_ - 10 : 0);
        end("attention (wgmma)");
        break;
      case kFlash:
        cuda::attention(ctx_, q.as<bf16>(), qp, n, kv, n_head, n_head_kv, head_dim, out.as<bf16>(),
                        flash_forced ? attn_variant_ : 0);
        end("attention (flash)");
        break;
      case kGeneric:
        attention_generic(ctx_, q.as<bf16>(), qp, n, kv, n_head, n_head_kv, head_dim, out.as<bf16>());
        end("attention (generic)");
        break;
    }
    if (mean) {
      // The last row's probabilities per head (rows cap apart), then for each appended entry (from
      // len[g] in every head g) their mean over the query heads.
      if (appended > 0) {
        attention_row_probs(ctx_, q.as<bf16>() + (n - 1) * q_dim, 0, kv_heads(cache, n_head_kv, appended, cap), n_head,
                            n_head_kv, head_dim, probs, cap, qp + (n - 1));
        mean_over_heads(ctx_, probs, n_head, n_head / n_head_kv, cap, cache.len.as<int32_t>(), appended,
                        mean->as<float>());
      }
      end("attention stats (last row)");
    }
    if (mass && n - mass_from >= 32) {
      // Many rows (an H2O/VATP prefill): the scores on tensor cores, in chunks of rows that fit
      // 64 Mi floats; the per-warp kernels below took 0.4 s per layer of Llama-2-7B at 8K.
      std::vector<int64_t> counts(cache.n);
      int64_t most_n = 1;
      for (int64_t& c : counts) most_n = std::max(most_n, c += appended);
      const int64_t floats = std::max<int64_t>(int64_t{64} << 20, 34 * (most_n + 2));
      float* scratch = grow(key_scores_, floats, "attention key-mass scores");
      attention_key_mass_gemm(ctx_, q.as<bf16>(), qp, n, mass_from, kv_heads(cache, n_head_kv, appended, mass_rows),
                              counts.data(), n_head, n_head_kv, head_dim, scratch, floats, mass->as<float>(),
                              mass->cols());
      end("attention stats (key mass, gemm)");
    } else if (mass) {
      attention_key_mass(ctx_, q.as<bf16>(), qp, n, mass_from, kv_heads(cache, n_head_kv, appended, mass_rows), n_head,
                         n_head_kv, head_dim, row_stats, mass->as<float>(), mass->cols());
      end("attention stats (key mass)");
    }
  }

  void swiglu(const DeviceTensor& gu, const DeviceTensor& out) override {
    need(gu.type() == ElemType::bf16 && out.type() == ElemType::bf16 && gu.cols() % 2 == 0 && out.cols() * 2 == gu.cols() &&
             out.rows() >= gu.rows(),
         "swiglu", "gu " + shape(gu) + ", out " + shape(out));
    if (collect({kSwiglu, key_of(gu.data()), key_of(gu.rows()), key_of(gu.cols()), key_of(out.data())})) return;
    begin();
    swiglu_fused(ctx_, gu.as<bf16>(), gu.rows(), gu.cols() / 2, out.as<bf16>());
    end("swiglu");
  }

  void gather_rows(const DeviceTensor& in, const DeviceTensor& index, const DeviceTensor& out) override {
    need(index.type() == ElemType::i32 && out.type() == in.type() && out.cols() == in.cols() &&
             out.rows() >= index.numel(),
         "gather_rows", "in " + shape(in) + ", index " + shape(index) + ", out " + shape(out));
    if (collect({kGatherRows, key_of(in.data()), key_of(in.rows()), in.row_bytes(), key_of(index.data()),
                 key_of(index.numel()), key_of(out.data())}))
      return;
    begin();
    cuda::gather_rows(ctx_, in.data(), in.rows(), static_cast<int64_t>(in.row_bytes()), index.as<int32_t>(),
                      index.numel(), out.data());
    end("gather_rows");
  }

  void top_k(const DeviceTensor& scores, int64_t k, const DeviceTensor& out_index) override {
    need(scores.type() == ElemType::f32 && out_index.type() == ElemType::i32 && k >= 0 && k <= scores.numel() &&
             out_index.numel() >= k,
         "top_k", "k " + std::to_string(k) + " of scores " + shape(scores) + " into " + shape(out_index));
    if (collect({kTopK, key_of(scores.data()), key_of(scores.numel()), key_of(k), key_of(out_index.data())})) return;
    begin();
    cuda::top_k(ctx_, scores.as<float>(), scores.numel(), k, out_index.as<int32_t>());
    end("top_k");
  }

  void force_rows(const DeviceTensor& scores, const DeviceTensor& positions, int keep_first,
                  int32_t recent_from) override {
    need(scores.type() == ElemType::f32 && positions.type() == ElemType::i32 && positions.numel() >= scores.numel(),
         "force_rows", "scores " + shape(scores) + ", positions " + shape(positions));
    if (collect({kForceRows, key_of(scores.data()), key_of(scores.numel()), key_of(positions.data()),
                 key_of(int64_t(keep_first))}))
      return;
    begin();
    cuda::force_rows(ctx_, scores.as<float>(), scores.numel(), positions.as<int32_t>(), keep_first, recent_from);
    end("force_rows");
  }

  void gelu_dot(const DeviceTensor& h, const DeviceTensor& w2, float b2, const DeviceTensor& scores) override {
    need(h.type() == ElemType::bf16 && w2.type() == ElemType::f32 && w2.numel() == h.cols() && scores.type() == ElemType::f32 &&
             scores.numel() >= h.rows(),
         "gelu_dot", "h " + shape(h) + ", w2 " + shape(w2) + ", scores " + shape(scores));
    if (collect({kGeluDot, key_of(h.data()), key_of(h.rows()), key_of(h.cols()), key_of(w2.data()), key_of(b2),
                 key_of(scores.data())}))
      return;
    begin();
    cuda::gelu_dot(ctx_, h.as<bf16>(), h.rows(), static_cast<int>(h.cols()), w2.as<float>(), b2, scores.as<float>());
    end("gelu_dot");
  }

  void entry_norms(const KVView& cache, int n_head_kv, int head_dim, const DeviceTensor& v_l1,
                   const DeviceTensor& k_l2) override {
    need_cache(cache, n_head_kv, head_dim, 0, "entry_norms");
    const int64_t most = cache.max_n(), cap = cache.k.rows();
    for (const DeviceTensor* t : {&v_l1, &k_l2})
      need(t->empty() || (t->type() == ElemType::f32 && t->rows() >= most && t->cols() >= n_head_kv), "entry_norms",
           "v_l1 " + shape(v_l1) + ", k_l2 " + shape(k_l2) + " for " + std::to_string(most) + " x " +
               std::to_string(n_head_kv) + " entries");
    // Over the rows every output has (>= the longest head), each stopping at its head's len: the
    // launch does not depend on the host counts.
    int64_t bound = cap;
    for (const DeviceTensor* t : {&v_l1, &k_l2})
      if (!t->empty()) bound = std::min(bound, t->rows());
    if (collect({kEntryNorms, key_of(cache.k.data()), key_of(cache.v.data()), key_of(cache.len.data()), key_of(bound),
                 key_of(int64_t(n_head_kv)), key_of(int64_t(head_dim)), key_of(v_l1.data()), key_of(v_l1.cols()),
                 key_of(k_l2.data()), key_of(k_l2.cols())}))
      return;
    begin();
    cuda::entry_norms(ctx_, cache.k.as<bf16>(), cache.v.as<bf16>(), cache.len.as<int32_t>(), bound, n_head_kv,
                      head_dim, v_l1.empty() ? nullptr : v_l1.as<float>(), v_l1.cols(),
                      k_l2.empty() ? nullptr : k_l2.as<float>(), k_l2.cols());
    end("entry_norms");
  }

  void gather_entries(const KVView& src, const DeviceTensor& keep, int n_head_kv, int head_dim,
                      const KVView& dst) override {
    need_cache(src, n_head_kv, head_dim, 0, "gather_entries (src)");
    need_cache(dst, n_head_kv, head_dim, 0, "gather_entries (dst)");
    const int64_t most = dst.max_n();
    need(keep.type() == ElemType::i32 && keep.cols() == n_head_kv && keep.rows() >= most, "gather_entries",
         "keep " + shape(keep) + " for " + std::to_string(most) + " x " + std::to_string(n_head_kv) + " entries");
    const bool with_mass = !src.mass.empty() && !dst.mass.empty();
    // Over keep's rows (>= the longest head of dst), each stopping at its head's dst len.
    const int64_t bound = std::min(keep.rows(), dst.k.rows());
    if (collect({kGatherEntries, key_of(src.k.data()), key_of(src.v.data()), key_of(src.pos.data()),
                 key_of(with_mass ? src.mass.data() : nullptr), key_of(src.k.rows()), key_of(keep.data()),
                 key_of(bound), key_of(int64_t(n_head_kv)), key_of(int64_t(head_dim)), key_of(dst.k.data()),
                 key_of(dst.v.data()), key_of(dst.pos.data()), key_of(dst.len.data()),
                 key_of(with_mass ? dst.mass.data() : nullptr)}))
      return;
    begin();
    cuda::gather_entries(ctx_, src.k.as<bf16>(), src.v.as<bf16>(), src.pos.as<int32_t>(),
                         with_mass ? src.mass.as<float>() : nullptr, src.k.rows(), keep.as<int32_t>(),
                         dst.len.as<int32_t>(), bound, n_head_kv, head_dim, dst.k.as<bf16>(), dst.v.as<bf16>(),
                         dst.pos.as<int32_t>(), with_mass ? dst.mass.as<float>() : nullptr);
    end("gather_entries");
  }

  // --- decode graphs ---

  void run_step(const std::function<void()>& queue) override {
    if (!graphs_on_ || mode_ != Mode::eager) {
      queue();
      prof_.report();
      return;
    }
    use_device();
    // Collect: every op records its launch shape and launches nothing.
    key_.clear();
    capturable_ = true;
    mode_ = Mode::collect;
    try {
      queue();
    } catch (...) {
      mode_ = Mode::eager;
      throw;
    }
    mode_ = Mode::eager;
    if (!capturable_ || key_.empty()) {
      queue();
      return;
    }
    ++clock_;
    for (Graph& g : graphs_) {
      if (g.key == key_) {
        g.last_used = clock_;
        check_rt(cudaGraphLaunch(g.exec, ctx_.stream()), "decode graph", "cudaGraphLaunch");
        return;
      }
    }
    capture(queue);
  }

 private:
  enum class Mode { eager, collect, capture };

  void use_device() const {
    int cur = -1;
    if (cudaGetDevice(&cur) != cudaSuccess || cur != device_)
      check_rt(cudaSetDevice(device_), "set device", "cudaSetDevice");
  }

  // In a collect pass: appends the op's launch shape and returns true (launch nothing). While
  // capturing, records the same shape to check that queue() repeated itself.
  bool collect(std::initializer_list<uint64_t> key) {
    if (mode_ == Mode::eager) return false;
    auto& k = mode_ == Mode::collect ? key_ : capture_key_;
    k.insert(k.end(), key);
    k.push_back(~uint64_t{0});
    return mode_ == Mode::collect;
  }
  // For calls a graph cannot hold (allocation, host copies, synchronisation): false in a collect
  // pass, which then runs the step op by op instead of capturing it.
  bool not_capturable() {
    if (mode_ == Mode::collect) {
      capturable_ = false;
      return false;
    }
    if (mode_ == Mode::capture)
      throw Error("cuda backend: run_step: queue() allocated, copied to or from the host or synchronized while being "
                  "captured");
    return true;
  }
  void begin() {
    use_device();
    prof_.start(ctx_.stream());
  }
  void end(const char* op) { prof_.mark(ctx_.stream(), op); }

  void capture(const std::function<void()>& queue) {
    cudaStream_t s = ctx_.stream();
    capture_key_.clear();
    check_rt(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed), "decode graph", "cudaStreamBeginCapture");
    cudaGraph_t g = nullptr;
    mode_ = Mode::capture;
    try {
      queue();
    } catch (...) {
      mode_ = Mode::eager;
      cudaStreamEndCapture(s, &g);
      if (g) cudaGraphDestroy(g);
      (void)cudaGetLastError();
      throw;
    }
    mode_ = Mode::eager;
    check_rt(cudaStreamEndCapture(s, &g), "decode graph", "cudaStreamEndCapture");
    if (capture_key_ != key_) {
      cudaGraphDestroy(g);
      throw Error("cuda backend: run_step: queue() queued different ops on its second call (it must not change host "
                  "state)");
    }
    // A free slot gets a new graph; else the least recently used one is updated in place (or
    // instantiated anew when the update is refused: a different topology).
    Graph* slot = nullptr;
    if (graphs_.size() < kMaxGraphs) {
      slot = &graphs_.emplace_back();
    } else {
      slot = &*std::min_element(graphs_.begin(), graphs_.end(),
                                [](const Graph& a, const Graph& b) { return a.last_used < b.last_used; });
      cudaGraphExecUpdateResultInfo info{};
      if (cudaGraphExecUpdate(slot->exec, g, &info) != cudaSuccess) {
        (void)cudaGetLastError();
        cudaGraphExecDestroy(slot->exec);
        slot->exec = nullptr;
      }
    }
    if (!slot->exec) {
      const cudaError_t e = cudaGraphInstantiate(&slot->exec, g, 0);
      if (e != cudaSuccess) {
        slot->exec = nullptr;
        cudaGraphDestroy(g);
        graphs_.erase(graphs_.begin() + (slot - graphs_.data()));
        check_rt(e, "decode graph", "cudaGraphInstantiate");
      }
    }
    cudaGraphDestroy(g);
    slot->key = key_;
    slot->last_used = clock_;
    check_rt(cudaGraphLaunch(slot->exec, s), "decode graph", "cudaGraphLaunch");
  }

  // --- scratch buffers, grown on demand (before a collect pass records their addresses) ---

  float* grow(DeviceArray<float>& a, int64_t count, const char* what) {
    if (static_cast<int64_t>(a.size()) < count) {
      a = DeviceArray<float>();
      a = DeviceArray<float>(static_cast<size_t>(count), std::string(what) + " on " + name());
    }
    return a.data();
  }
  float* decode_scratch(int64_t count) { return grow(decode_scratch_, count, "decode attention scratch"); }
  float* probs_scratch(int64_t count) { return grow(probs_, std::max<int64_t>(count, 1), "attention row probs"); }
  float* row_stats_scratch(int64_t count) {
    return grow(row_stats_, std::max<int64_t>(count, 2), "attention row softmax stats");
  }
  // The weight of a weightless rmsnorm (the SDTP predictor's): `count` ones.
  const float* ones(int64_t count) {
    if (static_cast<int64_t>(ones_.size()) < count) {
      grow(ones_, count, "ones");
      fill_value(ctx_, ones_.data(), count, 1.0f);
    }
    return ones_.data();
  }

  template <class T>
  DeviceArray<T> upload_array(const std::vector<T>& host, const std::string& what) {
    DeviceArray<T> a(host.size(), what + " on " + name());
    if (!host.empty()) copy_to_device(a.data(), host.data(), host.size() * sizeof(T), what.c_str());
    return a;
  }

  // Host float parts stacked into bf16 rows, after checking each part's element count.
  static void stack(std::vector<bf16>& out, std::initializer_list<std::pair<const Tensor*, int64_t>> parts,
                    const std::string& what) {
    out.clear();
    std::vector<float> scratch;  // a blocks-only tensor dequantised, one at a time
    for (const auto& [t, want] : parts) {
      const int64_t have = t->quantized_only() ? t->numel() : static_cast<int64_t>(t->data.size());
      if (t->numel() != want || have != want)
        throw FormatError("cuda upload: " + what + " has " + std::to_string(have) + " values, expected " +
                          std::to_string(want));
      const float* v = weight_values(*t, scratch);
      const size_t at = out.size();
      out.resize(at + static_cast<size_t>(want));
      for (int64_t i = 0; i < want; ++i) out[at + i] = to_bf16(v[i]);
    }
  }

  Context ctx_;
  int device_ = 0;
  OpProfile prof_;
  int attn_variant_ = 0;  // $SDTP_CUDA_ATTN_VARIANT
  bool graphs_on_ = true;
  Mode mode_ = Mode::eager;
  bool capturable_ = true;
  std::vector<uint64_t> key_, capture_key_;
  std::vector<Graph> graphs_;
  uint64_t clock_ = 0;
  DeviceArray<float> decode_scratch_, probs_, row_stats_, ones_, key_scores_;
};

}  // namespace

int cuda_device_count() { return device_count(); }

std::shared_ptr<Backend> make_cuda_backend(int device) {
  const int n = device_count();
  const std::string name = device == 0 ? "cuda" : "cuda:" + std::to_string(device);
  if (n == 0) throw UsageError("--device " + name + ": no CUDA device found (no GPU or no driver)");
  if (device < 0 || device >= n)
    throw UsageError("--device " + name + ": only " + std::to_string(n) + " CUDA device(s) found");
  return std::make_shared<CudaBackend>(device);
}

}  // namespace sdtp::cuda
