#!/usr/bin/env python3
"""LazyLLM's trade-off on the GPU: TTFT speedup vs score (docs/lazyllm.md).

Reads the eval results of scripts/device/lazy_checks.sh eval (eval_<length>_<label>.json: dense,
lazyllm, attn, random, sdtp at one plan; lazyllm_0.5, lazyllm_0.3, attn_0.5) and
  --summary FILE   writes their summary rows (no per-sample records) as one small JSON,
  --table          prints the markdown tables of docs/lazyllm.md,
  --plot FILE      draws mean score over the tasks against TTFT speedup vs dense, one panel per
                   length (needs matplotlib: python3 -m venv .venv && .venv/bin/pip install matplotlib).
A directory or a --summary file written before can be the input.

    python3 scripts/plot_lazyllm.py RESULTS --summary docs/results/lazyllm/summary.json --table
    .venv/bin/python scripts/plot_lazyllm.py docs/results/lazyllm/summary.json --plot docs/img/lazyllm_ttft_vs_score.png
"""
import argparse
import json
import os
import re

TASKS = ("passkey", "niah_single", "niah_multikey", "vt", "mdqa")
ORDER = ("dense", "lazyllm", "attn", "random", "sdtp", "lazyllm_0.5", "attn_0.5", "lazyllm_0.3")


def load(path):
    """{(length, label): {task: summary row}} from a results directory or a summary file."""
    runs = {}
    if os.path.isdir(path):
        for f in sorted(os.listdir(path)):
            m = re.fullmatch(r"eval_(\d+)_(.+)\.json", f)
            if not m:
                continue
            with open(os.path.join(path, f), encoding="utf-8") as fh:
                r = json.load(fh)
            runs[(int(m.group(1)), m.group(2))] = {row["task"]: row for row in r["summary"]}
    else:
        with open(path, encoding="utf-8") as fh:
            for e in json.load(fh):
                runs[(e["length"], e["label"])] = {row["task"]: row for row in e["rows"]}
    return runs


def mean(rows, key):
    return sum(rows[t][key] for t in TASKS) / len(TASKS)


def table(runs):
    for length in sorted({k[0] for k in runs}):
        dense = runs[(length, "dense")]
        print(f"\n#### {length} tokens\n")
        print("| run | " + " | ".join(TASKS) + " | mean | TTFT ms | speedup | prefill FLOPs | pairs computed | decode ms/sample |")
        print("|---|" + "---|" * (len(TASKS) + 6))
        for label in ORDER:
            rows = runs.get((length, label))
            if not rows:
                continue
            cells = [f"{rows[t]['score']:.2f} ({rows[t]['ci95'][0]:.2f}–{rows[t]['ci95'][1]:.2f})" for t in TASKS]
            pairs = "-"
            if all("computed_pairs" in rows[t] and rows[t]["dense_pairs"] for t in TASKS):
                pairs = f"{100 * mean(rows, 'computed_pairs') / mean(rows, 'dense_pairs'):.1f}%"
            print(f"| {label} | " + " | ".join(cells) +
                  f" | {mean(rows, 'score'):.3f} | {mean(rows, 'ttft_ms'):.1f} | "
                  f"{mean(dense, 'ttft_ms') / mean(rows, 'ttft_ms'):.2f}x | "
                  f"{mean(rows, 'prefill_flops') / mean(dense, 'prefill_flops'):.2f} | {pairs} | "
                  f"{mean(rows, 'decode_ms'):.0f} |")


def plot(runs, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({k[0] for k in runs})
    fig, axes = plt.subplots(1, len(lengths), figsize=(4.2 * len(lengths), 3.6), sharey=True)
    series = {"lazyllm": ("lazyllm_0.3", "lazyllm_0.5", "lazyllm"), "attn": ("attn_0.5", "attn"),
              "sdtp": ("sdtp",), "random": ("random",), "dense": ("dense",)}
    marks = {"lazyllm": "o-", "attn": "s--", "sdtp": "^", "random": "x", "dense": "*"}
    for ax, length in zip(axes, lengths):
        base = mean(runs[(length, "dense")], "ttft_ms")
        for name, labels in series.items():
            pts = [(base / mean(runs[(length, l)], "ttft_ms"), mean(runs[(length, l)], "score"))
                   for l in labels if (length, l) in runs]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marks[name], label=name, markersize=7)
        ax.set_title(f"SmolLM2-135M, {length} tokens (H200)")
        ax.set_xlabel("TTFT speedup vs dense")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean score, 5 tasks x 50 samples")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", help="results directory or summary JSON")
    ap.add_argument("--summary")
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--plot")
    a = ap.parse_args()
    runs = load(a.input)
    if a.summary:
        out = [{"length": k[0], "label": k[1], "rows": [runs[k][t] for t in TASKS if t in runs[k]]}
               for k in sorted(runs)]
        with open(a.summary, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=1)
            fh.write("\n")
    if a.table:
        table(runs)
    if a.plot:
        plot(runs, a.plot)


if __name__ == "__main__":
    main()
