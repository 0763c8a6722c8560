"""Mixed precision (detectron2's SOLVER.AMP.ENABLED): SACT under torch.autocast (CPU bf16 here).

The halting state stays float32 whatever the activations' dtype, and the dense (masked) and the
sparse execution both run under autocast. detectron2's AMPTrainer (0.6 and main) asserts CUDA, so
on CPU a train step is checked with the same autocast + backward that its run_step does.
"""
from typing import List

import pytest
import torch
from detectron2.modeling import build_backbone, build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from sact_det.modeling.execution import sparse_halting as sparse_halting_module
from sact_det.modeling.halting.state import HaltingState
from sact_det.modeling.sact.flops import backbone_flops
from sact_det.modeling.halting.branches import SpatialHalting
from sact_det.modeling.sact.backbone import ponder_loss
from sact_det.modeling.execution.sparse import cached_fold, sparse_unit_forward
from sact_det.modeling.execution.sparse_halting import masked_accumulate_, sparse_halting
from tests.helpers import randomize_bn, tiny_cfg
from tests.test_sparse_backbone import _halt_partially
from tests.test_sparse_halting import _active, _halting

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)


def _reference(h: torch.Tensor, eps: float):
    """float64 halting arithmetic written out per unit; h (L, P) -> N (P,), rho (P,), p (L, P), ran (L, P)."""
    h = h.double()
    L, P = h.shape
    c = torch.zeros(P, dtype=torch.float64)
    running = torch.ones(P, dtype=torch.bool)
    n = torch.zeros(P, dtype=torch.float64)
    r = torch.zeros(P, dtype=torch.float64)
    p = torch.zeros(L, P, dtype=torch.float64)
    ran = torch.zeros(L, P, dtype=torch.bool)
    for l in range(L):
        ran[l] = running
        n += running.double()
        halts = running if l == L - 1 else running & (c + h[l] >= 1 - eps)
        p[l] = torch.where(halts, 1 - c, torch.where(running, h[l], torch.zeros_like(c)))
        r = torch.where(halts, 1 - c, r)
        c = torch.where(running & ~halts, c + h[l], c)
        running = running & ~halts
    return n, n + r, p, ran


def _naive_units(h: torch.Tensor, eps: float) -> torch.Tensor:
    """N when the running sum is kept in the scores' own (low-precision) dtype (the old behaviour)."""
    c = torch.zeros_like(h[0])
    running = torch.ones(h.shape[1], dtype=torch.bool)
    n = torch.zeros(h.shape[1])
    for l in range(h.shape[0]):
        n += running.float()
        if l < h.shape[0] - 1:
            new = c + h[l]
            halts = running & (new >= 1 - eps)
            c = torch.where(running & ~halts, new, c)
            running = running & ~halts
    return n


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_23_unit_stage_accumulates_low_precision_scores_in_float32(dtype):
    L, eps, side = 23, 0.01, 16
    g = torch.Generator().manual_seed(0)
    first = 0.6 + 0.39 * torch.rand(side * side, generator=g)  # a large first score, then small increments
    small = 2.0 ** (-12 + 7 * torch.rand(L, side * side, generator=g))  # 2^-12 .. 2^-5
    h = torch.cat([first[None], small[1:]]).to(dtype)  # the scores a bf16 / fp16 halting branch returns
    n_ref, rho_ref, p_ref, ran_ref = _reference(h, eps)
    # premise: accumulated in the scores' dtype, these scores halt at another unit at >= 1 % of positions
    assert (_naive_units(h, eps) != n_ref.float()).float().mean() >= 0.01
    assert 0 < (n_ref < L).float().mean() < 1  # positions halt at many different units

    state = HaltingState(eps)
    for l in range(L):
        ran = torch.ones(1, 1, side, side, dtype=torch.bool) if l == 0 else state.active.clone()
        assert torch.equal(ran.view(-1), ran_ref[l]), f"unit {l} runs at other positions"
        w = state.step(h[l].view(1, 1, side, side), last=l == L - 1)
        assert w.dtype == torch.float32
        torch.testing.assert_close(w.view(-1).double(), p_ref[l], atol=1e-6, rtol=0)
    for t in (state.cumsum, state.num_units, state.remainder, state.ponder_cost):
        assert t.dtype == torch.float32
    assert torch.equal(state.num_units.view(-1).double(), n_ref)
    torch.testing.assert_close(state.ponder_cost.view(-1).double(), rho_ref, atol=1e-5, rtol=0)
    assert torch.equal(state.ponder_cost.view(-1).floor().double(), n_ref)  # N recovered from rho


def test_state_dtype_and_gradient_for_low_precision_scores():
    h = torch.tensor([0.5, 0.25, 0.375], dtype=torch.bfloat16, requires_grad=True)
    state = HaltingState(0.01)
    for l in range(3):
        state.step(h[l].view(1, 1, 1, 1), last=l == 2)
    assert state.ponder_cost.dtype == torch.float32
    assert state.ponder_cost.item() == 3.25  # N = 3, R = 1 - 0.75
    state.ponder_cost.sum().backward()
    assert h.grad.dtype == torch.bfloat16 and h.grad.tolist() == [-1.0, -1.0, 0.0]
    state64 = HaltingState(0.01)
    state64.step(torch.full((1, 1, 1, 1), 0.5, dtype=torch.float64), last=False)
    assert state64.ponder_cost.dtype == torch.float64  # float64 states stay float64


# --- a backbone whose halting scores are a fixed pattern of bf16-exact values -------------------------

_VALUES = torch.tensor([253 / 256, 0.5, 0.25, 0.125, 2 ** -10, 3 * 2 ** -10, 2 ** -9, 2 ** -8])


class PatternHalting(SpatialHalting):
    """Scores from a fixed random pattern (x only gives the shape), returned in x's dtype.

    Every value is exact in bf16, so fp32 and bf16-autocast runs get identical scores and must run
    identical units; their sums are not exact in bf16 (253/256 + 2^-10 + 2^-10 reaches 0.99 only in
    float32), so a bf16 halting state would halt elsewhere. FLOPs are counted as for SpatialHalting.
    """

    def __init__(self, channels: int, seed: int) -> None:
        super().__init__(channels)
        self.seed = seed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed)
        b, _, h, w = x.shape
        return _VALUES[torch.randint(len(_VALUES), (b, 1, h, w), generator=g)].to(x.dtype)


@pytest.fixture
def pattern_halting(monkeypatch):
    """Installs PatternHalting in a module's adaptive stages (the sparse path then calls it densely)."""
    supported = sparse_halting_module.supports_sparse_halting
    monkeypatch.setattr(sparse_halting_module, "supports_sparse_halting",
                        lambda m: not isinstance(m, PatternHalting) and supported(m))

    def install(backbone) -> None:
        for i, name in enumerate(backbone.adaptive_stages):
            for j, block in enumerate(list(getattr(backbone, name))[:-1]):
                block.halting = PatternHalting(block.out_channels, seed=100 * i + j)
    return install


def _run(bb, x, execution: str, amp: bool):
    bb.set_execution(execution, 0.5)
    with torch.no_grad(), torch.autocast(**BF16, enabled=amp):
        out = bb(x)["res4"]
    ponder = bb.last_ponder
    rho = {k: p.ponder_cost.clone() for k, p in ponder.items()}
    masks = {k: [m.clone() for m in p.masks] for k, p in ponder.items()}
    flops = [backbone_flops(bb, x.shape[2:], index=i) for i in range(x.shape[0])]
    return out, rho, masks, flops


def _assert_same_units(got, ref) -> None:
    _, rho, masks, flops = got
    for k in ref[1]:
        assert rho[k].dtype == torch.float32
        assert torch.equal(rho[k], ref[1][k])  # same scores, same float32 arithmetic: identical maps
        assert len(masks[k]) == len(ref[2][k]) and all(torch.equal(a, b) for a, b in zip(masks[k], ref[2][k]))
    assert flops == ref[3]


def test_backbone_under_bf16_autocast_runs_the_fp32_units(pattern_halting):
    torch.manual_seed(0)
    bb = build_backbone(tiny_cfg(depth=50)).eval()
    randomize_bn(bb)
    pattern_halting(bb)
    x = torch.randn(2, 3, 64, 96)
    ref = _run(bb, x, "dense", amp=False)
    partial = [m for ms in ref[2].values() for m in ms if 0 < m.float().mean() < 1]
    assert len(partial) >= 5, "the test needs partially active units"
    scale = float(ref[0].abs().max())
    runs = {ex: _run(bb, x, ex, amp=True) for ex in ("dense", "sparse", "auto")}
    for ex, got in runs.items():
        assert got[0].dtype == torch.bfloat16, ex
        _assert_same_units(got, ref)
        # bf16 through 13 random-weight units: features within 3 % of their scale (measured ~1.1 %)
        torch.testing.assert_close(got[0].float(), ref[0], atol=0.03 * scale, rtol=0)
    # sparse and dense under autocast compute the same bf16 function (measured ~0.8 % apart)
    for ex in ("sparse", "auto"):
        torch.testing.assert_close(runs[ex][0].float(), runs["dense"][0].float(), atol=0.03 * scale, rtol=0)


def test_learned_halting_under_bf16_autocast_agrees_with_fp32():
    """Real halting branches see bf16 features, so a few positions near the threshold may halt at a
    neighbouring unit: ponder maps agree on average within 0.02 (measured <= 0.006) and N agrees at
    >= 98 % of the positions (measured >= 99.6 %), dense and sparse alike."""
    torch.manual_seed(0)
    bb = build_backbone(tiny_cfg(depth=18)).eval()
    randomize_bn(bb)
    _halt_partially(bb, 4.0)
    x = torch.randn(2, 3, 64, 96)
    ref = _run(bb, x, "dense", amp=False)
    n_ref = {k: p.num_units.clone() for k, p in bb.last_ponder.items()}
    for ex in ("dense", "sparse"):
        got = _run(bb, x, ex, amp=True)
        for k, rho in got[1].items():
            assert rho.dtype == torch.float32
            assert float((rho - ref[1][k]).abs().mean()) < 0.02, (ex, k)
            same_n = (bb.last_ponder[k].num_units == n_ref[k]).float().mean()
            assert same_n >= 0.98, (ex, k, float(same_n))


def test_sparse_kernels_under_bf16_autocast_match_dense_autocast():
    torch.manual_seed(0)
    block = build_backbone(tiny_cfg(depth=50)).eval().res3[1]
    randomize_bn(block)
    x = torch.randn(2, 512, 9, 13).contiguous(memory_format=torch.channels_last)
    active = torch.rand(2, 1, 9, 13, generator=torch.Generator().manual_seed(1)) < 0.4
    with torch.no_grad(), torch.autocast(**BF16):
        xb = block(x)  # a bf16 state, as under autocast
        expected = torch.where(active, block(xb), xb)
        got = sparse_unit_forward(cached_fold(block), xb, active, max_density=1.1)
        hm = _halting("BN", 3)
        xh = (torch.randn(3, 64, 7, 11) * 2 + 0.5).to(torch.bfloat16)
        h_dense = hm(xh)
        h_sparse = sparse_halting(hm, xh, _active())
    assert got.dtype == torch.bfloat16
    scale = float(expected.float().abs().max())
    torch.testing.assert_close(got.float(), expected.float(), atol=0.02 * scale, rtol=0)
    assert h_sparse.dtype == torch.float32
    a = _active()
    torch.testing.assert_close(h_sparse[a], h_dense.float()[a], atol=0.01, rtol=0)  # bf16 conv round-off
    out = torch.zeros(2, 512, 9, 13).contiguous(memory_format=torch.channels_last)
    w = torch.rand(2, 1, 9, 13)
    masked_accumulate_(out, w, xb, active)  # float32 out, bf16 x
    torch.testing.assert_close(out, torch.where(active, w * xb.float(), torch.zeros_like(out)))


def _inputs(n: int = 2) -> List[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.rand(3, 64, 96, generator=g) * 255, "height": 64, "width": 96} for _ in range(n)]


def _small_detector():
    cfg = tiny_cfg(depth=18)
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 4  # a small res5 box head (bf16 convs are slow on CPU)
    torch.manual_seed(0)
    return build_model(cfg)


def test_detector_inference_under_bf16_autocast(pattern_halting):
    model = _small_detector().eval()
    randomize_bn(model.backbone)
    pattern_halting(model.backbone)
    with torch.no_grad():
        ref = model(_inputs())
        for execution in ("dense", "sparse"):
            model.backbone.set_execution(execution)
            with torch.autocast(**BF16):
                got = model(_inputs())
            for a, b in zip(got, ref):
                assert a["flops"]["backbone"] == b["flops"]["backbone"]
                for k in b["ponder_maps"]:
                    assert a["ponder_maps"][k].dtype == torch.float32
                    assert torch.equal(a["ponder_maps"][k], b["ponder_maps"][k])
                assert torch.isfinite(a["instances"].pred_boxes.tensor).all()  # (an untrained head: maybe none)


def test_train_step_under_bf16_autocast():
    """What AMPTrainer.run_step does (autocast forward, backward, step), on CPU with bf16.

    The detector's training forward gives float32 losses incl. loss_ponder; the backward is taken
    through the SACT backbone only (PyTorch's CPU bf16 conv backward is a slow reference kernel:
    the C4 box head alone takes minutes)."""
    model = _small_detector().train()
    data = _inputs()
    for d in data:
        inst = Instances((64, 96))
        inst.gt_boxes = Boxes(torch.tensor([[10.0, 10.0, 50.0, 40.0], [40.0, 20.0, 90.0, 60.0]]))
        inst.gt_classes = torch.tensor([0, 2])
        d["instances"] = inst
    with EventStorage(), torch.autocast(**BF16), torch.no_grad():
        losses = model(data)
    assert losses["loss_ponder"].dtype == torch.float32
    assert all(torch.isfinite(v) for v in losses.values())

    bb = model.backbone
    halting = [p for n, p in bb.named_parameters() if ".halting." in n]
    before = [p.detach().clone() for p in halting]
    opt = torch.optim.SGD(bb.parameters(), lr=0.1)
    x = model.preprocess_image(data).tensor
    with torch.autocast(**BF16):
        feats = bb(x)["res4"]
        loss = ponder_loss(bb.last_ponder, 0.01) + feats.float().pow(2).mean()
    assert feats.dtype == torch.bfloat16 and loss.dtype == torch.float32
    opt.zero_grad()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in halting)
    assert any(p.grad.abs().sum() > 0 for p in halting)
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, halting))
