"""Hand-off to the detector: weights as a detectron2-loadable .pkl in SACT backbone names.

The .pkl is ``{"model": {name: np.ndarray}, "__author__": "sact_det", "matching_heuristics": True,
"sact_det": {"notes": str, "detector_config": {...}, ...}}``. Names are detectron2 ResNet names
(stem.conv1.weight, res2.0.conv1.norm.weight, res2.0.shortcut.weight, res3.1.halting.local_conv.weight,
..., linear.weight). detectron2's DetectionCheckpointer matches them by suffix to backbone.* and
roi_heads.res5.* of a C4 detector; linear.* and halting params of dense stages are ignored there.
"""
import os
import pickle
import re
import tempfile
from collections import OrderedDict
from typing import Any, Dict, Mapping, Optional

import torch

__all__ = ["torchvision_to_d2", "is_torchvision_state_dict", "classifier_to_d2", "write_d2_pkl",
           "detector_settings", "infer_depth", "convert_to_d2_pkl", "TORCHVISION_INPUT"]

# torchvision ImageNet models take RGB images normalised with these (0-255 scale) statistics.
TORCHVISION_INPUT = {"INPUT.FORMAT": "RGB", "MODEL.PIXEL_MEAN": [123.675, 116.28, 103.53],
                     "MODEL.PIXEL_STD": [58.395, 57.12, 57.375]}

_TV_UNIT = re.compile(r"^layer([1-4])\.(\d+)\.(.+)$")


def is_torchvision_state_dict(weights: Mapping[str, Any]) -> bool:
    """True for torchvision ResNet names (conv1.weight, bn1.*, layer1.0.conv1.weight, ...)."""
    return "conv1.weight" in weights and any(k.startswith("layer1.") for k in weights)


def torchvision_to_d2(weights: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """torchvision ResNet state dict -> detectron2 ResNet names (fc -> linear, num_batches_tracked dropped).

    layerX.Y.convZ -> res{X+1}.Y.convZ, layerX.Y.bnZ -> res{X+1}.Y.convZ.norm, downsample.0 / .1 ->
    shortcut / shortcut.norm, conv1 / bn1 -> stem.conv1 / stem.conv1.norm. torchvision puts the stride
    of a bottleneck in its 3x3 conv: use MODEL.RESNETS.STRIDE_IN_1X1 False with these weights.
    """
    out = OrderedDict()
    for key, value in weights.items():
        if key.endswith("num_batches_tracked"):
            continue
        m = _TV_UNIT.match(key)
        if m:
            stage, unit, rest = int(m.group(1)) + 1, m.group(2), m.group(3)
            rest = re.sub(r"^bn(\d)\.", r"conv\1.norm.", rest)
            rest = rest.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")
            new = f"res{stage}.{unit}.{rest}"
        elif key.startswith("conv1."):
            new = "stem." + key
        elif key.startswith("bn1."):
            new = "stem.conv1.norm." + key[len("bn1."):]
        elif key.startswith("fc."):
            new = "linear." + key[len("fc."):]
        else:
            raise KeyError(f"unexpected torchvision ResNet parameter {key!r}")
        if not re.match(r"^(stem\.conv1|res\d\.\d+\.(conv[123]|shortcut))(\.norm)?\.(weight|bias|running_mean|"
                        r"running_var)$|^linear\.(weight|bias)$", new):
            raise KeyError(f"cannot map torchvision parameter {key!r} (got {new!r})")
        out[new] = value
    return out


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
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", dir=folder)
    with os.fdopen(fd, "wb") as f:
        pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
    from .checkpoint import _public

    _public(tmp)
    os.replace(tmp, path)
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

    from .checkpoint import CheckpointError, read_weights
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
