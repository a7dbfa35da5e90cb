// The CPU backend (cpu_backend.h): backend.h's ops on host memory, float32 throughout. Weights are
// not copied: a fused projection (Q|K|V, gate|up) is a CpuMatrix of several parts pointing at the
// Model's own tensors, multiplied part by part into the column ranges of one output. Steps of few
// rows (decode) use 8-bit copies of the weights (q8.h), made on first use.
#include "backend/cpu/cpu_backend.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <new>
#include <numeric>
#include <random>

#include "backend/cpu/isa.h"
#include "backend/cpu/ops.h"
#include "backend/cpu/q8.h"
#include "model/rope.h"
#include "sdtp/error.h"
#include "sdtp/model.h"

namespace sdtp::cpu {

namespace {

// Row counts up to this multiply by the 8-bit weights (when the backend has decode_q8).
constexpr int64_t kQ8MaxRows = 4;

struct Part {
  const float* w = nullptr;    // [rows x k]; null when the model tensor holds only its blocks
  int64_t rows = 0;
  const Tensor* src = nullptr;  // the model tensor, whose GGUF blocks the 8-bit path may use as they are
};

// Float32 rows of a part that holds only blocks are made this many bytes at a time for sgemm.
constexpr int64_t kDequantChunkBytes = int64_t(8) << 20;

class CpuMatrix : public Matrix {
 public:
  std::vector<Part> parts;
  std::vector<float> bias;   // [m] or empty
  std::vector<float> owned;  // storage of parts that are not a model's tensors (random, uploaded)

  size_t bytes() const override {
    size_t b = (bias.size() + owned.size()) * sizeof(float);
    for (const Part& p : parts) {
      if (!p.src) continue;
      b += p.src->host_bytes();
    }
    return b;
  }

  // The 8-bit matrix of each part: the file's own blocks in place where the kernels read them
  // (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K: exact weights), else a Q8_0 copy of the floats. Empty when k is not a multiple of the block.
  const std::vector<QuantMatrix>& decode_parts() const {
    std::call_once(q8_once_, [this] {
      if (!q8_supported(k)) return;
      for (const Part& p : parts) {
        const QuantMatrix::Kind kind = p.src ? quant_kind_of(p.src->file_quant, k) : QuantMatrix::Kind::none;
        if (kind != QuantMatrix::Kind::none && !p.src->file_blocks.empty())
          q8_.push_back(quant_blocks(kind, p.src->file_blocks.data(), p.rows, k, false));
        else q8_.push_back(quantize_q8(p.w, p.rows, k));
      }
    });
    return q8_;
  }

 private:
  mutable std::once_flag q8_once_;
  mutable std::vector<QuantMatrix> q8_;
};

const CpuMatrix& as_cpu(const Matrix& m) {
  const auto* c = dynamic_cast<const CpuMatrix*>(&m);
  if (!c) throw Error("cpu backend: a matrix of another backend was passed in");
  return *c;
}

void check_type(const DeviceTensor& t, ElemType want, const char* op, const char* what) {
  if (t.type() != want)
    throw Error(std::string("cpu backend: ") + op + ": " + what + " is " + elem_name(t.type()) + ", expected " +
                elem_name(want));
}

void check_shape(bool ok, const char* op, const std::string& what) {
  if (!ok) throw Error(std::string("cpu backend: ") + op + ": " + what);
}

std::shared_ptr<CpuMatrix> matrix_of(std::initializer_list<const Tensor*> parts, int64_t k) {
  auto m = std::make_shared<CpuMatrix>();
  m->k = k;
  for (const Tensor* t : parts) {
    if (t->numel() != t->dim(0) * k || t->dim(1) != k) throw FormatError("weight of the wrong shape for a projection");
    m->parts.push_back({t->quantized_only() ? nullptr : t->ptr(), t->dim(0), t});
    m->m += t->dim(0);
  }
  return m;
}

bool is_kv16(ElemType t) { return t == ElemType::f16 || t == ElemType::bf16; }

cpu::KvElem kv_elem(ElemType t) {
  return t == ElemType::f16 ? cpu::KvElem::f16 : t == ElemType::bf16 ? cpu::KvElem::bf16 : cpu::KvElem::f32;
}

class CpuBackend : public Backend {
 public:
  explicit CpuBackend(const BackendOptions& o) : decode_q8_(o.decode_q8) {
    set_num_threads(o.n_threads);
    threads_ = num_threads();
  }

  std::string name() const override { return "cpu"; }
  ElemType activation_type() const override { return ElemType::f32; }
  bool supports_kv_type(ElemType t) const override {
    return t == ElemType::f32 || t == ElemType::f16 || t == ElemType::bf16;
  }
  ElemType default_kv_type() const override { return ElemType::f16; }
  int threads() const override { return threads_; }

  DeviceTensor alloc(ElemType type, int64_t rows, int64_t cols, const std::string& what) override {
    if (rows < 0 || cols < 0) throw Error("cpu backend: negative size for " + what);
    const size_t bytes = static_cast<size_t>(rows) * static_cast<size_t>(cols) * elem_bytes(type);
    void* p = ::operator new(std::max<size_t>(bytes, 64), std::align_val_t(64), std::nothrow);
    if (!p) {
      DeviceOutOfMemoryError e("cpu: " + what + " needs " + std::to_string(bytes) + " bytes, allocation failed");
      e.bytes_requested = bytes;
      throw e;
    }
    std::shared_ptr<void> storage(p, [](void* q) { ::operator delete(q, std::align_val_t(64)); });
    return DeviceTensor(std::move(storage), p, type, rows, cols);
  }
  size_t free_bytes() const override { return SIZE_MAX; }

  void upload(const DeviceTensor& dst, const void* host, ElemType host_type) override {
    if (host_type == ElemType::f32 && is_kv16(dst.type())) {  // a 16-bit KV cache from float32 values
      cpu::from_f32(kv_elem(dst.type()), static_cast<const float*>(host), dst.numel(), dst.data());
      return;
    }
    check_shape(host_type == dst.type(), "upload", "host data of another type");
    if (dst.bytes()) std::memcpy(dst.data(), host, dst.bytes());
  }
  void download(void* host, const DeviceTensor& src, ElemType host_type) override {
    if (host_type == ElemType::f32 && is_kv16(src.type())) {
      cpu::to_f32(kv_elem(src.type()), src.data(), src.numel(), static_cast<float*>(host));
      return;
    }
    check_shape(host_type == src.type(), "download", "host data of another type");
    if (src.bytes()) std::memcpy(host, src.data(), src.bytes());
  }
  void copy(const DeviceTensor& dst, const DeviceTensor& src) override {
    check_shape(dst.type() == src.type() && dst.bytes() == src.bytes(), "copy", "tensors of different sizes");
    if (src.bytes()) std::memmove(dst.data(), src.data(), src.bytes());
  }
  void fill(const DeviceTensor& dst, float value) override {
    check_type(dst, ElemType::f32, "fill", "dst");
    std::fill(dst.as<float>(), dst.as<float>() + dst.numel(), value);
  }
  void synchronize() override {}
  void begin_forward(int64_t rows, bool decode_step) override {
    q8_now_ = decode_q8_ && decode_step && rows <= kQ8MaxRows;
    // OpenMP's thread count is per calling thread: a session driven from another thread than the one
    // that made it (a server's worker) sets its own again.
    if (omp_get_max_threads() != threads_ || num_threads() != threads_) set_num_threads(threads_);
  }

  size_t model_bytes(const ModelConfig& c) const override {
    return static_cast<size_t>(c.n_params()) * sizeof(float);
  }

  // Rows [r0, r0 + nr) of a blocks-only tensor as float32 in a scratch that lives until the next call.
  const float* dequant_rows(const Tensor& t, int64_t r0, int64_t nr) {
    const int64_t k = t.dim(1);
    dequant_.resize(static_cast<size_t>(nr * k));
    const int64_t per = std::max<int64_t>(1, 65536 / k);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < nr; r += per) weight_rows(t, r0 + r, std::min(per, nr - r), dequant_.data() + r * k);
    return dequant_.data();
  }

  std::shared_ptr<const DeviceWeights> upload_model(const Model& model) override {
    const ModelConfig& c = model.config;
    if (model.random_weights) return random_weights(c, model.random_seed);
    const ModelWeights& w = model.weights;
    if (static_cast<int>(w.layers.size()) != c.n_layer)
      throw FormatError("model has " + std::to_string(w.layers.size()) + " layers, its config says " +
                        std::to_string(c.n_layer));
    auto dw = std::make_shared<DeviceWeights>();
    const int64_t d = c.n_embd;
    dw->tok_embd = matrix_of({&w.tok_embd}, d);
    dw->lm_head = w.output.empty() ? dw->tok_embd : matrix_of({&w.output}, d);
    dw->output_norm = vector_of(w.output_norm.data, "output norm");
    dw->inv_freq = vector_of(rope_inv_freq(c), "rope inv_freq");
    for (const LayerWeights& lw : w.layers) {
      DeviceLayer dl;
      dl.attn_norm = vector_of(lw.attn_norm.data, "attn_norm");
      dl.ffn_norm = vector_of(lw.ffn_norm.data, "ffn_norm");
      auto qkv = matrix_of({&lw.wq, &lw.wk, &lw.wv}, d);
      if (c.qkv_bias) {
        for (const Tensor* b : {&lw.bq, &lw.bk, &lw.bv}) qkv->bias.insert(qkv->bias.end(), b->data.begin(), b->data.end());
        qkv->has_bias = true;
        if (static_cast<int64_t>(qkv->bias.size()) != qkv->m) throw FormatError("q/k/v biases of the wrong size");
      }
      dl.wqkv = qkv;
      dl.wo = matrix_of({&lw.wo}, lw.wo.dim(1));
      dl.wgu = matrix_of({&lw.w_gate, &lw.w_up}, d);
      dl.wdown = matrix_of({&lw.w_down}, lw.w_down.dim(1));
      dw->layers.push_back(std::move(dl));
    }
    dw->bytes = weight_host_bytes(w);
    return dw;
  }

  std::shared_ptr<const Matrix> upload_matrix(const float* w, int64_t m, int64_t k, const float* bias) override {
    auto mat = std::make_shared<CpuMatrix>();
    mat->m = m;
    mat->k = k;
    mat->owned.assign(w, w + m * k);
    mat->parts.push_back({mat->owned.data(), m, nullptr});
    if (bias) {
      mat->bias.assign(bias, bias + m);
      mat->has_bias = true;
    }
    return mat;
  }

  void embedding(const Matrix& table, const DeviceTensor& ids, const DeviceTensor& out) override {
    const CpuMatrix& t = as_cpu(table);
    check_type(ids, ElemType::i32, "embedding", "ids");
    check_type(out, ElemType::f32, "embedding", "out");
    check_shape(t.parts.size() == 1 && out.cols() == t.k && out.rows() == ids.rows(), "embedding", "shapes differ");
    for (int64_t i = 0; i < ids.rows(); ++i) {
      const int32_t id = ids.as<int32_t>()[i];
      float* dst = out.as<float>() + i * t.k;
      if (id < 0 || id >= t.m) std::fill(dst, dst + t.k, 0.0f);
      else if (t.parts[0].w) std::memcpy(dst, t.parts[0].w + static_cast<int64_t>(id) * t.k, sizeof(float) * t.k);
      else weight_rows(*t.parts[0].src, id, 1, dst);
    }
  }

  void rmsnorm(const DeviceTensor& x, const DeviceTensor& weight, float eps, const DeviceTensor& y) override {
    check_type(x, ElemType::f32, "rmsnorm", "x");
    check_shape(y.rows() == x.rows() && y.cols() == x.cols(), "rmsnorm", "x and y differ in shape");
    const int64_t d = x.cols();
    if (!weight.empty()) {
      cpu::rmsnorm(x.as<float>(), weight.as<float>(), x.rows(), d, eps, y.as<float>());
      return;
    }
    // Without a weight (the SDTP predictor's input norm): double accumulation, as Predictor::score.
#pragma omp parallel for if (x.rows() > 16)
    for (int64_t r = 0; r < x.rows(); ++r) {
      const float* xr = x.as<float>() + r * d;
      float* yr = y.as<float>() + r * d;
      double ss = 0;
      for (int64_t j = 0; j < d; ++j) ss += static_cast<double>(xr[j]) * xr[j];
      const float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(d) + eps));
      for (int64_t j = 0; j < d; ++j) yr[j] = xr[j] * inv;
    }
  }

  void matmul(const DeviceTensor& x, const Matrix& w, const DeviceTensor& y, bool accumulate) override {
    const CpuMatrix& m = as_cpu(w);
    check_type(x, ElemType::f32, "matmul", "x");
    check_type(y, ElemType::f32, "matmul", "y");
    check_shape(x.cols() == m.k && y.cols() == m.m && y.rows() == x.rows(), "matmul",
                "x [" + std::to_string(x.rows()) + " x " + std::to_string(x.cols()) + "] · W^T [" +
                    std::to_string(m.k) + " x " + std::to_string(m.m) + "] into y [" + std::to_string(y.rows()) +
                    " x " + std::to_string(y.cols()) + "]");
    const int64_t n = x.rows(), k = m.k, ld = m.m;
    if (n == 0) return;
    const float* xp = x.as<float>();
    float* yp = y.as<float>();
    const std::vector<QuantMatrix>* q8 = nullptr;
    if (q8_now_ && n <= kQ8MaxRows && q8_supported(k)) q8 = &m.decode_parts();
    int64_t col = 0;
    for (size_t p = 0; p < m.parts.size(); ++p) {
      const Part& part = m.parts[p];
      const float* bias = m.has_bias ? m.bias.data() + col : nullptr;
      if (q8 && !q8->empty()) {
        // 8-bit weights, int8 activations (q8.h): into a scratch, then the column range of y.
        tmp_.resize(static_cast<size_t>(n * part.rows));
        matmul_quant(xp, n, (*q8)[p], bias, tmp_.data());
        for (int64_t r = 0; r < n; ++r) {
          float* dst = yp + r * ld + col;
          const float* src = tmp_.data() + r * part.rows;
          if (accumulate) for (int64_t j = 0; j < part.rows; ++j) dst[j] += src[j];
          else std::memcpy(dst, src, sizeof(float) * part.rows);
        }
      } else {
        const float beta = accumulate ? 1.0f : 0.0f;
        // A part held only as blocks: float32 rows made a chunk at a time (cache-sized for the
        // sgemm that follows, dequantised on all threads), so no float copy of the weight persists.
        const int64_t chunk = part.w ? part.rows : std::max<int64_t>(16, kDequantChunkBytes / (k * 4));
        for (int64_t r0 = 0; r0 < part.rows; r0 += chunk) {
          const int64_t nr = std::min(chunk, part.rows - r0);
          const float* w = part.w ? part.w : dequant_rows(*part.src, r0, nr);
          if (n == 1) {
            cblas_sgemv(CblasRowMajor, CblasNoTrans, nr, k, 1.0f, w, k, xp, 1, beta, yp + col + r0, 1);
          } else {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, nr, k, 1.0f, xp, k, w, k, beta, yp + col + r0,
                        ld);
          }
        }
        if (bias) {
#pragma omp parallel for if (n * part.rows > 65536)
          for (int64_t r = 0; r < n; ++r) {
            float* yr = yp + r * ld + col;
            for (int64_t j = 0; j < part.rows; ++j) yr[j] += bias[j];
          }
        }
      }
      col += part.rows;
    }
  }

  void qkv_rope_append(const DeviceTensor& qkv, const DeviceTensor& positions, const DeviceTensor& inv_freq,
                       int n_head, int n_head_kv, int head_dim, const DeviceTensor& q, const KVView& cache) override {
    const int64_t n = qkv.rows();
    const int64_t q_dim = static_cast<int64_t>(n_head) * head_dim, kv_dim = static_cast<int64_t>(n_head_kv) * head_dim;
    check_shape(qkv.cols() == q_dim + 2 * kv_dim && q.cols() == q_dim && q.rows() >= n && positions.rows() >= n &&
                    cache.k.cols() == kv_dim && cache.pos.cols() == n_head_kv && cache.len.numel() == n_head_kv,
                "qkv_rope_append", "shapes differ");
    const int32_t* len = cache.len.as<int32_t>();
    for (int g = 0; g < n_head_kv; ++g)
      check_shape(len[g] >= 0 && len[g] + n <= cache.k.rows(), "qkv_rope_append", "no room in the cache");
    const float* src = qkv.as<float>();
    float* qd = q.as<float>();
    tmp_.resize(static_cast<size_t>(n * 2 * kv_dim));
    float* kd = tmp_.data();
    float* vd = kd + n * kv_dim;
    for (int64_t r = 0; r < n; ++r) {
      const float* s = src + r * (q_dim + 2 * kv_dim);
      std::memcpy(qd + r * q_dim, s, sizeof(float) * q_dim);
      std::memcpy(kd + r * kv_dim, s + q_dim, sizeof(float) * kv_dim);
      std::memcpy(vd + r * kv_dim, s + q_dim + kv_dim, sizeof(float) * kv_dim);
    }
    const int32_t* pos = positions.as<int32_t>();
    cpu::rope(qd, n, q_dim, n_head, head_dim, pos, inv_freq.as<float>());
    cpu::rope(kd, n, kv_dim, n_head_kv, head_dim, pos, inv_freq.as<float>());
    // Each KV head appends after its own entries, converted to the cache's type.
    const cpu::KvElem et = kv_elem(cache.k.type());
    const size_t eb = elem_bytes(cache.k.type());
    auto* kc = static_cast<char*>(cache.k.data());
    auto* vc = static_cast<char*>(cache.v.data());
    for (int g = 0; g < n_head_kv; ++g) {
      const int64_t off = static_cast<int64_t>(g) * head_dim;
      for (int64_t r = 0; r < n; ++r) {
        const int64_t row = len[g] + r;
        cpu::from_f32(et, kd + r * kv_dim + off, head_dim, kc + static_cast<size_t>(row * kv_dim + off) * eb);
        cpu::from_f32(et, vd + r * kv_dim + off, head_dim, vc + static_cast<size_t>(row * kv_dim + off) * eb);
        cache.pos.as<int32_t>()[row * n_head_kv + g] = pos[r];
      }
    }
  }

  void attention(const DeviceTensor& q, const DeviceTensor& q_pos, const KVView& cache, int64_t appended, int n_head,
                 int n_head_kv, int head_dim, const DeviceTensor& out, AttentionStats* stats) override {
    const int64_t n = q.rows();
    check_shape(out.rows() == n && q_pos.rows() >= n && appended >= 0 && cache.pos.cols() == n_head_kv &&
                    cache.len.numel() == n_head_kv && n_head_kv > 0 && n_head % n_head_kv == 0,
                "attention", "shapes differ");
    const int32_t* len = cache.len.as<int32_t>();
    std::vector<int64_t> nk(static_cast<size_t>(n_head_kv));
    int64_t most = 0;
    for (int g = 0; g < n_head_kv; ++g) {
      nk[g] = len[g] + appended;
      check_shape(len[g] >= 0 && nk[g] <= cache.k.rows(), "attention", "the cache length is out of range");
      most = std::max(most, nk[g]);
    }
    const bool want_mean = stats && !stats->last_row_mean.empty();
    if (want_mean) {
      check_shape(stats->last_row_mean.rows() >= appended && n > 0, "attention",
                  "last_row_mean has fewer rows than the entries appended");
      head_probs_.assign(static_cast<size_t>(n_head * std::max<int64_t>(most, 1)), 0.0f);
    }
    float* mass = nullptr;
    if (stats && !stats->key_mass.empty()) {
      check_type(stats->key_mass, ElemType::f32, "attention", "key_mass");
      check_shape(stats->key_mass.cols() == n_head_kv && stats->key_mass.rows() >= most, "attention",
                  "key_mass is too small");
      mass = stats->key_mass.as<float>();
    }
    check_shape(cache.k.type() == cache.v.type() && supports_kv_type(cache.k.type()), "attention",
                "a KV cache of another element type");
    cpu::attention(q.as<float>(), q_pos.as<int32_t>(), n,
                   cpu::KvData{cache.k.data(), cache.v.data(), kv_elem(cache.k.type())}, cache.pos.as<int32_t>(), nk.data(), n_head, n_head_kv, head_dim, out.as<float>(),
                   want_mean ? head_probs_.data() : nullptr, most, mass, stats ? stats->mass_from : 0);
    if (want_mean) {
      const int group = n_head / n_head_kv;
      float* mean = stats->last_row_mean.as<float>();
      std::fill(mean, mean + appended, 0.0f);
      for (int h = 0; h < n_head; ++h) {
        const float* p = head_probs_.data() + h * most + len[h / group];
        for (int64_t i = 0; i < appended; ++i) mean[i] += p[i] / static_cast<float>(n_head);
      }
    }
  }

  void swiglu(const DeviceTensor& gu, const DeviceTensor& out) override {
    const int64_t n = gu.rows(), ff = gu.cols() / 2;
    check_shape(gu.cols() == 2 * ff && out.cols() == ff && out.rows() >= n, "swiglu", "shapes differ");
    const float* g = gu.as<float>();
    float* o = out.as<float>();
#pragma omp parallel for if (n * ff > 65536)
    for (int64_t r = 0; r < n; ++r) cpu::swiglu(g + r * 2 * ff, g + r * 2 * ff + ff, ff, o + r * ff);
  }

  void gather_rows(const DeviceTensor& in, const DeviceTensor& index, const DeviceTensor& out) override {
    check_type(index, ElemType::i32, "gather_rows", "index");
    check_shape(in.type() == out.type() && in.cols() == out.cols() && out.rows() >= index.rows(), "gather_rows",
                "shapes differ");
    const size_t rb = in.row_bytes();
    const char* src = static_cast<const char*>(in.data());
    char* dst = static_cast<char*>(out.data());
    for (int64_t r = 0; r < index.rows(); ++r) {
      const int32_t i = index.as<int32_t>()[r];
      if (i < 0 || i >= in.rows()) std::memset(dst + r * rb, 0, rb);
      else std::memcpy(dst + r * rb, src + static_cast<size_t>(i) * rb, rb);
    }
  }

  void top_k(const DeviceTensor& scores, int64_t k, const DeviceTensor& out_index) override {
    const int64_t n = scores.rows();
    check_shape(k >= 0 && k <= n && out_index.rows() >= k, "top_k", "k outside [0, n]");
    const float* s = scores.as<float>();
    std::vector<int32_t> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return s[a] > s[b]; });
    order.resize(static_cast<size_t>(k));
    std::sort(order.begin(), order.end());
    std::copy(order.begin(), order.end(), out_index.as<int32_t>());
  }

  void force_rows(const DeviceTensor& scores, const DeviceTensor& positions, int keep_first,
                  int32_t recent_from) override {
    const int64_t n = scores.rows();
    float* s = scores.as<float>();
    const int32_t* p = positions.as<int32_t>();
    for (int64_t i = 0; i < n; ++i)
      if (p[i] < keep_first || p[i] >= recent_from || i == n - 1) s[i] = std::numeric_limits<float>::infinity();
  }

  void gelu_dot(const DeviceTensor& h, const DeviceTensor& w2, float b2, const DeviceTensor& scores) override {
    const int64_t n = h.rows(), nh = h.cols();
    check_shape(w2.numel() == nh && scores.rows() >= n, "gelu_dot", "shapes differ");
    const float* w = w2.as<float>();
    for (int64_t r = 0; r < n; ++r) {
      const float* a = h.as<float>() + r * nh;
      float acc = b2;
      // exact GELU: x·Φ(x) (PyTorch's F.gelu with approximate='none')
      for (int64_t j = 0; j < nh; ++j) acc += w[j] * (0.5f * a[j] * (1.0f + std::erf(a[j] * 0.70710678118654752f)));
      scores.as<float>()[r] = acc;
    }
  }

  void entry_norms(const KVView& cache, int n_head_kv, int head_dim, const DeviceTensor& v_l1,
                   const DeviceTensor& k_l2) override {
    const int64_t kv_dim = static_cast<int64_t>(n_head_kv) * head_dim;
    check_shape(cache.len.numel() == n_head_kv && cache.k.cols() == kv_dim, "entry_norms", "shapes differ");
    const int32_t* len = cache.len.as<int32_t>();
    for (const DeviceTensor* t : {&v_l1, &k_l2}) {
      if (t->empty()) continue;
      check_type(*t, ElemType::f32, "entry_norms", "out");
      for (int g = 0; g < n_head_kv; ++g)
        check_shape(t->cols() == n_head_kv && t->rows() >= len[g], "entry_norms", "out is too small");
    }
    const cpu::KvElem et = kv_elem(cache.k.type());
    const size_t eb = elem_bytes(cache.k.type());
    std::vector<float> kf(static_cast<size_t>(head_dim)), vf(static_cast<size_t>(head_dim));
    for (int g = 0; g < n_head_kv; ++g)
      for (int64_t j = 0; j < len[g]; ++j) {
        const size_t at = static_cast<size_t>(j * kv_dim + static_cast<int64_t>(g) * head_dim) * eb;
        if (!v_l1.empty()) {
          cpu::to_f32(et, static_cast<const char*>(cache.v.data()) + at, head_dim, vf.data());
          const float* v = vf.data();
          float s = 0.0f;
          for (int t = 0; t < head_dim; ++t) s += std::fabs(v[t]);
          v_l1.as<float>()[j * n_head_kv + g] = s;
        }
        if (!k_l2.empty()) {
          cpu::to_f32(et, static_cast<const char*>(cache.k.data()) + at, head_dim, kf.data());
          const float* k = kf.data();
          float s = 0.0f;
          for (int t = 0; t < head_dim; ++t) s += k[t] * k[t];
          k_l2.as<float>()[j * n_head_kv + g] = std::sqrt(s);
        }
      }
  }

  void gather_entries(const KVView& src, const DeviceTensor& keep, int n_head_kv, int head_dim,
                      const KVView& dst) override {
    const int64_t kv_dim = static_cast<int64_t>(n_head_kv) * head_dim;
    check_type(keep, ElemType::i32, "gather_entries", "keep");
    check_shape(keep.cols() == n_head_kv && dst.len.numel() == n_head_kv && src.len.numel() == n_head_kv &&
                    src.k.cols() == kv_dim && dst.k.cols() == kv_dim && src.k.data() != dst.k.data(),
                "gather_entries", "shapes differ");
    const bool mass = !src.mass.empty() && !dst.mass.empty();
    const int32_t* count = dst.len.as<int32_t>();
    const int32_t* idx = keep.as<int32_t>();
    check_shape(src.k.type() == dst.k.type(), "gather_entries", "caches of different element types");
    const size_t eb = elem_bytes(src.k.type()), bytes = eb * head_dim;
    const auto* sk = static_cast<const char*>(src.k.data());
    const auto* sv = static_cast<const char*>(src.v.data());
    auto* dk = static_cast<char*>(dst.k.data());
    auto* dv = static_cast<char*>(dst.v.data());
    for (int g = 0; g < n_head_kv; ++g) {
      check_shape(count[g] >= 0 && count[g] <= keep.rows() && count[g] <= dst.k.rows(), "gather_entries",
                  "more entries kept than there is room for");
      const size_t off = static_cast<size_t>(g) * head_dim;
      for (int64_t i = 0; i < count[g]; ++i) {
        const int64_t j = idx[i * n_head_kv + g];
        check_shape(j >= 0 && j < src.len.as<int32_t>()[g], "gather_entries", "a kept index is not an entry");
        std::memcpy(dk + (i * kv_dim + off) * eb, sk + (j * kv_dim + off) * eb, bytes);
        std::memcpy(dv + (i * kv_dim + off) * eb, sv + (j * kv_dim + off) * eb, bytes);
        dst.pos.as<int32_t>()[i * n_head_kv + g] = src.pos.as<int32_t>()[j * n_head_kv + g];
        if (mass) dst.mass.as<float>()[i * n_head_kv + g] = src.mass.as<float>()[j * n_head_kv + g];
      }
    }
  }

 private:
  DeviceTensor vector_of(const std::vector<float>& v, const std::string& what) {
    DeviceTensor t = alloc(ElemType::f32, 1, static_cast<int64_t>(v.size()), what);
    std::memcpy(t.data(), v.data(), v.size() * sizeof(float));
    return t;
  }

  // Uniform weights with standard deviation 0.02 (Hugging Face's initializer_range), norms 1.
  std::shared_ptr<const DeviceWeights> random_weights(const ModelConfig& c, uint64_t seed) {
    std::mt19937_64 rng(seed);
    const float bound = 0.02f * std::sqrt(3.0f);
    std::uniform_real_distribution<float> u(-bound, bound);
    const auto rand = [&](int64_t m, int64_t k) {
      std::vector<float> w(static_cast<size_t>(m * k));
      for (float& x : w) x = u(rng);
      return upload_matrix(w.data(), m, k, nullptr);
    };
    const auto ones = [&](int64_t n, const char* what) { return vector_of(std::vector<float>(n, 1.0f), what); };
    const int64_t d = c.n_embd, q_dim = int64_t(c.n_head) * c.head_dim, kv_dim = int64_t(c.n_head_kv) * c.head_dim;
    auto dw = std::make_shared<DeviceWeights>();
    dw->tok_embd = rand(c.n_vocab, d);
    dw->lm_head = c.tied_embeddings ? dw->tok_embd : rand(c.n_vocab, d);
    dw->output_norm = ones(d, "output norm");
    dw->inv_freq = vector_of(rope_inv_freq(c), "rope inv_freq");
    for (int l = 0; l < c.n_layer; ++l) {
      DeviceLayer dl;
      dl.attn_norm = ones(d, "attn_norm");
      dl.ffn_norm = ones(d, "ffn_norm");
      dl.wqkv = rand(q_dim + 2 * kv_dim, d);
      dl.wo = rand(d, q_dim);
      dl.wgu = rand(2 * int64_t(c.n_ff), d);
      dl.wdown = rand(d, c.n_ff);
      dw->layers.push_back(std::move(dl));
    }
    dw->bytes = model_bytes(c);
    return dw;
  }

  bool decode_q8_ = true;
  int threads_ = 1;  // this session's threads (OpenMP and OpenBLAS)
  std::vector<float> dequant_;
  bool q8_now_ = false;  // this forward pass multiplies by the 8-bit weights
  std::vector<float> tmp_, head_probs_;
};

}  // namespace

std::shared_ptr<Backend> make_cpu_backend(const BackendOptions& options) {
  (void)active_isa();  // an SDTP_CPU_ISA this CPU cannot run is a usage error before any work
  return std::make_shared<CpuBackend>(options);
}

}  // namespace sdtp::cpu

namespace sdtp {
const char* cpu_isa() { return cpu::isa_name(cpu::active_isa()); }
}  // namespace sdtp
