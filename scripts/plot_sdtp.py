#!/usr/bin/env python3
"""Accuracy against keep ratio at 4K tokens for sdtp, attn and random (docs/img/sdtp_accuracy_vs_keep_ratio.png).

Reads the result files of scripts/eval_sdtp.sh: the main runs (dense.json, sdtp.json, attn.json,
random.json; keep 0.7 per stage) and the sweep (sweep_<method>_<ratio>.json). The y value is the mean
of passkey and niah_single accuracy at 4096 tokens; the x value is the fraction of the prompt alive
after the last pruning stage (dense = 1).

    python3 -m venv .venv && .venv/bin/pip install matplotlib
    .venv/bin/python scripts/plot_sdtp.py RESULTS_DIR OUT.png
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LENGTH = 4096
TASKS = ("passkey", "niah_single")


def point(path):
    with open(path, encoding="utf-8") as f:
        r = json.load(f)
    scores = {row["task"]: row["score"] for row in r["summary"] if row["length"] == LENGTH}
    if not all(t in scores for t in TASKS):
        return None
    cfg = r["config"]
    alive = cfg.get("keep_ratio", 1.0) if cfg.get("method", "dense") != "dense" else 1.0
    return cfg.get("method", "dense"), alive, sum(scores[t] for t in TASKS) / len(TASKS)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    d, out = sys.argv[1], sys.argv[2]
    pts = [p for f in sorted(os.listdir(d)) if f.endswith(".json") for p in [point(os.path.join(d, f))] if p]
    dense = [p for p in pts if p[0] == "dense"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method, style in (("sdtp", "o-"), ("attn", "s--"), ("random", "^:")):
        xs = sorted((a, s) for m, a, s in pts if m == method)
        if dense:
            xs.append((1.0, dense[0][2]))
        ax.plot([x for x, _ in xs], [y for _, y in xs], style, label=method)
    if dense:
        ax.axhline(dense[0][2], color="grey", lw=0.8, ls="-", label="dense")
    ax.set_xlabel("fraction of the prompt alive after the last pruning stage")
    ax.set_ylabel(f"accuracy at {LENGTH} tokens (mean of passkey, niah_single)")
    ax.set_title("SmolLM2-135M, 3 stages (layers 8, 15, 23), 5 samples per task")
    ax.set_xlim(0, 1.05)
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main()
