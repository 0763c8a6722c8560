"""Sparse SACT inference: a residual unit costs time only at its active positions.

``sparse_unit_forward(folded, x, active)`` returns ``torch.where(active, block(x), x)`` (the
masked dense path) up to fp32 round-off, but computes the unit only where it is needed:
the first conv on the 3x3-dilated active mask (its 3x3 neighbour reads it; for a basic unit
the first conv is itself 3x3 and reads the state, available everywhere), the other convs on
the active mask. Per image: gather the needed positions -> one GEMM per conv (3x3 convs as
an im2col of the active positions) -> scatter into the output (kernels in :mod:`.gather`).
Pure PyTorch, BN folded (:mod:`.fold`), eval only. Whole-image (ACT) masks and images above
``max_density`` run the dense folded unit, empty images are skipped. Channels-last inputs are
faster than NCHW ones (whole rows of C values are gathered instead of strided columns).
The halting branch and the output accumulation have sparse versions in :mod:`.sparse_halting`.
"""
import weakref
from typing import Callable, List, Optional, Tuple

import torch
from torch import nn

from ...config.constants import EXECUTION_MODES, SPARSE_MAX_DENSITY  # re-exported: defined once there
from .fold import FoldedUnit, dense_folded_forward, fold_unit
from . import native
from .gather import MapStats, MapView, Scratch, active_density, basic_image, bottleneck_image, dilate

__all__ = [
    "SPARSE_MAX_DENSITY", "EXECUTION_MODES", "cached_fold", "release_folds",
    "fold_unit", "FoldedUnit", "dense_folded_forward", "sparse_unit_forward", "active_density",
]



_FOLD_CACHE: "weakref.WeakKeyDictionary[nn.Module, Tuple[tuple, object]]" = weakref.WeakKeyDictionary()


def cached_fold(block: nn.Module, fold: Callable[[nn.Module], object] = fold_unit):
    """``fold(block)`` (:func:`fold_unit`, or :func:`fold_block` for stems / first units), cached per block;
    refolded when a tensor of the block outside its halting branch changed (``load_state_dict``,
    ``.to()``, in-place updates all change ``data_ptr`` or ``_version``). :func:`release_folds` frees them."""
    tensors = [t for n, t in (*block.named_parameters(), *block.named_buffers()) if not n.startswith("halting.")]
    key = (fold, *((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors))
    hit = _FOLD_CACHE.get(block)
    if hit is None or hit[0] != key:
        hit = _FOLD_CACHE[block] = (key, fold(block))
    return hit[1]


def release_folds(module: nn.Module) -> None:
    """Drop the cached folds of ``module`` and its submodules (e.g. when it goes back to training)."""
    for m in module.modules():
        _FOLD_CACHE.pop(m, None)


def _check(folded: FoldedUnit, x: torch.Tensor, active: torch.Tensor) -> None:
    if not isinstance(folded, FoldedUnit):
        raise TypeError(f"sparse_unit_forward: expected a FoldedUnit (see fold_unit), got {type(folded).__name__}")
    if folded.kind == "stem" or folded.shortcut is not None or any(c.stride != 1 for c in folded.convs):
        raise ValueError("sparse_unit_forward: needs a unit with identity shortcut and stride 1 (fold_unit)")
    if x.dim() != 4 or x.shape[1] != folded.channels:
        raise ValueError(f"sparse_unit_forward: x must be (B,{folded.channels},H,W), got {tuple(x.shape)}")
    if active.dtype != torch.bool or active.dim() != 4 or active.shape[:2] != (x.shape[0], 1) \
            or active.shape[2:] not in ((1, 1), x.shape[2:]):
        raise ValueError(f"sparse_unit_forward: active must be bool (B,1,H,W) or (B,1,1,1) for x "
                         f"{tuple(x.shape)}, got {active.dtype} {tuple(active.shape)}")
    if torch.is_grad_enabled() and x.requires_grad:
        raise RuntimeError("sparse_unit_forward is inference-only (x requires grad); use the masked dense path")


def _keep_inactive(y: torch.Tensor, x: torch.Tensor, active: torch.Tensor, frac: List[float]) -> torch.Tensor:
    """``torch.where(active, y, x)`` written into ``y`` (B,C,H,W); active (B,1,H,W) bool, frac its per-image density.
    On CPU with channels-last maps, the rows of the (few) inactive positions are copied (cost proportional to
    them) instead of a pass over the whole map; elsewhere ``torch.where`` (no host synchronisation on CUDA)."""
    rows = y.is_contiguous(memory_format=torch.channels_last) and x.is_contiguous(memory_format=torch.channels_last) \
        and not y.is_contiguous()
    if y.device.type != "cpu" or not rows or any(f < 0.5 for f in frac):
        return torch.where(active, y, x, out=y)
    for b, f in enumerate(frac):
        if f < 1.0:
            idx = (~active[b, 0]).reshape(-1).nonzero().squeeze(1)
            dst, src = MapView(y[b]), MapView(x[b])
            if dst.native_rows and src.native_rows:
                native.copy_rows(dst.mat, src.mat, idx)
            else:
                dst.scatter(idx, src.gather_plain(idx))
    return y


def sparse_unit_forward(folded: FoldedUnit, x: torch.Tensor, active: torch.Tensor,
                        max_density: float = 1.0, inplace: bool = False,
                        density: Optional[List[float]] = None, stats: Optional[MapStats] = None) -> torch.Tensor:
    """``torch.where(active, block(x), x)`` computed only where needed.

    x: (B,C,H,W) float; active: (B,1,H,W) bool, or (B,1,1,1) for ACT (whole image on/off).
    Images with no active position are copied (if no image is active, ``x`` itself is returned);
    images with active fraction >= ``max_density`` (and whole-image masks) run the dense folded
    unit; the rest run the gather kernel (``max_density > 1`` forces it even for full images).
    ``density``: :func:`active_density` of ``active`` if the caller has it. ``inplace=True`` lets the result
    be written into ``x`` (if x is NCHW- or channels-last-
    contiguous; x must not be used afterwards). Returns (B,C,H,W) in the dtype of x, and in the
    memory format of x when the gather kernel ran (under ``torch.autocast`` with a bf16 / fp16 x
    the whole unit runs in that dtype, see :meth:`FoldedUnit.to_dtype`). Channels-last is faster
    (gathers and scatters whole rows of C values instead of strided columns). ``stats``: the per-channel sums
    of x (:class:`.gather.MapStats`), updated for the images the native gather kernel wrote and marked
    invalid for those that ran densely.
    """
    _check(folded, x, active)
    folded = folded.to_dtype(x.dtype)  # under autocast: the fold rounded to the bf16 / fp16 state
    B, C, H, W = x.shape
    whole = active.shape[2:] == (1, 1)
    frac = active_density(active) if density is None else density
    if not any(frac):
        return x
    dense_ids = [b for b, d in enumerate(frac) if d > 0 and (whole or d >= max_density)]
    sparse_ids = [b for b, d in enumerate(frac) if 0 < d and not (whole or d >= max_density)]
    if stats is not None:
        for b in dense_ids:
            stats.valid[b] = False
    if len(dense_ids) == B:  # every image runs densely: no copy of x, no per-image indexing
        y = dense_folded_forward(folded, x).to(x.dtype)  # (autocast convs return bf16 / fp16 for an fp32 x)
        return y if min(frac) == 1.0 else _keep_inactive(y, x, active, frac)
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        x = x.contiguous()
    out = x if inplace else x.clone()  # same memory format as x
    if dense_ids:
        ids = torch.tensor(dense_ids, device=x.device)
        xd = x.index_select(0, ids)
        y = dense_folded_forward(folded, xd).to(x.dtype)
        if any(frac[b] < 1.0 for b in dense_ids):
            y = _keep_inactive(y, xd, active.index_select(0, ids), [frac[b] for b in dense_ids])
        out.index_copy_(0, ids, y)
    if sparse_ids:
        run = bottleneck_image if folded.kind == "bottleneck" else basic_image
        m = active[sparse_ids, 0]
        dm = dilate(m, folded.convs[1].dilation)
        ws = Scratch(x)
        for i, b in enumerate(sparse_ids):
            view = MapView(out[b])  # read and written in place: every position is read before it is written
            tracked = run(folded, view, view, m[i], dm[i], ws, None if stats is None else stats.delta(b))
            if stats is not None and not tracked:
                stats.valid[b] = False
    return out
