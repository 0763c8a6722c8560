"""Checkpoints of the classification tool: atomic save (sact_det.utils.atomic), resume, and initial
weights from torchvision .pth / detectron2-style .pkl / classification checkpoints (halting params new).

Training checkpoint (``model_<iter>.pth``, written by :class:`ClassifierCheckpointer`, detectron2's
checkpointer made atomic): {"model": classifier state_dict, "optimizer", "scheduler", "trainer" (iteration,
hook states), "iteration" (last completed, 0-based, as detectron2), "seed", "num_classes",
"class_names", "config", "sact_cls_format": 1}. ``last_checkpoint`` in the same folder names the
newest one (written atomically, after it).
"""
import logging
import os
import pickle
from collections import OrderedDict
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from ..engine.checkpoint import AtomicDetectionCheckpointer
from .torchvision_names import is_torchvision_state_dict, torchvision_to_d2

__all__ = ["ClassifierCheckpointer", "last_checkpoint", "read_weights", "load_classifier_weights",
           "CheckpointError"]

logger = logging.getLogger(__name__)
FORMAT_KEY = "sact_cls_format"


class CheckpointError(ValueError):
    """A weights file does not fit the model (the message names the file and key)."""


class ClassifierCheckpointer(AtomicDetectionCheckpointer):
    """The detection side's atomic checkpointer; every file also holds ``extra`` (seed, class names,
    config, ...) and the format key :func:`read_weights` recognises."""

    def __init__(self, model: nn.Module, save_dir: str, extra: Dict[str, Any], **checkpointables: Any) -> None:
        super().__init__(model, save_dir, **checkpointables)
        self.extra = dict(extra)

    def save(self, name: str, **kwargs: Any) -> None:
        super().save(name, **{**self.extra, FORMAT_KEY: 1, **kwargs})


def last_checkpoint(folder: str) -> Optional[str]:
    """Path of the newest checkpoint in ``folder`` (None when there is none)."""
    tag = os.path.join(folder, "last_checkpoint")
    if not os.path.isfile(tag):
        return None
    with open(tag) as f:
        path = os.path.join(folder, f.read().strip())
    if not os.path.isfile(path):
        raise CheckpointError(f"{tag} names {path}, which does not exist")
    return path


def _to_tensor_dict(weights: Dict[str, Any], path: str) -> "OrderedDict[str, torch.Tensor]":
    out = OrderedDict()
    for k, v in weights.items():
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(np.ascontiguousarray(v))
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{path}: entry {k!r} is a {type(v).__name__}, not an array")
        out[k] = v
    return out


def read_weights(path: str) -> Dict[str, Any]:
    """Weights in classifier naming: {"model": {"backbone.stem.conv1.weight": ..., "linear.weight": ...},
    "source": "sact_cls" | "d2" | "torchvision", "checkpoint": raw dict (training state for sact_cls)}."""
    if not os.path.isfile(path):
        raise CheckpointError(f"weights file {path} does not exist")
    try:
        if path.endswith(".pkl"):
            with open(path, "rb") as f:
                raw = pickle.load(f, encoding="latin1")
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)  # plain tensors / containers only
    except Exception as e:
        raise CheckpointError(f"cannot read weights file {path}: {type(e).__name__}: {e}") from e
    if isinstance(raw, dict) and FORMAT_KEY in raw:
        return {"model": _to_tensor_dict(raw["model"], path), "source": "sact_cls", "checkpoint": raw}
    weights = raw
    if isinstance(raw, dict):
        for key in ("model", "state_dict"):
            if isinstance(raw.get(key), dict):
                weights = raw[key]
                break
    if not isinstance(weights, dict) or not weights:
        raise CheckpointError(f"{path}: no state dict found (got {type(weights).__name__})")
    weights = _to_tensor_dict({k: v for k, v in weights.items() if not k.endswith("num_batches_tracked")}, path)
    if is_torchvision_state_dict(weights):
        return {"model": _prefix(torchvision_to_d2(weights)), "source": "torchvision", "checkpoint": raw}
    if any(k.endswith("_w") or "branch2a" in k for k in weights):
        raise CheckpointError(f"{path} has Caffe2 (Detectron1) names such as {next(iter(weights))!r}; only "
                              "detectron2 / torchvision / sact_det classifier names are supported")
    return {"model": _prefix(weights), "source": "d2", "checkpoint": raw}


def _prefix(d2_weights: Dict[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """detectron2 ResNet names (stem.*, res2.*, linear.*) -> classifier names (backbone.*, linear.*).
    ``stem.fc.*`` (what detectron2's tools/convert-torchvision-to-d2.py makes of torchvision's fc) -> linear.*."""
    out = OrderedDict()
    for k, v in d2_weights.items():
        if k.startswith("stem.fc."):
            k = "linear." + k[len("stem.fc."):]
        out[k if k.startswith(("linear.", "backbone.")) else "backbone." + k] = v
    return out


def load_classifier_weights(model: nn.Module, path: str, reset_fc: bool = False) -> Dict[str, List[str]]:
    """Load ``path`` into a classifier: halting params absent from the file start new; any other
    missing or mis-shaped param, or an fc with another class count (unless ``reset_fc``), is an error.
    Returns {"new": [...], "unused": [...]} parameter names."""
    model = getattr(model, "module", model)
    weights = read_weights(path)["model"]
    own = model.state_dict()
    if reset_fc:
        weights = OrderedDict((k, v) for k, v in weights.items() if not k.startswith("linear."))
    fc = weights.get("linear.weight")
    if fc is not None and tuple(fc.shape) != tuple(own["linear.weight"].shape):
        raise CheckpointError(
            f"{path} has a {fc.shape[0]}-class classifier (linear.weight {tuple(fc.shape)}), but the model has "
            f"{model.num_classes} classes (linear.weight {tuple(own['linear.weight'].shape)}); check the dataset "
            "or set SACT_CLS.RESET_FC True to train a new classifier")
    for k, v in weights.items():
        if k in own and own[k].shape != v.shape:
            raise CheckpointError(f"{path}: {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)} "
                                  "(check MODEL.RESNETS.DEPTH / SACT_CLS.ARCH / SACT_CLS.CIFAR.*)")
    missing = [k for k in own if k not in weights and not k.endswith("num_batches_tracked")]
    new = [k for k in missing if ".halting." in k or (reset_fc and k.startswith("linear."))]
    absent = [k for k in missing if k not in new]
    if absent and all(k.startswith("linear.") for k in absent):
        raise CheckpointError(f"{path} has no classifier (linear.*); set SACT_CLS.RESET_FC True to start a new one")
    if absent:
        raise CheckpointError(f"{path} lacks {len(absent)} parameters of the model, e.g. {absent[:4]} "
                              "(is it a ResNet of the same depth / architecture?)")
    unused = [k for k in weights if k not in own]
    model.load_state_dict(weights, strict=False)
    if new:
        logger.info("%s: %d parameters start new (e.g. %s)", path, len(new), new[:2])
    if unused:
        logger.warning("%s: %d entries not used by the model (e.g. %s)", path, len(unused), unused[:3])
    return {"new": new, "unused": unused}
