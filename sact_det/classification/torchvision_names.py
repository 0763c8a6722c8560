"""torchvision ResNet weights: their parameter names in detectron2 naming, and their input convention.

Shared by reading weights (``checkpoint.read_weights``) and exporting them (``export``).
"""
import re
from collections import OrderedDict
from typing import Any, Mapping

import torch

__all__ = ["TORCHVISION_INPUT", "is_torchvision_state_dict", "torchvision_to_d2"]

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
