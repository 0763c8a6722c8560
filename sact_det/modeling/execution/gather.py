"""Gather -> GEMM -> scatter kernels of one image of a residual unit (used by :mod:`.sparse`).

A map is seen as a positions x channels matrix (:class:`MapView`): rows of a channels-last
tensor, or columns of an NCHW one. The first conv runs on the 3x3-dilated mask, the others on
the active mask; a 3x3 conv on n positions is one GEMM over the im2col matrix (n, 9*C_in)
whose rows are gathered from the conv1 output kept channel-last with one extra zero row that
stands for the zero padding (and for positions outside the dilated mask, which are never read).
Work is done in chunks of at most ``CHUNK_ROWS`` positions, in reused scratch buffers. The index sets, row
gathers and the residual write use the native kernels (:mod:`.native`) on CPU (fp32 rows), torch elsewhere; the
residual write then also updates the map's per-channel sums (:class:`MapStats`) by the change of the
rows it writes, so the halting branch after the unit needs no pass over the map for them.
"""
import threading
from typing import Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F

from ..core.flop_rules import dilate
from . import native
from .fold import FoldedConv, FoldedUnit, rows_linear

__all__ = ["MapView", "MapStats", "Scratch", "release_scratch", "dilate", "neighbour_index", "bottleneck_image",
           "basic_image", "active_density"]

CHUNK_ROWS = 4096  # positions per chunk: bounds the scratch memory (fewer, larger GEMMs are faster)


def active_density(active: torch.Tensor) -> List[float]:
    """Active fraction of each image of a (B,1,H,W) / (B,1,1,1) bool mask, on the host (one synchronisation:
    compute it once per unit and pass it as ``density`` to the sparse functions)."""
    return active.reshape(active.shape[0], -1).float().mean(1).tolist()


_POOL = threading.local()  # per thread: {(device, dtype): {name: flat buffer}} kept across calls on CPU


class Scratch:
    """Scratch buffers of one call, reused across chunks and images (one flat allocation per name).

    On CPU the buffers are also kept across calls (per thread, device and dtype; at most a few tens of MB
    for a full-width R-50): a fresh multi-MB allocation costs a page fault per 4 KiB page on its first
    write, which is several times the cost of the write itself. :func:`release_scratch` frees them. On CUDA
    the caching allocator already recycles memory, so the buffers live for one call. Nothing returned by
    the kernels aliases a scratch buffer.
    """

    def __init__(self, like: torch.Tensor) -> None:
        self.like = like
        if like.device.type == "cpu":
            pools = getattr(_POOL, "pools", None)
            if pools is None:
                pools = _POOL.pools = {}
            self.store: Dict[str, torch.Tensor] = pools.setdefault((like.device, like.dtype), {})
        else:
            self.store = {}

    def get(self, name: str, *shape: int) -> torch.Tensor:
        n = 1
        for s in shape:
            n *= s
        buf = self.store.get(name)
        if buf is None or buf.numel() < n:
            buf = self.store[name] = self.like.new_empty(n)
        return buf[:n].view(shape)


def release_scratch() -> None:
    """Free the scratch buffers the calling thread keeps between calls (:class:`Scratch`)."""
    _POOL.pools = {}


def take_rows(src: torch.Tensor, idx: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out = src[idx]: src (R, C) rows, idx (n,) int64, out (n, C) (a scratch buffer); native row copies on
    fp32 CPU, ``torch.index_select`` elsewhere."""
    if native.usable(src, out):
        return native.gather_rows(src, idx, out)
    return torch.index_select(src, 0, idx, out=out)


class MapStats:
    """Per-channel sum and sum of squares of each image of a stage's state, kept across its units.

    ``sums``: (B, 2, C) float64; ``valid[b]``: whether image b's sums describe the current map. A unit that
    writes image b through the native residual write adds the change of the rows it wrote (the other rows
    are unchanged); any other write of the map (the dense folded unit, torch kernels) invalidates it, and
    the halting branch recomputes the sums with one pass when it needs them (:mod:`.sparse_halting`).
    """

    def __init__(self, batch: int, channels: int) -> None:
        self.sums = torch.zeros(batch, 2, channels, dtype=torch.float64)
        self.valid = [False] * batch

    def delta(self, b: int) -> Optional[torch.Tensor]:
        """The (2, C) sums of image b to update in place with a write of its rows, or None if not valid."""
        return self.sums[b] if self.valid[b] else None


class MapView:
    """One image's (C,H,W) map as a positions x channels matrix; gathers and scatters positions."""

    def __init__(self, t: torch.Tensor) -> None:
        c, h, w = t.shape
        self.rows = not t.is_contiguous()  # channels-last: (H*W, C) rows, else (C, H*W) columns
        self.mat = t.permute(1, 2, 0).view(h * w, c) if self.rows else t.view(c, h * w)
        self.channels = c

    @property
    def native_rows(self) -> bool:
        """Whether the native row kernels take this map (channels-last fp32 CPU, contiguous rows)."""
        return self.rows and native.usable(self.mat)

    def gather(self, idx: torch.Tensor, buf: str, ws: Scratch) -> torch.Tensor:
        """(k, C) values at flat positions ``idx``, in scratch buffer ``buf`` (transposed view for NCHW)."""
        if self.rows:
            return take_rows(self.mat, idx, ws.get(buf, idx.numel(), self.channels))
        return torch.index_select(self.mat, 1, idx, out=ws.get(buf, self.channels, idx.numel())).t()

    def gather_plain(self, idx: torch.Tensor) -> torch.Tensor:
        """(k, C) values at flat positions ``idx`` in a new tensor (transposed view for NCHW)."""
        return self.mat.index_select(0, idx) if self.rows else self.mat.index_select(1, idx).t()

    def scatter(self, idx: torch.Tensor, values: torch.Tensor) -> None:
        """Write ``values`` (k, C) at flat positions ``idx`` (``index_put_``: on CPU 1.3x faster than
        ``index_copy_`` on one thread and about 8x on two, where ``index_copy_`` got slower)."""
        if self.rows:
            self.mat.index_put_((idx,), values)
        else:
            self.mat[:, idx] = values.t()

    def all_rows(self) -> torch.Tensor:
        return self.mat if self.rows else self.mat.t()


def _chunks(n: int) -> Iterator[Tuple[int, int]]:
    """Balanced [start, end) ranges of at most ``CHUNK_ROWS`` covering range(n)."""
    parts = max(1, -(-n // CHUNK_ROWS))
    step = max(1, -(-n // parts))
    for s in range(0, n, step):
        yield s, min(n, s + step)


def _offsets(w_pad: int, dilation: int, device: torch.device, k2: int = 9) -> torch.Tensor:
    """Flat offsets (k2,) of the 3x3 (k2=9) or 1x1 (k2=1) neighbours in rows of length ``w_pad``,
    order (ky, kx)."""
    if k2 == 1:
        return torch.zeros(1, dtype=torch.long, device=device)
    r = torch.arange(-1, 2, device=device) * dilation
    return (r[:, None] * w_pad + r[None, :]).reshape(-1)


def _padded_positions(idx: torch.Tensor, w: int, p: int) -> torch.Tensor:
    """Flat positions idx of an (H, w) map in the same map zero-padded by p on every side."""
    return idx + (idx // w) * (2 * p) + (p * (w + 2 * p) + p)


def neighbour_index(m: torch.Tensor, dm: torch.Tensor, dilation: int, k2: int = 9) -> Tuple[torch.Tensor, ...]:
    """Index sets of one image; m, dm: (H,W) bool active and dilated masks.

    Returns aidx (N,) flat active positions; didx (Nd,) flat dilated positions, the N active ones
    first; nbr (N,k2) the didx-row of each active position's 3x3 (or 1x1) neighbours at ``dilation``
    (Nd for a neighbour outside the map); ppos (Nd,) flat positions of didx in the map zero-padded
    by ``dilation``.
    """
    H, W = m.shape
    p = dilation
    if m.device.type == "cpu" and native.available():
        aidx, didx, nbr = native.neighbour_index(m, dm, dilation, k2)
        return aidx, didx, nbr, _padded_positions(didx, W, p)
    aidx = m.reshape(-1).nonzero().squeeze(1)
    didx = torch.cat([aidx, (dm & ~m).reshape(-1).nonzero().squeeze(1)])
    nd = didx.numel()
    ppos = _padded_positions(didx, W, p)
    lut = torch.full(((H + 2 * p) * (W + 2 * p),), nd, dtype=torch.long, device=m.device)
    lut[ppos] = torch.arange(nd, device=m.device)
    nbr = lut.index_select(0, (ppos[: aidx.numel(), None] + _offsets(W + 2 * p, p, m.device, k2)).view(-1))
    return aidx, didx, nbr.view(-1, k2), ppos


def _conv3x3_rows(c: FoldedConv, src: torch.Tensor, nbr: torch.Tensor, ws: Scratch) -> torch.Tensor:
    """relu(conv(src)) at n positions -> (n, C_out), a new tensor; src (R,C_in) channel-last rows, nbr (n,9) row
    ids."""
    n, c_in = nbr.shape[0], src.shape[1]
    col = take_rows(src, nbr.reshape(-1), ws.get("col", n * 9, c_in)).view(n, -1)
    if c.groups == 1:  # col: (n, 9*C_in) ordered (ky, kx, c_in), like c.mat
        return rows_linear(col, c.mat, c.bias, relu=True)
    g = c.groups
    col = col.view(n, 9, g, c_in // g).permute(2, 0, 1, 3).reshape(g, n, -1)
    w = c.mat.view(g, -1, col.shape[2]).transpose(1, 2)  # (g, 9*C_in/g, C_out/g)
    return torch.bmm(col, w).permute(1, 0, 2).reshape(n, -1).add_(c.bias).relu_()


def _last_conv(c: FoldedConv, h: torch.Tensor, x: MapView, aidx: torch.Tensor, out: MapView, ws: Scratch,
               delta: Optional[torch.Tensor] = None) -> bool:
    """out[aidx] = relu(h @ c.mat^T + bias + x[aidx]): the last conv as a GEMM over h (n,K), + identity.
    ``delta`` ((2, C) float64): += the change of out's per-channel sums (:class:`MapStats`) if the native
    write ran; returns whether it did."""
    z = rows_linear(h, c.mat, c.bias)
    if out.native_rows and x.native_rows and native.usable(z) and z.shape[1] <= native.SUMS_MAX_CHANNELS:
        native.residual_scatter(out.mat, x.mat, aidx, z, delta)
        return True
    out.scatter(aidx, x.gather(aidx, "res", ws).add_(z).relu_())
    return False


def bottleneck_image(f: FoldedUnit, x: MapView, out: MapView, m: torch.Tensor, dm: torch.Tensor,
                     ws: Scratch, delta: Optional[torch.Tensor] = None) -> bool:
    """One image of a bottleneck unit: writes the active positions of ``out``; m, dm (H,W) bool. ``delta``:
    out's (2, C) per-channel sums (:class:`MapStats`) to update; returns whether they were (native write)."""
    c1, c2, c3 = f.convs
    aidx, didx, nbr, _ = neighbour_index(m, dm, c2.dilation)
    n, nd = aidx.numel(), didx.numel()
    h1 = ws.get("h1", nd + 1, c1.mat.shape[0])  # conv1 on the dilated mask, channel-last, + zero row
    for s, e in _chunks(nd):
        h1[s:e] = rows_linear(x.gather(didx[s:e], "res", ws), c1.mat, c1.bias, relu=True)
    h1[nd].zero_()
    tracked = True
    for s, e in _chunks(n):
        tracked &= _last_conv(c3, _conv3x3_rows(c2, h1, nbr[s:e], ws), x, aidx[s:e], out, ws, delta)
    return tracked


def basic_image(f: FoldedUnit, x: MapView, out: MapView, m: torch.Tensor, dm: torch.Tensor, ws: Scratch,
                delta: Optional[torch.Tensor] = None) -> bool:
    """One image of a basic unit (3x3 -> 3x3); same arguments and result as :func:`bottleneck_image`."""
    c1, c2 = f.convs
    H, W = m.shape
    aidx, didx, nbr, ppos = neighbour_index(m, dm, 1)
    n, nd, hw = aidx.numel(), didx.numel(), H * W
    src = ws.get("src", hw + 1, x.channels)  # the state as channel-last rows + a zero row (padding)
    src[:hw].copy_(x.all_rows())
    src[hw].zero_()
    lut = F.pad(torch.arange(hw, device=src.device).view(1, H, W), (1, 1, 1, 1), value=hw).reshape(-1)
    nbr_in = lut[ppos[:, None] + _offsets(W + 2, 1, src.device)]  # (Nd, 9) rows of src
    h1 = ws.get("h1", nd + 1, c1.mat.shape[0])
    for s, e in _chunks(nd):
        h1[s:e] = _conv3x3_rows(c1, src, nbr_in[s:e], ws)
    h1[nd].zero_()
    del src
    tracked = True
    for s, e in _chunks(n):
        col = take_rows(h1, nbr[s:e].reshape(-1), ws.get("col", (e - s) * 9, h1.shape[1]))
        tracked &= _last_conv(c2, col.view(e - s, -1), x, aidx[s:e], out, ws, delta)
    return tracked
