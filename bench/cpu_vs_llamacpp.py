#!/usr/bin/env python3
"""sdtp vs llama.cpp on the CPU, measured side by side in one run, printed as a table of ratios.

Runs `sdtp bench` and llama.cpp's `llama-bench` on the same GGUF with the same thread count,
alternating them test by test (and repetition round by round) so both see the same machine state:

    pp512, pp2048        prefill of random-id prompts (llama-bench -p N -n 0; sdtp bench -p N -n 0)
    tg128                128 decode steps from (almost) empty: llama-bench -p 0 -n 128, sdtp bench
                         -p 16 -n 128 (sdtp's decode runs after a prompt; 16 tokens)
    tg128 @ d2048        128 decode steps after 2048 tokens: llama-bench -p 0 -n 128 -d 2048,
                         sdtp bench -p 2048 -n 128

Tokens/s are the mean ± sd over the repetitions of --rounds runs (each `--reps` timed repetitions
after a warm-up). Peak RSS of every process is read from /usr/bin/time. llama-bench comes from
llama.cpp built from the vendored source of the llama-cpp-python sdist (docs/performance-cpu.md):

    pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 && tar xzf llama_cpp_python-0.3.36.tar.gz
    cmake -S llama_cpp_python-0.3.36/vendor/llama.cpp -B ll -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \\
        -DGGML_NATIVE=ON && cmake --build ll --target llama-bench -j2
    python3 bench/cpu_vs_llamacpp.py --llama-bench ll/bin/llama-bench --threads 2
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = [  # name, sdtp (-p, -n), llama-bench (-p, -n, -d)
    ("pp512", (512, 0), (512, 0, 0)),
    ("pp2048", (2048, 0), (2048, 0, 0)),
    ("tg128", (16, 128), (0, 128, 0)),
    ("tg128 @ d2048", (2048, 128), (0, 128, 2048)),
]


def timed(cmd):
    """Runs cmd under /usr/bin/time; returns (stdout, peak RSS in MiB)."""
    with tempfile.NamedTemporaryFile(suffix=".time", delete=False) as f:
        tpath = f.name
    try:
        r = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", tpath] + cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"cpu_vs_llamacpp: error: {' '.join(cmd)} failed ({r.returncode}): "
                             f"{(r.stderr or r.stdout).strip().splitlines()[-1:]}")
        rss_kib = int(Path(tpath).read_text().split()[-1])
    finally:
        os.unlink(tpath)
    return r.stdout, rss_kib / 1024.0


def sdtp_run(args, prompt, gen):
    cmd = [args.sdtp, "bench", "-m", args.model, "-p", str(prompt), "-n", str(gen), "-r", str(args.reps),
           "-t", str(args.threads), "--json"] + args.sdtp_args
    out, rss = timed(cmd)
    rows = [r for r in json.loads(out) if r["method"] == "dense"]
    row = next(r for r in rows if (r["n_gen"] > 0) == (gen > 0))
    # decode samples are ms per token, prefill samples ms per prompt
    tps = [(1000.0 if gen else 1000.0 * prompt) / ms for ms in row["samples_ms"]]
    return tps, rss, row


def llama_run(args, p, n, d):
    cmd = [args.llama_bench, "-m", args.model, "-p", str(p), "-n", str(n), "-d", str(d), "-t", str(args.threads),
           "-r", str(args.reps), "-o", "json"]
    out, rss = timed(cmd)
    rows = json.loads(out)
    row = rows[0]
    return [float(x) for x in row.get("samples_ts", [row["avg_ts"]])], rss, row


def mean_sd(v):
    m = sum(v) / len(v)
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return m, sd


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sdtp", default=str(ROOT / "build" / "sdtp"))
    ap.add_argument("--llama-bench", required=True, help="llama.cpp's llama-bench binary")
    ap.add_argument("--model", default=os.path.expanduser("~/.cache/sdtp/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions per run (default 3)")
    ap.add_argument("--rounds", type=int, default=1, help="alternating runs of each engine per test (default 1)")
    ap.add_argument("--tests", default=",".join(t[0] for t in TESTS),
                    help="comma-separated subset of: " + ", ".join(t[0] for t in TESTS))
    ap.add_argument("--sdtp-args", default="", help="more options for sdtp bench, e.g. '--kv-type f32'")
    ap.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = ap.parse_args()
    args.sdtp_args = args.sdtp_args.split()
    for path, what in ((args.sdtp, "--sdtp"), (args.llama_bench, "--llama-bench"), (args.model, "--model")):
        if not Path(path).exists():
            raise SystemExit(f"cpu_vs_llamacpp: error: {what} {path}: no such file")
    wanted = [t.strip() for t in args.tests.split(",") if t.strip()]
    unknown = [t for t in wanted if t not in [x[0] for x in TESTS]]
    if unknown:
        raise SystemExit(f"cpu_vs_llamacpp: error: unknown test {unknown[0]!r}")

    rows, build = [], "?"
    for name, (sp, sn), (lp, ln, ld) in TESTS:
        if name not in wanted:
            continue
        ours, theirs, rss_ours, rss_theirs = [], [], 0.0, 0.0
        for _ in range(args.rounds):
            tps, rss, srow = sdtp_run(args, sp, sn)
            ours += tps
            rss_ours = max(rss_ours, rss)
            tps, rss, lrow = llama_run(args, lp, ln, ld)
            theirs += tps
            rss_theirs = max(rss_theirs, rss)
            build = f"{lrow.get('build_commit', '?')} ({lrow.get('cpu_info', '?')}, {lrow.get('backends', '?')})"
        (a, sa), (b, sb) = mean_sd(ours), mean_sd(theirs)
        rows.append({"test": name, "sdtp_ts": a, "sdtp_sd": sa, "llama_ts": b, "llama_sd": sb, "ratio": a / b,
                     "sdtp_rss_mib": rss_ours, "llama_rss_mib": rss_theirs, "kv_type": srow.get("kv_type"),
                     "sdtp_kv_mib": srow["kv_bytes"] / 1048576.0})
        print(f"  {name}: sdtp {a:.1f} t/s, llama.cpp {b:.1f} t/s", file=sys.stderr)

    size = Path(args.model).stat().st_size / 1048576.0
    print(f"model: {args.model} ({size:.1f} MiB)\nthreads: {args.threads}, {args.reps} repetitions x "
          f"{args.rounds} rounds, llama.cpp {build}, load average {os.getloadavg()[0]:.2f}\n")
    print("| test | sdtp t/s | llama.cpp t/s | sdtp / llama.cpp | sdtp peak RSS MiB | llama.cpp peak RSS MiB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['test']} | {r['sdtp_ts']:.1f} ± {r['sdtp_sd']:.1f} | {r['llama_ts']:.1f} ± {r['llama_sd']:.1f} | "
              f"{r['ratio']:.2f}x | {r['sdtp_rss_mib']:.0f} | {r['llama_rss_mib']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
