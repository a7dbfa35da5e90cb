#!/usr/bin/env python3
"""llama.cpp CPU baseline for sdtp benchmarks (llama-bench style pp/tg timing).

Owns: measuring llama.cpp's CPU backend on a GGUF model so sdtp's own numbers
(prefill pp512/pp2048, decode tg128) have a reference taken on the same machine.

Install (builds llama.cpp from the llama-cpp-python sdist; slow on 2 cores):

    python3 -m venv /opt/llamacpp-venv
    CMAKE_BUILD_PARALLEL_LEVEL=1 CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_OPENMP=ON" \
        nice -n 19 /opt/llamacpp-venv/bin/pip install llama-cpp-python==0.3.36

Run:

    /opt/llamacpp-venv/bin/python bench/llamacpp_baseline.py \
        [--model ~/.cache/sdtp/models/SmolLM2-135M-Instruct.Q4_1.gguf] \
        [--threads 2] [--reps 3] [--json out.json]

Method (mirrors tools/llama-bench/llama-bench.cpp of the vendored llama.cpp):
  * context: n_ctx 4096, n_batch 2048, n_ubatch 512, n_threads = n_threads_batch
    = --threads, flash attention as --flash-attn (default: llama.cpp's "auto").
  * ppN: N random token ids (first is BOS when the vocab adds BOS) submitted
    through the low-level llama_decode() in chunks of n_batch, logits requested
    for the last token only, followed by llama_synchronize(). The KV cache is
    cleared before every repetition; one untimed warm-up run precedes the reps.
  * tg128: an untimed short prompt (--tg-prompt tokens, default 16) is decoded,
    then 128 single-token llama_decode() calls with random ids are timed (each
    followed by llama_synchronize(); no sampling, as in llama-bench). The
    warm-up is one prompt + one token. KV cache cleared before every rep.
  * tokens/s per rep = N / seconds; table shows mean +- sample stddev over reps,
    the best rep, and process CPU seconds / wall seconds (~threads when the
    machine is quiet; much lower means other processes took the cores).
No sampling, tokenization or Python-side logits copies are inside the timers.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as _dt
import json
import os
import platform
import random
import statistics
import sys
import time

try:
    import llama_cpp
except ImportError:  # pragma: no cover - environment problem, not a code path
    sys.exit("bench/llamacpp_baseline.py: cannot import llama_cpp; install it into "
             "/opt/llamacpp-venv as described in this file's header")

DEFAULT_MODEL = os.path.expanduser("~/.cache/sdtp/models/SmolLM2-135M-Instruct.Q4_1.gguf")

_FA = {
    "auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}

_verbose = False


@llama_cpp.llama_log_callback
def _log_cb(level, text, user_data):  # keep llama.cpp quiet unless --verbose
    if _verbose and text:
        sys.stderr.write(text.decode("utf-8", errors="replace"))


class Bench:
    def __init__(self, args):
        self.args = args
        llama_cpp.llama_log_set(_log_cb, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()

        if not os.path.isfile(args.model):
            raise SystemExit(f"bench/llamacpp_baseline.py: --model {args.model!r} is not a file")
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = 0
        self.model = llama_cpp.llama_model_load_from_file(args.model.encode(), mparams)
        if not self.model:
            raise SystemExit(f"bench/llamacpp_baseline.py: llama.cpp failed to load {args.model!r}")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self.bos = llama_cpp.llama_vocab_bos(self.vocab)

        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = args.n_ctx
        cparams.n_batch = args.n_batch
        cparams.n_ubatch = args.n_ubatch
        cparams.n_seq_max = 1
        cparams.n_threads = args.threads
        cparams.n_threads_batch = args.threads
        cparams.flash_attn_type = _FA[args.flash_attn]
        cparams.embeddings = False
        cparams.no_perf = True
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise SystemExit("bench/llamacpp_baseline.py: llama_init_from_model failed "
                             f"(n_ctx={args.n_ctx}, n_batch={args.n_batch}, n_ubatch={args.n_ubatch})")
        llama_cpp.llama_set_n_threads(self.ctx, args.threads, args.threads)
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(args.n_batch, 0, 1)
        self.rng = random.Random(args.seed)

    def close(self):
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)
        llama_cpp.llama_model_free(self.model)
        llama_cpp.llama_backend_free()

    # -- helpers ---------------------------------------------------------------
    def _random_ids(self, n, first_is_bos):
        ids = [self.rng.randrange(self.n_vocab) for _ in range(n)]
        if first_is_bos and self.add_bos and n > 0:
            ids[0] = self.bos
        return ids

    def _fill(self, ids, pos0, last_only=True):
        b = self.batch
        n = len(ids)
        for i, t in enumerate(ids):
            b.token[i] = t
            b.pos[i] = pos0 + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = 1 if (i == n - 1 or not last_only) else 0
        b.n_tokens = n

    def _decode(self, what):
        rc = llama_cpp.llama_decode(self.ctx, self.batch)
        if rc != 0:
            raise SystemExit(f"bench/llamacpp_baseline.py: llama_decode failed during {what}: rc={rc}")

    def _clear(self):
        llama_cpp.llama_memory_clear(self.mem, False)

    # -- tests -----------------------------------------------------------------
    def prompt(self, n_prompt, pos0=0):
        """Decode n_prompt random ids in n_batch chunks; returns seconds spent in llama.cpp."""
        ids = self._random_ids(n_prompt, first_is_bos=(pos0 == 0))
        chunks = [ids[i:i + self.args.n_batch] for i in range(0, n_prompt, self.args.n_batch)]
        elapsed = 0
        cpu = 0
        pos = pos0
        for c in chunks:
            self._fill(c, pos)  # batch setup is outside the timer
            c0 = time.process_time_ns()
            t0 = time.perf_counter_ns()
            self._decode(f"pp{n_prompt}")
            llama_cpp.llama_synchronize(self.ctx)
            elapsed += time.perf_counter_ns() - t0
            cpu += time.process_time_ns() - c0
            pos += len(c)
        self.last_cpu_s = cpu / 1e9
        return elapsed / 1e9

    def gen(self, n_gen, pos0):
        """Decode n_gen single tokens one at a time starting at pos0; returns seconds."""
        ids = self._random_ids(n_gen, first_is_bos=False)
        ctx, batch = self.ctx, self.batch
        c0 = time.process_time_ns()
        t0 = time.perf_counter_ns()
        for i, tok in enumerate(ids):
            batch.token[0] = tok
            batch.pos[0] = pos0 + i
            batch.n_seq_id[0] = 1
            batch.seq_id[0][0] = 0
            batch.logits[0] = 1
            batch.n_tokens = 1
            if llama_cpp.llama_decode(ctx, batch) != 0:
                raise SystemExit(f"bench/llamacpp_baseline.py: llama_decode failed during tg{n_gen} "
                                 f"at token {i}")
            llama_cpp.llama_synchronize(ctx)
        wall = (time.perf_counter_ns() - t0) / 1e9
        self.last_cpu_s = (time.process_time_ns() - c0) / 1e9
        return wall

    def run_pp(self, n):
        self._clear()
        self.prompt(n)  # warm-up
        secs, cpus = [], []
        for _ in range(self.args.reps):
            self._clear()
            secs.append(self.prompt(n))
            cpus.append(self.last_cpu_s)
        return secs, cpus

    def run_tg(self, n):
        p = self.args.tg_prompt
        self._clear()
        self.prompt(p)
        self.gen(1, p)  # warm-up
        secs, cpus = [], []
        for _ in range(self.args.reps):
            self._clear()
            self.prompt(p)  # untimed short prompt
            secs.append(self.gen(n, p))
            cpus.append(self.last_cpu_s)
        return secs, cpus


def _lib_info():
    info = {"llama_cpp_python": getattr(llama_cpp, "__version__", "?")}
    try:
        info["llama_version"] = llama_cpp.llama_version().decode()
    except Exception as e:  # noqa: BLE001 - informational only
        info["llama_version"] = f"unavailable ({e})"
    libdir = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
    for name in ("libggml-base.so", "libggml.so"):
        path = os.path.join(libdir, name)
        if not os.path.exists(path):
            continue
        try:
            lib = ctypes.CDLL(path)
            for fn in ("ggml_version", "ggml_commit"):
                f = getattr(lib, fn)
                f.restype = ctypes.c_char_p
                info[fn] = f().decode()
            break
        except Exception:  # noqa: BLE001
            continue
    info["system_info"] = llama_cpp.llama_print_system_info().decode().strip()
    return info


def main(argv=None):
    global _verbose
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--n-batch", type=int, default=2048)
    ap.add_argument("--n-ubatch", type=int, default=512)
    ap.add_argument("--pp", type=int, nargs="*", default=[512, 2048], help="prompt lengths")
    ap.add_argument("--tg", type=int, default=128, help="tokens to generate (0 = skip)")
    ap.add_argument("--tg-prompt", type=int, default=16, help="untimed prompt before tg")
    ap.add_argument("--flash-attn", choices=sorted(_FA), default="auto")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    _verbose = args.verbose
    if args.threads < 1 or args.reps < 1:
        ap.error(f"--threads ({args.threads}) and --reps ({args.reps}) must be >= 1")
    for n in args.pp:
        if not 1 <= n <= args.n_ctx:
            ap.error(f"--pp value {n} must be in [1, n_ctx={args.n_ctx}]")
    if args.tg < 0 or args.tg_prompt < 1 or args.tg_prompt + args.tg > args.n_ctx:
        ap.error(f"--tg-prompt ({args.tg_prompt}) + --tg ({args.tg}) must fit in n_ctx={args.n_ctx}")

    lib = _lib_info()
    load = os.getloadavg()
    bench = Bench(args)
    desc = ctypes.create_string_buffer(256)
    llama_cpp.llama_model_desc(bench.model, desc, len(desc))
    model_info = {
        "path": args.model,
        "desc": desc.value.decode(errors="replace"),
        "size_bytes": llama_cpp.llama_model_size(bench.model),
        "n_params": llama_cpp.llama_model_n_params(bench.model),
        "n_vocab": bench.n_vocab,
    }

    results = []
    try:
        for n in args.pp:
            secs, cpus = bench.run_pp(n)
            results.append(("pp%d" % n, n, secs, cpus))
            print(f"  done pp{n}: {[round(s, 4) for s in secs]} s", file=sys.stderr)
        if args.tg > 0:
            secs, cpus = bench.run_tg(args.tg)
            results.append(("tg%d" % args.tg, args.tg, secs, cpus))
            print(f"  done tg{args.tg}: {[round(s, 4) for s in secs]} s", file=sys.stderr)
    finally:
        bench.close()
    load_after = os.getloadavg()

    rows = []
    for name, n, secs, cpus in results:
        ts = [n / s for s in secs]
        rows.append({
            "test": name,
            "n_tokens": n,
            "seconds": secs,
            "cpu_seconds": cpus,  # process CPU time (all threads) per rep
            "tokens_per_s": ts,
            "tps_mean": statistics.fmean(ts),
            "tps_stddev": statistics.stdev(ts) if len(ts) > 1 else 0.0,
            "tps_best": max(ts),
        })

    print(f"model: {model_info['desc']}  ({args.model})")
    print(f"llama-cpp-python {lib['llama_cpp_python']}, llama.cpp {lib.get('llama_version')}, "
          f"ggml {lib.get('ggml_version', '?')} ({lib.get('ggml_commit', '?')})")
    print(f"system_info: {lib['system_info']}")
    print(f"threads={args.threads} n_ctx={args.n_ctx} n_batch={args.n_batch} n_ubatch={args.n_ubatch} "
          f"fa={args.flash_attn} reps={args.reps} "
          f"load before={load[0]:.2f},{load[1]:.2f},{load[2]:.2f} after={load_after[0]:.2f}")
    print()
    print("| test   |              t/s | best rep t/s | CPU s / wall s |")
    print("| ------ | ---------------: | -----------: | -------------: |")
    for r in rows:
        util = sum(r["cpu_seconds"]) / sum(r["seconds"])
        print(f"| {r['test']:<6} | {r['tps_mean']:8.2f} ± {r['tps_stddev']:6.2f} | "
              f"{r['tps_best']:12.2f} | {util:14.2f} |")

    if args.json:
        out = {
            "engine": "llama.cpp (via llama-cpp-python)",
            "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "host": {"platform": platform.platform(), "machine": platform.machine(),
                     "cpu_count": os.cpu_count(), "loadavg_before": load, "loadavg_after": load_after},
            "library": lib,
            "model": model_info,
            "params": {k: getattr(args, k) for k in
                       ("threads", "reps", "n_ctx", "n_batch", "n_ubatch", "pp", "tg", "tg_prompt",
                        "flash_attn", "seed")},
            "results": rows,
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
