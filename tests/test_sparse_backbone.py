"""EXECUTION sparse / auto give the masked dense backbone's features, ponder maps, FLOPs and detections."""
import pytest
import torch
from detectron2.modeling import build_backbone

from sact_det.modeling.sact.flops import backbone_flops
from sact_det.modeling.halting.branches import GlobalHalting, SpatialHalting
from tests.helpers import build_tiny_model, randomize_bn, tiny_cfg

TOL = dict(atol=1e-4, rtol=1e-4)


def _halt_partially(module: torch.nn.Module, bias: float, seed: int = 0) -> None:
    """Random halting convs and a high bias, so that some positions (images for ACT) halt early."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, SpatialHalting):
            m.local_conv.weight.data = torch.randn(m.local_conv.weight.shape, generator=g) * 0.3
            m.local_conv.bias.data.fill_(bias)
        elif isinstance(m, GlobalHalting):
            m.global_conv.weight.data = torch.randn(m.global_conv.weight.shape, generator=g)
            m.global_conv.bias.data.fill_(bias)


def _run(bb, x, execution):
    bb.set_execution(execution, 0.5)
    with torch.no_grad():
        out = bb(x)["res4"]
    return out, {k: p.ponder_cost.clone() for k, p in bb.last_ponder.items()}, \
        {k: [m.clone() for m in p.masks] for k, p in bb.last_ponder.items()}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("depth,mode,bias", [(18, "sact", 4.0), (50, "sact", 1.5), (50, "act", -1.0)])
def test_sparse_backbone_equals_masked_dense(depth, mode, bias, dtype):
    torch.manual_seed(0)
    bb = build_backbone(tiny_cfg(depth=depth, mode=mode)).eval()
    randomize_bn(bb)
    _halt_partially(bb, bias)
    bb.to(dtype)
    # images of different statistics, so that ACT halts them at different units
    x = (torch.randn(3, 3, 96, 128) * torch.tensor([0.3, 1.0, 3.0]).view(3, 1, 1, 1)
         + torch.tensor([-1.0, 0.0, 1.0]).view(3, 1, 1, 1)).to(dtype)
    ref, rho, masks = _run(bb, x, "dense")
    partial = [m for ms in masks.values() for m in ms if 0 < m.float().mean() < 1]
    assert partial, "the test needs masks that are neither empty nor full"
    flops_ref = [backbone_flops(bb, (96, 128), index=i) for i in range(3)]
    # fp64: exact up to round-off. fp32: 13 random-weight units amplify round-off (features reach
    # |x| ~ 50-400; the masked dense path itself is then ~3e-3 off an fp64 run, the sparse one closer),
    # so the absolute tolerance is 1e-4 of the feature scale.
    tol = dict(atol=1e-9, rtol=1e-9) if dtype == torch.float64 else dict(atol=1e-4 * float(ref.abs().max()), rtol=1e-4)
    for execution in ("sparse", "auto"):
        out, rho2, masks2 = _run(bb, x, execution)
        torch.testing.assert_close(out, ref, **tol)
        for k in rho:
            torch.testing.assert_close(rho2[k], rho[k], **TOL)
            assert all(torch.equal(a, b) for a, b in zip(masks2[k], masks[k]))
        assert [backbone_flops(bb, (96, 128), index=i) for i in range(3)] == pytest.approx(flops_ref)


def test_detector_outputs_equal_in_dense_and_sparse_mode():
    model = build_tiny_model(depth=18).eval()
    randomize_bn(model.backbone)
    _halt_partially(model.backbone, 4.0)
    g = torch.Generator().manual_seed(0)
    inputs = [{"image": (torch.rand(3, 96, 128, generator=g) * 255), "height": 96, "width": 128}]
    results = {}
    for execution in ("dense", "sparse"):
        model.backbone.set_execution(execution)
        with torch.no_grad():
            results[execution] = model(inputs)[0]
    a, b = results["dense"], results["sparse"]
    torch.testing.assert_close(b["ponder_map"], a["ponder_map"], **TOL)
    assert b["flops"] == pytest.approx(a["flops"])
    ia, ib = a["instances"], b["instances"]
    assert len(ia) == len(ib)
    torch.testing.assert_close(ib.pred_boxes.tensor, ia.pred_boxes.tensor, **TOL)
    torch.testing.assert_close(ib.scores, ia.scores, **TOL)
    assert torch.equal(ib.pred_classes, ia.pred_classes)


def _partially_halting_r50():
    """(tiny SACT R-50 backbone in eval mode whose positions halt partially, a (2,3,64,96) input)."""
    torch.manual_seed(0)
    bb = build_backbone(tiny_cfg(depth=50, mode="sact")).eval()
    randomize_bn(bb)
    _halt_partially(bb, 1.5)
    return bb, torch.randn(2, 3, 64, 96)


def test_sparse_outputs_are_nchw_and_folds_follow_new_weights():
    """The channels-last sparse path hands NCHW features to the heads, and after the weights change
    (training step, load) the folded copies are rebuilt: sparse still equals masked dense."""
    bb, x = _partially_halting_r50()
    _run(bb, x, "sparse")
    bb.train()
    randomize_bn(bb, seed=1)  # new norm statistics: stale folded weights would change every feature
    bb.eval()
    ref = _run(bb, x, "dense")[0]
    out = _run(bb, x, "sparse")[0]
    assert out.is_contiguous()
    torch.testing.assert_close(out, ref, atol=1e-4 * float(ref.abs().max()), rtol=1e-4)


def test_channels_last_input_gives_channels_last_outputs():
    """A channels-last input (as a channels-last dense model is fed) keeps its layout: no conversion back."""
    bb, x = _partially_halting_r50()
    ref = _run(bb, x, "dense")[0]
    out = _run(bb, x.contiguous(memory_format=torch.channels_last), "sparse")[0]
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    torch.testing.assert_close(out, ref, atol=1e-4 * float(ref.abs().max()), rtol=1e-4)


def test_replaying_its_own_masks_reproduces_the_sparse_run():
    """replay_masks runs the units on given masks: the model's own masks give its own result."""
    bb, x = _partially_halting_r50()
    ref, _, masks = _run(bb, x, "sparse")
    flops = backbone_flops(bb, (64, 96))
    with bb.replay_masks(masks):
        out, _, masks2 = _run(bb, x, "sparse")
    torch.testing.assert_close(out, ref, **TOL)
    assert backbone_flops(bb, (64, 96)) == pytest.approx(flops)
    with bb.replay_masks({name: [] for name in bb.adaptive_stages}):  # empty: no unit beyond the first runs
        _run(bb, x, "sparse")
    assert all(not p.masks for p in bb.last_ponder.values())
    _run(bb, x, "sparse")  # outside the block: the halting masks again
    assert all(p.masks for p in bb.last_ponder.values())
    assert all(getattr(bb, n)._replay is None for n in bb.adaptive_stages)
    bb.set_execution("dense")
    with pytest.raises(RuntimeError, match="sparse"):
        with bb.replay_masks(masks):
            pass


def test_folds_follow_weights_loaded_in_eval_mode():
    """Weights loaded while the model stays in eval mode (no train() between) are refolded too."""
    bb, x = _partially_halting_r50()
    _run(bb, x, "sparse")
    other = build_backbone(tiny_cfg(depth=50, mode="sact"))
    randomize_bn(other, seed=2)
    _halt_partially(other, 1.5)
    bb.load_state_dict(other.state_dict())
    ref = _run(bb, x, "dense")[0]
    out = _run(bb, x, "sparse")[0]
    torch.testing.assert_close(out, ref, atol=1e-4 * float(ref.abs().max()), rtol=1e-4)
