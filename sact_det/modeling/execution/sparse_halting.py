"""Sparse inference for the rest of a SACT step: the halting score and the output accumulation.

After unit ``l >= 1`` ran on the active mask, only active positions need a halting score (the
halting arithmetic ignores the others) and only they get a nonzero weight ``p^l``. So:

* :func:`sparse_halting` evaluates a :class:`SpatialHalting` branch at the active positions
  without materializing the normalized map: one pass for the per-channel mean / variance (global
  pooling and GroupNorm statistics are over the whole map), one skinny GEMM for the k*k conv
  taps of every position, and a gather-sum of the taps at the active positions (0 elsewhere).
  It is also several times faster than the dense branch with every position active.
* :func:`masked_accumulate_` adds ``weight * x`` into ``out`` at the active positions only.

Both equal the dense computation (``halting(x)`` at active positions; ``out + weight * x``)
up to fp32 round-off. Eval only, no autograd. Under ``torch.autocast`` (x in bf16 / fp16) the
tap GEMM runs in x's dtype; the map statistics and the score are computed in float32 and
``out`` may be float32 (the halting state's dtype, :func:`.act.state_dtype`).
"""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.layers import FrozenBatchNorm2d

from ..core.norms import inference_affine
from ..halting.branches import SpatialHalting, shift_sum
from ..halting.state import HaltingState, state_dtype
from .fold import rows_linear
from . import native
from .gather import MapStats, MapView, active_density, dilate, neighbour_index

__all__ = ["sparse_halting", "masked_accumulate_", "supports_sparse_halting", "SparseHaltingState"]

GATHER_TAPS_BELOW = 0.2  # active fraction below which the conv taps are computed on gathered rows only
NATIVE_GATHER_TAPS_BELOW = 0.4  # the same with the native dot kernel (reads the rows in place: no gathered copy)
NATIVE_ACCUMULATE_BELOW = 0.5  # active fraction below which the native kernel accumulates (else a dense pass)


def _group_norm_affine(norm: nn.GroupNorm, s1: torch.Tensor, s2: torch.Tensor,
                       n: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(a, d), each (B,C) float64, with GroupNorm(x) = a * x + d per (image, channel); s1, s2: (B,C) float64
    per-channel sums and sums of squares of the n positions of each map (combined per group)."""
    B, C = s1.shape
    g = norm.num_groups
    count = n * (C // g)
    gm = s1.view(B, g, -1).sum(2) / count
    rstd = (s2.view(B, g, -1).sum(2) / count - gm * gm).clamp_min_(0).add_(norm.eps).rsqrt_()  # E[x^2] - E[x]^2
    a = rstd.repeat_interleave(C // g, 1)
    if norm.weight is not None:
        a = a * norm.weight.detach().double()
    d = gm.repeat_interleave(C // g, 1).mul_(a).neg_()
    return a, d if norm.bias is None else d.add_(norm.bias.detach().double())


def _fixed_affine(norm: nn.Module, weight: torch.Tensor) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """(a, d) (C,) with norm(x) = a * x + d per channel when they do not depend on the map (identity,
    inference-mode BN / FrozenBN); None for GroupNorm (statistics of the map). ``weight``: the (1,C,k,k)
    conv weight that reads the normalized map (gives C, device and dtype)."""
    if isinstance(norm, nn.GroupNorm):
        return None
    if isinstance(norm, nn.Identity):
        return weight.new_ones(weight.shape[1]), weight.new_zeros(weight.shape[1])
    fixed = inference_affine(norm)
    if fixed is None:
        raise ValueError(f"sparse_halting: unsupported halting norm {type(norm).__name__} (or in training mode)")
    return fixed


def _global_logit(halting: SpatialHalting, mean: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The pooled branch, global_conv(global_norm(pooled)): (B,) float64 from the (B,C) float64 channel means of
    the map. Closed form in float64 for GroupNorm / fixed-affine norms on a float32 / float64 map (the pooled
    means rounded to the map's dtype first, as the dense branch pools in it); else the modules, in ``dtype``."""
    norm, conv = halting.global_norm, halting.global_conv
    B, C = mean.shape
    if dtype not in (torch.float32, torch.float64):
        return conv(norm(mean.to(dtype).view(B, C, 1, 1))).view(B).double()
    pooled = mean.to(dtype).double()
    if isinstance(norm, nn.GroupNorm):  # statistics over each group's channels of the 1x1 map
        a, d = _group_norm_affine(norm, pooled, pooled * pooled, 1)
    else:
        a, d = (t.detach().double() for t in _fixed_affine(norm, conv.weight))
    z = (pooled * a + d) @ conv.weight.detach().view(C).double()
    return z if conv.bias is None else z + float(conv.bias)


def _channel_sums(x: MapView, need_var: bool = True,
                  chunk_elems: int = 1 << 18) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Per-channel sum and sum of squares (None unless ``need_var``) over all positions of one map: (C,), (C,)
    float64.

    One pass: the native kernel on fp32 channels-last rows, else in chunks of positions (about
    ``chunk_elems`` values, at least 512 positions) through a small reused buffer (much faster on CPU
    than ``torch.var_mean`` over the spatial dims); bf16 / fp16 chunks are converted to float32 before
    they are squared.
    """
    rows = x.all_rows()  # (HW, C), possibly a transposed view
    if x.native_rows and x.channels <= native.SUMS_MAX_CHANNELS:
        return native.channel_sums(rows, need_var)
    n, c = rows.shape
    acc = state_dtype(rows.dtype)
    chunk = max(512, chunk_elems // max(c, 1))
    s1 = torch.zeros(c, dtype=torch.float64, device=rows.device)
    s2 = torch.zeros_like(s1) if need_var else None
    buf = rows.new_empty(min(chunk, n) * c, dtype=acc)
    for s in range(0, n, chunk):
        part = rows[s: s + chunk]
        out = buf[: part.numel()].view(part.shape) if x.rows else \
            buf[: part.numel()].view(part.shape[1], part.shape[0]).t()
        if part.dtype != acc:
            part = out.copy_(part)  # bf16 / fp16 -> float32 (squares and sums below in float32)
        s1 += part.sum(0)
        if need_var:
            s2 += torch.mul(part, part, out=out).sum(0)  # part is summed already: out may be part itself
    return s1, s2


def _map_sums(views: List[MapView], need_var: bool,
              stats: Optional[MapStats]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(B, C) float64 per-channel sums and sums of squares (None unless ``need_var``) of each map: from ``stats``
    where they are valid, else one pass over the map (whose sums are then stored in ``stats``)."""
    sums, squares = [], []
    for b, v in enumerate(views):
        if stats is not None and stats.valid[b]:
            s1, s2 = stats.sums[b]
        else:
            s1, s2 = _channel_sums(v, need_var or stats is not None)
            if stats is not None:
                stats.sums[b, 0], stats.sums[b, 1] = s1, s2
                stats.valid[b] = True
        sums.append(s1)
        squares.append(s2)
    return torch.stack(sums), torch.stack(squares) if need_var else None


def _taps(rows: torch.Tensor, wt: torch.Tensor, idx: Optional[torch.Tensor] = None) -> torch.Tensor:
    """rows[idx] @ wt^T (all rows without ``idx``): rows (HW, C), wt (k, C) -> (n, k) in the dtype of rows. The
    native dot kernel on fp32 rows (reads the rows in place: no gathered copy), else oneDNN / torch.addmm
    (:func:`.fold.rows_linear`) on the (gathered) rows."""
    k, c = wt.shape
    if native.usable(rows, wt) and k in native.DOT_WIDTHS and c % 8 == 0:
        return native.row_dots(rows, wt, idx)
    if idx is not None:
        rows = rows.index_select(0, idx)
    return rows_linear(rows.contiguous(), wt, wt.new_zeros(k))


def supports_sparse_halting(halting: nn.Module) -> bool:
    """Whether :func:`sparse_halting` handles this halting branch (else call the branch densely)."""
    if not isinstance(halting, SpatialHalting):
        return False
    k = halting.local_conv.kernel_size
    ok_norm = isinstance(halting.local_norm, (nn.Identity, nn.GroupNorm, FrozenBatchNorm2d, nn.BatchNorm2d))
    conv = halting.local_conv
    linear = getattr(halting, "activation", None) is None  # norm(x) = a*x + d must reach the conv unchanged
    return k in ((1, 1), (3, 3)) and conv.dilation == (1, 1) and conv.stride == (1, 1) \
        and conv.padding == (k[0] // 2, k[1] // 2) and ok_norm and linear and not halting.training


def sparse_halting(halting: SpatialHalting, x: torch.Tensor, active: Optional[torch.Tensor] = None,
                   density: Optional[List[float]] = None, stats: Optional[MapStats] = None) -> torch.Tensor:
    """Halting score at the active positions: x (B,C,H,W), active (B,1,H,W) bool or None (all positions)
    -> h (B,1,H,W), 0 where not active, in :func:`.act.state_dtype` of x (float32 for bf16 / fp16 x).

    norm(x) = a*x + d per channel (GroupNorm: a, d from the map statistics), so the kxk conv of the
    zero-padded norm(x) at p is sum over in-map neighbours q_k of (taps[q_k, k] + e_k), with
    taps = x_rows @ (w*a) (one skinny GEMM over the map) and e_k = sum_c w[c,k] d[c].
    ``stats``: the per-channel sums of x (:class:`.gather.MapStats`) kept by the stage; used where valid (no
    pass over the map for the GroupNorm statistics / the pooled mean), filled in where not.
    """
    if not supports_sparse_halting(halting):
        raise ValueError(f"sparse_halting: unsupported halting branch {halting}")
    B, C, H, W = x.shape
    hw, conv = H * W, halting.local_conv
    k2, p = conv.kernel_size[0] * conv.kernel_size[1], conv.padding[0]
    acc = state_dtype(x.dtype)  # the score's dtype; the tap GEMM runs in x's dtype (autocast: bf16 / fp16)
    views = [MapView(x[b]) for b in range(B)]
    dens = [1.0] * B if active is None else density if density is not None else active_density(active)
    below = NATIVE_GATHER_TAPS_BELOW if views and views[0].native_rows and C % 8 == 0 else GATHER_TAPS_BELOW
    gathered = [0 < f < below for f in dens]
    fixed_global = _fixed_affine(halting.global_norm, halting.global_conv.weight)
    known = stats is not None and all(stats.valid)
    if fixed_global is not None and not any(gathered) and not known:
        # the pooled branch is linear in the map mean: one more GEMM column, mean(x_rows @ (wg*ag)) + sum(wg*dg)
        wg = halting.global_conv.weight.reshape(C).to(acc)
        gcol, gconst = wg * fixed_global[0].to(acc), (wg * fixed_global[1].to(acc)).sum()
        s1 = s2 = None
    else:
        need_var = isinstance(halting.local_norm, nn.GroupNorm)  # other norms: a, d do not depend on the map
        s1, s2 = _map_sums(views, need_var, stats)  # (B,C) float64; a pass over a map without valid stats
        glob = _global_logit(halting, s1 / hw, x.dtype).to(acc)
    fixed_local = _fixed_affine(halting.local_norm, conv.weight)
    a, d = (t.detach().double().expand(B, C) for t in fixed_local) if fixed_local is not None else \
        _group_norm_affine(halting.local_norm, s1, s2, hw)
    w = conv.weight.detach().reshape(C, k2).double()
    h = x.new_zeros(B, hw, dtype=acc)
    for b in range(B):
        # wa (C, k2): the conv weight times the norm's scale; const (k2,): the norm's shift through the conv
        wa, const = (w * a[b][:, None]).to(acc), (d[b] @ w).to(acc)
        m = None if active is None else active[b, 0]
        if dens[b] == 0:
            continue
        if gathered[b]:
            # few active positions: taps only on the dilated mask (rows gathered), neighbours in that order
            aidx, didx, nbr, _ = neighbour_index(m, dilate(m[None], 1)[0] if k2 > 1 else m, 1, k2)
            outside = didx.numel()
            # taps[q, k] = sum_c w[c,k] a[c] x[c,q] (+ a zero last row: padding)
            wt = wa.to(x.dtype).t().contiguous()
            taps = torch.cat([_taps(views[b].all_rows(), wt, didx), wt.new_zeros(1, k2)])
            # elementwise + sum, not ``@``: autocast would run a matmul in bf16 / fp16
            z = taps.gather(0, nbr).to(acc).sum(1) + ((nbr < outside).to(acc) * const).sum(1)
            h[b].index_copy_(0, aidx, torch.sigmoid(z + conv.bias[0] + glob[b]))
            continue
        # every position: taps (k2 [+1], HW) = [w*a, wg*ag]^T @ x^T (one skinny GEMM: oneDNN on fp32 CPU
        # channel-last rows, else torch.mm in the orientation fastest for it), then the conv as k2 shifted
        # sums; the norm's shift counts only for in-map neighbours
        cols = (wa if s1 is not None else torch.cat([wa, gcol[:, None]], 1)).to(x.dtype)
        rows = views[b].all_rows()
        if views[b].native_rows and native.usable(h) and C % 8 == 0:  # the taps, then the logits in native passes
            taps = _taps(rows, cols.t().contiguous()).contiguous()  # (HW, k2 [+1])
            g = glob[b] if s1 is not None else taps[:, k2].mean() + gconst
            native.tap_logits(taps, H, W, const.contiguous(), float(conv.bias[0] + g),
                              None if m is None else m.reshape(-1), h[b]).sigmoid_()  # -inf -> 0 off the mask
            continue
        if rows.is_contiguous() and x.dtype == torch.float32:
            taps = _taps(rows, cols.t().contiguous()).t().to(acc)
        else:
            taps = torch.mm(cols.t(), rows.t()).to(acc)
        g = glob[b] if s1 is not None else taps[k2].mean() + gconst
        z = shift_sum(taps[:k2].view(k2, H, W), p) + shift_sum(const.view(k2, 1, 1).expand(k2, H, W), p)
        z = torch.sigmoid(z.view(-1) + (conv.bias[0] + g))
        h[b] = z if m is None else z.masked_fill_(~m.reshape(-1), 0.0)
    return h.view(B, 1, H, W)


def masked_accumulate_(out: torch.Tensor, weight: torch.Tensor, x: torch.Tensor, active: torch.Tensor,
                       max_density: float = 0.5, density: Optional[List[float]] = None) -> torch.Tensor:
    """out += weight * x, touching only active positions (weight is 0 elsewhere); in place, returns out.

    out, x: (B,C,H,W) same memory format; weight: (B,1,H,W); active: (B,1,H,W) bool. Images with
    active fraction >= ``max_density`` use one dense in-place pass (>= :data:`NATIVE_ACCUMULATE_BELOW` with
    the native row kernel, fp32 channels-last).
    """
    B, C, H, W = x.shape
    frac = active_density(active) if density is None else density
    for b, f in enumerate(frac):
        if f == 0:
            continue
        o, xv = MapView(out[b]), MapView(x[b])
        fast = o.native_rows and xv.native_rows and native.usable(weight)
        if f >= (NATIVE_ACCUMULATE_BELOW if fast else max_density):
            out[b].addcmul_(weight[b], x[b])
            continue
        aidx = active[b].reshape(-1).nonzero().squeeze(1)
        if fast:
            native.axpy_rows(o.mat, xv.mat, weight[b].reshape(-1), aidx)
            continue
        rows = o.gather_plain(aidx)
        rows.addcmul_(weight[b].reshape(-1).index_select(0, aidx)[:, None], xv.gather_plain(aidx))
        o.scatter(aidx, rows)
    return out


class SparseHaltingState(HaltingState):
    """:class:`.HaltingState` for the sparse inference path: each step in one native pass (:func:`.native.halting_step`)
    on float32 CPU state without autograd, instead of a dozen torch operations over the score map; the same
    float32 arithmetic, so the same values. Falls back to :meth:`HaltingState.step` elsewhere."""

    def step(self, h: Optional[torch.Tensor], last: bool = False, like: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.cumsum is None and h is not None and not self.finished:
            self._start(h)
        scores = None if last or h is None else h.to(self.cumsum.dtype)
        if self.cumsum is None or self.finished or (scores is None and not last) \
                or not native.usable(self.cumsum, *(() if last else (scores,))):
            return super().step(h, last, like)
        weight, self.active = native.halting_step(scores, self.cumsum, self.active, self.num_units, self.remainder,
                                                  self.eps, last)
        self.finished = last
        return weight
