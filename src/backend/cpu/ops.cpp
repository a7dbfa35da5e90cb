// CPU reference ops (see ops.h). Float32 throughout; OpenBLAS for the matmuls, OpenMP elsewhere, and
// the exp loops of softmax and SwiGLU in the kernel variant isa.h selected.
#include "backend/cpu/ops.h"

#include <cblas.h>
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "backend/cpu/isa.h"
#include "backend/cpu/kernels.h"
#include "formats/quants.h"

extern "C" void openblas_set_num_threads(int);

namespace sdtp::cpu {

namespace {
int g_threads = 0;

// Rows [j0, j1) of KV head g of a cache tensor ([rows x n_head_kv*head_dim]) as float32: a pointer
// into it for float32 data (row stride kv_stride), else the rows converted into buf (stride
// head_dim). *ld receives the stride.
const float* head_rows(const void* data, KvElem type, int g, int64_t j0, int64_t j1, int64_t kv_stride,
                       int head_dim, std::vector<float>& buf, int64_t* ld) {
  if (type == KvElem::f32) {
    *ld = kv_stride;
    return static_cast<const float*>(data) + j0 * kv_stride + static_cast<int64_t>(g) * head_dim;
  }
  *ld = head_dim;
  if (buf.size() < static_cast<size_t>((j1 - j0) * head_dim)) buf.resize(static_cast<size_t>((j1 - j0) * head_dim));
  const auto* src = static_cast<const uint16_t*>(data) + static_cast<int64_t>(g) * head_dim;
  for (int64_t j = j0; j < j1; ++j) {
    // Rows of one head are kv_stride apart: fetch a few ahead.
    for (int d = 0; d < head_dim; d += 32) __builtin_prefetch(src + (j + 8) * kv_stride + d);
    to_f32(type, src + j * kv_stride, head_dim, buf.data() + (j - j0) * head_dim);
  }
  return buf.data();
}

// Softmax of each row of s[rows x n] over its first `visible` entries (the rest set to 0).
void softmax_rows(float* s, int64_t rows, int64_t n, int64_t visible) {
  for (int64_t r = 0; r < rows; ++r) {
    float* sr = s + r * n;
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < visible; ++j) mx = std::max(mx, sr[j]);
    const float sum = visible > 0 ? kernels().exp_shifted_sum(sr, visible, mx) : 0.0f;
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    for (int64_t j = 0; j < visible; ++j) sr[j] *= inv;
    for (int64_t j = visible; j < n; ++j) sr[j] = 0.0f;
  }
}

// Entries of one KV head with position <= p: positions pos[j * stride] ascend in j < n, so a prefix.
int64_t count_leq(const int32_t* pos, int64_t stride, int64_t n, int32_t p) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (pos[mid * stride] <= p) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// Decode: one query row. The heads sharing a KV head are adjacent in q, so each group runs as one
// [group x head_dim] · K^T product and K and V are read once per group instead of once per head.
// The keys of each group are split into chunks (flash-decoding): a task scores its chunk, exps the
// scores against the chunk's own maximum and sums P·V, then the chunks of a row are combined by
// their maxima. So a handful of KV heads keeps every thread busy at any depth, and the output
// accumulates in registers four keys at a time rather than through memory per key.
void attention_one_row(const float* q, int32_t q_pos, const KvData& kv, const int32_t* kv_pos,
                       const int64_t* n_kv, int n_head, int n_head_kv, int head_dim, float* out, float* last_row_probs,
                       int64_t probs_ld, float* key_mass) {
  const int64_t kv_stride = static_cast<int64_t>(n_head_kv) * head_dim;
  const int group = n_head / n_head_kv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  std::vector<int64_t> visible(static_cast<size_t>(n_head_kv));
  int64_t most = 0;
  for (int g = 0; g < n_head_kv; ++g) {
    visible[g] = count_leq(kv_pos + g, n_head_kv, n_kv[g], q_pos);
    most = std::max(most, visible[g]);
  }
  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  // Chunks per group: enough tasks for every thread (4 per thread), none under 32 keys.
  constexpr int64_t kMinChunk = 32, kPrefetchKeys = 8;
  const int64_t want = threads > 1 ? (4 * threads + n_head_kv - 1) / n_head_kv : 1;
  const int64_t n_chunks = std::max<int64_t>(1, std::min<int64_t>(want, (most + kMinChunk - 1) / kMinChunk));
  const int64_t chunk = std::max<int64_t>(1, (most + n_chunks - 1) / n_chunks);
  // Per (group, row): the scores of its visible keys (exp'd against their chunk's maximum), and per
  // (group, chunk, row) the chunk's maximum, exp sum and unnormalised output.
  thread_local std::vector<float> s_buf, part_out, part_ms;
  s_buf.resize(static_cast<size_t>(n_head_kv * group * std::max<int64_t>(most, 1)));
  part_out.resize(static_cast<size_t>(n_head_kv * n_chunks * group * head_dim));
  part_ms.resize(static_cast<size_t>(n_head_kv * n_chunks * group * 2));
  float* S = s_buf.data();
  float* PO = part_out.data();
  float* PM = part_ms.data();
  const int64_t n_tasks = static_cast<int64_t>(n_head_kv) * n_chunks;
  const bool want_probs = last_row_probs || key_mass;
  const Kernels& kern = kernels();

#pragma omp parallel if (n_tasks > 1 && threads > 1)
  {
    thread_local std::vector<float> kbuf, vbuf;  // a chunk's K and V rows as float32 (16-bit caches)
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < n_tasks; ++t) {
      const int g = static_cast<int>(t / n_chunks);
      const int64_t c = t % n_chunks;
      const int64_t j0 = std::min(visible[g], c * chunk), j1 = std::min(visible[g], j0 + chunk);
      const float* qg = q + static_cast<int64_t>(g) * group * head_dim;
      float* sg = S + static_cast<int64_t>(g) * group * most;
      for (int r = 0; r < group; ++r) {
        float* po = PO + ((t * group) + r) * head_dim;
        float* pm = PM + ((t * group) + r) * 2;
        std::fill(po, po + head_dim, 0.0f);
        pm[0] = -std::numeric_limits<float>::infinity();
        pm[1] = 0.0f;
      }
      if (j1 <= j0) continue;
      int64_t k_ld = 0, v_ld = 0;
      const float* k0 = head_rows(kv.k, kv.type, g, j0, j1, kv_stride, head_dim, kbuf, &k_ld);
      const float* v0_row = head_rows(kv.v, kv.type, g, j0, j1, kv_stride, head_dim, vbuf, &v_ld);
      for (int64_t j = j0; j < j1; ++j) {
        const float* kj = k0 + (j - j0) * k_ld;
        // The keys of one head are k_ld apart: fetch a few ahead (the hardware prefetcher alone
        // leaves the loop waiting on memory at depth).
        for (int d = 0; d < head_dim; d += 16) __builtin_prefetch(kj + kPrefetchKeys * k_ld + d);
        for (int r = 0; r < group; ++r) {
          const float* qr = qg + static_cast<int64_t>(r) * head_dim;
          float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
          for (int d = 0; d < head_dim; ++d) dot += qr[d] * kj[d];
          sg[r * most + j] = dot * scale;
        }
      }
      for (int r = 0; r < group; ++r) {
        float* sr = sg + r * most;
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t j = j0; j < j1; ++j) mx = std::max(mx, sr[j]);
        float* pm = PM + ((t * group) + r) * 2;
        pm[0] = mx;
        pm[1] = kern.exp_shifted_sum(sr + j0, j1 - j0, mx);
        float* po = PO + ((t * group) + r) * head_dim;
        int64_t j = j0;
        for (; j + 4 <= j1; j += 4) {
          const float p0 = sr[j], p1 = sr[j + 1], p2 = sr[j + 2], p3 = sr[j + 3];
          const float *v0 = v0_row + (j - j0) * v_ld, *v1 = v0 + v_ld, *v2 = v1 + v_ld, *v3 = v2 + v_ld;
          for (int q4 = 0; q4 < 4; ++q4)
            for (int d = 0; d < head_dim; d += 16) __builtin_prefetch(v0 + (kPrefetchKeys + q4) * v_ld + d);
#pragma omp simd
          for (int d = 0; d < head_dim; ++d) po[d] += p0 * v0[d] + p1 * v1[d] + p2 * v2[d] + p3 * v3[d];
        }
        for (; j < j1; ++j) {
          const float p = sr[j];
          const float* vj = v0_row + (j - j0) * v_ld;
#pragma omp simd
          for (int d = 0; d < head_dim; ++d) po[d] += p * vj[d];
        }
      }
    }
    // Combine the chunks of each (group, row) by their maxima; then, when asked, the probabilities.
    std::vector<float> weights(static_cast<size_t>(n_chunks));  // exp(chunk max − row max)
    float* wc = weights.data();
#pragma omp for schedule(static)
    for (int64_t gr = 0; gr < static_cast<int64_t>(n_head_kv) * group; ++gr) {
      const int g = static_cast<int>(gr / group), r = static_cast<int>(gr % group);
      float* o = out + (static_cast<int64_t>(g) * group + r) * head_dim;
      float M = -std::numeric_limits<float>::infinity();
      for (int64_t c = 0; c < n_chunks; ++c) M = std::max(M, PM[(((g * n_chunks + c) * group) + r) * 2]);
      std::fill(o, o + head_dim, 0.0f);
      if (visible[g] == 0) {
        if (last_row_probs) std::fill(last_row_probs + gr * probs_ld, last_row_probs + gr * probs_ld + n_kv[g], 0.0f);
        continue;
      }
      float Z = 0.0f;
      for (int64_t c = 0; c < n_chunks; ++c) {
        const float* pm = PM + (((g * n_chunks + c) * group) + r) * 2;
        wc[c] = pm[1] > 0.0f ? std::exp(pm[0] - M) : 0.0f;
        Z += wc[c] * pm[1];
      }
      const float inv = Z > 0.0f ? 1.0f / Z : 0.0f;
      for (int64_t c = 0; c < n_chunks; ++c) {
        const float f = wc[c] * inv;
        const float* po = PO + (((g * n_chunks + c) * group) + r) * head_dim;
#pragma omp simd
        for (int d = 0; d < head_dim; ++d) o[d] += f * po[d];
      }
      if (!want_probs) continue;
      float* sr = S + (static_cast<int64_t>(g) * group + r) * most;
      for (int64_t c = 0; c < n_chunks; ++c) {
        const int64_t j0 = std::min(visible[g], c * chunk), j1 = std::min(visible[g], j0 + chunk);
        const float f = wc[c] * inv;
        for (int64_t j = j0; j < j1; ++j) sr[j] *= f;
      }
      if (last_row_probs) {
        float* dst = last_row_probs + gr * probs_ld;
        std::memcpy(dst, sr, sizeof(float) * visible[g]);
        std::fill(dst + visible[g], dst + n_kv[g], 0.0f);
      }
    }
    if (key_mass) {  // per KV head g and key j: the sum over the group's rows (one writer per entry)
#pragma omp for schedule(static)
      for (int g = 0; g < n_head_kv; ++g) {
        const float* sg = S + static_cast<int64_t>(g) * group * most;
        for (int r = 0; r < group; ++r)
          for (int64_t j = 0; j < visible[g]; ++j) key_mass[j * n_head_kv + g] += sg[r * most + j];
      }
    }
  }
}

}  // namespace

void to_f32(KvElem type, const void* src, int64_t count, float* dst) {
  const auto* h = static_cast<const uint16_t*>(src);
  int64_t i = 0;
  if (type == KvElem::f32) {
    std::memcpy(dst, src, sizeof(float) * count);
    return;
  }
  if (type == KvElem::f16) {
    for (; i + 8 <= count; i += 8)
      _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i))));
    for (; i < count; ++i) dst[i] = _cvtsh_ss(h[i]);
    return;
  }
  for (; i + 8 <= count; i += 8) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i)));
    _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
  }
  for (; i < count; ++i) dst[i] = bf16_to_fp32(h[i]);
}

void from_f32(KvElem type, const float* src, int64_t count, void* dst) {
  auto* h = static_cast<uint16_t*>(dst);
  int64_t i = 0;
  if (type == KvElem::f32) {
    std::memcpy(dst, src, sizeof(float) * count);
    return;
  }
  if (type == KvElem::f16) {
    for (; i + 8 <= count; i += 8)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(h + i),
                       _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < count; ++i) h[i] = _cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return;
  }
  for (; i < count; ++i) h[i] = fp32_to_bf16(src[i]);
}

float exp_approx(float x) {
  x = std::min(std::max(x, kExpLo), kExpHi);
  float fx = std::floor(x * kLog2e + 0.5f);
  x = x - fx * kC1 - fx * kC2;
  float z = x * x;
  float y = ((((kP0 * x + kP1) * x + kP2) * x + kP3) * x + kP4) * x + kP5;
  y = y * z + x + 1.0f;
  return std::ldexp(y, static_cast<int>(fx));
}

void set_num_threads(int n) {
  // Default: OMP_NUM_THREADS when set, else every hardware thread (read once, before we change it).
  static const int default_threads = std::max(1, omp_get_max_threads());
  // Select the kernel variant here, where a bad SDTP_CPU_ISA can throw, rather than in a parallel loop.
  kernels();
  if (n <= 0) n = default_threads;
  g_threads = n;
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

int num_threads() {
  if (g_threads == 0) set_num_threads(0);
  return g_threads;
}

void matmul(const float* x, int64_t n, int64_t k, const float* w, int64_t m, const float* bias, float* y) {
  if (n == 1) {
    cblas_sgemv(CblasRowMajor, CblasNoTrans, m, k, 1.0f, w, k, x, 1, 0.0f, y, 1);
  } else {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, m, k, 1.0f, x, k, w, k, 0.0f, y, m);
  }
  if (bias) {
#pragma omp parallel for if (n * m > 65536)
    for (int64_t r = 0; r < n; ++r) {
      float* yr = y + r * m;
      for (int64_t c = 0; c < m; ++c) yr[c] += bias[c];
    }
  }
}

void rmsnorm(const float* x, const float* weight, int64_t n, int64_t d, float eps, float* y) {
#pragma omp parallel for if (n > 16)
  for (int64_t r = 0; r < n; ++r) {
    const float* xr = x + r * d;
    float* yr = y + r * d;
    float ss = 0.0f;
    for (int64_t i = 0; i < d; ++i) ss += xr[i] * xr[i];
    const float scale = 1.0f / std::sqrt(ss / static_cast<float>(d) + eps);
    for (int64_t i = 0; i < d; ++i) yr[i] = weight[i] * (xr[i] * scale);
  }
}

void rope(float* x, int64_t n, int64_t stride, int n_heads, int head_dim, const int32_t* positions,
          const float* inv_freq, bool inverse) {
  const int half = head_dim / 2;
#pragma omp parallel if (n > 16)
  {
    std::vector<float> cs(half), sn(half);
#pragma omp for
    for (int64_t r = 0; r < n; ++r) {
      // Angles as Hugging Face computes them: float32 product of position and inv_freq.
      const float p = static_cast<float>(positions[r]);
      for (int i = 0; i < half; ++i) {
        const float a = p * inv_freq[i];
        cs[i] = std::cos(a);
        sn[i] = inverse ? -std::sin(a) : std::sin(a);
      }
      for (int h = 0; h < n_heads; ++h) {
        float* v = x + r * stride + static_cast<int64_t>(h) * head_dim;
        for (int i = 0; i < half; ++i) {
          const float x0 = v[i], x1 = v[i + half];
          v[i] = x0 * cs[i] - x1 * sn[i];
          v[i + half] = x1 * cs[i] + x0 * sn[i];
        }
      }
    }
  }
}

void swiglu(const float* gate, const float* up, int64_t count, float* out) {
  constexpr int64_t kChunk = 4096;
  const Kernels& kern = kernels();
#pragma omp parallel for if (count > 65536)
  for (int64_t c = 0; c < count; c += kChunk) {
    const int64_t len = std::min(kChunk, count - c);
    kern.swiglu(gate + c, up + c, len, out + c);
  }
}

void add(float* x, const float* y, int64_t count) {
#pragma omp parallel for simd if (count > 65536)
  for (int64_t i = 0; i < count; ++i) x[i] += y[i];
}

void attention(const float* q, const int32_t* q_pos, int64_t n, const float* k, const float* v,
               const int32_t* kv_pos, const int64_t* n_kv, int n_head, int n_head_kv, int head_dim, float* out,
               float* last_row_probs, int64_t probs_ld, float* key_mass, int64_t mass_from) {
  attention(q, q_pos, n, KvData{k, v, KvElem::f32}, kv_pos, n_kv, n_head, n_head_kv, head_dim, out, last_row_probs,
            probs_ld, key_mass, mass_from);
}

void attention(const float* q, const int32_t* q_pos, int64_t n, const KvData& kv, const int32_t* kv_pos,
               const int64_t* n_kv, int n_head, int n_head_kv, int head_dim, float* out, float* last_row_probs,
               int64_t probs_ld, float* key_mass, int64_t mass_from) {
  // Blocks of query rows per head: S = Q_b K^T over the keys any row of the block may see, causal
  // mask by position, softmax, O_b = P V. Each (head, block) task calls single-threaded BLAS
  // (OpenBLAS/OpenMP runs serially inside a parallel region).
  const int64_t q_stride = static_cast<int64_t>(n_head) * head_dim;
  const int64_t kv_stride = static_cast<int64_t>(n_head_kv) * head_dim;
  const int group = n_head / n_head_kv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  if (n == 1) {
    attention_one_row(q, q_pos[0], kv, kv_pos, n_kv, n_head, n_head_kv, head_dim, out, last_row_probs, probs_ld,
                      mass_from <= 0 ? key_mass : nullptr);
    return;
  }
  const int64_t block = n >= 256 ? 64 : (n >= 32 ? 16 : n);
  const int64_t n_blocks = (n + block - 1) / block;
  const int64_t n_tasks = n_blocks * n_head;
  const int64_t most = *std::max_element(n_kv, n_kv + n_head_kv);

  // A 16-bit cache is converted to float32 one KV head at a time (all threads), then that head's
  // tasks run on the converted rows: one conversion per entry and layer, bounded scratch.
  const bool wide = kv.type == KvElem::f32;
  std::vector<float> kf, vf;
  if (!wide) {
    kf.resize(static_cast<size_t>(std::max<int64_t>(most, 1) * head_dim));
    vf.resize(kf.size());
  }

#pragma omp parallel if (n_tasks > 1)
  {
    std::vector<float> scores;
    // key_mass: column sums of the probabilities, per thread (heads of a group and blocks of rows
    // write the same entries), added up after the loop.
    std::vector<float> mass(key_mass ? static_cast<size_t>(most * n_head_kv) : 0);
    // Query head h over the rows of block b0 against KV head g's K and V rows (stride ld).
    const auto task = [&](int h, int64_t b0, const float* kh, const float* vh, int64_t ld) {
      const int64_t rows = std::min(block, n - b0);
      const int g = h / group;
      const int32_t* pg = kv_pos + g;
      int32_t max_pos = std::numeric_limits<int32_t>::min();
      for (int64_t r = 0; r < rows; ++r) max_pos = std::max(max_pos, q_pos[b0 + r]);
      // Keys visible to at least one row: cache positions are ascending, so a prefix.
      const int64_t n_keys = count_leq(pg, n_head_kv, n_kv[g], max_pos);
      float* o = out + b0 * q_stride + static_cast<int64_t>(h) * head_dim;
      if (n_keys == 0) {
        for (int64_t r = 0; r < rows; ++r) std::memset(o + r * q_stride, 0, sizeof(float) * head_dim);
      } else {
        scores.resize(static_cast<size_t>(rows * n_keys));
        const float* qb = q + b0 * q_stride + static_cast<int64_t>(h) * head_dim;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, n_keys, head_dim, scale, qb, q_stride, kh, ld,
                    0.0f, scores.data(), n_keys);
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t visible = count_leq(pg, n_head_kv, n_keys, q_pos[b0 + r]);
          softmax_rows(scores.data() + r * n_keys, 1, n_keys, visible);
          if (key_mass && b0 + r >= mass_from) {
            const float* pr = scores.data() + r * n_keys;
            for (int64_t j = 0; j < visible; ++j) mass[j * n_head_kv + g] += pr[j];
          }
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, head_dim, n_keys, 1.0f, scores.data(), n_keys,
                    vh, ld, 0.0f, o, q_stride);
      }
      if (last_row_probs && b0 + rows == n) {
        float* dst = last_row_probs + static_cast<int64_t>(h) * probs_ld;
        if (n_keys) std::memcpy(dst, scores.data() + (rows - 1) * n_keys, sizeof(float) * n_keys);
        std::fill(dst + n_keys, dst + n_kv[g], 0.0f);
      }
    };
    if (wide) {
      const auto* k = static_cast<const float*>(kv.k);
      const auto* v = static_cast<const float*>(kv.v);
#pragma omp for schedule(dynamic, 1) nowait
      for (int64_t t = 0; t < n_tasks; ++t) {
        const int h = static_cast<int>(t % n_head), g = h / group;
        task(h, (t / n_head) * block, k + static_cast<int64_t>(g) * head_dim, v + static_cast<int64_t>(g) * head_dim,
             kv_stride);
      }
    } else {
      const auto* k16 = static_cast<const uint16_t*>(kv.k);
      const auto* v16 = static_cast<const uint16_t*>(kv.v);
      for (int g = 0; g < n_head_kv; ++g) {
#pragma omp for schedule(static)
        for (int64_t j = 0; j < n_kv[g]; ++j) {
          const int64_t at = j * kv_stride + static_cast<int64_t>(g) * head_dim;
          to_f32(kv.type, k16 + at, head_dim, kf.data() + j * head_dim);
          to_f32(kv.type, v16 + at, head_dim, vf.data() + j * head_dim);
        }
        const int64_t per_g = n_blocks * group;
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < per_g; ++t)
          task(g * group + static_cast<int>(t % group), (t / group) * block, kf.data(), vf.data(), head_dim);
      }
    }
    if (key_mass) {
#pragma omp critical(sdtp_key_mass)
      for (size_t i = 0; i < mass.size(); ++i) key_mass[i] += mass[i];
    }
  }
}

void attention(const float* q, const int32_t* q_pos, int64_t n, const float* k, const float* v,
               const int32_t* kv_pos, int64_t n_kv, int n_head, int n_head_kv, int head_dim, float* out,
               float* last_row_probs) {
  // Every KV head holds the same entries: positions and counts repeated per head.
  std::vector<int32_t> pos(static_cast<size_t>(n_kv * n_head_kv));
  for (int64_t j = 0; j < n_kv; ++j)
    for (int g = 0; g < n_head_kv; ++g) pos[j * n_head_kv + g] = kv_pos[j];
  const std::vector<int64_t> counts(static_cast<size_t>(n_head_kv), n_kv);
  attention(q, q_pos, n, k, v, pos.data(), counts.data(), n_head, n_head_kv, head_dim, out, last_row_probs, n_kv);
}

}  // namespace sdtp::cpu
