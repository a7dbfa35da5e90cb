#!/usr/bin/env python3
"""Writes a GGUF of a real model's shape with random K-quant weights, for memory and speed runs of
quantised weights on the CPU (issue 14): Llama-2-7B shapes by default, Q4_K projections and token
embedding, Q6_K output head (the main types of a Q4_K_M file), float32 norms, no tokenizer.

    python3 scripts/make_random_gguf.py OUT.gguf [--preset llama2-7b|tiny-256] [--seed 0]

Needs numpy and gguf-py (`pip install gguf numpy`). Each block's f16 scales are set to small finite
values; every other byte is random, so every quant value and sub-block scale occurs.
"""
import argparse
import sys

import numpy as np

PRESETS = {
    # Llama-2-7b-hf config.json
    "llama2-7b": dict(n_embd=4096, n_ff=11008, n_layer=32, n_head=32, n_head_kv=32, n_vocab=32000, n_ctx=4096),
    # a small shape whose widths are multiples of 256, for quick runs
    "tiny-256": dict(n_embd=256, n_ff=768, n_layer=2, n_head=4, n_head_kv=2, n_vocab=512, n_ctx=1024),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--preset", default="llama2-7b", choices=sorted(PRESETS))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    try:
        import gguf
    except ImportError:
        sys.exit("make_random_gguf.py: needs gguf-py (pip install gguf)")
    p = PRESETS[args.preset]
    rng = np.random.default_rng(args.seed)
    Q = gguf.GGMLQuantizationType
    w = gguf.GGUFWriter(args.out, "llama")
    w.add_name(f"random {args.preset} Q4_K")
    w.add_context_length(p["n_ctx"])
    w.add_embedding_length(p["n_embd"])
    w.add_block_count(p["n_layer"])
    w.add_feed_forward_length(p["n_ff"])
    w.add_head_count(p["n_head"])
    w.add_head_count_kv(p["n_head_kv"])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(p["n_vocab"])
    # A placeholder SentencePiece-style vocabulary (llama.cpp refuses a file without one): <unk>,
    # <s>, </s>, the 256 byte tokens, then numbered pieces. Benchmarks feed random ids.
    n_bytes = min(256, max(0, p["n_vocab"] - 3))
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(n_bytes)]
    tokens += [f"\u2581t{i}" for i in range(p["n_vocab"] - len(tokens))]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_types([2, 3, 3] + [6] * n_bytes + [1] * (len(tokens) - 3 - n_bytes))
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    def quant(name, rows, cols, qtype):
        block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
        nb = rows * cols // block_elems
        data = rng.integers(0, 256, size=(nb, block_bytes), dtype=np.uint8)
        d = rng.uniform(2e-4, 6e-4, size=nb).astype(np.float16).view(np.uint8).reshape(nb, 2)
        if qtype == Q.Q4_K:
            data[:, 0:2] = d
            data[:, 2:4] = (rng.uniform(1e-4, 3e-4, size=nb).astype(np.float16).view(np.uint8).reshape(nb, 2))
        else:  # Q6_K: d at the end
            data[:, 208:210] = d
        w.add_tensor(name, data.reshape(rows, cols // block_elems * block_bytes), raw_dtype=qtype)

    def ones(name, n):
        w.add_tensor(name, np.ones(n, dtype=np.float32))

    d, ff, kv = p["n_embd"], p["n_ff"], p["n_embd"] // p["n_head"] * p["n_head_kv"]
    quant("token_embd.weight", p["n_vocab"], d, Q.Q4_K)
    ones("output_norm.weight", d)
    quant("output.weight", p["n_vocab"], d, Q.Q6_K)
    for i in range(p["n_layer"]):
        b = f"blk.{i}."
        ones(b + "attn_norm.weight", d)
        ones(b + "ffn_norm.weight", d)
        quant(b + "attn_q.weight", d, d, Q.Q4_K)
        quant(b + "attn_k.weight", kv, d, Q.Q4_K)
        quant(b + "attn_v.weight", kv, d, Q.Q4_K)
        quant(b + "attn_output.weight", d, d, Q.Q4_K)
        quant(b + "ffn_gate.weight", ff, d, Q.Q4_K)
        quant(b + "ffn_up.weight", ff, d, Q.Q4_K)
        quant(b + "ffn_down.weight", d, ff, Q.Q4_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
