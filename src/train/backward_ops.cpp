// Backward passes of the block's ops (see backward_ops.h).
#include "train/backward_ops.h"

#include "backend/cpu/ops.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace sdtp::train {

void linear_backward(const float* dy, int64_t n, int64_t out, const float* w, int64_t in, float* dx,
                     bool accumulate) {
  // dx[n x in] (+)= dy[n x out] · W[out x in]
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(n), static_cast<int>(in),
              static_cast<int>(out), 1.0f, dy, static_cast<int>(out), w, static_cast<int>(in),
              accumulate ? 1.0f : 0.0f, dx, static_cast<int>(in));
}

void rmsnorm_backward_add(const float* x, const float* weight, const float* dy, int64_t n, int64_t d, float eps,
                          float* dx) {
#pragma omp parallel for if (n > 16)
  for (int64_t r = 0; r < n; ++r) {
    const float* xr = x + r * d;
    const float* dyr = dy + r * d;
    float* dxr = dx + r * d;
    double ss = 0.0, dot = 0.0;
    for (int64_t i = 0; i < d; ++i) {
      ss += static_cast<double>(xr[i]) * xr[i];
      dot += static_cast<double>(weight[i]) * dyr[i] * xr[i];
    }
    // Same float32 scale as the forward (cpu::rmsnorm).
    const float ms = static_cast<float>(ss) / static_cast<float>(d);
    const double rs = 1.0 / std::sqrt(static_cast<double>(ms + eps));
    const double coef = rs * rs * rs * dot / static_cast<double>(d);
    for (int64_t i = 0; i < d; ++i) {
      dxr[i] += static_cast<float>(rs * weight[i] * dyr[i] - coef * xr[i]);
    }
  }
}

void rope_backward(float* dy, int64_t n, int64_t stride, int n_heads, int head_dim, const int32_t* positions,
                   const float* inv_freq) {
  // Forward [y0; y1] = R(θ)[x0; x1] with R orthogonal, so dx = R(θ)ᵀ dy = R(−θ) dy.
  cpu::rope(dy, n, stride, n_heads, head_dim, positions, inv_freq, /*inverse=*/true);
}

void swiglu_backward(const float* gate, const float* up, const float* dout, int64_t count, float* dgate,
                     float* dup) {
#pragma omp parallel for simd if (count > 65536)
  for (int64_t i = 0; i < count; ++i) {
    const float g = gate[i];
    const float sig = 1.0f / (1.0f + std::exp(-g));
    const float silu = g * sig;
    dgate[i] = dout[i] * up[i] * sig * (1.0f + g * (1.0f - sig));
    dup[i] = dout[i] * silu;
  }
}

void attention_backward(const float* q, const float* k, const float* v, const float* dout, const int32_t* positions,
                        int64_t n, int n_head, int n_head_kv, int head_dim, float* dq, float* dk, float* dv) {
  const int64_t q_stride = static_cast<int64_t>(n_head) * head_dim;
  const int64_t kv_stride = static_cast<int64_t>(n_head_kv) * head_dim;
  const int group = n_head / n_head_kv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  const int64_t block = std::min<int64_t>(64, n);
  const int hd = head_dim;

  // Per query head dK, dV [n_head][n x head_dim]; summed over each kv group at the end.
  std::vector<float> dk_h(static_cast<size_t>(n_head * n * hd), 0.0f);
  std::vector<float> dv_h(static_cast<size_t>(n_head * n * hd), 0.0f);

#pragma omp parallel if (n_head > 1)
  {
    std::vector<float> p, dp;
#pragma omp for schedule(dynamic, 1)
    for (int h = 0; h < n_head; ++h) {
      const int g = h / group;
      const float* kh = k + static_cast<int64_t>(g) * hd;
      const float* vh = v + static_cast<int64_t>(g) * hd;
      float* dkh = dk_h.data() + static_cast<int64_t>(h) * n * hd;
      float* dvh = dv_h.data() + static_cast<int64_t>(h) * n * hd;
      for (int64_t b0 = 0; b0 < n; b0 += block) {
        const int64_t rows = std::min(block, n - b0);
        const float* qb = q + b0 * q_stride + static_cast<int64_t>(h) * hd;
        const float* dob = dout + b0 * q_stride + static_cast<int64_t>(h) * hd;
        float* dqb = dq + b0 * q_stride + static_cast<int64_t>(h) * hd;
        // Keys visible to some row of the block: a prefix, positions being ascending.
        const int32_t max_pos = *std::max_element(positions + b0, positions + b0 + rows);
        const int64_t n_keys = std::upper_bound(positions, positions + n, max_pos) - positions;
        p.resize(static_cast<size_t>(rows * n_keys));
        dp.resize(static_cast<size_t>(rows * n_keys));
        const int ir = static_cast<int>(rows), ik = static_cast<int>(n_keys);
        // S = scale·Q_b Kᵀ, P = softmax over the visible keys.
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, ir, ik, hd, scale, qb, static_cast<int>(q_stride), kh,
                    static_cast<int>(kv_stride), 0.0f, p.data(), ik);
        // dP = dO_b Vᵀ
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, ir, ik, hd, 1.0f, dob, static_cast<int>(q_stride), vh,
                    static_cast<int>(kv_stride), 0.0f, dp.data(), ik);
        for (int64_t r = 0; r < rows; ++r) {
          float* s = p.data() + r * n_keys;
          float* d = dp.data() + r * n_keys;
          const int64_t visible = std::upper_bound(positions, positions + n_keys, positions[b0 + r]) - positions;
          float mx = -std::numeric_limits<float>::infinity();
          for (int64_t j = 0; j < visible; ++j) mx = std::max(mx, s[j]);
          double sum = 0.0;
          for (int64_t j = 0; j < visible; ++j) {
            s[j] = std::exp(s[j] - mx);
            sum += s[j];
          }
          const float inv = sum > 0.0 ? static_cast<float>(1.0 / sum) : 0.0f;
          double pd = 0.0;
          for (int64_t j = 0; j < visible; ++j) {
            s[j] *= inv;
            pd += static_cast<double>(s[j]) * d[j];
          }
          // dS = P ⊙ (dP − Σ P⊙dP); masked entries have P = 0 and dS = 0.
          const float pdf = static_cast<float>(pd);
          for (int64_t j = 0; j < visible; ++j) d[j] = s[j] * (d[j] - pdf);
          for (int64_t j = visible; j < n_keys; ++j) s[j] = d[j] = 0.0f;
        }
        // dQ_b = scale·dS K
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, ir, hd, ik, scale, dp.data(), ik, kh,
                    static_cast<int>(kv_stride), 0.0f, dqb, static_cast<int>(q_stride));
        // dK[:n_keys] += scale·dSᵀ Q_b
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, ik, hd, ir, scale, dp.data(), ik, qb,
                    static_cast<int>(q_stride), 1.0f, dkh, hd);
        // dV[:n_keys] += Pᵀ dO_b
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, ik, hd, ir, 1.0f, p.data(), ik, dob,
                    static_cast<int>(q_stride), 1.0f, dvh, hd);
      }
    }

    // Sum the heads of each kv group into dk, dv [n x n_head_kv*head_dim].
#pragma omp for
    for (int64_t r = 0; r < n; ++r) {
      for (int g = 0; g < n_head_kv; ++g) {
        float* dkr = dk + r * kv_stride + static_cast<int64_t>(g) * hd;
        float* dvr = dv + r * kv_stride + static_cast<int64_t>(g) * hd;
        std::memset(dkr, 0, sizeof(float) * hd);
        std::memset(dvr, 0, sizeof(float) * hd);
        for (int h = g * group; h < (g + 1) * group; ++h) {
          const float* sk = dk_h.data() + (static_cast<int64_t>(h) * n + r) * hd;
          const float* sv = dv_h.data() + (static_cast<int64_t>(h) * n + r) * hd;
          for (int i = 0; i < hd; ++i) {
            dkr[i] += sk[i];
            dvr[i] += sv[i];
          }
        }
      }
    }
  }
}

}  // namespace sdtp::train
