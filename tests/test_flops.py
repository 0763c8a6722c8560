"""Exact FLOPs of the SACT counting: dense == 2 x fvcore's conv multiply-adds; halting branches and masked
units against hand-computed values."""
import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from sact_det.modeling.sact.backbone import StagePonder
from sact_det.modeling.core.flop_rules import dilate
from sact_det.modeling.sact.flops import backbone_flops, dense_backbone_flops
from tests.helpers import fvcore_flops, disable_halting, tiny_cfg


@pytest.mark.parametrize("depth,out,hw", [(18, "res4", (64, 96)), (34, "res5", (97, 131)),
                                          (50, "res4", (97, 131)), (101, "res4", (65, 33)),
                                          (50, "res5", (224, 224))])
def test_dense_count_equals_fvcore(depth, out, hw):
    cfg = tiny_cfg(depth=depth, mode="none")
    cfg.MODEL.RESNETS.OUT_FEATURES = [out]
    bb = build_backbone(cfg).eval()
    x = torch.randn(1, 3, *hw)
    assert backbone_flops(bb, hw) == fvcore_flops(bb, x=x, eval_mode=False)
    # the cached structural reference (meta device, no weights) agrees too
    assert dense_backbone_flops(hw, depth=depth, out_feature=out) == backbone_flops(bb, hw)


def test_all_active_sact_is_dense_plus_halting_branches():
    cfg = tiny_cfg(depth=50, mode="sact")
    bb = build_backbone(cfg).eval()
    disable_halting(bb)
    hw = (64, 96)
    with torch.no_grad():
        bb(torch.randn(1, 3, *hw))
    dense = dense_backbone_flops(hw, depth=50, out_feature="res4")
    # halting of units 0..L-2: 3x3 conv C->1 at every position + 1x1 conv C->1 on the pooled vector
    grids = {"res2": (16, 24, 256, 3), "res3": (8, 12, 512, 4), "res4": (4, 6, 1024, 6)}
    halting = sum((units - 1) * (2 * h * w * 9 * c + 2 * c) for h, w, c, units in grids.values())
    assert backbone_flops(bb, hw) == dense + halting


def test_masked_unit_counts_first_conv_on_dilated_mask():
    cfg = tiny_cfg(depth=18, mode="sact", stages=("res4",))
    bb = build_backbone(cfg).eval()
    hw = (64, 96)  # res4 grid 4x6, R-18 res4 has 2 basic units of 3x3 256->256 convs
    with torch.no_grad():
        bb(torch.randn(1, 3, *hw))
    nowhere = torch.zeros(1, 1, 4, 6, dtype=torch.bool)
    corner = nowhere.clone()
    corner[0, 0, 0, 0] = True
    rho = torch.ones(1, 1, 4, 6)
    base = backbone_flops(bb, hw, ponder={"res4": StagePonder(rho, rho, [nowhere], 16)})
    got = backbone_flops(bb, hw, ponder={"res4": StagePonder(rho, rho, [corner], 16)})
    conv = 2 * 256 * 9 * 256  # FLOPs of one 3x3 256->256 conv output position
    assert got - base == 4 * conv + 1 * conv  # conv1 on the 2x2 dilated corner, conv2 on 1 position


def _r18_halting(hw, stages=("res2", "res3", "res4")):
    """Hand count of one SACT halting branch per R-18 stage (units 0..L-2 = unit 0) on an image of ``hw``:
    3x3 conv C->1 at every position of the stage grid + 1x1 conv C->1 on the pooled vector."""
    h, w = (hw[0] - 1) // 2 + 1, (hw[1] - 1) // 2 + 1  # stem conv 7x7/2 pad 3
    h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1  # max pool 3x3/2 pad 1
    total, grids = 0.0, {}
    for name, c in (("res2", 64), ("res3", 128), ("res4", 256)):
        grids[name] = (h, w)
        if name in stages:
            total += 2 * h * w * 9 * c + 2 * c
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    return total, grids


def test_padding_is_not_counted():
    cfg = tiny_cfg(depth=18, mode="sact")
    bb = build_backbone(cfg).eval()
    disable_halting(bb)
    with torch.no_grad():
        bb(torch.randn(2, 3, 64, 96))  # image 1 is 64x64 inside a padded 64x96 batch
    dense = build_resnet_backbone(tiny_cfg(depth=18, mode="none"), ShapeSpec(channels=3)).eval()
    for index, hw in ((0, (64, 96)), (1, (64, 64))):
        expect = fvcore_flops(dense, x=torch.randn(1, 3, *hw), eval_mode=False) + _r18_halting(hw)[0]
        assert backbone_flops(bb, hw, index=index) == expect


def test_halted_stage_skips_its_last_unit():
    cfg = tiny_cfg(depth=18, mode="sact")
    bb = build_backbone(cfg).eval()
    disable_halting(bb)
    bb.res4[0].halting.local_conv.bias.data.fill_(1e4)  # res4 halts everywhere after unit 0
    hw = (64, 96)
    with torch.no_grad():
        bb(torch.randn(1, 3, *hw))
    dense = build_resnet_backbone(tiny_cfg(depth=18, mode="none"), ShapeSpec(channels=3)).eval()
    halting, grids = _r18_halting(hw)
    h, w = grids["res4"]  # the res4 grid (output of its strided unit 0)
    unit_1 = 2 * (2 * h * w * 9 * 256 * 256)  # res4.1: two 3x3 256->256 convs, identity shortcut
    assert backbone_flops(bb, hw) == fvcore_flops(dense, x=torch.randn(1, 3, *hw), eval_mode=False) + halting - unit_1


def test_dilate():
    m = torch.zeros(1, 1, 7, 7, dtype=torch.bool)
    m[0, 0, 3, 3] = True  # interior: 3x3 block
    m[0, 0, 0, 6] = True  # corner: 2x2 block, disjoint from the first
    assert int(dilate(m).sum()) == 9 + 4
