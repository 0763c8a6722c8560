"""The native row kernels (sact_det/modeling/execution/native) against float64 torch references, the
incremental map statistics against a fresh pass, and the torch fallback (SACT_NATIVE=0)."""
import os
import subprocess
import sys

import pytest
import torch

from sact_det.modeling.execution import native
from sact_det.modeling.execution.gather import MapStats
from sact_det.modeling.execution.sparse import fold_unit, sparse_unit_forward

needs_native = pytest.mark.skipif(not native.available(), reason="native kernels not built here (no C compiler, "
                                  "not Linux x86-64, or SACT_NATIVE=0): the sparse path runs on torch only")


_halting_step = native.halting_step


def _rows(n: int, c: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, c, generator=torch.Generator().manual_seed(seed))


def _idx(n: int, m: int, seed: int = 1) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:m].sort().values


@needs_native
@pytest.mark.parametrize("n,c", [(1, 8), (130, 64), (1000, 72), (77, 13), (3000, 200)])
def test_channel_sums(n, c, two_threads):
    x = _rows(n, c) + 3.0  # an offset: sums of squares must not cancel
    s1, s2 = native.channel_sums(x)
    x64 = x.double()
    torch.testing.assert_close(s1, x64.sum(0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(s2, (x64 * x64).sum(0), rtol=1e-6, atol=1e-6)
    assert native.channel_sums(x, squares=False)[1] is None


@needs_native
@pytest.mark.parametrize("k", native.DOT_WIDTHS)
@pytest.mark.parametrize("with_idx", [False, True])
@pytest.mark.parametrize("n", [301, 3001])
@pytest.mark.parametrize("c", [48, 1032], ids=["row_by_row", "tiled"])  # 1032: wide (tiled), a partial last block
def test_row_dots(k, with_idx, n, c, two_threads):
    x, wt = _rows(n, c), _rows(k, c, seed=2)
    idx = _idx(n, n // 2) if with_idx else None
    ref = (x if idx is None else x[idx]).double() @ wt.double().t()
    atol = 1e-5 if c <= 48 else 1e-4  # fp32 sums of c products: round-off grows with the row length
    torch.testing.assert_close(native.row_dots(x, wt, idx).double(), ref, rtol=1e-5, atol=atol)


@needs_native
def test_row_dots_rejects_unsupported_shapes():
    with pytest.raises(ValueError, match="multiple of 8|k in"):
        native.row_dots(_rows(5, 12), _rows(9, 12))
    with pytest.raises(ValueError, match="k in"):
        native.row_dots(_rows(5, 16), _rows(3, 16))


@needs_native
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("h,w", [(7, 5), (150, 120)], ids=["small", "parallel"])
def test_tap_logits_are_the_halting_conv(k, masked, h, w, two_threads):
    """conv_kxk(a*x + d) + b of a zero-padded map (F.conv2d in float64) from the map's per-tap products (-inf off the mask):
    taps (HW, k2 + 1 extra column, as with the pooled branch's column), const[t] = sum_c w[c,t] d[c]."""
    c = 16
    x, wconv = _rows(h * w, c), _rows(k * k, c, seed=3) * 0.2  # rows (HW, C); wconv (k2, C)
    a, d, b = torch.rand(c) + 0.5, torch.randn(c), 0.3
    taps = torch.cat([x @ (wconv * a).t(), torch.randn(h * w, 1)], 1).contiguous()  # the extra column is ignored
    const = (wconv * d).sum(1).contiguous()
    mask = torch.rand(h * w, generator=torch.Generator().manual_seed(4)) < 0.6 if masked else None
    out = native.tap_logits(taps, h, w, const, b, mask, torch.full((h * w,), -1.0))
    xn = (x.double() * a.double() + d.double()).t().reshape(1, c, h, w)
    weight = wconv.double().t().reshape(1, c, k, k)
    ref = torch.nn.functional.conv2d(xn, weight, padding=k // 2).reshape(-1) + b
    if mask is not None:
        ref = ref.masked_fill(~mask, float("-inf"))
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)


@needs_native
@pytest.mark.parametrize("dilation,k2", [(1, 9), (2, 9), (1, 1)])
def test_neighbour_index_by_definition(dilation, k2, monkeypatch):
    """aidx: the active positions; didx: active first, then the rest of the dilated mask; nbr[i, t]: the didx row of
    active position i's neighbour t at the dilation (Nd outside the map), checked position by position; and the
    same sets as the torch path."""
    from sact_det.modeling.execution.gather import dilate, neighbour_index

    h, w = 9, 13
    m = torch.rand(h, w, generator=torch.Generator().manual_seed(5)) < 0.3
    dm = dilate(m[None], dilation)[0] if k2 == 9 else m
    aidx, didx, nbr, ppos = neighbour_index(m, dm, dilation, k2)
    nd = didx.numel()
    assert aidx.tolist() == [p for p in range(h * w) if m.view(-1)[p]]
    assert didx[: aidx.numel()].tolist() == aidx.tolist()
    assert didx[aidx.numel():].tolist() == [p for p in range(h * w) if dm.view(-1)[p] and not m.view(-1)[p]]
    for i, p in enumerate(aidx.tolist()):
        y, x = divmod(p, w)
        for t in range(k2):
            qy, qx = (y, x) if k2 == 1 else (y + (t // 3 - 1) * dilation, x + (t % 3 - 1) * dilation)
            inside = 0 <= qy < h and 0 <= qx < w
            assert (didx[nbr[i, t]].item() == qy * w + qx) if inside else nbr[i, t].item() == nd
    monkeypatch.setenv(native.ENV_ENABLE, "0")  # the torch path
    for got, ref in zip((aidx, didx, nbr, ppos), neighbour_index(m, dm, dilation, k2)):
        assert torch.equal(got, ref)


@needs_native
def test_tap_logits_rejects_bad_input():
    taps = _rows(12, 9)
    with pytest.raises(ValueError, match="k2 in"):
        native.tap_logits(taps, 3, 4, torch.zeros(4), 0.0, None, torch.empty(12))
    with pytest.raises(ValueError, match="k2 in"):
        native.tap_logits(taps, 4, 4, torch.zeros(9), 0.0, None, torch.empty(12))  # 16 positions, 12 rows
    with pytest.raises(ValueError, match="bools"):
        native.tap_logits(taps, 3, 4, torch.zeros(9), 0.0, torch.ones(12), torch.empty(12))


@needs_native
@pytest.mark.parametrize("n,c,m", [(50, 24, 17), (5000, 64, 3100)], ids=["small", "parallel"])
def test_gather_and_copy_rows(n, c, m, two_threads):
    x, idx = _rows(n, c), _idx(n, m)
    out = torch.empty(m, c)
    assert native.gather_rows(x, idx, out) is out
    assert torch.equal(out, x[idx])
    dst = torch.zeros(n, c)
    native.copy_rows(dst, x, idx)
    expected = torch.zeros(n, c)
    expected[idx] = x[idx]
    assert torch.equal(dst, expected)


@pytest.fixture
def two_threads():
    """Calls above the kernels' parallel threshold split their rows over 2 OpenMP threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@needs_native
@pytest.mark.parametrize("inplace", [True, False])
@pytest.mark.parametrize("n,c,m", [(200, 40, 90), (5000, 64, 3100)], ids=["small", "parallel"])
def test_residual_scatter_and_sum_changes(inplace, n, c, m, two_threads):
    x = _rows(n, c).relu()
    out = x if inplace else x.clone()
    before = out.double().clone()
    idx, z = _idx(n, m), _rows(m, c, seed=3)
    delta = torch.stack([before.sum(0), (before * before).sum(0)])  # the sums before the write
    native.residual_scatter(out, x if not inplace else out, idx, z, delta)
    expected = before.clone()
    expected[idx] = (z.double() + before[idx]).clamp_min(0)
    torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=1e-6)
    # the updated sums describe the new map
    torch.testing.assert_close(delta[0], expected.sum(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(delta[1], (expected * expected).sum(0), rtol=1e-5, atol=1e-5)


@needs_native
@pytest.mark.parametrize("n,c,m", [(120, 16, 33), (5000, 64, 3100)], ids=["small", "parallel"])
def test_axpy_rows(n, c, m, two_threads):
    out, x, w = _rows(n, c), _rows(n, c, seed=4), torch.rand(n)
    idx = _idx(n, m)
    expected = out.double().clone()
    expected[idx] += w.double()[idx, None] * x.double()[idx]
    native.axpy_rows(out, x, w, idx)
    torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=1e-6)


@needs_native
def test_bad_input_is_refused():
    x = _rows(10, 8)
    with pytest.raises(IndexError):
        native.gather_rows(x, torch.tensor([0, 10]), torch.empty(2, 8))
    with pytest.raises(IndexError):
        native.axpy_rows(x, x.clone(), torch.rand(10), torch.tensor([-1]))
    with pytest.raises(ValueError, match="int64"):
        native.gather_rows(x, torch.tensor([0, 1], dtype=torch.int32), torch.empty(2, 8))
    with pytest.raises(ValueError, match="fp32"):
        native.channel_sums(x.double())
    with pytest.raises(ValueError, match="fp32"):
        native.channel_sums(x.t())  # not contiguous rows
    with pytest.raises(ValueError, match="at most"):
        native.channel_sums(_rows(2, native.SUMS_MAX_CHANNELS + 8))


@needs_native
@pytest.mark.parametrize("shape", [(2, 1, 9, 13), (3, 1, 1, 1)], ids=["sact", "act"])
def test_halting_step_equals_the_torch_state(shape, monkeypatch):
    """SparseHaltingState (one native pass per step) gives HaltingState's weights, masks, N, R and cumsum
    bit for bit, including scores that reach 1 - eps exactly and the forced last step; masks handed out
    earlier stay as they were."""
    from sact_det.modeling.execution.sparse_halting import SparseHaltingState
    from sact_det.modeling.halting.state import HaltingState

    g = torch.Generator().manual_seed(3)
    exact = torch.tensor([0.5, 0.49, 0.25, 0.0, 1.0])  # 0.5 + 0.49 = 0.99 = 1 - eps: halts on the threshold
    scores = [torch.where(torch.rand(shape, generator=g) < 0.3, exact[torch.randint(5, shape, generator=g)],
                          torch.rand(shape, generator=g) * 0.6) for _ in range(4)]
    scores[0].view(-1)[0], scores[1].view(-1)[0] = 0.5, 0.49
    ref, fast = HaltingState(eps=0.01), SparseHaltingState(eps=0.01)
    calls = []
    monkeypatch.setattr(native, "halting_step", lambda *a: calls.append(1) or _halting_step(*a))
    masks = []
    with torch.no_grad():
        for i, h in enumerate([*scores, None]):
            last = h is None
            w_ref = ref.step(h, last=last, like=scores[0])
            w_fast = fast.step(h, last=last, like=scores[0])
            assert torch.equal(w_fast, w_ref) and torch.equal(fast.active, ref.active)
            assert torch.equal(fast.cumsum, ref.cumsum)
            masks.append((fast.active, fast.active.clone()))
    assert ref.num_units.view(-1)[0] == 2 and ref.remainder.view(-1)[0] == pytest.approx(0.5)  # halted at unit 2
    assert torch.equal(fast.ponder_cost, ref.ponder_cost) and torch.equal(fast.num_units, ref.num_units)
    assert all(torch.equal(m, kept) for m, kept in masks)
    assert fast.finished and len(calls) == 5  # every step ran natively


@needs_native
def test_map_stats_follow_the_sparse_unit():
    """Sums carried through three sparse units (native residual write) equal a fresh pass over the result."""
    from detectron2.modeling.backbone.resnet import BottleneckBlock

    torch.manual_seed(0)
    block = BottleneckBlock(64, 64, bottleneck_channels=16, norm="BN").eval()
    for m in block.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    folded = fold_unit(block)
    x = torch.rand(2, 64, 13, 17).contiguous(memory_format=torch.channels_last)
    stats = MapStats(2, 64)
    for b in range(2):
        rows = x[b].permute(1, 2, 0).reshape(-1, 64).double()
        stats.sums[b] = torch.stack([rows.sum(0), (rows * rows).sum(0)])
        stats.valid[b] = True
    with torch.no_grad():
        for step in range(3):
            active = torch.rand(2, 1, 13, 17) < 0.4 - 0.1 * step
            x = sparse_unit_forward(folded, x, active, inplace=True, stats=stats)
    for b in range(2):
        assert stats.valid[b]
        rows = x[b].permute(1, 2, 0).reshape(-1, 64).double()
        torch.testing.assert_close(stats.sums[b, 0], rows.sum(0), rtol=1e-6, atol=1e-4)
        torch.testing.assert_close(stats.sums[b, 1], (rows * rows).sum(0), rtol=1e-6, atol=1e-4)
    # a densely run image (max_density 0: every image with an active position) invalidates its sums
    with torch.no_grad():
        sparse_unit_forward(folded, x, torch.ones(2, 1, 13, 17, dtype=torch.bool), max_density=0.0, stats=stats)
    assert stats.valid == [False, False]


def test_disabled_by_environment(tmp_path):
    """SACT_NATIVE=0: nothing is built, available() is False, the sparse path runs on torch."""
    code = ("from sact_det.modeling.execution import native; import os; "
            "print(native.available(), sorted(os.listdir(os.environ['SACT_NATIVE_DIR'])) if "
            "os.path.isdir(os.environ['SACT_NATIVE_DIR']) else [])")
    env = dict(os.environ, SACT_NATIVE="0", SACT_NATIVE_DIR=str(tmp_path / "lib"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "[]"]


@needs_native
def test_build_from_scratch(tmp_path):
    """A fresh cache folder: the library is compiled there and loads."""
    code = ("from sact_det.modeling.execution import native; import os; "
            "print(native.available(), [f.endswith('.so') for f in os.listdir(os.environ['SACT_NATIVE_DIR'])])")
    env = dict(os.environ, SACT_NATIVE="1", SACT_NATIVE_DIR=str(tmp_path / "lib"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "[True]"]


@pytest.mark.parametrize("native_on", [True, False], ids=["native", "torch-only"])
def test_gn_halting_stage_sparse_equals_masked_dense(native_on, monkeypatch):
    """A full-width-layout R-50 SACT backbone with GroupNorm halting (the COCO configs'): the sparse / auto runs
    (native kernels with the map statistics carried across units, or torch only) give the masked dense path's
    features, ponder costs and masks."""
    from detectron2.modeling import build_backbone

    from sact_det.modeling.halting.branches import SpatialHalting
    from tests.helpers import randomize_bn, tiny_cfg

    if native_on and not native.available():
        pytest.skip("native kernels not built here")
    monkeypatch.setenv(native.ENV_ENABLE, "1" if native_on else "0")
    torch.manual_seed(0)
    cfg = tiny_cfg(depth=50)
    cfg.MODEL.SACT.HALT_NORM = "GN"
    bb = build_backbone(cfg).eval()
    randomize_bn(bb)
    g = torch.Generator().manual_seed(0)
    for m in bb.modules():
        if isinstance(m, SpatialHalting):
            m.local_conv.weight.data = torch.randn(m.local_conv.weight.shape, generator=g) * 0.3
            m.local_conv.bias.data.fill_(1.5)
            m.local_norm.weight.data = torch.rand(m.local_norm.weight.shape, generator=g) + 0.5
            m.local_norm.bias.data = torch.randn(m.local_norm.bias.shape, generator=g) * 0.3
    x = torch.randn(2, 3, 96, 128)
    runs = {}
    for execution in ("dense", "sparse", "auto"):
        bb.set_execution(execution, 0.5)
        with torch.no_grad():
            out = bb(x)["res4"]
        runs[execution] = (out, {k: (p.ponder_cost.clone(), [m.clone() for m in p.masks])
                                 for k, p in bb.last_ponder.items()})
    ref, ponder = runs["dense"]
    partial = [m for _, ms in ponder.values() for m in ms if 0 < m.float().mean() < 1]
    assert partial, "the test needs masks that are neither empty nor full"
    for execution in ("sparse", "auto"):
        out, pon = runs[execution]
        torch.testing.assert_close(out, ref, atol=1e-4 * float(ref.abs().max()), rtol=1e-4)
        for k, (rho, masks) in ponder.items():
            torch.testing.assert_close(pon[k][0], rho, atol=1e-5, rtol=1e-4)
            assert all(torch.equal(a, b) for a, b in zip(pon[k][1], masks))


def _probe(tmp_path, **env):
    """available() and the warnings of a fresh interpreter with a fresh cache folder and ``env``."""
    code = ("import warnings; warnings.simplefilter('always'); "
            "from sact_det.modeling.execution import native; import os\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    ok = native.available()\n"
            "print(ok); print(len(os.listdir(os.environ['SACT_NATIVE_DIR'])) if os.path.isdir(os.environ['SACT_NATIVE_DIR']) "
            "else 0); print('|'.join(str(x.message) for x in w))")
    full = dict(os.environ, SACT_NATIVE="1", SACT_NATIVE_DIR=str(tmp_path / "lib"), **env)
    out = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, check=True)
    ok, files, warned = (out.stdout.splitlines() + [""])[:3]
    return ok == "True", int(files), warned


@needs_native
def test_compiler_without_openmp_builds_the_single_thread_library(tmp_path):
    """A compiler that rejects -fopenmp: the library is built without it (kernels on the calling thread)."""
    import shutil
    cc = tmp_path / "cc-no-openmp"
    real = shutil.which("cc") or shutil.which("gcc")
    cc.write_text(f'#!/bin/sh\nfor a in "$@"; do [ "$a" = -fopenmp ] && exit 1; done\nexec {real} "$@"\n')
    cc.chmod(0o755)
    ok, files, warned = _probe(tmp_path, CC=str(cc))
    assert ok and files == 1 and warned == ""


def test_failing_compiler_falls_back_to_torch_with_a_warning(tmp_path):
    ok, files, warned = _probe(tmp_path, CC="/bin/false")
    assert not ok and "failed" in warned and "torch only" in warned
