// Timings of the CUDA backend's heavy ops on the GPU machine (not a test; run by hand):
//   sdtp_cuda_bench            attention at Llama shapes (dense and pruned-style), the 4096^3 matmul,
//                              and the memory-bound ops, each the median of timed runs after warm-up,
//                              measured with CUDA events.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/model_ops.h"
#include "backend/cuda/ops.h"

using namespace sdtp::cuda;

namespace {

// Median milliseconds of `reps` runs of f after `warmup` runs.
double time_ms(Context& ctx, const std::function<void()>& f, int warmup = 3, int reps = 15) {
  for (int i = 0; i < warmup; ++i) f();
  ctx.synchronize("bench warm-up");
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    cudaEventRecord(a, ctx.stream());
    f();
    cudaEventRecord(b, ctx.stream());
    cudaEventSynchronize(b);
    float t = 0;
    cudaEventElapsedTime(&t, a, b);
    ms.push_back(t);
  }
  ctx.synchronize("bench");
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

DeviceArray<bf16> random_device(size_t count, uint32_t seed, float scale) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(-scale, scale);
  std::vector<bf16> h(count);
  for (auto& x : h) x = to_bf16(d(rng));
  return upload(h, "bench input");
}

// Attention over `alive` rows that are also the cache (positions ascending, gapped when pruned).
void bench_attention(Context& ctx, const char* label, int64_t n_total, int64_t alive, int n_head, int n_head_kv,
                     int hd, bool flash = true) {
  std::mt19937 rng(1);
  std::vector<int32_t> pos(n_total);
  std::iota(pos.begin(), pos.end(), 0);
  if (alive < n_total) {
    std::shuffle(pos.begin(), pos.end() - 1, rng);
    std::vector<int32_t> keep(pos.begin(), pos.begin() + alive - 1);
    keep.push_back(static_cast<int32_t>(n_total - 1));
    std::sort(keep.begin(), keep.end());
    pos = keep;
  }
  auto q = random_device(alive * n_head * hd, 2, 2.0f);
  auto k = random_device(alive * n_head_kv * hd, 3, 2.0f);
  auto v = random_device(alive * n_head_kv * hd, 4, 1.0f);
  auto dpos = upload(pos, "pos");
  DeviceArray<bf16> out(alive * n_head * hd, "out");
  // Causal: rows see (alive+1)/2 entries on average; QK^T and PV are 2 flops per multiply-add each.
  const double flops = 4.0 * hd * n_head * (static_cast<double>(alive) * (alive + 1) / 2.0);
  for (int variant = 1; flash && variant <= kAttentionVariants; ++variant) {
    const double ms = time_ms(ctx, [&] {
      attention(ctx, q.data(), dpos.data(), alive, k.data(), v.data(), dpos.data(), alive, n_head, n_head_kv, hd,
                out.data(), variant);
    });
    std::printf("attention %-32s rows %5lld  v%d (%s)  %7.3f ms  %5.1f TFLOP/s\n", label,
                static_cast<long long>(alive), variant, attention_variant_name(variant), ms, flops / ms * 1e-9);
  }
  // The Hopper wgmma kernel's variants (0 warp-specialised, 1 plain, 2 plain tiles 64, 3 pipelined).
  if (hd == 128 && attention_wgmma_supported(hd)) {
    for (int variant = 0; variant < 4; ++variant) {
      const double ms = time_ms(ctx, [&] {
        attention_wgmma(ctx, q.data(), dpos.data(), alive, k.data(), v.data(), dpos.data(), alive, n_head, n_head_kv,
                        hd, out.data(), variant);
      });
      std::printf("attention %-32s rows %5lld  wgmma v%d      %8.3f ms  %5.1f TFLOP/s\n", label,
                  static_cast<long long>(alive), variant, ms, flops / ms * 1e-9);
    }
  }
}

void bench_matmul(Context& ctx, int64_t n, int64_t k, int64_t m) {
  auto x = random_device(n * k, 5, 1.0f);
  auto w = random_device(m * k, 6, 0.05f);
  DeviceArray<bf16> y(n * m, "y");
  const double ms = time_ms(ctx, [&] { matmul(ctx, x.data(), n, k, w.data(), m, nullptr, y.data()); }, 5, 20);
  std::printf("matmul    %lldx%lldx%lld bf16                          %8.3f ms  %6.1f TFLOP/s\n",
              static_cast<long long>(n), static_cast<long long>(k), static_cast<long long>(m), ms,
              2.0 * n * k * m / ms * 1e-9);
}

}  // namespace

int main(int argc, char** argv) {
  if (device_count() == 0) {
    std::printf("no CUDA device: nothing to time\n");
    return 0;
  }
  try {
    Context ctx(0);
    std::printf("device: %s\n", device_description().c_str());
    if (argc > 1 && std::string(argv[1]) == "attn") {  // the wgmma attention kernels only, 4K to 32K
      bench_attention(ctx, "llama2-7b 4K dense (32h hd128)", 4096, 4096, 32, 32, 128, false);
      bench_attention(ctx, "llama2-7b 8K dense", 8192, 8192, 32, 32, 128, false);
      bench_attention(ctx, "llama2-7b 8K pruned 35% alive", 8192, 2867, 32, 32, 128, false);
      bench_attention(ctx, "llama3-8b 8K dense (32h/8kv)", 8192, 8192, 32, 8, 128, false);
      bench_attention(ctx, "llama2-7b 16K dense", 16384, 16384, 32, 32, 128, false);
      bench_attention(ctx, "llama2-7b 32K dense", 32768, 32768, 32, 32, 128, false);
      bench_attention(ctx, "llama3-8b 32K dense (32h/8kv)", 32768, 32768, 32, 8, 128, false);
      return 0;
    }
    bench_matmul(ctx, 4096, 4096, 4096);
    bench_matmul(ctx, 8192, 8192, 8192);
    bench_matmul(ctx, 4096, 4096, 11008);
    bench_attention(ctx, "llama2-7b 4K dense (32h hd128)", 4096, 4096, 32, 32, 128);
    bench_attention(ctx, "llama2-7b 8K dense", 8192, 8192, 32, 32, 128);
    bench_attention(ctx, "llama2-7b 8K pruned 35% alive", 8192, 2867, 32, 32, 128);
    bench_attention(ctx, "llama3-8b 8K dense (32h/8kv)", 8192, 8192, 32, 8, 128);
    bench_attention(ctx, "hd64 4K dense (32h)", 4096, 4096, 32, 32, 64);

    // Memory-bound ops at a 4K-token Llama-2-7B layer.
    const int64_t n = 4096, d = 4096, ff = 11008;
    auto x = random_device(n * ff, 7, 1.0f), y = random_device(n * ff, 8, 1.0f);
    DeviceArray<bf16> o(n * ff, "o");
    std::vector<float> wh(d, 1.0f);
    auto w = upload(wh, "w");
    double ms = time_ms(ctx, [&] { rmsnorm(ctx, x.data(), w.data(), n, d, 1e-5f, o.data()); });
    std::printf("rmsnorm   4096x4096          %8.3f ms  %6.0f GB/s\n", ms, 2.0 * n * d * 2 / ms * 1e-6);
    ms = time_ms(ctx, [&] { swiglu(ctx, x.data(), y.data(), n * ff, o.data()); });
    std::printf("swiglu    4096x11008         %8.3f ms  %6.0f GB/s\n", ms, 3.0 * n * ff * 2 / ms * 1e-6);
    ms = time_ms(ctx, [&] { add(ctx, o.data(), y.data(), n * d); });
    std::printf("add       4096x4096          %8.3f ms  %6.0f GB/s\n", ms, 3.0 * n * d * 2 / ms * 1e-6);
    std::vector<int32_t> pos(n);
    std::iota(pos.begin(), pos.end(), 0);
    auto dpos = upload(pos, "pos");
    std::vector<float> freq(64);
    for (int i = 0; i < 64; ++i) freq[i] = std::pow(10000.0f, -i / 64.0f);
    auto dfreq = upload(freq, "freq");
    ms = time_ms(ctx, [&] { rope(ctx, o.data(), n, d, 32, 128, dpos.data(), dfreq.data()); });
    std::printf("rope      4096x(32x128)      %8.3f ms  %6.0f GB/s\n", ms, 2.0 * n * d * 2 / ms * 1e-6);
    std::vector<int32_t> idx(1434);
    for (size_t i = 0; i < idx.size(); ++i) idx[i] = static_cast<int32_t>(i * 2 + 1);
    auto didx = upload(idx, "idx");
    ms = time_ms(ctx, [&] { gather_rows(ctx, x.data(), n, d * 2, didx.data(), 1434, o.data()); });
    std::printf("gather    1434 of 4096 rows  %8.3f ms\n", ms);
    std::vector<float> sc(32768);
    std::mt19937 rng(9);
    std::normal_distribution<float> nd;
    for (auto& s : sc) s = nd(rng);
    auto dsc = upload(sc, "scores");
    DeviceArray<int32_t> top(11469, "top");
    ms = time_ms(ctx, [&] { top_k(ctx, dsc.data(), 32768, 11469, top.data()); });
    std::printf("top_k     11469 of 32768     %8.3f ms\n", ms);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
