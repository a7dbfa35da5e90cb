#!/usr/bin/env python3
"""Markdown tables of an SDTP comparison from `sdtp eval` result files (scripts/eval_sdtp.sh).

    python3 scripts/sdtp_table.py RESULTS_DIR            # dense.json sdtp.json random.json attn.json ...

Table 1: per length, each method's passkey and niah_single accuracy, next-token (top-1) agreement
with dense on the ppl windows, and prefill FLOPs relative to dense, with the fraction of the dense
score kept (the paper's criterion: within 1 point, or >= 98% of dense). Table 2: the keep-ratio
sweep at 4K (sweep_<method>_<ratio>.json) next to the main runs at 0.7. Plain Python, no packages.
"""
import json
import os
import sys


def load(path):
    with open(path, encoding="utf-8") as f:
        r = json.load(f)
    rows = {}
    for row in r["summary"]:
        rows[(row["task"], row["length"])] = row
    return r, rows


def fmt(x, nd=2):
    return "—" if x is None else f"{x:.{nd}f}"


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    d = sys.argv[1]
    methods = [m for m in ("dense", "sdtp", "random", "attn", "saliency") if os.path.exists(os.path.join(d, m + ".json"))]
    if "dense" not in methods:
        sys.exit(f"sdtp_table: no dense.json in {d}")
    runs = {m: load(os.path.join(d, m + ".json"))[1] for m in methods}
    lengths = sorted({k[1] for k in runs["dense"]})
    print("| length | method | passkey | niah_single | mean | % of dense | top-1 agreement | prefill FLOPs vs dense |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for L in lengths:
        dense_mean = None
        for m in methods:
            rows = runs[m]
            pk = rows.get(("passkey", L), {}).get("score")
            nh = rows.get(("niah_single", L), {}).get("score")
            mean = (pk + nh) / 2 if pk is not None and nh is not None else None
            if m == "dense":
                dense_mean = mean
            agree = rows.get(("ppl", L), {}).get("top1_agreement")
            if m == "dense":
                agree = 1.0
            fl = [rows.get((t, L), {}).get("prefill_flops") for t in ("passkey", "niah_single")]
            dfl = [runs["dense"].get((t, L), {}).get("prefill_flops") for t in ("passkey", "niah_single")]
            ratio = sum(fl) / sum(dfl) if all(fl) and all(dfl) else None
            pct = 100 * mean / dense_mean if mean is not None and dense_mean else None
            print(f"| {L} | {m} | {fmt(pk)} | {fmt(nh)} | {fmt(mean)} | {fmt(pct, 0)} | {fmt(agree, 3)} | {fmt(ratio, 3)} |")
    sweep = sorted(f for f in os.listdir(d) if f.startswith("sweep_") and f.endswith(".json"))
    if not sweep:
        return
    print()
    print("| method | keep per stage | alive after last stage | passkey 4K | niah_single 4K | prefill FLOPs vs dense |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    entries = []
    for f in sweep:
        r, rows = load(os.path.join(d, f))
        cfg = r["config"]
        entries.append((cfg.get("method"), cfg["keep_ratios"][0], cfg.get("keep_ratio"), rows))
    for m in ("sdtp", "random", "attn"):
        if m in runs:
            r, rows = load(os.path.join(d, m + ".json"))
            entries.append((m, r["config"]["keep_ratios"][0], r["config"].get("keep_ratio"), rows))
    dense4k = [runs["dense"].get((t, 4096), {}).get("prefill_flops") for t in ("passkey", "niah_single")]
    for m, k, alive, rows in sorted(entries, key=lambda e: (e[0], e[1])):
        pk = rows.get(("passkey", 4096), {}).get("score")
        nh = rows.get(("niah_single", 4096), {}).get("score")
        fl = [rows.get((t, 4096), {}).get("prefill_flops") for t in ("passkey", "niah_single")]
        ratio = sum(fl) / sum(dense4k) if all(fl) and all(dense4k) else None
        print(f"| {m} | {k:.2f} | {fmt(alive, 3)} | {fmt(pk)} | {fmt(nh)} | {fmt(ratio, 3)} |")


if __name__ == "__main__":
    main()
