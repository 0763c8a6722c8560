"""cfg.SACT_SALIENCY: ponder maps scored as saliency maps (tools/eval_saliency.py, SaliencyEvaluator)."""
from detectron2.config import CfgNode as CN

__all__ = ["add_saliency_config", "validate_saliency_cfg", "METHODS", "NORMALIZATIONS"]

METHODS = ("sact", "center", "uniform", "mean_fixation")  # SACT maps and the three baselines
NORMALIZATIONS = ("none", "minmax", "zscore")  # cfg.SACT_SALIENCY.NORMALIZE


def add_saliency_config(cfg: CN) -> None:
    """Add the cfg.SACT_SALIENCY keys."""
    c = cfg.SACT_SALIENCY = CN()
    # (width, height) fed to the model; paper: 640x360 (COCO model), 320x180 (ImageNet); [0, 0] = cfg.INPUT resize
    c.INPUT_SIZE = [640, 360]
    c.STAGES = []  # adaptive stages whose ponder maps are summed, e.g. ["res2"]; [] = all ("ponder_map"; the project's default)
    c.BLUR_SIGMA = 0.02  # Gaussian blur of the ponder map, sigma as a fraction of the width; 0 = none
    c.NORMALIZE = "none"  # scaling before the softmax: "none" (raw ponder cost), "minmax", "zscore"
    c.TEMPERATURE = 0.2  # softmax temperature over pixels (paper: 1/5); must be > 0
    c.CENTER_PRIOR_WEIGHT = 0.0  # w: logits += w * log(centre Gaussian), i.e. map * prior**w; 0 = off
    c.CENTER_SIGMA = 0.25  # centre Gaussian (prior, centre baseline): sigma per axis, fraction of W / H
    c.WORK_MAX_SIZE = 480  # post-process at this longer side (px), then resize to the fixation map; 0 = full
    c.METHODS = list(METHODS)  # maps to score: "sact", baselines "center", "uniform", "mean_fixation"
    c.MEAN_MAP_SIZE = [64, 36]  # (width, height) at which the mean fixation map baseline is accumulated
    c.INFO_GAIN_BASELINE = "center"  # baseline map of InfoGain: "center", "uniform" or "mean_fixation"
    c.AUC_SPLITS = 100  # random splits of AUC-Borji and shuffled AUC (MIT: 100)
    c.AUC_STEP = 0.1  # threshold step of AUC-Borji and shuffled AUC (MIT: 0.1)
    c.SHUFFLE_OTHER_IMAGES = 10  # shuffled AUC negatives: fixations of this many other images (Borji: 10)
    c.GT_SIGMA = 0.03  # no FIXATIONMAPS (demo data): continuous map = fixations blurred, sigma / width
    c.SEED = 0  # seed of the random AUC splits and of the choice of other images
    c.VIS_IMAGES = 8  # number of (image | fixations | ponder map | saliency) PNGs; 0 = none


def validate_saliency_cfg(cfg: CN) -> None:
    """Raise ValueError naming the cfg.SACT_SALIENCY key whose value is invalid."""
    c = cfg.SACT_SALIENCY
    checks = [
        ("INPUT_SIZE", len(c.INPUT_SIZE) == 2 and all(int(v) >= 0 for v in c.INPUT_SIZE)
         and (int(c.INPUT_SIZE[0]) > 0) == (int(c.INPUT_SIZE[1]) > 0), "two sizes >= 0 (both 0 = off)"),
        ("BLUR_SIGMA", float(c.BLUR_SIGMA) >= 0, ">= 0"),
        ("NORMALIZE", c.NORMALIZE in NORMALIZATIONS, f"one of {NORMALIZATIONS}"),
        ("TEMPERATURE", float(c.TEMPERATURE) > 0, "> 0"),
        ("CENTER_SIGMA", float(c.CENTER_SIGMA) > 0, "> 0"),
        ("WORK_MAX_SIZE", int(c.WORK_MAX_SIZE) >= 0, ">= 0"),
        ("METHODS", len(c.METHODS) > 0 and all(m in METHODS for m in c.METHODS),
         f"a non-empty subset of {METHODS}"),
        ("MEAN_MAP_SIZE", len(c.MEAN_MAP_SIZE) == 2 and min(c.MEAN_MAP_SIZE) > 0, "two sizes > 0"),
        ("INFO_GAIN_BASELINE", c.INFO_GAIN_BASELINE in METHODS[1:], f"one of {METHODS[1:]}"),
        ("AUC_SPLITS", int(c.AUC_SPLITS) >= 1, ">= 1"),
        ("AUC_STEP", 0 < float(c.AUC_STEP) <= 1, "in (0, 1]"),
        ("SHUFFLE_OTHER_IMAGES", int(c.SHUFFLE_OTHER_IMAGES) >= 1, ">= 1"),
        ("GT_SIGMA", float(c.GT_SIGMA) >= 0, ">= 0"),
        ("VIS_IMAGES", int(c.VIS_IMAGES) >= 0, ">= 0"),
    ]
    for key, ok, want in checks:
        if not ok:
            raise ValueError(f"cfg.SACT_SALIENCY.{key} must be {want}, got {c.get(key)!r}")
