# Reference timings on the GPU machine for the CUDA backend's bench: PyTorch SDPA causal attention
# and a bf16 matmul at the shapes sdtp_cuda_bench uses. Run there with the image's python3 (it has
# torch): `python3 tests/cuda/time_sdpa.py`. Median of CUDA-event timings after warm-up.
import torch
import torch.nn.functional as F


def median_ms(f, warmup=3, reps=15):
    for _ in range(warmup):
        f()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        f()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    return sorted(ts)[len(ts) // 2]


def main():
    dev = "cuda"
    print("torch", torch.__version__, torch.cuda.get_device_name())
    for n, h, hkv, hd in [(4096, 32, 32, 128), (8192, 32, 32, 128), (2867, 32, 32, 128), (8192, 32, 8, 128)]:
        q = torch.randn(1, h, n, hd, device=dev, dtype=torch.bfloat16)
        k = torch.randn(1, hkv, n, hd, device=dev, dtype=torch.bfloat16)
        v = torch.randn(1, hkv, n, hd, device=dev, dtype=torch.bfloat16)
        ms = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=hkv != h))
        flops = 4.0 * hd * h * n * (n + 1) / 2
        print(f"torch sdpa causal n {n:6d} heads {h}/{hkv} hd {hd}: {ms:8.3f} ms  {flops / ms * 1e-9:6.1f} TFLOP/s")
    a = torch.randn(4096, 4096, device=dev, dtype=torch.bfloat16)
    b = torch.randn(4096, 4096, device=dev, dtype=torch.bfloat16)
    ms = median_ms(lambda: a @ b.T, 5, 20)
    print(f"torch matmul 4096^3 bf16: {ms:8.3f} ms  {2 * 4096**3 / ms * 1e-9:6.1f} TFLOP/s")


if __name__ == "__main__":
    main()
