#!/usr/bin/env python
"""Score SACT ponder-cost maps (and the centre / uniform / mean-fixation baselines) against eye
fixations with the MIT saliency metrics; per-category and overall tables as CSV + JSON, pictures.

Examples:
  # real CAT2000 (train split has fixations), COCO SACT detector, the paper's input size and
  # softmax temperature 1/5 (the other post-processing steps are this project's defaults):
  SACT_CAT2000_ROOT=/data/CAT2000 python tools/eval_saliency.py \\
      --config-file configs/COCO-Detection/<sact config>.yaml --dataset cat2000_train \\
      --output output/saliency MODEL.WEIGHTS /path/model_final.pth SACT_SALIENCY.INPUT_SIZE 640,360
  # the demo data (object masks act as fixations), baselines only:
  python tools/eval_saliency.py --dataset sact_demo_val --baselines-only --output output/sal_demo
Trailing KEY VALUE pairs override the config (e.g. SACT_SALIENCY.TEMPERATURE 0.2). Scoring SACT maps
needs MODEL.WEIGHTS (an existing file or a URL) unless --random-weights is given.
"""
import argparse
import logging
import os
import sys
from collections import defaultdict
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sact_det  # noqa: E402,F401  (compat patches + registrations first)
import sact_det.data.cat2000  # noqa: E402,F401  (registers cat2000_train / cat2000_test)
import torch  # noqa: E402
from detectron2.data import DatasetCatalog  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402
from tqdm import tqdm  # noqa: E402

from sact_det.engine.checks import add_random_weights_flag, check_device, check_weights  # noqa: E402
from sact_det.engine.setup_config import ConfigError, load_config  # noqa: E402
from sact_det.config import validate_saliency_cfg  # noqa: E402
from sact_det.evaluation.saliency_evaluator import SaliencyEvaluator  # noqa: E402

logger = logging.getLogger("sact_det.eval_saliency")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default="", help="model config yaml (not needed with --baselines-only)")
    p.add_argument("--dataset", required=True, help="registered dataset, e.g. cat2000_train, sact_demo_val")
    p.add_argument("--output", default="output/saliency", help="folder for CSV / JSON / PNG results")
    p.add_argument("--baselines-only", action="store_true", help="score only the baselines (no model)")
    p.add_argument("--max-images", type=int, default=0,
                   help="score at most this many images, taken round-robin over categories (0 = all)")
    p.add_argument("--num-threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    add_random_weights_flag(p)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return p.parse_args(argv)


def setup_cfg(args: argparse.Namespace):
    """Defaults + --config-file + KEY VALUE overrides (errors name file / key); MODEL.DEVICE and
    MODEL.WEIGHTS are checked when SACT maps are scored (a model is run)."""
    cfg = load_config(args.config_file, args.opts, check_device=False)  # includes cfg.SACT_SALIENCY
    if args.baselines_only:
        cfg.SACT_SALIENCY.METHODS = [m for m in cfg.SACT_SALIENCY.METHODS if m != "sact"]
    validate_saliency_cfg(cfg)
    if "sact" in cfg.SACT_SALIENCY.METHODS:
        if not args.config_file:
            raise SystemExit("--config-file is required to score SACT maps (or pass --baselines-only)")
        check_device(cfg)
        check_weights(cfg.MODEL.WEIGHTS, required=True, random_weights=args.random_weights)
    elif args.random_weights:
        raise ConfigError("--random-weights: no model is run (--baselines-only or SACT_SALIENCY.METHODS without sact)")
    cfg.freeze()
    return cfg


def load_dataset(name: str) -> List[dict]:
    if name.startswith("sact_demo_") and name not in DatasetCatalog.list():
        from sact_det.data.demo import register_demo_datasets

        register_demo_datasets()
    if name not in DatasetCatalog.list():
        raise SystemExit(f"--dataset {name!r} is not registered; known: {sorted(DatasetCatalog.list())}")
    return DatasetCatalog.get(name)


def subset(dicts: List[dict], n: int) -> List[dict]:
    """At most ``n`` dicts, round-robin over their "category" (dataset order kept per category)."""
    if n <= 0 or n >= len(dicts):
        return dicts
    by_cat = defaultdict(list)
    for d in dicts:
        by_cat[d.get("category", "all")].append(d)
    queues, out = list(by_cat.values()), []
    i = 0
    while len(out) < n:
        q = queues[i % len(queues)]
        if q:
            out.append(q.pop(0))
        i += 1
    return out


def build_loader(cfg, dicts: List[dict]):
    import detectron2.data.transforms as T
    from detectron2.data import build_detection_test_loader

    from sact_det.data.mapper import SACTDatasetMapper, backbone_stride_from_cfg

    w, h = (int(v) for v in cfg.SACT_SALIENCY.INPUT_SIZE)
    if w > 0:
        aug = [T.Resize((h, w))]
    else:
        aug = [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")]
    mapper = SACTDatasetMapper(is_train=False, augmentations=aug, image_format=cfg.INPUT.FORMAT,
                               min_size=backbone_stride_from_cfg(cfg))  # clear errors for bad images
    return build_detection_test_loader(dicts, mapper=mapper, num_workers=cfg.DATALOADER.NUM_WORKERS)


def run(cfg, dataset: str, output: str, max_images: int = 0):
    """Evaluate; returns ``{method: {metric: overall mean}}``."""
    dicts = subset(load_dataset(dataset), max_images)
    evaluator = SaliencyEvaluator(dicts, cfg, output_dir=output, dataset_name=dataset, progress=True)
    if "sact" in cfg.SACT_SALIENCY.METHODS:
        from detectron2.checkpoint import DetectionCheckpointer
        from detectron2.modeling import build_model

        model = build_model(cfg)
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
        model.eval()
        with torch.no_grad():
            for inputs in tqdm(build_loader(cfg, evaluator.dataset_dicts), total=len(evaluator.dataset_dicts),
                               desc="saliency"):
                evaluator.process(inputs, model(inputs))
    else:
        for d in tqdm(evaluator.dataset_dicts, desc="saliency"):
            evaluator.process([d], None)
    results = evaluator.evaluate()
    logger.info(f"results written to {os.path.abspath(output)}")
    return results


def main(argv: Optional[List[str]] = None):
    args = parse_args(argv)
    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    setup_logger(name="sact_det")
    setup_logger(name="detectron2")
    try:
        cfg = setup_cfg(args)
    except ConfigError as e:
        sys.exit(f"eval_saliency.py: error: {e}")
    return run(cfg, args.dataset, args.output, args.max_images)


if __name__ == "__main__":
    main()
