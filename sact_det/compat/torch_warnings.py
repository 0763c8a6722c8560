"""Warnings that today's torch raises on detectron2 0.6 / fvcore code and that a sact_det user
cannot act on: the import-time `torch.jit.script` deprecation (torch 2.14 deprecates it) and
`torch.meshgrid` without `indexing` (torch >= 1.10) in detectron2's anchor generator.
"""
import types
import warnings
from typing import Callable, List, Tuple

import torch

from ._hooks import when_imported

JIT_MODULES = ("detectron2.modeling.box_regression", "fvcore.nn.focal_loss")


def _silence_jit_script() -> Callable[[], None]:
    # torch 2.14 (jit.script deprecated) vs detectron2 0.6 / fvcore: import-time FutureWarning.
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated",
                            category=FutureWarning)
    return lambda: ctx.__exit__(None, None, None)


def create_grid_offsets(
    size: List[int], stride: int, offset: float, device: torch.device
) -> Tuple[torch.Tensor, torch.Tensor]:
    """detectron2 0.6's anchor_generator._create_grid_offsets with explicit meshgrid indexing.

    Returns shift_x, shift_y: (H*W,) each, row-major over the (H, W) grid of the feature map.
    """
    grid_height, grid_width = size
    shifts_x = torch.arange(offset * stride, grid_width * stride, step=stride,
                            dtype=torch.float32, device=device)
    shifts_y = torch.arange(offset * stride, grid_height * stride, step=stride,
                            dtype=torch.float32, device=device)
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    return shift_x.reshape(-1), shift_y.reshape(-1)


def _patch_anchor_generator(module: types.ModuleType) -> None:
    # torch >= 1.10 vs detectron2 0.6: torch.meshgrid called without indexing= (UserWarning).
    module._create_grid_offsets = create_grid_offsets


def apply() -> List[str]:
    for name in JIT_MODULES:
        when_imported(name, before=_silence_jit_script)
    when_imported("detectron2.modeling.anchor_generator", after=_patch_anchor_generator)
    return list(JIT_MODULES) + ["detectron2.modeling.anchor_generator"]
