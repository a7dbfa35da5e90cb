#!/usr/bin/env python3
"""Plots `sdtp eval` result files (JSON) to PNG charts.

Setup (matplotlib from PyPI):
    python3 -m venv .venv && .venv/bin/pip install matplotlib
Run:
    .venv/bin/python scripts/plot_eval.py dense.json pruned_r05.json ... --out-dir plots/
Files with the same config label (e.g. one file per length) are merged into one run.

Charts written to --out-dir:
    accuracy_vs_keep_ratio.png  score of each task against the run's keep ratio (the "keep_ratio"
                                field of the run's config when present; a dense run counts as 1.0,
                                so a dense-only set of files gives one point per task)
    accuracy_vs_length.png      score against target length, one line per (run, task)
    ttft_vs_length.png          mean time to first token against target length, one line per run
For the ppl task the "accuracy" is the top-1 agreement with the dense run (its score is a
perplexity, on another scale).
"""
import argparse
import json
import math
import os
import sys


def load(path):
    try:
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
    except (OSError, ValueError) as e:
        sys.exit(f"plot_eval: {path}: {e}")
    if not isinstance(report, dict) or not isinstance(report.get("summary"), list):
        sys.exit(f"plot_eval: {path}: not an sdtp eval report (no \"summary\" list)")
    config = report.get("config") or {}
    label = config.get("label") or os.path.basename(path)
    keep = config.get("keep_ratio")
    if not isinstance(keep, (int, float)):
        keep = 1.0 if config.get("method", "dense") == "dense" else None
    return {"path": path, "label": label, "keep_ratio": keep, "rows": report["summary"]}


def merge(runs):
    """Files of one configuration (same label and keep ratio, e.g. one file per length) become one run."""
    merged = []
    for run in runs:
        for m in merged:
            if m["label"] == run["label"] and m["keep_ratio"] == run["keep_ratio"]:
                m["rows"] = m["rows"] + run["rows"]
                break
        else:
            merged.append(dict(run))
    return merged


def accuracy(row):
    """Quality in [0, 1]: the score, or top-1 agreement for ppl; None when missing."""
    value = row.get("top1_agreement") if row.get("task") == "ppl" else row.get("score")
    if not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def tasks_of(runs):
    out = []
    for run in runs:
        for row in run["rows"]:
            if row.get("task") not in out:
                out.append(row.get("task"))
    return out


def plot_keep_ratio(plt, runs, path):
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for task in tasks_of(runs):
        points = []
        for run in runs:
            accs = [accuracy(r) for r in run["rows"] if r.get("task") == task]
            accs = [a for a in accs if a is not None]
            if accs and run["keep_ratio"] is not None:
                points.append((run["keep_ratio"], sum(accs) / len(accs)))
        if points:
            points.sort()
            shown = "ppl top-1 agreement" if task == "ppl" else task
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=shown)
    ax.set_xlabel("keep ratio (1.0 = dense)")
    ax.set_ylabel("accuracy (mean over lengths)")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Accuracy vs keep ratio")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_length(plt, runs, path):
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for run in runs:
        for task in tasks_of([run]):
            pts = sorted((r["length"], accuracy(r)) for r in run["rows"] if r.get("task") == task and accuracy(r) is not None)
            if pts:
                shown = "ppl top-1 agreement" if task == "ppl" else task
                name = shown if len(runs) == 1 else f"{run['label']}: {shown}"
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("target length (tokens)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Accuracy vs length")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_ttft(plt, runs, path):
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for run in runs:
        by_length = {}
        for r in run["rows"]:
            if r.get("samples", 0) and isinstance(r.get("ttft_ms"), (int, float)) and r.get("task") != "ppl":
                by_length.setdefault(r["length"], []).append(r["ttft_ms"])
        pts = sorted((L, sum(v) / len(v)) for L, v in by_length.items())
        if pts:
            ax.plot([p[0] for p in pts], [p[1] / 1000.0 for p in pts], marker="o", label=run["label"])
    ax.set_xscale("log", base=2)
    ax.set_xlabel("target length (tokens)")
    ax.set_ylabel("time to first token (s)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Time to first token vs length")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description="Plot sdtp eval result files to PNG.")
    parser.add_argument("results", nargs="+", help="JSON files written by `sdtp eval --out`")
    parser.add_argument("--out-dir", default="plots", help="folder for the PNG files (default: plots)")
    args = parser.parse_args()
    runs = merge([load(p) for p in args.results])
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("plot_eval: matplotlib is missing: python3 -m venv .venv && .venv/bin/pip install matplotlib")
    os.makedirs(args.out_dir, exist_ok=True)
    outputs = {
        "accuracy_vs_keep_ratio.png": plot_keep_ratio,
        "accuracy_vs_length.png": plot_length,
        "ttft_vs_length.png": plot_ttft,
    }
    for name, fn in outputs.items():
        path = os.path.join(args.out_dir, name)
        fn(plt, runs, path)
        print(path)


if __name__ == "__main__":
    main()
