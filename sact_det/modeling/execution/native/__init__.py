"""Native row kernels of the sparse path (``kernels.c``), built with the system C compiler on first use.

The kernels read a channels-last map as an n x c float32 matrix and touch each row once: per-channel
sums (GroupNorm statistics of the halting branch), a few dot products per row (the halting taps) and the
halting logits from them, indexed row copies, the residual write of a unit's last conv with the change of
the channel sums, and the accumulation ``out += w * x`` at given positions; a unit's index sets from its
masks (``neighbour_index``) and a step of the halting state (``halting_step``), the two kernels on bool
masks. torch does the same in several passes or with slow indexed writes (``index_put_`` / fresh
``index_select`` buffers); ``tools/benchmark_sparse.py --part extractor`` times SACT with and without them in
the same rounds ("torch only").

No torch headers, no ninja: ``cc -O3 -march=native -fopenmp -shared`` takes under a second (without
``-fopenmp`` if the compiler lacks OpenMP: then every kernel runs on the calling thread); the library is
cached in ``$SACT_NATIVE_DIR`` (default ``~/.cache/sact_det/native``) under a name keyed on the
source, the flags and the CPU, and called through ctypes with raw pointers after the checks below.
Everything here has a torch fallback: :func:`available` is False (and the callers use torch) when
``SACT_NATIVE=0``, when no compiler is found or the build fails (one warning says why), on non-x86 /
non-Linux hosts where it was not tested, and for anything but contiguous fp32 CPU rows.
"""
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Optional

import torch

__all__ = ["available", "library", "usable", "channel_sums", "row_dots", "tap_logits", "neighbour_index",
           "gather_rows", "copy_rows", "residual_scatter", "axpy_rows", "halting_step", "ENV_ENABLE", "ENV_DIR",
           "SUMS_MAX_CHANNELS"]

ENV_ENABLE = "SACT_NATIVE"  # "0": never build nor use the native kernels
ENV_DIR = "SACT_NATIVE_DIR"
SOURCE = Path(__file__).with_name("kernels.c")
FLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-fno-math-errno")
OPENMP = "-fopenmp"  # tried first; a compiler without OpenMP builds the single-threaded library instead
DOT_WIDTHS = (1, 9, 10)  # numbers of dot products per row sd_row_dots is specialised for
SUMS_MAX_CHANNELS = 4096  # widest map whose channel sums the kernels keep (SUMS_MAX: per-thread partials on the stack)

_LOCK = threading.Lock()
_LIB: Optional[ctypes.CDLL] = None
_TRIED = False
_I64, _P = ctypes.c_int64, ctypes.c_void_p


def _cpu_key() -> str:
    try:
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    except OSError:
        flags = ""
    return platform.machine() + flags


def _build() -> Optional[ctypes.CDLL]:
    if os.environ.get(ENV_ENABLE, "1") == "0":
        return None
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        warnings.warn("sact_det native kernels: no C compiler (cc / gcc) found; the sparse path uses torch only")
        return None
    try:
        source = SOURCE.read_bytes()
    except OSError as e:
        warnings.warn(f"sact_det native kernels: cannot read {SOURCE} ({e}); the sparse path uses torch only")
        return None
    folder = Path(os.environ.get(ENV_DIR) or Path.home() / ".cache" / "sact_det" / "native")
    errors = []
    for flags in ((*FLAGS, OPENMP), FLAGS):
        key = hashlib.sha256(source + " ".join((cc, *flags, _cpu_key())).encode()).hexdigest()[:16]
        lib = folder / f"sact_kernels_{key}.so"
        if lib.exists():
            break
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=folder) as tmp:  # built aside, renamed into place (atomic)
                out = Path(tmp) / lib.name
                subprocess.run([cc, *flags, "-o", str(out), str(SOURCE)], check=True, capture_output=True, text=True)
                os.replace(out, lib)
            break
        except (OSError, subprocess.CalledProcessError) as e:
            errors.append((getattr(e, "stderr", "") or str(e)).strip()[:300])
    else:
        warnings.warn(f"sact_det native kernels: building {SOURCE.name} with {cc} failed ({errors[-1]}); "
                      "the sparse path uses torch only")
        return None
    try:
        handle = ctypes.CDLL(str(lib))
    except OSError as e:
        warnings.warn(f"sact_det native kernels: loading {lib} failed ({e}); the sparse path uses torch only")
        return None
    i64, p, i32 = _I64, _P, ctypes.c_int
    sigs = {  # the last argument of each: the number of threads
        "sd_channel_sums": (i32, [p, i64, i64, p, p, i32]),
        "sd_row_dots": (i32, [p, i64, p, i64, p, i64, i64, p, i32]),
        "sd_tap_logits": (i32, [p, i64, i64, i64, i64, p, ctypes.c_float, p, p, i32]),
        "sd_gather_rows": (i32, [p, i64, i64, p, i64, p, i32]),
        "sd_neighbour_index": (i32, [p, p, i64, i64, i64, i64, p, p, p, p, p]),
        "sd_copy_rows": (i32, [p, p, i64, i64, p, i64, i32]),
        "sd_residual_scatter": (i32, [p, p, i64, i64, p, i64, p, p, p, i32]),
        "sd_axpy_rows": (i32, [p, p, p, i64, i64, p, i64, i32]),
        "sd_halting_step": (i32, [p, p, p, p, p, p, p, i64, ctypes.c_double, i32]),
    }
    for name, (res, args) in sigs.items():
        fn = getattr(handle, name)
        fn.restype, fn.argtypes = res, args
    return handle


def library() -> Optional[ctypes.CDLL]:
    """The loaded kernel library (built on the first call), or None when it is not available."""
    global _LIB, _TRIED
    if not _TRIED:
        with _LOCK:
            if not _TRIED:
                _LIB, _TRIED = _build(), True
    return _LIB if os.environ.get(ENV_ENABLE, "1") != "0" else None


def available() -> bool:
    """Whether the native kernels can run here (built, not disabled by ``SACT_NATIVE=0``)."""
    return library() is not None


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the native kernels may take these tensors: all contiguous fp32 CPU tensors (int64 index
    tensors are checked by the functions), no autograd, and the library available."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() and not t.requires_grad
               for t in tensors) and available()


def _threads() -> int:
    return torch.get_num_threads()


def _ptr(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _index(idx: torch.Tensor) -> torch.Tensor:
    """idx as a contiguous 1-d int64 CPU tensor (the kernels check its range before they touch memory)."""
    if idx.device.type != "cpu" or idx.dtype != torch.int64 or idx.dim() != 1:
        raise ValueError(f"native kernels: index must be a 1-d int64 CPU tensor, got {idx.dtype} {tuple(idx.shape)}")
    return idx.contiguous()


def _check(rc: int, name: str, rows: int) -> None:
    if rc == -2:
        raise IndexError(f"native {name}: row index out of range [0, {rows})")
    if rc == -3:
        raise MemoryError(f"native {name}: out of memory")
    if rc != 0:
        raise ValueError(f"native {name}: unsupported arguments (code {rc})")


def _rows(t: torch.Tensor, name: str) -> None:
    if t.dim() != 2 or not usable(t):
        raise ValueError(f"native kernels: {name} must be contiguous (n, c) fp32 CPU rows, got {t.dtype} "
                         f"{tuple(t.shape)} contiguous={t.is_contiguous()}")


def channel_sums(x: torch.Tensor, squares: bool = True):
    """Per-channel sum and sum of squares (None unless ``squares``) of x (n, c), c <= :data:`SUMS_MAX_CHANNELS`:
    two (c,) float64 tensors."""
    _rows(x, "x")
    if x.shape[1] > SUMS_MAX_CHANNELS:
        raise ValueError(f"channel_sums: at most {SUMS_MAX_CHANNELS} channels, got {x.shape[1]}")
    s1 = torch.empty(x.shape[1], dtype=torch.float64)
    s2 = torch.empty_like(s1) if squares else None
    rc = library().sd_channel_sums(x.data_ptr(), x.shape[0], x.shape[1], s1.data_ptr(), _ptr(s2), _threads())
    _check(rc, "channel_sums", x.shape[0])
    return s1, s2


def row_dots(x: torch.Tensor, wt: torch.Tensor, idx: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x[idx] @ wt^T: x (n, c) rows (all, or the rows ``idx`` (m,)), wt (k, c) with k in :data:`DOT_WIDTHS`
    and c a multiple of 8 -> (m, k) float32."""
    _rows(x, "x")
    _rows(wt, "wt")
    k, c = wt.shape
    if c != x.shape[1] or k not in DOT_WIDTHS or c % 8:
        raise ValueError(f"row_dots: wt {tuple(wt.shape)} for x {tuple(x.shape)} (k in {DOT_WIDTHS}, c % 8 == 0)")
    if idx is not None:
        idx = _index(idx)
    m = x.shape[0] if idx is None else idx.numel()
    out = x.new_empty(m, k)
    rc = library().sd_row_dots(x.data_ptr(), x.shape[0], _ptr(idx), m, wt.data_ptr(), k, c, out.data_ptr(),
                               _threads())
    _check(rc, "row_dots", x.shape[0])
    return out


def tap_logits(taps: torch.Tensor, height: int, width: int, const: torch.Tensor, bias: float,
               mask: Optional[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
    """The halting logit from the taps of its kxk conv (k = 1 or 3, zero padding k // 2), in one pass:
    out[p] = bias + sum over the taps t whose neighbour q of p lies in the map of (taps[q, t] + const[t]) where
    ``mask`` (height*width bool, or None: everywhere), else -inf (its sigmoid is exactly 0). taps (height*width,
    k2 or more) rows (the first k2 = k*k columns, order (ky, kx), are read), const (k2,), out (height*width,)
    fp32; returns out."""
    _rows(taps, "taps")
    k2, n = const.numel(), height * width
    if taps.shape[0] != n or taps.shape[1] < k2 or k2 not in (1, 9) or out.shape != (n,) or not usable(out, const):
        raise ValueError(f"tap_logits: taps {tuple(taps.shape)}, const {tuple(const.shape)}, out {tuple(out.shape)} "
                         f"for a {height}x{width} map (k2 in (1, 9))")
    if mask is not None:
        if mask.dtype != torch.bool or mask.numel() != n or mask.device.type != "cpu":
            raise ValueError(f"tap_logits: mask must be {n} bools on the CPU, got {mask.dtype} {tuple(mask.shape)}")
        mask = mask.contiguous()
    rc = library().sd_tap_logits(taps.data_ptr(), taps.shape[1], height, width, k2, const.data_ptr(), float(bias),
                                 _ptr(mask), out.data_ptr(), _threads())
    _check(rc, "tap_logits", n)
    return out


def neighbour_index(m: torch.Tensor, dm: torch.Tensor, dilation: int, k2: int):
    """The index sets of one image (what :func:`..gather.neighbour_index` returns but ``ppos``) in one native pass:
    m, dm (H,W) bool CPU active and dilated masks -> aidx (N,), didx (Nd,) (active first), nbr (N, k2) int64."""
    if m.dtype != torch.bool or dm.dtype != torch.bool or m.dim() != 2 or m.shape != dm.shape \
            or m.device.type != "cpu" or dm.device.type != "cpu" or k2 not in (1, 9):
        raise ValueError(f"neighbour_index: m, dm must be (H,W) bool CPU masks of one shape, k2 in (1, 9); got "
                         f"{m.dtype} {tuple(m.shape)}, {dm.dtype} {tuple(dm.shape)}, k2={k2}")
    h, w = m.shape
    aidx, didx, row = (torch.empty(h * w, dtype=torch.int64) for _ in range(3))
    nbr, counts = torch.empty(h * w * k2, dtype=torch.int64), torch.empty(2, dtype=torch.int64)
    rc = library().sd_neighbour_index(m.contiguous().data_ptr(), dm.contiguous().data_ptr(), h, w, dilation, k2,
                                      aidx.data_ptr(), didx.data_ptr(), nbr.data_ptr(), row.data_ptr(),
                                      counts.data_ptr())
    _check(rc, "neighbour_index", h * w)
    n, nd = counts.tolist()
    return aidx[:n], didx[:nd], nbr[: n * k2].view(n, k2)


def gather_rows(x: torch.Tensor, idx: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out[i] = x[idx[i]]: x (n, c), idx (m,), out (m, c) (e.g. a scratch buffer); returns out."""
    _rows(x, "x")
    _rows(out, "out")
    idx = _index(idx)
    if out.shape != (idx.numel(), x.shape[1]):
        raise ValueError(f"gather_rows: out {tuple(out.shape)} for {idx.numel()} rows of {x.shape[1]}")
    rc = library().sd_gather_rows(x.data_ptr(), x.shape[0], x.shape[1], idx.data_ptr(), idx.numel(), out.data_ptr(),
                                  _threads())
    _check(rc, "gather_rows", x.shape[0])
    return out


def copy_rows(dst: torch.Tensor, src: torch.Tensor, idx: torch.Tensor) -> None:
    """dst[idx] = src[idx]: both (n, c) (distinct tensors), idx (m,) row ids."""
    _rows(dst, "dst")
    _rows(src, "src")
    if dst.shape != src.shape:
        raise ValueError(f"copy_rows: shapes differ {tuple(dst.shape)} / {tuple(src.shape)}")
    idx = _index(idx)
    rc = library().sd_copy_rows(dst.data_ptr(), src.data_ptr(), dst.shape[0], dst.shape[1], idx.data_ptr(),
                                idx.numel(), _threads())
    _check(rc, "copy_rows", dst.shape[0])


def residual_scatter(out: torch.Tensor, x: torch.Tensor, idx: torch.Tensor, z: torch.Tensor,
                     delta: Optional[torch.Tensor] = None) -> None:
    """out[idx[i]] = relu(z[i] + x[idx[i]]): a unit's last conv z (m, c) plus its identity shortcut, written
    at the rows ``idx`` of out (n, c) (out may be x: each row is read before it is written). ``delta``
    (2, c) float64: adds the change of the per-channel sums, sum(new - old) and sum(new^2 - old^2), where
    old is out[idx] before the write (the incremental map statistics of the halting branch)."""
    _rows(out, "out")
    _rows(x, "x")
    _rows(z, "z")
    idx = _index(idx)
    if x.shape != out.shape or z.shape != (idx.numel(), out.shape[1]):
        raise ValueError(f"residual_scatter: out {tuple(out.shape)}, x {tuple(x.shape)}, z {tuple(z.shape)}, "
                         f"{idx.numel()} rows")
    if delta is not None and (delta.dtype != torch.float64 or delta.shape != (2, out.shape[1])
                              or not delta.is_contiguous()):
        raise ValueError("residual_scatter: delta must be a contiguous (2, c) float64 tensor")
    d1 = None if delta is None else delta[0]
    d2 = None if delta is None else delta[1]
    if delta is not None and out.shape[1] > SUMS_MAX_CHANNELS:
        raise ValueError(f"residual_scatter: at most {SUMS_MAX_CHANNELS} channels with delta, got {out.shape[1]}")
    rc = library().sd_residual_scatter(out.data_ptr(), x.data_ptr(), out.shape[0], out.shape[1], idx.data_ptr(),
                                       idx.numel(), z.data_ptr(), _ptr(d1), _ptr(d2), _threads())
    _check(rc, "residual_scatter", out.shape[0])


def axpy_rows(out: torch.Tensor, x: torch.Tensor, w: torch.Tensor, idx: torch.Tensor) -> None:
    """out[q] += w[q] * x[q] for q in idx: out, x (n, c) rows, w (n,) one weight per row."""
    _rows(out, "out")
    _rows(x, "x")
    if x.shape != out.shape or w.shape != (out.shape[0],) or not usable(w):
        raise ValueError(f"axpy_rows: out {tuple(out.shape)}, x {tuple(x.shape)}, w {tuple(w.shape)}")
    idx = _index(idx)
    rc = library().sd_axpy_rows(out.data_ptr(), x.data_ptr(), w.data_ptr(), out.shape[0], out.shape[1],
                                idx.data_ptr(), idx.numel(), _threads())
    _check(rc, "axpy_rows", out.shape[0])


def halting_step(h: Optional[torch.Tensor], cumsum: torch.Tensor, active: torch.Tensor, num_units: torch.Tensor,
                 remainder: torch.Tensor, eps: float, last: bool):
    """One SACT halting step in one pass (what :meth:`...halting.state.HaltingState.step` computes): h the scores
    (None when ``last``), cumsum / num_units / remainder float32 updated in place, active bool (kept: the caller
    records it); all of one shape, contiguous CPU. Returns (weight, new_active): fresh float32 / bool tensors."""
    state = (cumsum, num_units, remainder) if h is None else (h, cumsum, num_units, remainder)
    if not usable(*state) or active.dtype != torch.bool or not active.is_contiguous() \
            or any(t.shape != cumsum.shape for t in (*state, active)):
        raise ValueError("halting_step: contiguous float32 CPU state tensors and a bool mask of one shape needed")
    weight, new_active = torch.empty_like(cumsum), torch.empty_like(active)
    library().sd_halting_step(_ptr(h), cumsum.data_ptr(), active.data_ptr(), new_active.data_ptr(),
                              num_units.data_ptr(), remainder.data_ptr(), weight.data_ptr(), cumsum.numel(),
                              float(eps), int(last))
    return weight, new_active
