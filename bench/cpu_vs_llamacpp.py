#!/usr/bin/env python3
"""sdtp vs llama.cpp on the CPU, measured side by side in one run, printed as a table of ratios.

Runs `sdtp bench` and bench/llamacpp_baseline.py (llama.cpp via llama-cpp-python; see that file for
how to install it) on the same GGUF with the same thread count, alternating them per test so both
see the same machine state: prefill of random-id prompts (pp512, pp2048) and 128 decode steps after
a 16-token prompt (tg128). Tokens/s are the mean over --reps timed repetitions after a warm-up.

    python3 bench/cpu_vs_llamacpp.py [--sdtp build/sdtp] [--llama-python /opt/llamacpp-venv/bin/python]
        [--model ~/.cache/sdtp/models/SmolLM2-135M-Instruct.Q4_1.gguf] [--threads 2] [--reps 3]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sdtp_run(args, prompt, gen):
    cmd = [args.sdtp, "bench", "-m", args.model, "-p", str(prompt), "-n", str(gen), "-r", str(args.reps),
           "-t", str(args.threads), "--json"]
    rows = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return rows


def llama_run(args, pp, tg):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [args.llama_python, str(ROOT / "bench" / "llamacpp_baseline.py"), "--model", args.model, "--threads",
           str(args.threads), "--reps", str(args.reps), "--tg", str(tg), "--json", out]
    cmd += ["--pp"] + [str(p) for p in pp] if pp else ["--pp"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    data = json.loads(Path(out).read_text())
    os.unlink(out)
    return data


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sdtp", default=str(ROOT / "build" / "sdtp"))
    ap.add_argument("--llama-python", default="/opt/llamacpp-venv/bin/python")
    ap.add_argument("--model", default=os.path.expanduser("~/.cache/sdtp/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = ap.parse_args()

    rows = []
    for pp in (512, 2048):
        ours = sdtp_run(args, pp, 0)[0]
        theirs = llama_run(args, [pp], 0)
        t = next(r for r in theirs["results"] if r["test"] == f"pp{pp}")
        rows.append((f"pp{pp}", ours["avg_ts"], ours["stddev_ts"], t["tps_mean"], t["tps_stddev"], ours["gflop_per_s"]))
    ours = [r for r in sdtp_run(args, 16, 128) if r["n_gen"] > 0][0]
    theirs = llama_run(args, [], 128)
    t = next(r for r in theirs["results"] if r["test"].startswith("tg"))
    rows.append(("tg128", ours["avg_ts"], ours["stddev_ts"], t["tps_mean"], t["tps_stddev"], ours["gflop_per_s"]))

    print(f"model: {args.model}\nthreads: {args.threads}, repetitions: {args.reps}, "
          f"llama.cpp {theirs['library'].get('llama_version', '?')}, load average {os.getloadavg()[0]:.2f}\n")
    print("| test | sdtp t/s | llama.cpp t/s | sdtp / llama.cpp | sdtp GFLOP/s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, a, sa, b, sb, gf in rows:
        print(f"| {name} | {a:.1f} ± {sa:.1f} | {b:.1f} ± {sb:.1f} | {a / b:.2f}x | {gf:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps([dict(zip(("test", "sdtp_ts", "sdtp_sd", "llama_ts", "llama_sd",
                                                        "sdtp_gflops"), r)) for r in rows], indent=1))


if __name__ == "__main__":
    sys.exit(main())
