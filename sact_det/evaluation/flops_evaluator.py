"""FLOPs / ponder-cost evaluator: computation per image next to COCO AP.

For every evaluated image it reads what AdaptiveRCNN's / AdaptiveDetector's inference returned (``flops`` and
``ponder_maps``) and the resized input size (``inputs["image"]``, (C,H,W)), and reports over the
data set (image-level mean and std, as the original SACT code does):

- ``flops``: feature-extractor GFLOPs of this model; the same architecture run densely (no
  halting) and the dense ResNet-``REFERENCE_DEPTH`` extractor of the same variant
  (cfg.MODEL.SACT.VARIANT: detectron2's v1 ResNet, or the original SACT code's pre-activation v2 for
  "original"), both at the same input sizes; this model's FLOPs as % of each (per-image ratios);
  whole-model GFLOPs (RPN and box head included). For FPN backbones (:class:`SACTFPN`) the extractor is
  the bottom-up ResNet + the FPN layers, the dense reference the same extractor with every unit run,
  and the ResNet-``REFERENCE_DEPTH`` reference detectron2's default-width R-``REFERENCE_DEPTH``-FPN.
- ``ponder_eval``: per adaptive stage, the ponder cost rho and the units executed per position
  (mean and std over images of the per-image mean), and the fraction of adaptive units run.
"""
import itertools
import logging
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from tabulate import tabulate

from ..config.constants import STAGE_ORDER
from ..modeling.sact.flops import backbone_flops, dense_backbone_flops
from ..modeling.sact.fpn import SACTFPN, dense_fpn_reference_flops

__all__ = ["FlopsEvaluator", "units_from_ponder", "summarize_records"]

logger = logging.getLogger(__name__)
_STAGE_ORDER = ("stem",) + STAGE_ORDER


def units_from_ponder(rho: torch.Tensor) -> torch.Tensor:
    """Units executed N from a ponder-cost map rho = N + R, R in (0, 1]: N = ceil(rho) - 1."""
    return (torch.ceil(rho.double() - 1e-6) - 1).clamp(min=1)


def build_meta_backbone(cfg) -> torch.nn.Module:
    """The configured backbone with weights on the meta device (shapes only, no memory)."""
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import build_backbone

    with torch.device("meta"):
        return build_backbone(cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN)))


def _last_out_feature(cfg) -> str:
    feats = [f for f in cfg.MODEL.RESNETS.OUT_FEATURES if f in _STAGE_ORDER]
    if not feats:
        raise ValueError(f"cfg.MODEL.RESNETS.OUT_FEATURES={list(cfg.MODEL.RESNETS.OUT_FEATURES)} has no ResNet stage")
    return max(feats, key=_STAGE_ORDER.index)


def _mean_std(values: List[float]) -> Tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std())


def summarize_records(records: List[dict], stage_units: Dict[str, int], reference_depth: int) -> "OrderedDict":
    """Data-set statistics from per-image records (see FlopsEvaluator.process)."""
    g = 1e-9
    bb = [r["backbone"] for r in records]
    flops = OrderedDict()
    flops["num_images"] = len(records)
    flops["extractor_gflops_mean"], flops["extractor_gflops_std"] = _mean_std([v * g for v in bb])
    flops["dense_gflops_mean"], flops["dense_gflops_std"] = _mean_std([r["dense"] * g for r in records])
    flops["pct_of_dense_mean"], flops["pct_of_dense_std"] = _mean_std(
        [100.0 * r["backbone"] / r["dense"] for r in records])
    ref = f"r{reference_depth}"
    flops[f"{ref}_gflops_mean"], _ = _mean_std([r["reference"] * g for r in records])
    flops[f"pct_of_{ref}_mean"], flops[f"pct_of_{ref}_std"] = _mean_std(
        [100.0 * r["backbone"] / r["reference"] for r in records])
    flops["model_gflops_mean"], flops["model_gflops_std"] = _mean_std([r["model"] * g for r in records])
    ponder = OrderedDict()
    if stage_units and all(r["ponder"] for r in records):
        ran, total = 0.0, 0
        for stage, num in stage_units.items():
            ponder[f"{stage}_mean"], ponder[f"{stage}_std"] = _mean_std([r["ponder"][stage][0] for r in records])
            units_mean, units_std = _mean_std([r["ponder"][stage][1] for r in records])
            ponder[f"{stage}_units_mean"], ponder[f"{stage}_units_std"] = units_mean, units_std
            ponder[f"{stage}_units_max"] = num
            ran, total = ran + units_mean, total + num
        ponder["total_mean"], ponder["total_std"] = _mean_std(
            [sum(v[0] for v in r["ponder"].values()) for r in records])
        ponder["units_frac"] = ran / total
    return flops, ponder


class FlopsEvaluator(DatasetEvaluator):
    """Feature-extractor FLOPs (absolute, % of dense same architecture, % of dense ResNet-101),
    model FLOPs, per-stage ponder cost and units executed. Results: {"flops": {...}, "ponder_eval": {...}}.
    """

    def __init__(self, cfg, dataset_name: Optional[str] = None, distributed: bool = True,
                 reference_depth: Optional[int] = None) -> None:
        self._dataset_name = dataset_name
        self._distributed = distributed
        depth = reference_depth if reference_depth is not None else cfg.SACT_EVAL.REFERENCE_DEPTH
        self._reference_depth = int(depth)
        self._out_feature = _last_out_feature(cfg)
        self._stride_in_1x1 = bool(cfg.MODEL.RESNETS.STRIDE_IN_1X1)
        self._variant = str(cfg.MODEL.SACT.VARIANT)  # reference of the same family
        self._backbone = build_meta_backbone(cfg)
        self._fpn = isinstance(self._backbone, SACTFPN)
        resnet = self._backbone.bottom_up if self._fpn else self._backbone
        stages = list(getattr(resnet, "adaptive_stages", []))
        self._stage_units = OrderedDict((s, len(getattr(resnet, s))) for s in stages)
        self._dense_cache: Dict[Tuple[int, int], float] = {}
        self._ref_cache: Dict[Tuple[int, int], float] = {}
        self._records: List[dict] = []

    def reset(self) -> None:
        self._records = []

    def _dense(self, hw: Tuple[int, int]) -> Tuple[float, float]:
        if hw not in self._dense_cache and self._fpn:
            self._dense_cache[hw] = self._backbone.dense_flops(hw)
            self._ref_cache[hw] = dense_fpn_reference_flops(self._backbone, hw, self._reference_depth,
                                                            self._stride_in_1x1)
        elif hw not in self._dense_cache:
            self._dense_cache[hw] = backbone_flops(self._backbone, hw, ponder={})
            self._ref_cache[hw] = dense_backbone_flops(hw, depth=self._reference_depth, out_feature=self._out_feature,
                                                       stride_in_1x1=self._stride_in_1x1, variant=self._variant)
        return self._dense_cache[hw], self._ref_cache[hw]

    def process(self, inputs, outputs) -> None:
        for inp, out in zip(inputs, outputs):
            if "flops" not in out:
                raise KeyError(
                    "FlopsEvaluator needs per-image 'flops' in the model outputs, which "
                    "cfg.MODEL.META_ARCHITECTURE='AdaptiveRCNN' or 'AdaptiveDetector' returns; got keys "
                    + str(sorted(out)))
            if "image" not in inp:  # height / width are the original size, not the size the model ran at
                raise KeyError(
                    "FlopsEvaluator needs the resized input image (inputs[i]['image'], (C,H,W), as detectron2's "
                    "DatasetMapper gives it) to count FLOPs at the size the model ran; got keys " + str(sorted(inp)))
            hw = tuple(int(v) for v in inp["image"].shape[-2:])
            dense, ref = self._dense(hw)
            ponder = {}
            for stage in self._stage_units:
                rho = out.get("ponder_maps", {}).get(stage)
                if rho is not None:
                    ponder[stage] = (float(rho.double().mean()), float(units_from_ponder(rho).mean()))
            self._records.append({
                "image_id": inp.get("image_id"), "hw": hw, "backbone": float(out["flops"]["backbone"]),
                "model": float(out["flops"]["model"]), "dense": dense, "reference": ref, "ponder": ponder,
            })

    def evaluate(self) -> Optional["OrderedDict"]:
        records = self._records
        if self._distributed:
            comm.synchronize()
            records = list(itertools.chain(*comm.gather(records, dst=0)))
            if not comm.is_main_process():
                return None
        if not records:
            logger.warning("[FlopsEvaluator] no images were evaluated")
            return OrderedDict()
        flops, ponder = summarize_records(records, self._stage_units, self._reference_depth)
        logger.info("FLOPs and ponder cost on %s (%d images):\n%s", self._dataset_name or "the data set",
                    len(records), format_table(flops, ponder, self._reference_depth, self._variant, self._fpn))
        results = OrderedDict(flops=flops)
        if ponder:
            results["ponder_eval"] = ponder
        return results


def format_table(flops: Dict[str, float], ponder: Dict[str, float], reference_depth: int,
                 variant: str = "detectron2", fpn: bool = False) -> str:
    """Human-readable table of the evaluator's results (``variant``: the reference ResNet's family;
    ``fpn``: the extractor and the reference include FPN layers)."""
    ref = f"r{reference_depth}"
    ref_name = f"dense ResNet-{reference_depth}{' v2 (original)' if variant == 'original' else ''}" \
               f"{'-FPN' if fpn else ''} extractor"
    rows = [
        ["feature extractor (this model)", f"{flops['extractor_gflops_mean']:.3f} ± {flops['extractor_gflops_std']:.3f}",
         f"{flops['pct_of_dense_mean']:.1f} ± {flops['pct_of_dense_std']:.1f}",
         f"{flops[f'pct_of_{ref}_mean']:.1f} ± {flops[f'pct_of_{ref}_std']:.1f}"],
        ["same architecture, dense", f"{flops['dense_gflops_mean']:.3f}", "100.0",
         f"{100 * flops['dense_gflops_mean'] / flops[f'{ref}_gflops_mean']:.1f}"],
        [ref_name, f"{flops[f'{ref}_gflops_mean']:.3f}", "", "100.0"],
        ["whole model (+ heads)" if fpn else "whole model (+ RPN, box head)",
         f"{flops['model_gflops_mean']:.3f} ± {flops['model_gflops_std']:.3f}", "", ""],
    ]
    table = tabulate(rows, headers=["GFLOPs per image", "mean ± std", "% of dense", f"% of R-{reference_depth}"],
                     tablefmt="pipe")
    stages = [k[: -len("_units_max")] for k in ponder if k.endswith("_units_max")]
    if stages:
        prow = [[s, f"{ponder[s + '_mean']:.3f} ± {ponder[s + '_std']:.3f}",
                 f"{ponder[s + '_units_mean']:.2f} / {ponder[s + '_units_max']}"] for s in stages]
        prow.append(["sum", f"{ponder['total_mean']:.3f} ± {ponder['total_std']:.3f}",
                     f"{100 * ponder['units_frac']:.1f} % of units"])
        table += "\n" + tabulate(prow, headers=["stage", "ponder cost rho", "units run per position"],
                                 tablefmt="pipe")
    return table
