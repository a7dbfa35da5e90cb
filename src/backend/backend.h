// The backend interface: device memory and the ops of the llama block, written once by the Session
// (src/runtime/session.cpp) and implemented by each device: cpu/ (float32, the reference every
// fast path is tested against) and cuda/ (bf16 storage, float32 accumulation and a float32 residual stream). Tensors are 2-D
// row-major arrays in the backend's memory; positions travel with rows, so RoPE and the causal
// mask read each row's own position and the same ops serve dense and pruned (gathered) rows.
// A backend knows nothing of pruning or eviction policy: it computes, the Session decides.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace sdtp {

struct Model;
struct ModelConfig;

enum class ElemType : uint8_t { f32, bf16, i32, f16 };
size_t elem_bytes(ElemType t);
const char* elem_name(ElemType t);

// A rows x cols row-major array on one backend's device (host memory on the CPU). Copies share the
// storage; rows(first, count) is a view into it. The storage is freed with its last handle.
class DeviceTensor {
 public:
  DeviceTensor() = default;
  DeviceTensor(std::shared_ptr<void> storage, void* data, ElemType type, int64_t rows, int64_t cols)
      : storage_(std::move(storage)), data_(data), type_(type), rows_(rows), cols_(cols) {}

  ElemType type() const { return type_; }
  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  int64_t numel() const { return rows_ * cols_; }
  size_t row_bytes() const { return static_cast<size_t>(cols_) * elem_bytes(type_); }
  size_t bytes() const { return static_cast<size_t>(rows_) * row_bytes(); }
  bool empty() const { return data_ == nullptr; }
  void* data() const { return data_; }
  template <class T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  // Rows [first, first + count) of this tensor, sharing its storage.
  DeviceTensor rows(int64_t first, int64_t count) const;

 private:
  std::shared_ptr<void> storage_;
  void* data_ = nullptr;
  ElemType type_ = ElemType::f32;
  int64_t rows_ = 0, cols_ = 0;
};

// A weight matrix W [m x k] (y = x·W^T + bias) in the backend's own layout (float32 parts on the
// CPU, with 8-bit copies for decode; bf16 on CUDA). Fused projections (Q|K|V, gate|up) are one
// Matrix whose output columns are the parts side by side.
class Matrix {
 public:
  virtual ~Matrix() = default;
  int64_t m = 0, k = 0;
  bool has_bias = false;
  virtual size_t bytes() const = 0;
};

// A model's weights on one backend, in the layouts the block reads.
struct DeviceLayer {
  DeviceTensor attn_norm, ffn_norm;  // f32 [1 x n_embd]
  std::shared_ptr<const Matrix> wqkv;  // [q_dim + 2·kv_dim x n_embd] (+ the Q|K|V bias: Qwen2)
  std::shared_ptr<const Matrix> wo;    // [n_embd x q_dim]
  std::shared_ptr<const Matrix> wgu;   // [2·n_ff x n_embd]: gate | up
  std::shared_ptr<const Matrix> wdown;  // [n_embd x n_ff]
};
struct DeviceWeights {
  std::shared_ptr<const Matrix> tok_embd;  // [n_vocab x n_embd], read by embedding()
  std::shared_ptr<const Matrix> lm_head;   // the same object when tied
  DeviceTensor output_norm;               // f32 [1 x n_embd]
  DeviceTensor inv_freq;                  // f32 [1 x head_dim/2]: RoPE inverse frequencies (scaling applied)
  std::vector<DeviceLayer> layers;
  size_t bytes = 0;  // device bytes of all of the above
};

// The per-layer key/value cache as backend tensors. Every KV head keeps its own entries (an
// eviction policy may keep different tokens, and different numbers of them, per head): head g's
// entry j is row j of its columns [g·head_dim, (g+1)·head_dim) of k and v (act type, [cap x
// n_head_kv·head_dim]), its original position pos[j, g] (i32 [cap x n_head_kv]); head g holds
// rows [0, n[g]), positions ascending in j. `len` (i32 [1 x n_head_kv]) holds the same counts in
// device memory: the ops read them there, so a captured decode step (a CUDA graph) replays with
// new lengths; whoever changes n uploads len before the next op reads it (KVCache::sync).
// `mass` (f32 [cap x n_head_kv], optional) is the attention mass accumulated per entry
// (AttentionStats::key_mass), carried with the entries when they are compacted.
struct KVView {
  DeviceTensor k, v, pos, len, mass;
  std::vector<int64_t> n;  // entries per KV head (host copy of len)
  int64_t max_n() const;
  int64_t total() const;  // Σ_g n[g]
};

// What attention() may also report, each only when asked (the tensor is non-empty).
struct AttentionStats {
  // f32 [>= appended x 1]: for each of the entries this call appended (entry n[g] + i of every
  // KV head: the same token i), the LAST query row's softmax probability of it, averaged over
  // the query heads (what attention-based token selectors score with).
  DeviceTensor last_row_mean;
  // f32 [>= max_g(n[g] + appended) x n_head_kv], ACCUMULATED: key_mass[j, g] += the probability
  // entry j of KV head g received, summed over the query heads of the group and the query rows
  // [mass_from, rows) of this call (H2O/VATP's accumulated attention; SnapKV's observation window
  // with mass_from = rows - window; TOVA's last query with mass_from = rows - 1).
  DeviceTensor key_mass;
  int64_t mass_from = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;  // "cpu", "cuda:0"
  // The storage type of activations (f32 on the CPU, bf16 on CUDA).
  virtual ElemType activation_type() const = 0;
  // The KV cache's element types this backend attends over, and the one it takes by default
  // (CPU: f16, f32 and bf16, default f16; CUDA: bf16 only).
  virtual bool supports_kv_type(ElemType t) const { return t == activation_type(); }
  virtual ElemType default_kv_type() const { return activation_type(); }
  // The storage type of the residual stream x between blocks (f32 on both backends: CUDA keeps it
  // in float32 like llama.cpp, so 60 residual adds don't round to bf16). The ops that touch x
  // (embedding, rmsnorm, matmul with accumulate, gather_rows) take it there.
  virtual ElemType residual_type() const { return activation_type(); }
  virtual int threads() const { return 1; }  // host threads the ops use

  // --- memory ---
  // Throws DeviceOutOfMemoryError (sdtp/error.h) naming `what` and the bytes when it does not fit.
  virtual DeviceTensor alloc(ElemType type, int64_t rows, int64_t cols, const std::string& what) = 0;
  // Bytes the device can still allocate (SIZE_MAX when unbounded, as host memory is treated).
  virtual size_t free_bytes() const = 0;
  // Host <-> device copies of whole tensors (host data in the tensor's own type; f32 host data
  // into a bf16 tensor is converted). Synchronous: done when they return.
  virtual void upload(const DeviceTensor& dst, const void* host, ElemType host_type) = 0;
  virtual void download(void* host, const DeviceTensor& src, ElemType host_type) = 0;
  virtual void copy(const DeviceTensor& dst, const DeviceTensor& src) = 0;  // same type and size
  virtual void fill(const DeviceTensor& dst, float value) = 0;               // f32 tensors
  virtual void synchronize() = 0;  // waits for queued work; reports the first error it raised

  // --- weights ---
  // The model's weights in this backend's layouts. Throws DeviceOutOfMemoryError ("model needs
  // 13.5 GiB on cuda:0, 9.1 GiB free") before allocating anything when they do not fit. A model
  // made by random_model() (no host weights) gets random weights generated on the device.
  virtual std::shared_ptr<const DeviceWeights> upload_model(const Model& model) = 0;
  // Device bytes upload_model(model) needs.
  virtual size_t model_bytes(const ModelConfig& c) const = 0;
  // A plain f32 [m x k] matrix (+ bias[m]): the SDTP predictor's fc1.
  virtual std::shared_ptr<const Matrix> upload_matrix(const float* w, int64_t m, int64_t k, const float* bias) = 0;

  // --- ops (all tensors on this backend; row counts are the tensors' own unless named) ---
  // out row i = table row ids[i] (ids i32 [n x 1]); out is act or residual type.
  virtual void embedding(const Matrix& table, const DeviceTensor& ids, const DeviceTensor& out) = 0;
  // y = x / sqrt(mean(x²) + eps) · weight per row (weight empty: no weight). x is act or residual
  // type, y act type; y may alias x when they are the same type.
  virtual void rmsnorm(const DeviceTensor& x, const DeviceTensor& weight, float eps, const DeviceTensor& y) = 0;
  // y = x·W^T (+ bias), or y += x·W^T when accumulate (the residual add folded into the output
  // projections; y is then act or residual type). y is act type, or f32 (logits, scores).
  virtual void matmul(const DeviceTensor& x, const Matrix& w, const DeviceTensor& y, bool accumulate = false) = 0;
  // From fused rows qkv [n x (n_head + 2·n_head_kv)·head_dim] (Q | K | V): q [n x n_head·head_dim]
  // rotated at `positions` (rotate-half RoPE, inv_freq from DeviceWeights), and for every KV head
  // g, row i's K (rotated) and V written to its cache entry len[g] + i, positions[i] to pos[len[g]
  // + i, g]. The cache must have room (cap >= n[g] + n); len is not changed (the caller counts).
  virtual void qkv_rope_append(const DeviceTensor& qkv, const DeviceTensor& positions, const DeviceTensor& inv_freq,
                               int n_head, int n_head_kv, int head_dim, const DeviceTensor& q,
                               const KVView& cache) = 0;
  // Causal grouped-query attention of q [n x n_head·head_dim] at q_pos (i32 [n x 1]): query head h
  // attends to the entries [0, len[g] + appended) of its KV head g = h / (n_head / n_head_kv) with
  // pos <= q_pos[i] (none: a zero row); appended is the count of entries the caller has just
  // written past len (n after qkv_rope_append; 0 for a filled cache). Scale 1/sqrt(head_dim).
  // Never materialises an n x n_kv matrix. stats: see AttentionStats.
  virtual void attention(const DeviceTensor& q, const DeviceTensor& q_pos, const KVView& cache, int64_t appended,
                         int n_head, int n_head_kv, int head_dim, const DeviceTensor& out,
                         AttentionStats* stats = nullptr) = 0;
  // out[r, i] = silu(gu[r, i]) · gu[r, n_ff + i] for gu [n x 2·n_ff] (gate | up).
  virtual void swiglu(const DeviceTensor& gu, const DeviceTensor& out) = 0;
  // out row r = in row index[r] (index i32 [n_out x 1]); any type.
  virtual void gather_rows(const DeviceTensor& in, const DeviceTensor& index, const DeviceTensor& out) = 0;
  // The indices of the k largest of scores (f32 [n x 1]), ascending (ties: the earlier index
  // ranks higher). out_index i32 [>= k x 1].
  virtual void top_k(const DeviceTensor& scores, int64_t k, const DeviceTensor& out_index) = 0;
  // scores[i] = +inf where positions[i] < keep_first or positions[i] >= recent_from (the sinks and
  // the recent tail, always kept), and for the last row.
  virtual void force_rows(const DeviceTensor& scores, const DeviceTensor& positions, int keep_first,
                          int32_t recent_from) = 0;
  // scores[r] = b2 + Σ_j w2[j]·GELU_erf(h[r, j]): the SDTP predictor's tail (h = fc1's output,
  // act type [n x n_hidden]; w2 f32 [1 x n_hidden]).
  virtual void gelu_dot(const DeviceTensor& h, const DeviceTensor& w2, float b2, const DeviceTensor& scores) = 0;
  // Per cache entry j < n[g] of KV head g: v_l1[j, g] = Σ_d |v| (the value L1 norm VATP weighs
  // attention by) and k_l2[j, g] = sqrt(Σ_d k²) (knorm's score); each f32 [>= max_n x
  // n_head_kv], either may be empty (not computed).
  virtual void entry_norms(const KVView& cache, int n_head_kv, int head_dim, const DeviceTensor& v_l1,
                           const DeviceTensor& k_l2) = 0;
  // Compaction and reordering: for every KV head g and i < dst.len[g] (device; dst.n the host
  // copy), head g's entry i of dst = its entry keep[i, g] of src (i32 [>= max count x n_head_kv];
  // each index < src.len[g]; ascending for a compaction, any order for a placement): K, V,
  // position, and mass when both have it. Other entries of dst are untouched; dst's storage must
  // not overlap src's.
  virtual void gather_entries(const KVView& src, const DeviceTensor& keep, int n_head_kv, int head_dim,
                              const KVView& dst) = 0;

  // A forward pass over `rows` new tokens starts; decode_step: one token after a prefill (the CPU
  // backend then multiplies by its 8-bit weights; prefill always runs at full precision).
  virtual void begin_forward(int64_t rows, bool decode_step) { (void)rows, (void)decode_step; }

  // Runs queue(), which queues one decode step's ops. A backend may capture the step the first
  // time and replay it while the step's shape is the same (CUDA graphs); queue() must then take
  // every per-step value from device memory (token ids, positions, the caches' len) and change no
  // host state.
  virtual void run_step(const std::function<void()>& queue) { queue(); }
};

struct BackendOptions {
  // CPU: steps of few rows (decode) multiply by 8-bit copies of the weights (q8.h); false keeps
  // float32 everywhere, as the reference tests do. Other backends ignore it.
  bool decode_q8 = true;
  int n_threads = 0;  // CPU threads; 0 = $OMP_NUM_THREADS if set, else all hardware threads
};

// "cpu", "cuda" or "cuda:N". CPU backends are cheap and made per call; a CUDA backend is made once
// per device and shared (its stream, and the weights placed there). Throws UsageError naming the device when it does not exist or sdtp
// was built without it ("--device cuda: no CUDA device found", "this sdtp was built without CUDA").
std::shared_ptr<Backend> make_backend(const std::string& device, const BackendOptions& options = {});
// Whether `device` names a backend this build has and this machine can run (never throws).
bool backend_available(const std::string& device);

}  // namespace sdtp
