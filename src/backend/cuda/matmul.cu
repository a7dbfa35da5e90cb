// Projections of the CUDA backend: y = x·W^T (+bias), or y += x·W^T (the residual add, beta = 1),
// through cuBLASLt: bf16 inputs, bf16 or float32 outputs, float32 accumulation
// (CUBLAS_COMPUTE_32F), bias fused as the matmul's epilogue. The algorithm cuBLASLt's heuristic
// picks is cached per shape, output type, accumulation and pointer alignment; where it offers
// none, cublasGemmEx (same beta) and a separate bias kernel run instead.
#include <algorithm>
#include <map>
#include <mutex>
#include <tuple>
#include <type_traits>

#include "backend/cuda/check.cuh"
#include "backend/cuda/ops.h"

namespace sdtp::cuda {

using detail::check_launch;
using detail::require;

namespace {

// Largest power of two (<= 256) dividing the address: what cuBLASLt may assume about a pointer.
uint32_t alignment_of(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  uint32_t al = 256;
  while (al > 1 && (a % al) != 0) al >>= 1;
  return al;
}

// RAII for the cuBLASLt descriptors of one call.
struct LtDescs {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~LtDescs() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

using AlgoKey =
    std::tuple<void*, int64_t, int64_t, int64_t, int, int, int, uint32_t, uint32_t, uint32_t, uint32_t>;
struct AlgoEntry {
  bool found = false;
  cublasLtMatmulAlgo_t algo{};
};
std::mutex g_algo_mutex;
std::map<AlgoKey, AlgoEntry> g_algos;

template <class T>
__global__ void add_bias_kernel(T* y, const T* __restrict__ bias, int64_t n, int64_t m) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < n * m;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if constexpr (std::is_same_v<T, float>) {
      y[t] += bias[t % m];
    } else {
      y[t] = __float2bfloat16(__bfloat162float(y[t]) + __bfloat162float(bias[t % m]));
    }
  }
}

// Column-major view: Y^T[m x n] = W[m x k] (A = W stored k x m, transposed) · X^T[k x n] (B), or
// Y^T += that when accumulate (beta = 1, C = D = y in place; no bias then).
void lt_matmul(Context& ctx, const char* op_name, const void* x, int64_t n, int64_t k, const void* w, int64_t m,
               const void* bias, void* y, cudaDataType_t y_type, bool accumulate = false) {
  require(n >= 0 && k > 0 && m > 0, op_name,
          "bad shape n=" + std::to_string(n) + " k=" + std::to_string(k) + " m=" + std::to_string(m));
  require(n <= INT32_MAX && k <= INT32_MAX && m <= INT32_MAX, op_name, "shape over 2^31");
  require(!(accumulate && bias), op_name, "accumulating with a bias is not implemented");
  if (n == 0) return;
  auto lt = static_cast<cublasLtHandle_t>(ctx.cublaslt());
  LtDescs d;
  SDTP_CUBLAS_CHECK(cublasLtMatmulDescCreate(&d.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), op_name);
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  SDTP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)), op_name);
  SDTP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)), op_name);
  if (bias) {
    const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    SDTP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)),
                      op_name);
    SDTP_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)), op_name);
    const cudaDataType_t bt = y_type;
    SDTP_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt)), op_name);
  }
  SDTP_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.a, CUDA_R_16BF, k, m, k), op_name);
  SDTP_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.b, CUDA_R_16BF, k, n, k), op_name);
  SDTP_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.c, y_type, m, n, m), op_name);

  const uint32_t al_a = alignment_of(w), al_b = alignment_of(x), al_c = alignment_of(y);
  const uint32_t al_bias = bias ? alignment_of(bias) : 256;
  const AlgoKey key{ctx.cublaslt(), n, k, m, bias != nullptr, static_cast<int>(y_type), accumulate,
                    al_a, al_b, al_c, al_bias};
  AlgoEntry entry;
  bool cached = false;
  {
    std::lock_guard<std::mutex> lock(g_algo_mutex);
    auto it = g_algos.find(key);
    if (it != g_algos.end()) {
      entry = it->second;
      cached = true;
    }
  }
  if (!cached) {
    SDTP_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&d.pref), op_name);
    const size_t ws = ctx.workspace_bytes();
    SDTP_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                           sizeof(ws)),
                      op_name);
    const std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t> aligns[] = {
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, al_a},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, al_b},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, al_c},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, al_c}};
    for (const auto& [attr, v] : aligns)
      SDTP_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(d.pref, attr, &v, sizeof(v)), op_name);
    cublasLtMatmulHeuristicResult_t result{};
    int count = 0;
    const cublasStatus_t st =
        cublasLtMatmulAlgoGetHeuristic(lt, d.op, d.a, d.b, d.c, d.c, d.pref, 1, &result, &count);
    entry.found = st == CUBLAS_STATUS_SUCCESS && count > 0 && al_bias >= 4;
    if (entry.found) entry.algo = result.algo;
    std::lock_guard<std::mutex> lock(g_algo_mutex);
    g_algos[key] = entry;
  }

  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  if (entry.found) {
    SDTP_CUBLAS_CHECK(cublasLtMatmul(lt, d.op, &alpha, w, d.a, x, d.b, &beta, y, d.c, y, d.c, &entry.algo,
                                     ctx.workspace(), ctx.workspace_bytes(), ctx.stream()),
                      op_name);
    if (ctx.sync_each_op()) ctx.synchronize(op_name);
    return;
  }
  // Fallback for shapes or alignments cuBLASLt has no kernel for.
  auto h = static_cast<cublasHandle_t>(ctx.cublas());
  SDTP_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(m), static_cast<int>(n),
                                 static_cast<int>(k), &alpha, w, CUDA_R_16BF, static_cast<int>(k), x, CUDA_R_16BF,
                                 static_cast<int>(k), &beta, y, y_type, static_cast<int>(m), CUBLAS_COMPUTE_32F,
                                 CUBLAS_GEMM_DEFAULT),
                    op_name);
  if (bias) {
    const int64_t work = n * m;
    const unsigned blocks =
        static_cast<unsigned>(std::min<int64_t>((work + 255) / 256, static_cast<int64_t>(ctx.sm_count()) * 32));
    if (y_type == CUDA_R_32F)
      add_bias_kernel<float><<<blocks, 256, 0, ctx.stream()>>>(static_cast<float*>(y),
                                                                static_cast<const float*>(bias), n, m);
    else
      add_bias_kernel<__nv_bfloat16><<<blocks, 256, 0, ctx.stream()>>>(
          static_cast<__nv_bfloat16*>(y), static_cast<const __nv_bfloat16*>(bias), n, m);
    check_launch(ctx, op_name);
  } else if (ctx.sync_each_op()) {
    ctx.synchronize(op_name);
  }
}

}  // namespace

void matmul(Context& ctx, const bf16* x, int64_t n, int64_t k, const bf16* w, int64_t m, const bf16* bias, bf16* y) {
  lt_matmul(ctx, "matmul", x, n, k, w, m, bias, y, CUDA_R_16BF);
}

void matmul_f32(Context& ctx, const bf16* x, int64_t n, int64_t k, const bf16* w, int64_t m, const float* bias,
                float* y) {
  lt_matmul(ctx, "matmul_f32", x, n, k, w, m, bias, y, CUDA_R_32F);
}

void matmul_residual(Context& ctx, const bf16* x, int64_t n, int64_t k, const bf16* w, int64_t m, bf16* y) {
  lt_matmul(ctx, "matmul_residual", x, n, k, w, m, nullptr, y, CUDA_R_16BF, /*accumulate=*/true);
}

void matmul_residual(Context& ctx, const bf16* x, int64_t n, int64_t k, const bf16* w, int64_t m, float* y) {
  lt_matmul(ctx, "matmul_residual f32", x, n, k, w, m, nullptr, y, CUDA_R_32F, /*accumulate=*/true);
}

}  // namespace sdtp::cuda
