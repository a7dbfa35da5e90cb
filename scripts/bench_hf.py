#!/usr/bin/env python3
"""Prefill speed of Hugging Face transformers + PyTorch SDPA on the model shapes of `sdtp bench
--device cuda --random-weights PRESET`, on the same GPU: the baseline sdtp's CUDA prefill is
compared with (docs/performance.md).

The model is built from its config with random weights, directly on the GPU in bf16
(torch.set_default_device('cuda'), default dtype bf16; no download, no host copy), attention
'sdpa', batch 1. For each prompt length: warm-up runs, then timed repetitions of one forward pass
over random token ids, torch.cuda.synchronize() around each; the median is reported with TFLOP/s
from the same analytical FLOPs count sdtp uses (matmuls 2*params*n, causal attention
4*head_dim*n_head per (query, key) pair, lm head on the rows whose logits are computed).

Logits: by default of every position, like a plain `model(ids)` call; `--logits-to-keep 1` computes
the last position's only (what a generate() prefill does, and what sdtp's prefill computes).

Run (on the GPU machine; needs torch with CUDA and transformers >= 4.50):
    python3 -m venv .venv && .venv/bin/pip install torch transformers
    .venv/bin/python scripts/bench_hf.py --model llama2-7b -p 4096,8192,16384,32768 [--logits-to-keep 1]
Prints a markdown table, then one JSON line (also written to --json FILE when given).
"""
import argparse
import json
import statistics
import sys
import time

# Exactly the Hugging Face config.json shapes (as sdtp's cuda::preset_config).
PRESETS = {
    "llama2-7b": dict(cls="llama", hf_id="meta-llama/Llama-2-7b-hf", vocab_size=32000, hidden_size=4096,
                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                      intermediate_size=11008, max_position_embeddings=4096, rope_theta=10000.0),
    "llama3-8b": dict(cls="llama", hf_id="meta-llama/Meta-Llama-3-8B", vocab_size=128256, hidden_size=4096,
                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                      intermediate_size=14336, max_position_embeddings=8192, rope_theta=500000.0),
    "mistral-7b": dict(cls="mistral", hf_id="mistralai/Mistral-7B-v0.3", vocab_size=32768, hidden_size=4096,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                       intermediate_size=14336, max_position_embeddings=32768, rope_theta=1000000.0),
}


def analytical_flops(p, n, logits_rows):
    d, L = p["hidden_size"], p["num_hidden_layers"]
    hd = d // p["num_attention_heads"]
    q, kv, ff = p["num_attention_heads"] * hd, p["num_key_value_heads"] * hd, p["intermediate_size"]
    per_row = 2.0 * (d * q + 2 * d * kv + q * d + 3 * d * ff)
    pairs = n * (n + 1) / 2.0
    layer = per_row * n + 4.0 * hd * p["num_attention_heads"] * pairs
    return L * layer + 2.0 * logits_rows * d * p["vocab_size"]


def build_model(name, max_len):
    import torch
    import transformers

    p = dict(PRESETS[name])
    cls = p.pop("cls")
    p.pop("hf_id")
    theta = p.pop("rope_theta")
    p["max_position_embeddings"] = max(p["max_position_embeddings"], max_len)
    common = dict(rms_norm_eps=1e-5, tie_word_embeddings=False, attn_implementation="sdpa", **p)
    if cls == "llama":
        config = transformers.LlamaConfig(rope_theta=theta, **common)
        model_cls = transformers.LlamaForCausalLM
    else:
        config = transformers.MistralConfig(rope_theta=theta, sliding_window=None, **common)
        model_cls = transformers.MistralForCausalLM
    # transformers 5 keeps rope_theta under rope_parameters; set both spellings.
    if getattr(config, "rope_parameters", None) is not None:
        config.rope_parameters["rope_theta"] = theta
    config._attn_implementation = "sdpa"
    torch.set_default_device("cuda")
    torch.set_default_dtype(torch.bfloat16)
    with torch.no_grad():
        model = model_cls(config)
    model.eval()
    return model, PRESETS[name]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="llama2-7b", choices=sorted(PRESETS))
    ap.add_argument("-p", "--prompt-lengths", default="4096,8192,16384,32768")
    ap.add_argument("-r", "--repetitions", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--logits-to-keep", type=int, default=0, choices=[0, 1],
                    help="0: logits of every position (a plain model(ids) call); 1: the last position only")
    ap.add_argument("--json", default="", help="also write the JSON results to this file")
    args = ap.parse_args()

    import torch
    import transformers

    if not torch.cuda.is_available():
        sys.exit("bench_hf.py: error: no CUDA device")
    lengths = [int(x) for x in args.prompt_lengths.split(",") if x]
    model, p = build_model(args.model, max(lengths))
    dev = torch.cuda.get_device_name(0)
    print(f"device: {dev}; torch {torch.__version__}, transformers {transformers.__version__}; "
          f"model {args.model} shape ({p['hf_id']}), random bf16 weights, attention "
          f"{model.config._attn_implementation}; logits: "
          f"{'last position only (logits_to_keep=1)' if args.logits_to_keep else 'every position (plain model(ids))'}",
          flush=True)
    gen = torch.Generator(device="cuda").manual_seed(1234)
    results = []
    for n in lengths:
        times = []
        for rep in range(args.warmup + args.repetitions):
            ids = torch.randint(0, p["vocab_size"], (1, n), device="cuda", generator=gen)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = model(input_ids=ids, logits_to_keep=args.logits_to_keep)
            torch.cuda.synchronize()
            ms = (time.perf_counter() - t0) * 1e3
            del out
            if rep >= args.warmup:
                times.append(ms)
        med = statistics.median(times)
        rows = 1 if args.logits_to_keep else n
        flops = analytical_flops(p, n, rows)
        results.append(dict(model=args.model, device=dev, n_prompt=n, logits_to_keep=args.logits_to_keep,
                            samples_ms=times, median_ms=med, flops=flops, tflop_per_s=flops / (med * 1e-3) / 1e12,
                            peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30,
                            torch=torch.__version__, transformers=transformers.__version__))
        print(f"  pp{n}: {med:.1f} ms", file=sys.stderr, flush=True)
        torch.cuda.empty_cache()
    print(f"\n| model | test | ms (median of {args.repetitions}) | TFLOP/s | logits rows | peak GiB |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| HF SDPA {r['model']} | pp{r['n_prompt']} | {r['median_ms']:.1f} | {r['tflop_per_s']:.1f} | "
              f"{1 if r['logits_to_keep'] else r['n_prompt']} | {r['peak_mem_gib']:.1f} |")
    line = json.dumps(results)
    print(line)
    if args.json:
        with open(args.json, "w") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
