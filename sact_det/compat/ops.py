"""detectron2's compiled ops (`detectron2._C`) when this detectron2 has none.

Nothing here is applied when `detectron2._C` imports (a detectron2 built from source). Without it,
each decision reads the module's source (see `apply`):

- deformable convolution: where `detectron2.layers.deform_conv` calls `_C` kernels, its
  `deform_conv` / `modulated_deform_conv` run through `torchvision.ops.deform_conv2d` (forward and
  backward, CPU and GPU). While that module executes, `from detectron2 import _C` binds a
  placeholder, so detectron2 0.6 imports and detectron2 main keeps its real `DeformConv` classes
  instead of its "not compiled" dummies; the placeholder is removed right after.
- rotated-box ops: where `nms_rotated`, `pairwise_iou_rotated`, `roi_align_rotated` call `_C` or
  `torch.ops.detectron2`, they raise `MissingCompiledOpError` saying how to get them.
"""
import ast
import importlib.util
import re
import types
import warnings
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from torch.nn.modules.utils import _pair

from . import _source
from ._hooks import when_imported
from ._registry import Patch, record

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


def _missing(op: str) -> Callable[..., None]:
    def raise_missing(*args, **kwargs):
        raise MissingCompiledOpError(
            f"{op} needs detectron2's compiled ops (detectron2._C), which this detectron2 install "
            f"lacks (a pure-Python detectron2). {BUILD_HINT}"
        )

    raise_missing.__name__ = op.rsplit(".", 1)[-1]
    return raise_missing


def _placeholder_c_module() -> types.ModuleType:
    stub = types.ModuleType("detectron2._C", "sact_det placeholder: this detectron2 has no _C.")

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(
            f"detectron2._C.{name} is a compiled op that this detectron2 install lacks "
            f"(a pure-Python detectron2). {BUILD_HINT}"
        )

    stub.__getattr__ = __getattr__  # type: ignore[attr-defined]
    return stub


def provide_c_during_import() -> Optional[Callable[[], None]]:
    """Before-hook: bind `detectron2._C` to a placeholder while one module executes.

    `from detectron2 import _C` then succeeds in that module (its `_C` raises a clear error on
    use); afterwards the package attribute is removed again, so other modules (and
    `import detectron2._C`, used by collect_env) still see that _C is missing.
    """
    import detectron2

    if "_C" in vars(detectron2):
        return None
    placeholder = _placeholder_c_module()
    detectron2._C = placeholder  # type: ignore[attr-defined]

    def undo() -> None:
        if vars(detectron2).get("_C") is placeholder:
            del detectron2._C

    return undo


def uses_compiled_ops(module: str) -> List[str]:
    """The compiled-op references in `module`'s source: `_C.x` and `torch.ops.detectron2.x`."""
    tree = _source.module_tree(module)
    if tree is None:
        return []
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            name = _source.dotted(node)
            if name.startswith("_C.") and name.count(".") == 1:
                found.add(name)
            elif name.startswith("torch.ops.detectron2.") and name.count(".") == 3:
                found.add(name)
    return sorted(found)


def imports_c(module: str) -> bool:
    """True when `module` does `from detectron2 import _C` at module level (guarded or not)."""
    tree = _source.module_tree(module)
    return tree is not None and any(_source.imports_at_module_level(tree, "detectron2", "_C"))


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
    for name, fn in (("deform_conv", deform_conv), ("modulated_deform_conv", modulated_deform_conv)):
        if hasattr(module, name):
            setattr(module, name, fn)


# module -> the function in it that needs a compiled op, for rotated boxes
ROTATED_OPS: Dict[str, str] = {
    "detectron2.layers.nms": "nms_rotated",
    "detectron2.layers.rotated_boxes": "pairwise_iou_rotated",
    "detectron2.layers.roi_align_rotated": "roi_align_rotated",
}


def _patch_rotated(name: str) -> Callable[[types.ModuleType], None]:
    def patch(module: types.ModuleType) -> None:
        if hasattr(module, name):
            setattr(module, name, _missing(f"{module.__name__}.{name}"))

    patch.__name__ = f"_patch_{name}"
    return patch


def apply() -> List[Patch]:
    """Decide and register the _C fallbacks (none when detectron2._C loads)."""
    ok, state = compiled_state()
    if ok:
        return []
    patches = []
    module = "detectron2.layers.deform_conv"
    kernels = [k for k in uses_compiled_ops(module) if k.startswith("_C.")]
    if kernels:
        if imports_c(module):
            when_imported(module, before=provide_c_during_import)
        when_imported(module, after=_patch_deform_conv)
        patches.append(Patch(
            "deform_conv_torchvision",
            f"{module}.deform_conv, .modulated_deform_conv",
            f"{state}; {module} calls {len(kernels)} _C kernels ({', '.join(kernels[:2])}, ...)",
            "torchvision.ops.deform_conv2d (forward + backward, CPU and GPU); a placeholder _C "
            "only while that module executes, so DeformConv / ModulatedDeformConv are the real "
            "classes",
        ))
    replaced, found = [], []
    for module, func in ROTATED_OPS.items():
        ops = uses_compiled_ops(module)
        if not ops or not re.search(rf"\b{func}\b", _source.module_source(module) or ""):
            continue
        if imports_c(module):
            when_imported(module, before=provide_c_during_import)
        when_imported(module, after=_patch_rotated(func))
        replaced.append(f"{module}.{func}")
        found.append(ops[0])
    if replaced:
        patches.append(Patch(
            "rotated_ops_error",
            ", ".join(replaced),
            f"{state}; they call {', '.join(found)}",
            "raise MissingCompiledOpError with build instructions (instead of an "
            "'operator not found' / import error)",
        ))
    for p in patches:
        record(p)
    return patches
