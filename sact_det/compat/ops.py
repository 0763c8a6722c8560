"""Compiled detectron2 ops (`detectron2._C`) for a pure-Python detectron2 0.6 install.

With a detectron2 built from source (`detectron2._C` importable) nothing here is applied.
Without it: `detectron2._C` becomes a placeholder module so that ``from detectron2 import _C``
succeeds; deformable convolution runs through `torchvision.ops.deform_conv2d` (forward and
backward, CPU and GPU); rotated-box ops raise `MissingCompiledOpError` saying how to get them.
"""
import importlib.util
import types
import warnings
from typing import Optional, Tuple, Union

import torch
from torch.nn.modules.utils import _pair

from ._hooks import when_imported

BUILD_HINT = (
    "Build detectron2 from source into this environment "
    "(`.venv/bin/python -m pip install --no-build-isolation -e <detectron2 checkout>`, "
    "see README 'Setup'), then rerun."
)

_IntPair = Union[int, Tuple[int, int]]


class MissingCompiledOpError(NotImplementedError):
    """A detectron2 op that exists only in detectron2's compiled extension (detectron2._C)."""


def has_compiled_ops() -> bool:
    """True when detectron2._C (a source build of detectron2) is importable and loads."""
    return compiled_state()[0]


_STATE: Optional[Tuple[bool, str]] = None


def compiled_state() -> Tuple[bool, str]:
    """(detectron2._C usable, a one-line description), computed once."""
    global _STATE
    if _STATE is None:
        if importlib.util.find_spec("detectron2._C") is None:
            _STATE = (False, "detectron2._C is absent (pure-Python detectron2)")
        else:
            try:
                import detectron2._C  # noqa: F401
                _STATE = (True, "detectron2._C loaded (detectron2 built from source)")
            except ImportError as e:  # a source build that no longer matches torch, etc.
                warnings.warn(
                    f"detectron2._C exists but fails to import ({e}); using sact_det's pure-Python "
                    f"fallbacks instead. Rebuild detectron2 against the installed torch to fix.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                _STATE = (False, f"detectron2._C fails to import: {e}")
    return _STATE


def _missing(op: str):
    def raise_missing(*args, **kwargs):
        raise MissingCompiledOpError(
            f"{op} needs detectron2's compiled ops (detectron2._C), which this detectron2 install "
            f"lacks (pure-Python detectron2 0.6 from the package index). {BUILD_HINT}"
        )

    raise_missing.__name__ = op.rsplit(".", 1)[-1]
    return raise_missing


def _placeholder_c_module() -> types.ModuleType:
    stub = types.ModuleType("detectron2._C", "Placeholder: detectron2 was installed without _C.")

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(
            f"detectron2._C.{name} is a compiled op that this detectron2 install lacks "
            f"(pure-Python detectron2 0.6). {BUILD_HINT}"
        )

    stub.__getattr__ = __getattr__  # type: ignore[attr-defined]
    return stub


def _check_channels(name: str, t: torch.Tensor, per_group: int, groups: int, kernel: str) -> None:
    if t.dim() != 4 or t.shape[1] != per_group * groups:
        raise ValueError(
            f"deformable conv: {name} must have shape (B, {per_group * groups}, H_out, W_out) "
            f"for a {kernel} kernel and deformable_groups={groups}; got {tuple(t.shape)}"
        )


def deform_conv(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    stride: _IntPair = 1,
    padding: _IntPair = 0,
    dilation: _IntPair = 1,
    groups: int = 1,
    deformable_groups: int = 1,
    im2col_step: int = 64,
) -> torch.Tensor:
    """detectron2's `deform_conv` via torchvision.

    input (B,Cin,H,W), offset (B, 2*dg*kh*kw, Ho, Wo) as (dy, dx) pairs, weight
    (Cout, Cin/groups, kh, kw) -> (B,Cout,Ho,Wo). `im2col_step` only tunes the CUDA kernel.
    """
    return modulated_deform_conv(
        input, offset, None, weight, None, stride, padding, dilation, groups, deformable_groups
    )


def modulated_deform_conv(
    input: torch.Tensor,
    offset: torch.Tensor,
    mask: Optional[torch.Tensor],
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: _IntPair = 1,
    padding: _IntPair = 0,
    dilation: _IntPair = 1,
    groups: int = 1,
    deformable_groups: int = 1,
) -> torch.Tensor:
    """detectron2's `modulated_deform_conv` (DCNv2) via torchvision.

    mask (B, dg*kh*kw, Ho, Wo) scales each sampled value; other shapes as in `deform_conv`.
    """
    from torchvision.ops import deform_conv2d

    if input.dim() != 4:
        raise ValueError(f"Expected 4D tensor as input, got {input.dim()}D tensor instead.")
    kh, kw = weight.shape[-2:]
    if weight.shape[1] * groups != input.shape[1]:
        raise ValueError(
            f"deformable conv: weight {tuple(weight.shape)} with groups={groups} does not match "
            f"input channels {input.shape[1]}"
        )
    kernel = f"{kh}x{kw}"
    _check_channels("offset", offset, 2 * kh * kw, deformable_groups, kernel)
    if mask is not None:
        _check_channels("mask", mask, kh * kw, deformable_groups, kernel)
    return deform_conv2d(
        input,
        offset,
        weight,
        bias,
        stride=_pair(stride),
        padding=_pair(padding),
        dilation=_pair(dilation),
        mask=mask,
    )


def _patch_deform_conv(module: types.ModuleType) -> None:
    # detectron2 0.6 without _C: its autograd Functions call _C (and have no CPU backward).
    module.deform_conv = deform_conv
    module.modulated_deform_conv = modulated_deform_conv


def _patch_nms(module: types.ModuleType) -> None:
    # detectron2 0.6 without _C: torch.ops.detectron2.nms_rotated is not registered.
    module.nms_rotated = _missing("detectron2.layers.nms_rotated")


def _patch_rotated_boxes(module: types.ModuleType) -> None:
    # detectron2 0.6 without _C: box_iou_rotated is a compiled op.
    module.pairwise_iou_rotated = _missing("detectron2.layers.pairwise_iou_rotated")


def _patch_roi_align_rotated(module: types.ModuleType) -> None:
    # detectron2 0.6 without _C: ROIAlignRotated forward/backward are compiled ops.
    module.roi_align_rotated = _missing("detectron2.layers.ROIAlignRotated")


def apply() -> bool:
    """Install the fallbacks if detectron2._C is missing. Returns True when they are in use."""
    if has_compiled_ops():
        return False
    import detectron2

    if not isinstance(getattr(detectron2, "_C", None), types.ModuleType):
        # detectron2 0.6 pure-Python: `from detectron2 import _C` must bind something; only the
        # package attribute is set, so `import detectron2._C` still fails (truthful collect_env).
        detectron2._C = _placeholder_c_module()  # type: ignore[attr-defined]
    when_imported("detectron2.layers.deform_conv", after=_patch_deform_conv)
    when_imported("detectron2.layers.nms", after=_patch_nms)
    when_imported("detectron2.layers.rotated_boxes", after=_patch_rotated_boxes)
    when_imported("detectron2.layers.roi_align_rotated", after=_patch_roi_align_rotated)
    return True
