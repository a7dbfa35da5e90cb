#!/usr/bin/env python3
"""Condense `sdtp eval` result files into one summary and print the issue-15 comparison tables.

    python3 scripts/sdtp_results.py condense OUT.json EVAL.json...   # summary rows + per-task spread
    python3 scripts/sdtp_results.py table SUMMARY.json [LABEL...]    # markdown tables

condense keeps, per (label, task, length), the summary row's score (ppl: top-1 agreement with the
dense model, the per-window mean), its 95% interval (Wilson's from `sdtp eval` for the 0/1 tasks;
mean ± 1.96·s/√n over the samples for the others), the sample count, the mean prefill FLOPs and
TTFT. table prints, per length, each label's score per task with its interval, the mean over the
tasks with the interval of that mean (the per-task standard errors combined as independent), the
mean as a share of dense's, and prefill FLOPs relative to dense. Plain Python, no packages.
"""
import json
import math
import sys

TASKS = ["passkey", "niah_single", "niah_multikey", "vt", "cwe", "mdqa", "ppl"]


def sample_value(s):
    return s["top1_agreement"] if s["task"] == "ppl" else s["score"]


def condense(out_path, paths):
    rows = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            r = json.load(f)
        samples = [s for s in r["samples"] if not s.get("skipped")]
        for row in r["summary"]:
            vals = [sample_value(s) for s in samples if s["task"] == row["task"] and s["length"] == row["length"]]
            n = len(vals)
            mean = sum(vals) / n if n else float("nan")
            var = sum((v - mean) ** 2 for v in vals) / (n - 1) if n > 1 else 0.0
            score = row["top1_agreement"] if row["task"] == "ppl" else row["score"]
            ci = row.get("ci95")
            if not ci or row["task"] == "ppl":
                half = 1.96 * math.sqrt(var / n) if n else float("nan")
                ci = [max(0.0, mean - half), min(1.0, mean + half)]
            rows.append({"label": row["config"]["label"], "task": row["task"], "length": row["length"], "n": n,
                         "score": score, "ci95": ci, "var": var, "prefill_flops": row["prefill_flops"],
                         "ttft_ms": row["ttft_ms"], "config": row["config"]})
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump({"format": "sdtp-issue15-summary", "rows": rows}, f, indent=1)
        f.write("\n")
    print(f"wrote {len(rows)} rows to {out_path}")


def table(path, labels):
    with open(path, encoding="utf-8") as f:
        rows = json.load(f)["rows"]
    by = {(r["label"], r["task"], r["length"]): r for r in rows}
    if not labels:
        labels = list(dict.fromkeys(r["label"] for r in rows))
    for length in sorted({r["length"] for r in rows}):
        tasks = [t for t in TASKS if any((lab, t, length) in by for lab in labels)]
        print(f"\n#### {length} tokens\n")
        print("| method | " + " | ".join(tasks) + " | mean (95% CI) | mean / dense | prefill FLOPs |")
        print("| --- | " + " | ".join("---:" for _ in tasks) + " | ---: | ---: | ---: |")
        dense_mean = None
        dense_flops = None
        for lab in labels:
            if not any((lab, t, length) in by for t in tasks):
                continue  # not run at this length
            cells, vals, se2, flops = [], [], 0.0, []
            for t in tasks:
                r = by.get((lab, t, length))
                if not r:
                    cells.append("—")
                    continue
                cells.append(f"{r['score']:.2f} ({r['ci95'][0]:.2f}–{r['ci95'][1]:.2f})")
                vals.append(r["score"])
                se2 += r["var"] / max(r["n"], 1)
                flops.append(r["prefill_flops"])
            if len(vals) != len(tasks):
                mean_cell, share = "—", "—"
            else:
                mean = sum(vals) / len(vals)
                half = 1.96 * math.sqrt(se2) / len(vals)
                mean_cell = f"{mean:.3f} ({mean - half:.3f}–{mean + half:.3f})"
                if lab == "dense":
                    dense_mean = mean
                share = f"{100 * mean / dense_mean:.0f}%" if dense_mean else "—"
            f_mean = sum(flops) / len(flops) if flops else None
            if lab == "dense":
                dense_flops = f_mean
            fl = f"{f_mean / dense_flops:.2f}x" if f_mean and dense_flops else "—"
            print(f"| {lab} | " + " | ".join(cells) + f" | {mean_cell} | {share} | {fl} |")


def main():
    if len(sys.argv) >= 4 and sys.argv[1] == "condense":
        condense(sys.argv[2], sys.argv[3:])
    elif len(sys.argv) >= 3 and sys.argv[1] == "table":
        table(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
