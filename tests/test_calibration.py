"""calibrate_halting: the backbone then runs the target FLOPs fraction on the calibration images."""
import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from sact_det.modeling.halting.branches import SpatialHalting
from sact_det.modeling.sact.calibration import calibrate_halting, flops_fraction, randomize_halting
from tests.helpers import disable_halting, tiny_cfg

# R-50 C4 adaptive stages: (units, C, bottleneck C) of their 1x1 -> 3x3 -> 1x1 units with identity shortcut
STAGES = {"res2": (3, 256, 64), "res3": (4, 512, 128), "res4": (6, 1024, 256)}


def _fvcore_dense_flops(cfg, hw) -> float:
    """2 x fvcore's multiply-add count of the convolutions of detectron2's dense ResNet of the same config."""
    from fvcore.nn import FlopCountAnalysis

    dense = build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()
    counter = FlopCountAnalysis(dense, torch.zeros(1, 3, *hw))
    counter.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return 2.0 * counter.by_operator()["conv"]


@torch.no_grad()
def _flops_change(bb) -> float:
    """Hand count of (FLOPs run) - (dense FLOPs) of the last forward (one image), from the masks: unit l >= 1
    runs its 1x1 C->Cb conv on the 3x3-dilated mask (the 3x3 conv reads its neighbours) and the 3x3 Cb->Cb
    and 1x1 Cb->C convs on the mask; every unit but the last adds its halting branch (3x3 C->1 conv where
    the unit ran, 1x1 C->1 on the pooled map). 2 FLOPs per multiply-add."""
    change = 0.0
    for name, p in bb.last_ponder.items():
        units, c, cb = STAGES[name]
        h, w = p.ponder_cost.shape[-2:]
        masks = [m[0, 0] for m in p.masks] + [torch.zeros(h, w, dtype=torch.bool)] * (units - 1 - len(p.masks))
        change += h * w * 2 * 9 * c + 2 * c  # unit 0's halting branch
        for l, m in enumerate(masks, start=1):
            n = int(m.sum())
            n_dil = int((torch.nn.functional.max_pool2d(m[None, None].float(), 3, 1, 1) > 0).sum())
            change -= (h * w - n_dil) * 2 * c * cb + (h * w - n) * 2 * (9 * cb * cb + cb * c)
            if l < units - 1 and n > 0:
                change += n * 2 * 9 * c + 2 * c
    return change


@pytest.mark.parametrize("target", [0.5, 0.8])
def test_calibrated_backbone_runs_the_target_fraction(target):
    torch.manual_seed(0)
    cfg = tiny_cfg(depth=50, mode="sact")
    bb = build_backbone(cfg).eval()
    randomize_halting(bb, seed=1)
    hw = (128, 160)
    images = [torch.randn(1, 3, *hw) for _ in range(2)]
    calibrate_halting(bb, images, target)
    measured = flops_fraction(bb, images)
    assert measured == pytest.approx(target, abs=0.02)  # the fraction moves in small steps at this size
    dense = _fvcore_dense_flops(cfg, hw)
    independent = 0.0
    with torch.no_grad():
        for img in images:
            bb(img)
            independent += (1 + _flops_change(bb) / dense) / len(images)
    assert independent == pytest.approx(measured, rel=1e-6)


def test_calibration_rejects_a_dense_backbone_and_bad_targets():
    bb = build_backbone(tiny_cfg(depth=18, mode="none")).eval()
    with pytest.raises(ValueError, match="SpatialHalting"):
        calibrate_halting(bb, [torch.randn(1, 3, 32, 32)], 0.5)
    bb = build_backbone(tiny_cfg(depth=18, mode="sact")).eval()
    with pytest.raises(ValueError, match="target"):
        calibrate_halting(bb, [torch.randn(1, 3, 32, 32)], 1.5)


def _halting_inputs(bb, images):
    """Per halting branch: its inputs (those of its local norm) on ``images`` (dense execution), as (N, C) rows."""
    heads = [m for m in bb.modules() if isinstance(m, SpatialHalting)]
    seen = {id(h): [] for h in heads}
    hooks = [h.register_forward_pre_hook(lambda m, i: seen[id(m)].append(i[0].detach())) for h in heads]
    bb.set_execution("dense")
    with torch.no_grad():
        for img in images:
            bb(img)
    for h in hooks:
        h.remove()
    return [torch.cat([x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]) for x in seen[id(h)]]) for h in heads]


@pytest.mark.parametrize("norm", ["FrozenBN", "BN"])
def test_randomize_halting_gives_fixed_statistics_norms_the_statistics_of_their_inputs(norm):
    import copy

    torch.manual_seed(0)
    cfg = tiny_cfg(depth=50, mode="sact")
    cfg.MODEL.SACT.HALT_NORM = norm
    bb = build_backbone(cfg).eval()
    images = [torch.randn(1, 3, 64, 96) * 3 for _ in range(2)]
    ref = copy.deepcopy(bb)
    randomize_halting(ref, seed=3)  # same weights, statistics untouched
    disable_halting(ref)  # the statistics are taken with every unit running everywhere
    inputs = _halting_inputs(ref, images)
    bb.set_execution("auto", 0.5)
    randomize_halting(bb, seed=3, images=images)
    assert all(getattr(bb, n).execution == "auto" and getattr(bb, n).sparse_max_density == 0.5
               for n in bb.adaptive_stages)  # restored
    mine = [m for m in bb.modules() if isinstance(m, SpatialHalting)]
    assert len(mine) == len(inputs) == 10  # R-50 res2..res4: 2 + 3 + 5 branches (none after a last unit)
    # every branch read its whole map on both images: 64x96 at strides 4 / 8 / 16
    assert [x.shape[0] for x in inputs] == [2 * 16 * 24] * 2 + [2 * 8 * 12] * 3 + [2 * 4 * 6] * 5
    for hd, x in zip(mine, inputs):
        var, mean = torch.var_mean(x.double(), 0, unbiased=False)
        assert torch.allclose(hd.local_norm.running_mean.double(), mean, rtol=1e-5, atol=1e-6)
        assert torch.allclose(hd.local_norm.running_var.double(), var, rtol=1e-5, atol=1e-6)
        assert (var - 1).abs().max() > 0.3  # far from the default (0, 1): the statistics were really set


def test_calibration_warns_when_the_target_is_out_of_reach():
    torch.manual_seed(0)
    bb = build_backbone(tiny_cfg(depth=50, mode="sact")).eval()
    randomize_halting(bb, seed=1)
    images = [torch.randn(1, 3, 64, 96)]
    with pytest.warns(UserWarning, match="reached 0.[0-9]+ of the dense FLOPs, not 0.050"):
        calibrate_halting(bb, images, 0.05)  # units 0 of every stage always run: far above 5 %
    assert flops_fraction(bb, images) > 0.2
