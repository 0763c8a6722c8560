#!/usr/bin/env python
"""AP versus feature-extractor FLOPs of several runs (SACT at several tau, dense baselines).

Each RUN is a training output folder (its eval_results.json, else the last evaluation in its
metrics.json) or an eval_results.json / metrics.json file. Writes <output>.png (AP vs FLOPs with
the per-image FLOPs std as horizontal error bars) and <output>.csv, and prints the table.

    python tools/plot_tradeoff.py output/coco/sact_R_101_C4_tau0.005_1x output/coco/faster_rcnn_R_101_C4_1x \
        --output output/coco/tradeoff --paper
    python tools/plot_tradeoff.py output/demo/sact_R_50_C4 output/demo/faster_rcnn_R_50_C4 --x dense

--x r101 (default): % of the dense ResNet-101 extractor (the paper's axis; for FPN runs the dense
R-101-FPN extractor); dense: % of the dense extractor of the same architecture (for FPN runs the dense
FPN extractor: bottom-up + FPN layers); gflops: absolute GFLOPs per image. All runs must have evaluated
the same dataset (an error otherwise); --paper needs --x r101 and C4 runs; --x r101 cannot mix C4 and
FPN runs (their references differ). --metric segm puts the mask AP on the y axis (Mask R-CNN runs).

    python tools/plot_tradeoff.py output/demo/sact_mask_rcnn_R_50_FPN output/demo/mask_rcnn_R_50_FPN \
        --x dense --metric segm --output output/demo/mask_tradeoff
"""
import argparse
import csv
import json
import os
import re
import sys
from typing import Dict, List, Optional

# Published COCO results (the SACT paper, Table 3): label, FLOPs % of the ResNet-101 extractor, std, mAP.
PAPER_POINTS = [
    ("paper ResNet-101", 100.0, 0.0, 29.24),
    ("paper ResNet-50", 46.6, 0.0, 25.56),
    ("paper SACT tau=0.005", 56.0, 8.5, 27.61),
    ("paper SACT tau=0.001", 72.4, 8.4, 29.04),
]
X_AXES = {
    "r101": ("pct_r101", "pct_r101_std", "feature-extractor FLOPs, % of dense ResNet-101"),
    "dense": ("pct_dense", "pct_dense_std", "feature-extractor FLOPs, % of the dense same-architecture model"),
    "gflops": ("gflops", "gflops_std", "feature-extractor GFLOPs per image"),
}
MARKERS = {"sact": ("o", "tab:blue"), "act": ("o", "tab:blue"), "aig": ("D", "tab:green"),
           "blockdrop": ("v", "tab:purple"), "none": ("s", "tab:red")}  # mode -> (marker, colour)
COLUMNS = ["label", "mode", "tau", "depth", "arch", "AP", "AP50", "AP75", "segm_AP", "gflops", "gflops_std", "dense_gflops",
           "pct_dense", "pct_dense_std", "pct_r101", "pct_r101_std", "ponder_total", "units_frac", "dataset",
           "source"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders or their eval_results.json / metrics.json")
    p.add_argument("--labels", default="", help="comma-separated labels (default: from each run's config)")
    p.add_argument("--dataset", default="",
                   help="which evaluated dataset to use when a run has several (all runs must evaluate the same one)")
    p.add_argument("--x", choices=sorted(X_AXES), default="r101", help="FLOPs axis")
    p.add_argument("--output", default="tradeoff", help="output path without extension (.png and .csv)")
    p.add_argument("--paper", action="store_true",
                   help="add the paper's COCO points (only with --x r101; an error otherwise)")
    p.add_argument("--no-plot", action="store_true", help="only the table and the CSV")
    p.add_argument("--metric", choices=["bbox", "segm"], default="bbox",
                   help="AP on the y axis: boxes, or masks (segm, Mask R-CNN runs)")
    return p.parse_args(argv)


def _last_eval_in_metrics(path: str) -> Dict[str, float]:
    last = None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rec = json.loads(line)
                if any(k.endswith("bbox/AP") or k.startswith("flops/") or "/flops/" in k for k in rec):
                    last = rec
    if last is None:
        raise ValueError(f"{path}: no evaluation results (bbox/AP or flops/*) in any line")
    return last


def _flatten(d: Dict, prefix: str = "") -> Dict[str, float]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


_DATASET_PREFIX = re.compile(r"(.+?)/(?:bbox/AP$|flops/)")


def _pick_dataset(path: str, evaluated: List[str], dataset: str) -> str:
    """``dataset`` if given (and evaluated), else the only evaluated one; ValueError otherwise."""
    if dataset:
        if dataset not in evaluated:
            raise ValueError(f"{path}: dataset {dataset!r} not evaluated; it has {sorted(evaluated)}")
        return dataset
    if len(evaluated) > 1:
        raise ValueError(f"{path}: evaluates several datasets {sorted(evaluated)}; choose one with --dataset")
    return evaluated[0]


def load_run(path: str, dataset: str = "") -> Dict[str, object]:
    """One run's flat metrics ("bbox/AP", "flops/extractor_gflops_mean", ...), the evaluated dataset
    (None if the results do not tell and there is no config.yaml beside them) and mode / tau / depth."""
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    info: Dict[str, object] = {}
    if os.path.isdir(path):
        for name in ("eval_results.json", "metrics.json"):
            if os.path.isfile(os.path.join(path, name)):
                path = os.path.join(path, name)
                break
        else:
            raise FileNotFoundError(f"{folder}: neither eval_results.json nor metrics.json (was the run evaluated?)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"run results not found: {path}")
    cfg_info = _config_info(os.path.join(folder, "config.yaml"))
    if path.endswith("metrics.json"):
        flat = _last_eval_in_metrics(path)
        prefixed = sorted({m.group(1) for m in map(_DATASET_PREFIX.match, flat) if m})  # "<dataset>/bbox/AP"
        if prefixed:  # several datasets evaluated: detectron2 prefixes each metric with its dataset
            name = _pick_dataset(path, prefixed, dataset)
            flat = {k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith(name + "/")}
        else:  # one dataset: detectron2 writes no name; config.yaml's DATASETS.TEST tells which
            name = cfg_info.get("dataset")
            if dataset and name is not None and name != dataset:
                raise ValueError(f"{path}: dataset {dataset!r} not evaluated; it has ['{name}'] (config.yaml)")
    else:
        with open(path) as f:
            data = json.load(f)
        datasets = data.get("datasets", {})
        if not datasets:
            raise ValueError(f"{path}: no 'datasets' entry")
        name = _pick_dataset(path, list(datasets), dataset)
        flat = _flatten(datasets[name])
        info.update(data.get("sact", {}))
    if info.get("mode", "none") == "none":  # no results metadata, or MODE none: AIG / BlockDrop tell by their backbone
        if "mode" not in info or cfg_info.get("mode") in ("aig", "blockdrop"):
            info.update({k: v for k, v in cfg_info.items() if k != "dataset"})
    info.setdefault("arch", cfg_info.get("arch", "C4"))
    return {"metrics": flat, "source": path, "dataset": name, **info}


def check_same_dataset(runs: List[Dict[str, object]]) -> Optional[str]:
    """The dataset all ``runs`` evaluated; ValueError if they differ or one cannot tell (several runs)."""
    names = {r["dataset"] for r in runs}
    if len(runs) > 1 and None in names:
        unknown = [str(r["source"]) for r in runs if r["dataset"] is None]
        raise ValueError(f"cannot tell which dataset {', '.join(unknown)} evaluated (no dataset name in the "
                         f"results and no config.yaml with one DATASETS.TEST beside them); results of "
                         f"different datasets cannot be compared")
    if len(names) > 1:
        per_run = ", ".join(f"{r['source']}: {r['dataset']}" for r in runs)
        raise ValueError(f"the runs evaluate different datasets ({per_run}); compare runs on one dataset "
                         f"(--dataset picks it in runs that evaluated several)")
    return next(iter(names))


def _config_info(config_yaml: str) -> Dict[str, object]:
    if not os.path.isfile(config_yaml):
        return {}
    import yaml

    with open(config_yaml) as f:
        cfg = yaml.safe_load(f) or {}
    model = cfg.get("MODEL", {})
    sact = model.get("SACT", {})
    backbone = str(model.get("BACKBONE", {}).get("NAME", ""))
    mode = next((m for m in ("aig", "blockdrop") if m in backbone), sact.get("MODE", "none"))
    info = {"mode": mode, "tau": sact.get("TAU", 0.0), "depth": model.get("RESNETS", {}).get("DEPTH"),
            "arch": _arch(model)}
    test = cfg.get("DATASETS", {}).get("TEST", [])
    if isinstance(test, str):  # a hand-written "('name',)"
        import ast

        test = ast.literal_eval(test)
    if isinstance(test, (list, tuple)) and len(test) == 1:
        info["dataset"] = str(test[0])
    return info


def _arch(model: Dict) -> str:
    """"C4", or for FPN backbones the detector: "FPN Faster R-CNN" | "FPN Mask R-CNN" | "FPN RetinaNet" | "FPN <name>"."""
    if "fpn" not in str(model.get("BACKBONE", {}).get("NAME", "")):
        return "C4"
    meta = str(model.get("META_ARCHITECTURE", ""))
    if meta == "AdaptiveDetector":
        meta = str(model.get("SACT", {}).get("META_ARCHITECTURE", "GeneralizedRCNN"))
    if meta == "GeneralizedRCNN":
        meta = "Mask R-CNN" if model.get("MASK_ON") else "Faster R-CNN"
    return f"FPN {meta}"


def _default_label(run: Dict[str, object]) -> str:
    mode, depth, layout = run.get("mode"), run.get("depth"), str(run.get("arch", "C4"))
    arch = f"R-{depth}" if depth else "ResNet"
    if layout.startswith("FPN"):
        arch = f"{layout[len('FPN '):]} {arch}-FPN"
    if mode in ("sact", "act"):
        return f"{mode.upper()} {arch} tau={run.get('tau')}"
    if mode in ("aig", "blockdrop"):
        return f"{'ConvNet-AIG' if mode == 'aig' else 'BlockDrop'} {arch}"
    return f"dense {arch}"


def table_row(run: Dict[str, object], label: Optional[str] = None) -> Dict[str, object]:
    m = run["metrics"]

    def get(key: str) -> Optional[float]:
        v = m.get(key)
        return None if v is None else float(v)

    return {
        "label": label or _default_label(run), "mode": run.get("mode"), "tau": run.get("tau"), "depth": run.get("depth"),
        "arch": run.get("arch", "C4"), "AP": get("bbox/AP"), "AP50": get("bbox/AP50"), "AP75": get("bbox/AP75"),
        "segm_AP": get("segm/AP"),
        "gflops": get("flops/extractor_gflops_mean"), "gflops_std": get("flops/extractor_gflops_std"),
        "dense_gflops": get("flops/dense_gflops_mean"),
        "pct_dense": get("flops/pct_of_dense_mean"), "pct_dense_std": get("flops/pct_of_dense_std"),
        "pct_r101": get("flops/pct_of_r101_mean"), "pct_r101_std": get("flops/pct_of_r101_std"),
        "ponder_total": get("ponder_eval/total_mean"), "units_frac": get("ponder_eval/units_frac"),
        "dataset": run.get("dataset"), "source": run["source"],
    }


def _fmt(v, digits: int = 2) -> str:
    return "-" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def format_table(rows: List[Dict[str, object]]) -> str:
    """Markdown table: AP and FLOPs side by side, the dense same-architecture FLOPs beside them (mask AP last)."""
    head = ["run", "AP", "AP50", "extractor GFLOPs (mean ± std)", "dense same-arch GFLOPs", "% of dense",
            "% of R-101", "units run", "mask AP"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            str(r["label"]), _fmt(r["AP"]), _fmt(r["AP50"]),
            f"{_fmt(r['gflops'], 3)} ± {_fmt(r['gflops_std'], 3)}", _fmt(r["dense_gflops"], 3),
            f"{_fmt(r['pct_dense'], 1)} ± {_fmt(r['pct_dense_std'], 1)}",
            f"{_fmt(r['pct_r101'], 1)} ± {_fmt(r['pct_r101_std'], 1)}",
            "-" if r["units_frac"] is None else f"{100 * r['units_frac']:.0f} %", _fmt(r["segm_AP"]),
        ]) + " |")
    return "\n".join(lines)


def write_csv(rows: List[Dict[str, object]], path: str) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k) for k in COLUMNS})


def plot(rows: List[Dict[str, object]], x_axis: str, path: str, paper: bool = False, metric: str = "bbox") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if paper and x_axis != "r101":
        raise ValueError(f"the paper's points are % of dense ResNet-101 FLOPs: they cannot be drawn with x axis "
                         f"{x_axis!r}")
    xk, xerrk, xlabel = X_AXES[x_axis]
    yk = "AP" if metric == "bbox" else "segm_AP"
    if x_axis == "r101" and rows and all(str(r.get("arch", "C4")).startswith("FPN") for r in rows):
        xlabel = "feature-extractor FLOPs, % of dense ResNet-101-FPN"
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    sact = sorted((r for r in rows if r["mode"] in ("sact", "act") and r[xk] is not None and r[yk] is not None),
                  key=lambda r: r[xk])
    if len(sact) > 1:
        ax.plot([r[xk] for r in sact], [r[yk] for r in sact], "-", color="tab:blue", alpha=0.5)
    for r in rows:
        if r[xk] is None or r[yk] is None:
            continue
        fmt, color = MARKERS.get(r["mode"], MARKERS["none"])
        ax.errorbar(r[xk], r[yk], xerr=r[xerrk] or 0.0, fmt=fmt, capsize=4, color=color)
        ax.annotate(str(r["label"]), (r[xk], r[yk]), textcoords="offset points", xytext=(6, 6), fontsize=8)
    if paper:
        for label, x, xerr, ap in PAPER_POINTS:
            ax.errorbar(x, ap, xerr=xerr, fmt="^", capsize=4, color="gray", alpha=0.8)
            ax.annotate(label, (x, ap), textcoords="offset points", xytext=(6, -12), fontsize=7, color="gray")
    ax.margins(x=0.15, y=0.12)  # room for the labels
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"COCO-style AP@[.5:.95] ({metric})")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> List[Dict[str, object]]:
    args = parse_args(argv)
    labels = [s.strip() for s in args.labels.split(",")] if args.labels else []
    if labels and len(labels) != len(args.runs):
        sys.exit(f"plot_tradeoff.py: error: {len(labels)} labels for {len(args.runs)} runs")
    if args.paper and args.x != "r101":
        sys.exit(f"plot_tradeoff.py: error: --paper draws the paper's points at % of dense ResNet-101 FLOPs; "
                 f"they cannot be drawn with --x {args.x} (use --x r101)")
    if args.paper and args.no_plot:
        sys.exit("plot_tradeoff.py: error: --paper adds points to the plot; it has no effect with --no-plot")
    try:
        runs = [load_run(p, args.dataset) for p in args.runs]
        dataset = check_same_dataset(runs)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"plot_tradeoff.py: error: {e}")
    rows = [table_row(run, labels[i] if labels else None) for i, run in enumerate(runs)]
    fpn = {str(r["arch"]).startswith("FPN") for r in rows}
    if args.x == "r101" and len(fpn) > 1:
        sys.exit("plot_tradeoff.py: error: --x r101 cannot mix C4 and FPN runs (their dense ResNet-101 references "
                 "differ: the C4 extractor vs the R-101-FPN extractor); use --x dense or --x gflops")
    if args.paper and True in fpn:
        sys.exit("plot_tradeoff.py: error: --paper draws the paper's C4 points (% of the R-101 C4 extractor); "
                 "they cannot be drawn with FPN runs")
    if args.metric == "segm" and any(r["segm_AP"] is None for r in rows):
        sys.exit("plot_tradeoff.py: error: --metric segm needs mask AP (segm/AP) in every run; "
                 + ", ".join(str(r["source"]) for r in rows if r["segm_AP"] is None) + " has none")
    print(f"dataset: {dataset or 'not recorded'}")
    print(format_table(rows))
    out_dir = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(out_dir, exist_ok=True)
    write_csv(rows, args.output + ".csv")
    written = [args.output + ".csv"]
    if not args.no_plot:
        plot(rows, args.x, args.output + ".png", paper=args.paper, metric=args.metric)
        written.append(args.output + ".png")
    print("wrote " + ", ".join(written))
    return rows


if __name__ == "__main__":
    main()
