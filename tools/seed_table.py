#!/usr/bin/env python
"""Run-to-run spread of trained detectors: mean +- std over seeds of AP and extractor FLOPs, as a markdown table.

Runs are grouped by the name of the folder above each run folder (``scripts/demo_seeds.sh`` writes
``<out>/<config name>/seed<N>``). std is the sample standard deviation over the runs of a group (n - 1);
the per-run values are listed too.

    python tools/seed_table.py output/demo_seeds/*/seed* --output output/demo_seeds/seed_table.md
"""
import argparse
import os
import statistics
import sys
from collections import OrderedDict
from typing import Dict, List, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from plot_tradeoff import load_run  # noqa: E402

COLUMNS = (("bbox/AP", "box AP"), ("bbox/AP50", "box AP50"), ("segm/AP", "mask AP"),
           ("flops/pct_of_dense_mean", "extractor FLOPs, % of dense"),
           ("flops/extractor_gflops_mean", "extractor GFLOPs"))


def mean_std(values: Sequence[float]) -> str:
    """"m +- s" (sample std over the values; a single value has none)."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def group_runs(paths: Sequence[str]) -> "OrderedDict[str, List[Dict[str, object]]]":
    groups: "OrderedDict[str, List[Dict[str, object]]]" = OrderedDict()
    for path in paths:
        run = load_run(path)
        name = os.path.basename(os.path.dirname(os.path.normpath(path if os.path.isdir(path) else os.path.dirname(path))))
        groups.setdefault(name, []).append(run)
    return groups


def table(groups: "OrderedDict[str, List[Dict[str, object]]]") -> str:
    present = [(k, title) for k, title in COLUMNS if any(k in r["metrics"] for runs in groups.values() for r in runs)]
    lines = ["| model | runs | " + " | ".join(f"{t} (mean ± std)" for _, t in present) + " | per run (" +
             ", ".join(t for _, t in present[:2]) + ") |",
             "|---|---|" + "---|" * len(present) + "---|"]
    for name, runs in groups.items():
        cells = []
        for key, _ in present:
            vals = [float(r["metrics"][key]) for r in runs if key in r["metrics"]]
            cells.append(mean_std(vals) if vals else "")
        per_run = "; ".join(", ".join(f"{float(r['metrics'][k]):.2f}" for k, _ in present[:2] if k in r["metrics"])
                            for r in runs)
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + f" | {per_run} |")
    return "\n".join(lines)


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders (with eval_results.json or metrics.json)")
    p.add_argument("--output", default="", help="also write the table to this markdown file")
    args = p.parse_args(argv)
    try:
        text = table(group_runs(args.runs))
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"seed_table.py: error: {e}")
    print(text)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            f.write(text + "\n")
    return text


if __name__ == "__main__":
    main()
