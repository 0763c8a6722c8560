"""Hand-off to the detector: weights as a detectron2-loadable .pkl in SACT backbone names.

The .pkl is ``{"model": {name: np.ndarray}, "__author__": "sact_det", "matching_heuristics": True,
"sact_det": {"notes": str, "detector_config": {...}, ...}}``. Names are detectron2 ResNet names
(stem.conv1.weight, res2.0.conv1.norm.weight, res2.0.shortcut.weight, res3.1.halting.local_conv.weight,
..., linear.weight). detectron2's DetectionCheckpointer matches them by suffix to backbone.* and
roi_heads.res5.* of a C4 detector; linear.* and halting params of dense stages are ignored there.
"""
import os
import pickle
from collections import OrderedDict
from typing import Any, Dict, Mapping, Optional

import torch

from ..utils.atomic import atomic_write
from .checkpoint import CheckpointError, read_weights
from .torchvision_names import TORCHVISION_INPUT

__all__ = ["classifier_to_d2", "write_d2_pkl", "detector_settings", "infer_depth", "convert_to_d2_pkl"]


def classifier_to_d2(state_dict: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """Classifier state dict (backbone.*, linear.*) -> detectron2 names (prefix stripped)."""
    return OrderedDict((k[len("backbone."):] if k.startswith("backbone.") else k, v)
                       for k, v in state_dict.items() if not k.endswith("num_batches_tracked"))


def detector_settings(*, stride_in_1x1: bool, depth: Optional[int], sact: Optional[Dict[str, Any]] = None,
                      pixel: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The detector config keys these weights need (go into the .pkl and are printed by the tools)."""
    settings: Dict[str, Any] = {"MODEL.RESNETS.STRIDE_IN_1X1": bool(stride_in_1x1)}
    if depth is not None:
        settings["MODEL.RESNETS.DEPTH"] = int(depth)
    settings.update(pixel or TORCHVISION_INPUT)
    if sact:
        settings.update({f"MODEL.SACT.{k}": v for k, v in sact.items()})
    return settings


def _notes(settings: Dict[str, Any], source: str) -> str:
    lines = [f"sact_det weights ({source}) in detectron2 ResNet names; load with MODEL.WEIGHTS.",
             "Detector config needed for identical features:"]
    lines += [f"  {k}: {v}" for k, v in settings.items()]
    if not settings["MODEL.RESNETS.STRIDE_IN_1X1"]:
        lines.append("STRIDE_IN_1X1 False: the stride is in the 3x3 conv (torchvision layout), not in the 1x1.")
    lines.append("Halting parameters (res*.*.halting.*) are loaded only for stages in MODEL.SACT.STAGES with the "
                 "same MODE / HALT_KERNEL_SIZE and a HALT_NORM with the same parameters; otherwise they start new. "
                 "HALT_NORM FrozenBN also takes BN statistics (steady with 2 images per GPU); GN does not.")
    return "\n".join(lines)


def write_d2_pkl(path: str, d2_weights: Mapping[str, torch.Tensor], settings: Dict[str, Any], source: str,
                 extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Write the detectron2-loadable .pkl atomically; returns the dict written."""
    if not path.endswith(".pkl"):
        raise ValueError(f"detectron2 loads these weights only from a .pkl file, got {path}")
    model = OrderedDict((k, v.detach().cpu().numpy()) for k, v in d2_weights.items())
    data = {"model": model, "__author__": "sact_det", "matching_heuristics": True,
            "sact_det": {"source": source, "detector_config": settings, "notes": _notes(settings, source),
                         **(extra or {})}}
    atomic_write(path, lambda f: pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL))
    return data


def infer_depth(d2_weights: Mapping[str, Any]) -> Optional[int]:
    """ResNet depth from detectron2 names (units in res4, bottleneck or basic); None if not a ResNet-18..152."""
    units = {int(k.split(".")[1]) for k in d2_weights if k.startswith("res4.")}
    bottleneck = any(k.startswith("res2.0.conv3.") for k in d2_weights)
    table = {(2, False): 18, (6, False): 34, (6, True): 50, (23, True): 101, (36, True): 152}
    return table.get((len(units), bottleneck))


def convert_to_d2_pkl(src: str, dst: str) -> Dict[str, Any]:
    """torchvision .pth or sact_det classification checkpoint -> detectron2-loadable .pkl (``dst``)."""
    from detectron2.config import CfgNode

    from .config import get_classification_cfg

    w = read_weights(src)
    d2 = classifier_to_d2(w["model"])
    if w["source"] == "torchvision":
        settings = detector_settings(stride_in_1x1=False, depth=infer_depth(d2))
        return write_d2_pkl(dst, d2, settings, source=f"torchvision {os.path.basename(src)}")
    if w["source"] != "sact_cls":
        raise CheckpointError(f"{src} is neither a torchvision ResNet nor a sact_det classification checkpoint")
    cfg = get_classification_cfg()
    cfg.merge_from_other_cfg(CfgNode.load_cfg(w["checkpoint"]["config"]))
    if cfg.SACT_CLS.ARCH != "imagenet":
        raise CheckpointError(f"{src} is a {cfg.SACT_CLS.ARCH!r} classifier; the detector needs an ImageNet ResNet")
    s, inp = cfg.MODEL.SACT, cfg.SACT_CLS.INPUT
    sact = {"MODE": s.MODE, "STAGES": [x for x in s.STAGES if x != "res5"], "EPS": float(s.EPS),
            "HALT_NORM": s.HALT_NORM, "HALT_KERNEL_SIZE": int(s.HALT_KERNEL_SIZE)} if s.MODE != "none" else None
    pixel = {"INPUT.FORMAT": "RGB", "MODEL.PIXEL_MEAN": list(inp.PIXEL_MEAN), "MODEL.PIXEL_STD": list(inp.PIXEL_STD)}
    settings = detector_settings(stride_in_1x1=cfg.MODEL.RESNETS.STRIDE_IN_1X1, depth=cfg.MODEL.RESNETS.DEPTH,
                                 sact=sact, pixel=pixel)
    extra = {"iteration": w["checkpoint"].get("iteration"), "class_names": w["checkpoint"].get("class_names"),
             "classifier_stages": list(s.STAGES)}
    return write_d2_pkl(dst, d2, settings, source=f"sact_det classifier {os.path.basename(src)}", extra=extra)
