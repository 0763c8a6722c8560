#!/usr/bin/env python
"""Draw where a SACT detector spent its computation.

For each image: one PNG with the image and its detections on the left and the ponder-cost heat
map (rho summed over the adaptive stages, one cell per feature position) with a colorbar on the
right; the title gives the image's feature-extractor FLOPs. For ConvNet-AIG / BlockDrop detectors
(one decision per unit and image) the right panel shows the image's unit policy instead: one row
per stage, a cell per unit, orange where the unit ran. FPN detectors (and any SACT / ACT detector with
--per-stage) get one heat map per adaptive stage instead of the sum: the per-level ponder maps
(res2 at stride 4 ... res5 at stride 32), each stage with its own colour scale over the images of the call:

    python tools/draw_ponder_maps.py --config-file configs/Demo/sact_R_50_FPN.yaml --dataset sact_demo_val \
        --num-images 8 --output ponder_maps MODEL.WEIGHTS output/demo/sact_R_50_FPN/model_final.pth

    python tools/draw_ponder_maps.py --config-file configs/Demo/sact_R_50_C4.yaml \
        --input photo.jpg 'more/*.jpg' --output ponder_maps MODEL.WEIGHTS model_final.pth
    python tools/draw_ponder_maps.py --config-file CFG --dataset sact_demo_val --num-images 8 \
        --output ponder_maps MODEL.WEIGHTS model_final.pth

Classifier configs (those that set SACT_CLS, e.g. configs/Classification/*.yaml) draw the classifier's
ponder map on whole images, as the original code's imagenet_ponder_map: each image is shrunk so its
longer side is at most --max-size (default 640; the original advises 320x240 to 640x480), given the
classifier's eval preprocessing without the centre crop / resize to 224, and drawn as
image | ponder cost (sum over the adaptive stages, upsampled to the image) with the top-5 logit
indices in the title (1001-logit ImageNet nets: index 0 = background):

    python tools/draw_ponder_maps.py --config-file configs/Classification/imagenet_R_101_sact_tau0.005_original.yaml \
        --input photo.jpg 'more/*.jpg' --output ponder_maps \
        MODEL.WEIGHTS pretrained/imagenet_101_sact_5e-3/model_classifier.pth MODEL.DEVICE cpu

All maps of one call share the colour scale (override with --vmin / --vmax). MODEL.WEIGHTS is
required (an existing file or a URL; classifiers: a file) unless --random-weights is given.
"""
import argparse
import glob
import os
import sys
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sact_det  # noqa: E402,F401
import numpy as np  # noqa: E402
import torch  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data import transforms as T  # noqa: E402
from detectron2.engine import DefaultPredictor  # noqa: E402

from sact_det.data.mapper import read_image_checked  # noqa: E402
from sact_det.engine.checks import add_random_weights_flag, check_weights  # noqa: E402
from sact_det.engine.setup_config import ConfigError, load_config  # noqa: E402
from sact_det.data import ensure_registered  # noqa: E402
from sact_det.evaluation.flops_evaluator import build_meta_backbone  # noqa: E402
from sact_det.modeling.sact.flops import backbone_flops  # noqa: E402
from sact_det.modeling.sact.fpn import SACTFPN  # noqa: E402
from sact_det.evaluation.unit_stats import draw_unit_policy  # noqa: E402

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", nargs="+", help="image files, folders or glob patterns")
    src.add_argument("--dataset", help="a registered dataset split, e.g. sact_demo_val")
    p.add_argument("--num-images", type=int, default=0, help="at most this many images (0: all)")
    p.add_argument("--output", required=True, help="output folder for the PNGs")
    p.add_argument("--score-thresh", type=float, default=0.5, help="draw detections above this score")
    p.add_argument("--max-size", type=int, default=640,
                   help="classifier configs: shrink images so the longer side is at most this (0: keep)")
    p.add_argument("--vmin", type=float, default=None, help="colour scale minimum (default: over all images)")
    p.add_argument("--vmax", type=float, default=None, help="colour scale maximum (default: over all images)")
    p.add_argument("--per-stage", action="store_true",
                   help="SACT / ACT: one heat map per adaptive stage instead of their sum (always for FPN models)")
    add_random_weights_flag(p)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides, e.g. MODEL.WEIGHTS x.pth")
    return p.parse_args(argv)


def expand_inputs(patterns: List[str]) -> List[str]:
    """Files from file names, folders (their images) and glob patterns, in order, without duplicates."""
    files: List[str] = []
    for pat in patterns:
        if os.path.isdir(pat):
            found = sorted(f for f in glob.glob(os.path.join(pat, "*")) if f.lower().endswith(IMAGE_EXTENSIONS))
        elif any(c in pat for c in "*?["):
            found = sorted(glob.glob(pat, recursive=True))
        else:
            if not os.path.isfile(pat):
                raise FileNotFoundError(f"input image not found: {pat}")
            found = [pat]
        if not found:
            raise FileNotFoundError(f"no image matches {pat!r}")
        files.extend(f for f in found if f not in files)
    return files


def load_image(path: str) -> np.ndarray:
    """(H, W, 3) uint8 BGR; FileNotFoundError / ImageReadError naming the file otherwise."""
    return read_image_checked(path, "BGR")


def map_extent(map_hw: Tuple[int, int], image_hw: Tuple[int, int], resized_hw: Tuple[int, int],
               stride: int) -> Tuple[float, float, float, float]:
    """imshow extent (left, right, bottom, top) placing each map cell over its image pixels."""
    sy, sx = image_hw[0] / resized_hw[0], image_hw[1] / resized_hw[1]
    return 0.0, map_hw[1] * stride * sx, map_hw[0] * stride * sy, 0.0


def predict(cfg, files: List[str]) -> List[Dict]:
    """Per image: detections, FLOPs and either the ponder map (SACT / ACT) or the unit policy (AIG / BlockDrop)."""
    predictor = DefaultPredictor(cfg)
    aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    backbone = predictor.model.backbone
    stages = list(getattr(backbone, "adaptive_stages", []))
    gated = hasattr(backbone, "unit_names")
    if not stages and not gated:
        raise ValueError(f"MODEL.SACT.MODE={cfg.MODEL.SACT.MODE!r}: the model has no adaptive stage, hence no "
                         f"ponder map (use a SACT, ACT, ConvNet-AIG or BlockDrop config)")
    resnet = backbone.bottom_up if isinstance(backbone, SACTFPN) else backbone
    strides = {s: int(getattr(resnet, s).stride) for s in stages}
    stride = strides[stages[0]] if stages else 0  # ponder map: first adaptive stage's grid
    out = []
    for path in files:
        img = load_image(path)
        pred = predictor(img)
        key = "unit_policy" if gated else "ponder_map"
        if key not in pred:
            raise ValueError(f"cfg.MODEL.META_ARCHITECTURE={cfg.MODEL.META_ARCHITECTURE!r} returns no {key} "
                             f"(use AdaptiveRCNN, AdaptiveDetector or BlockDropRCNN)")
        h, w = img.shape[:2]
        resized = aug.get_transform(img).apply_image(img).shape[:2]
        rec = {"file": path, "instances": pred["instances"].to("cpu"), "flops": pred["flops"], "image_hw": (h, w),
               "resized_hw": tuple(resized), "stride": stride}
        rec[key] = pred[key] if gated else pred[key].numpy()
        if not gated:
            rec["ponder_maps"] = {s: pred["ponder_maps"][s].numpy() for s in stages}
            rec["strides"] = strides
        out.append(rec)
    return out


def draw(record: Dict, image_rgb: np.ndarray, metadata, out_path: str, vmin: float, vmax: float,
         score_thresh: float, dense_flops: Optional[float] = None,
         stage_scales: Optional[Dict[str, Tuple[float, float]]] = None) -> str:
    """Write the side-by-side PNG for one image; returns its path. ``stage_scales`` ({stage: (vmin, vmax)}):
    one heat map per adaptive stage (``record["ponder_maps"]``) instead of the summed ponder map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from detectron2.utils.visualizer import Visualizer

    inst = record["instances"]
    inst = inst[inst.scores >= score_thresh]
    vis = Visualizer(image_rgb, metadata=metadata, scale=1.0).draw_instance_predictions(inst).get_image()
    h, w = record["image_hw"]
    if stage_scales:
        fig, axes = plt.subplots(1, 1 + len(stage_scales), figsize=(5 * (1 + len(stage_scales)), 4.6),
                                 gridspec_kw={"width_ratios": [1] + [1.12] * len(stage_scales)})
    else:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), gridspec_kw={"width_ratios": [1, 1.12]})
    axes[0].imshow(vis)
    axes[0].set_title(f"{os.path.basename(record['file'])}: {len(inst)} detections (score >= {score_thresh:g})",
                      fontsize=9)
    gflops = record["flops"]["backbone"] / 1e9
    pct = f" = {100 * record['flops']['backbone'] / dense_flops:.0f} % of dense" if dense_flops else ""
    if "unit_policy" in record:  # AIG / BlockDrop: which units this image ran, one row per stage
        policy = record["unit_policy"]
        axes[1].imshow(draw_unit_policy(policy), interpolation="nearest")
        stages = list(dict.fromkeys(n.rsplit(".", 1)[0] for n in policy))
        axes[1].set_yticks(range(8, 16 * len(stages), 16), stages)
        axes[1].set_title(f"units executed (orange): {sum(policy.values())} / {len(policy)}\n"
                          f"feature extractor {gflops:.3g} GFLOPs{pct}", fontsize=9)
    elif stage_scales:  # one panel per adaptive stage, on its own grid
        for ax, (stage, (lo, hi)) in zip(axes[1:], stage_scales.items()):
            pm = record["ponder_maps"][stage]
            extent = map_extent(pm.shape, (h, w), record["resized_hw"], record["strides"][stage])
            im = ax.imshow(pm, cmap="viridis", vmin=lo, vmax=hi, extent=extent, interpolation="nearest")
            ax.set_xlim(0, w)
            ax.set_ylim(h, 0)
            ax.set_title(f"{stage} ponder cost (stride {record['strides'][stage]}), mean {pm.mean():.2f}", fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, label="rho = units run + remainder")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0].set_title(f"{os.path.basename(record['file'])}: {len(inst)} detections (score >= {score_thresh:g})\n"
                          f"feature extractor {gflops:.3g} GFLOPs{pct}", fontsize=9)
    else:
        pm = record["ponder_map"]
        extent = map_extent(pm.shape, (h, w), record["resized_hw"], record["stride"])
        im = axes[1].imshow(pm, cmap="viridis", vmin=vmin, vmax=vmax, extent=extent, interpolation="nearest")
        axes[1].set_xlim(0, w)
        axes[1].set_ylim(h, 0)
        axes[1].set_title(f"ponder cost (sum over stages), feature extractor {gflops:.3g} GFLOPs{pct}", fontsize=9)
        fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.03, label="rho = units run + remainder")
        axes[1].set_yticks([])
    axes[1].set_xticks([])
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


def output_names(files: List[str], out_dir: str) -> List[str]:
    """<out>/<stem>_ponder.png, prefixed with an index when stems repeat."""
    stems = [os.path.splitext(os.path.basename(f))[0] for f in files]
    dup = {s for s in stems if stems.count(s) > 1}
    return [os.path.join(out_dir, (f"{i:04d}_" if s in dup else "") + f"{s}_ponder.png") for i, s in enumerate(stems)]


def shared_scale(maps: List[np.ndarray], vmin: Optional[float], vmax: Optional[float]) -> Tuple[float, float]:
    """Colour scale of one call: --vmin / --vmax, else the range over all maps."""
    maps = maps or [np.zeros(1)]
    lo = vmin if vmin is not None else float(min(m.min() for m in maps))
    hi = vmax if vmax is not None else float(max(m.max() for m in maps))
    return lo, (hi if hi > lo else lo + 1e-3)


def run_classifier(args) -> List[str]:
    """Classifier configs: one image | ponder-map PNG per input image (sact_det.classification.ponder_maps)."""
    from sact_det.classification.config import get_classification_cfg
    from sact_det.classification.ponder_maps import (classifier_ponder_map, draw_classifier_ponder_map,
                                                     drawing_transform, load_drawing_classifier)

    if args.dataset:
        raise ValueError("--dataset takes a detection dataset; for a classifier config pass images with --input")
    cfg = load_config(args.config_file, args.opts, base=get_classification_cfg())
    check_weights(cfg.MODEL.WEIGHTS, required=True, random_weights=args.random_weights)
    files = expand_inputs(args.input)
    if args.num_images > 0:
        files = files[: args.num_images]
    cfg.freeze()
    model = load_drawing_classifier(cfg)
    transform = drawing_transform(cfg)
    results = [classifier_ponder_map(model, cfg, f, args.max_size, transform) for f in files]
    vmin, vmax = shared_scale([r.ponder_image.numpy() for r in results], args.vmin, args.vmax)
    background = bool(cfg.SACT_CLS.BACKGROUND_CLASS)
    return [draw_classifier_ponder_map(r, out, vmin, vmax, background)
            for r, out in zip(results, output_names(files, args.output))]


def run(args) -> List[str]:
    from sact_det.classification.ponder_maps import is_classification_config

    if is_classification_config(args.config_file, args.opts):
        return run_classifier(args)
    cfg = load_config(args.config_file, args.opts)
    check_weights(cfg.MODEL.WEIGHTS, required=True, random_weights=args.random_weights)
    if args.dataset:
        ensure_registered([args.dataset])
        files = [d["file_name"] for d in DatasetCatalog.get(args.dataset)]
        metadata = MetadataCatalog.get(args.dataset)
    else:
        files = expand_inputs(args.input)
        metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0]) if len(cfg.DATASETS.TEST) else None
        if metadata is not None:
            ensure_registered([cfg.DATASETS.TEST[0]])
    if args.num_images > 0:
        files = files[: args.num_images]
    if not files:
        raise FileNotFoundError("no images to draw")
    cfg.freeze()
    records = predict(cfg, files)
    vmin, vmax = shared_scale([r["ponder_map"] for r in records if "ponder_map" in r], args.vmin, args.vmax)

    meta_backbone = build_meta_backbone(cfg)
    fpn = isinstance(meta_backbone, SACTFPN)
    stage_scales = None
    if (fpn or args.per_stage) and "ponder_maps" in records[0]:
        stage_scales = {s: shared_scale([r["ponder_maps"][s] for r in records], args.vmin, args.vmax)
                        for s in records[0]["ponder_maps"]}
    written = []
    for rec, out in zip(records, output_names(files, args.output)):
        rgb = load_image(rec["file"])[:, :, ::-1]
        dense = meta_backbone.dense_flops(rec["resized_hw"]) if fpn else \
            backbone_flops(meta_backbone, rec["resized_hw"], ponder={})
        written.append(draw(rec, rgb, metadata, out, vmin, vmax, args.score_thresh, dense, stage_scales))
    return written


def main(argv=None) -> List[str]:
    args = parse_args(argv)
    try:
        with torch.no_grad():
            written = run(args)
    except (ConfigError, OSError, ValueError) as e:  # OSError: missing / undecodable image files
        sys.exit(f"draw_ponder_maps.py: error: {e}")
    print(f"wrote {len(written)} ponder-map picture(s) to {args.output}")
    return written


if __name__ == "__main__":
    main()
