"""Score SACT ponder maps and baselines against fixations: per image, per category, overall.

Fixations of a dataset dict (see :func:`load_saliency_targets`):
* CAT2000 train: ``fixation_file`` (.mat ``fixLocs``) + ``fixation_map_file`` (continuous map);
* detection data (the demo set): the union of the object masks acts as fixations, and the
  continuous map is that mask blurred with sigma = GT_SIGMA * width.
"""
import csv
import json
import logging
import os
import re
from collections import OrderedDict, defaultdict
from typing import Dict, List, Optional, Tuple

import numpy as np
from detectron2.evaluation import DatasetEvaluator
from tabulate import tabulate

from sact_det.data.cat2000 import load_fixation_locs, load_fixation_map
from sact_det.evaluation import saliency_metrics as M
from sact_det.modeling.core.ponder_maps import sum_ponder_maps
from sact_det.evaluation.saliency import (
    MeanFixationBaseline,
    center_bias_map,
    gaussian_blur,
    ponder_to_saliency,
    uniform_map,
    validate_saliency_cfg,
)

__all__ = ["SaliencyEvaluator", "load_saliency_targets", "METRICS"]

METRICS = ("auc_judd", "auc_borji", "auc_shuffled", "nss", "cc", "sim", "kl", "info_gain")
logger = logging.getLogger(__name__)


def _object_mask(d: dict) -> np.ndarray:
    from sact_det.data.demo import object_mask  # pycocotools rasterisation of the polygons / RLEs

    return object_mask(d)


def load_saliency_targets(d: dict, gt_sigma: float) -> Tuple[np.ndarray, np.ndarray]:
    """(fix, gt) of one dataset dict: fixation map (H, W) and continuous fixation map (H, W)."""
    if d.get("fixation_file"):
        fix = load_fixation_locs(d["fixation_file"])
        if fix.dtype != bool and ((fix == 0) | (fix == 1)).all():
            fix = fix.astype(bool)  # exact: a 0/1 map (cheaper to score as bool)
        if d.get("fixation_map_file"):
            gt = load_fixation_map(d["fixation_map_file"])
            if gt.shape != fix.shape:
                raise ValueError(f"{d['fixation_map_file']} is {gt.shape[1]}x{gt.shape[0]} but "
                                 f"{d['fixation_file']} is {fix.shape[1]}x{fix.shape[0]} (W x H)")
        else:
            gt = gaussian_blur(np.asarray(fix, np.float64), gt_sigma * fix.shape[1])
        return fix, gt
    if "annotations" in d:
        fix = _object_mask(d)
        return fix, gaussian_blur(fix.astype(np.float64), gt_sigma * fix.shape[1])
    raise ValueError(
        f"{d.get('file_name', d)}: the dataset dict has neither 'fixation_file' (CAT2000 train "
        "split) nor object 'annotations' (detection data); cannot score saliency on it "
        "(CAT2000 testSet has no public fixations)"
    )


def _key(d: dict):
    return d["image_id"] if d.get("image_id") is not None else d["file_name"]


class SaliencyEvaluator(DatasetEvaluator):
    """detectron2 evaluator: ``process(inputs, outputs)`` takes model outputs with "ponder_map"
    (or ``None`` outputs for baselines only); ``evaluate()`` returns {method: {metric: mean}} and
    writes CSV / JSON / PNGs into ``output_dir``."""

    def __init__(self, dataset_dicts: List[dict], cfg, output_dir: Optional[str] = None,
                 dataset_name: str = "", progress: bool = False) -> None:
        validate_saliency_cfg(cfg)
        self.c = cfg.SACT_SALIENCY
        self.dataset_name = dataset_name
        self.output_dir = output_dir
        self.methods = list(self.c.METHODS)
        self._dicts: Dict[object, dict] = OrderedDict()
        self._mean = MeanFixationBaseline(self.c.MEAN_MAP_SIZE)
        self._fix_points: Dict[object, np.ndarray] = {}  # (n, 2) fixation (y, x) in [0, 1)
        self.skipped: List[object] = []
        self._prepare(dataset_dicts, progress)
        self.reset()

    def _prepare(self, dataset_dicts: List[dict], progress: bool) -> None:
        """Pass 1: fixations of every image (mean-fixation baseline, shuffled-AUC negatives)."""
        from tqdm import tqdm

        for d in tqdm(dataset_dicts, desc="fixations", disable=not progress):
            k = _key(d)
            if k in self._dicts:
                raise ValueError(f"duplicate image_id {k!r} in dataset {self.dataset_name!r}")
            fix, gt = load_saliency_targets(d, float(self.c.GT_SIGMA))
            if not np.any(np.asarray(fix) > 0):
                self.skipped.append(k)
                continue
            self._dicts[k] = d
            self._mean.add(k, gt)
            ys, xs = np.nonzero(np.asarray(fix) > 0)
            h, w = fix.shape
            self._fix_points[k] = np.stack([(ys + 0.5) / h, (xs + 0.5) / w], 1).astype(np.float32)
        if self.skipped:
            logger.warning(f"{len(self.skipped)} image(s) have no fixations / objects and are not "
                           f"scored, e.g. {self.skipped[:5]}")
        if len(self._dicts) < 2:
            raise ValueError(f"saliency evaluation needs >= 2 images with fixations, dataset "
                             f"{self.dataset_name!r} has {len(self._dicts)}")
        self._keys = list(self._dicts)
        self._pos = {k: i for i, k in enumerate(self._keys)}

    @property
    def dataset_dicts(self) -> List[dict]:
        """The dataset dicts that are scored (images with fixations), in dataset order."""
        return list(self._dicts.values())

    def reset(self) -> None:
        self.rows: List[dict] = []
        self._n_vis = 0

    def _other_fixations(self, k, hw: Tuple[int, int]) -> np.ndarray:
        """Union (H, W) bool of the fixations of SHUFFLE_OTHER_IMAGES other images, rescaled."""
        idx = self._pos[k]
        others = [i for i in range(len(self._keys)) if i != idx]
        rng = np.random.default_rng([int(self.c.SEED), idx])
        pick = rng.choice(others, size=min(int(self.c.SHUFFLE_OTHER_IMAGES), len(others)), replace=False)
        pts = np.concatenate([self._fix_points[self._keys[i]] for i in pick], 0)
        out = np.zeros(hw, bool)
        ys = (pts[:, 0] * hw[0]).astype(int).clip(0, hw[0] - 1)
        xs = (pts[:, 1] * hw[1]).astype(int).clip(0, hw[1] - 1)
        out[ys, xs] = True
        return out

    def _baseline(self, method: str, k, hw: Tuple[int, int]) -> np.ndarray:
        if method == "center":
            return center_bias_map(hw, float(self.c.CENTER_SIGMA))
        if method == "uniform":
            return uniform_map(hw)
        if method == "mean_fixation":
            return self._mean.map_for(k, hw)
        raise ValueError(f"unknown saliency baseline {method!r}")

    def score_image(self, d: dict, ponder_map=None, image: Optional[np.ndarray] = None) -> List[dict]:
        """Metrics of every method for one image; returns (and keeps) one row per method."""
        k = _key(d)
        if k not in self._dicts:
            return []  # not in the evaluated set (no fixations)
        fix, gt = load_saliency_targets(d, float(self.c.GT_SIGMA))
        hw = fix.shape
        other = self._other_fixations(k, hw)
        ig_base = self._baseline(self.c.INFO_GAIN_BASELINE, k, hw)
        maps = {}
        for method in self.methods:
            if method == "sact":
                if ponder_map is None:
                    continue
                maps[method] = ponder_to_saliency(ponder_map, hw, self.c)
            else:
                maps[method] = self._baseline(method, k, hw)
        split = dict(n_splits=int(self.c.AUC_SPLITS), step=float(self.c.AUC_STEP), seed=int(self.c.SEED))
        rows = []
        for method, sal in maps.items():
            row = {"image_id": k, "category": d.get("category", "all"), "method": method,
                   "auc_judd": M.auc_judd(sal, fix), "auc_borji": M.auc_borji(sal, fix, **split),
                   "auc_shuffled": M.auc_shuffled(sal, fix, other, **split), "nss": M.nss(sal, fix),
                   "cc": M.cc(sal, gt), "sim": M.sim(sal, gt), "kl": M.kl_div(sal, gt),
                   "info_gain": M.info_gain(sal, fix, ig_base)}
            rows.append(row)
        self.rows.extend(rows)
        if "sact" in maps and self.output_dir and self._n_vis < int(self.c.VIS_IMAGES):
            self._n_vis += 1
            from sact_det.evaluation.saliency_vis import write_panel

            name = re.sub(r"[^\w.-]", "_", str(k)) + ".png"
            write_panel(os.path.join(self.output_dir, "saliency_vis", name),
                        d["file_name"] if image is None else image, fix, gt, ponder_map, maps["sact"])
        return rows

    def process(self, inputs: List[dict], outputs: Optional[List[dict]]) -> None:
        outputs = outputs if outputs is not None else [None] * len(inputs)
        for inp, out in zip(inputs, outputs):
            k = _key(inp)
            d = self._dicts.get(k)
            if d is None:
                continue
            self.score_image(d, None if out is None else self._ponder(k, out))

    def _ponder(self, k, out: dict):
        """The output's ponder map, or the sum of the cfg.SACT_SALIENCY.STAGES maps."""
        stages = list(self.c.STAGES)
        if not stages:
            if "ponder_map" not in out:
                raise KeyError(f"model output of image {k!r} has no 'ponder_map' (is it a SACT model?)")
            return out["ponder_map"]
        maps = out.get("ponder_maps", {})
        missing = [s for s in stages if s not in maps]
        if missing:
            raise KeyError(f"cfg.SACT_SALIENCY.STAGES {missing} not in the model's ponder_maps "
                           f"{sorted(maps)} (image {k!r})")
        return sum_ponder_maps([maps[s] for s in stages])

    def summary(self) -> Dict[str, Dict[str, Dict[str, float]]]:
        """{method: {category | "overall": {metric: mean over images, "n_images": n}}}."""
        groups: Dict[Tuple[str, str], List[dict]] = defaultdict(list)
        for r in self.rows:
            groups[(r["method"], r["category"])].append(r)
            groups[(r["method"], "overall")].append(r)
        out: Dict[str, Dict[str, Dict[str, float]]] = OrderedDict()
        for method in self.methods:
            cats = sorted(c for (m, c) in groups if m == method and c != "overall")
            for cat in cats + ["overall"]:
                rs = groups.get((method, cat))
                if rs:
                    entry = {m: float(np.mean([r[m] for r in rs])) for m in METRICS}
                    out.setdefault(method, OrderedDict())[cat] = {**entry, "n_images": len(rs)}
        return out

    def evaluate(self):
        if not self.rows:
            logger.warning("SaliencyEvaluator: no image was scored")
            return {}
        summ = self.summary()
        table = [[m, c, v["n_images"]] + [v[k] for k in METRICS]
                 for m, cs in summ.items() for c, v in cs.items()]
        header = ["method", "category", "n_images", *METRICS]
        logger.info("Saliency metrics on %s:\n%s", self.dataset_name or "dataset",
                    tabulate(table, headers=header, floatfmt=".4f", tablefmt="pipe"))
        if self.output_dir:
            self._write(summ, table, header)
        return OrderedDict((m, dict(cs["overall"])) for m, cs in summ.items())

    def _write(self, summ, table, header) -> None:
        os.makedirs(self.output_dir, exist_ok=True)
        with open(os.path.join(self.output_dir, "saliency_summary.csv"), "w", newline="") as f:
            csv.writer(f).writerows([header] + table)
        with open(os.path.join(self.output_dir, "saliency_per_image.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["image_id", "category", "method", *METRICS])
            w.writeheader()
            w.writerows(self.rows)
        with open(os.path.join(self.output_dir, "saliency_summary.json"), "w") as f:
            json.dump({"dataset": self.dataset_name, "skipped_images": [str(s) for s in self.skipped],
                       "config": json.loads(json.dumps(self.c)), "results": summ}, f, indent=1)
