"""The adaptive-backbone contract, for every family of the detector (sact, act, aig, blockdrop, dense):
build, one training step (finite losses, non-zero finite gradients on the family's own parameters),
evaluation outputs, and per-image FLOPs = 2 x fvcore's multiply-adds when every unit runs."""
import math

import pytest
import torch
from detectron2.modeling import build_backbone, build_model
from detectron2.utils.events import EventStorage

from sact_det.modeling.core.contract import FAMILIES, AdaptiveBackbone
from tests.helpers import detection_inputs, fvcore_flops, disable_halting, tiny_cfg

FAMILY_PARAMS = {"sact": ".halting.", "act": ".halting.", "aig": ".gate.", "blockdrop": "backbone.policy.",
                 "dense": None}
FAMILY_LOSS = {"sact": "loss_ponder", "act": "loss_ponder", "aig": "loss_target_rate", "blockdrop": "loss_policy",
               "dense": None}
FAMILY_OUTPUTS = {"sact": {"ponder_map", "ponder_maps"}, "act": {"ponder_map", "ponder_maps"},
                  "aig": {"unit_policy"}, "blockdrop": {"unit_policy"}, "dense": set()}


def family_cfg(family: str):
    """A tiny R-18 C4 detector config of ``family``."""
    cfg = tiny_cfg(depth=18, mode={"sact": "sact", "act": "act"}.get(family, "none"))
    if family == "aig":
        cfg.MODEL.BACKBONE.NAME = "build_aig_resnet_backbone"
        cfg.MODEL.AIG.GATE_NORM = "LN"
        cfg.MODEL.AIG.TARGET_RATE = 0.5
    elif family == "blockdrop":
        cfg.MODEL.BACKBONE.NAME = "build_blockdrop_resnet_backbone"
        cfg.MODEL.META_ARCHITECTURE = "BlockDropRCNN"
        cfg.MODEL.BLOCKDROP.POLICY_INPUT_SIZE = 32
        cfg.MODEL.BLOCKDROP.POLICY_NORM = "GN"
    return cfg


def run_every_unit(bb) -> None:
    """Make every unit of the backbone run at every position of every image."""
    if bb.family in ("sact", "act"):
        disable_halting(bb)
    elif bb.family == "aig":
        for name in bb.gated_units:
            fc2 = bb._block(name).gate.fc2
            fc2.weight.data.zero_()
            fc2.bias.data.copy_(torch.tensor([-1e4, 1e4]))
    elif bb.family == "blockdrop":
        bb.policy.logit.weight.data.zero_()
        bb.policy.logit.bias.data.fill_(10.0)


@pytest.mark.parametrize("family", FAMILIES)
def test_train_step_losses_and_family_gradients(family):
    torch.manual_seed(0)
    model = build_model(family_cfg(family))
    assert isinstance(model.backbone, AdaptiveBackbone) and model.backbone.family == family
    model.train()
    with EventStorage():
        losses = model(detection_inputs())
    assert all(torch.isfinite(v) for v in losses.values())
    if FAMILY_LOSS[family]:
        assert FAMILY_LOSS[family] in losses
    assert not {"loss_ponder", "loss_target_rate", "loss_policy"} - {FAMILY_LOSS[family]} & set(losses)
    sum(losses.values()).backward()
    key = FAMILY_PARAMS[family]
    own = {n: p.grad for n, p in model.named_parameters() if key is not None and key in n and p.requires_grad}
    if key is None:  # dense: the detector's own backbone parameters learn
        own = {n: p.grad for n, p in model.named_parameters() if n.startswith("backbone.res4.")}
    assert own and all(g is not None and torch.isfinite(g).all() for g in own.values())
    assert any(float(g.abs().sum()) > 0 for g in own.values())


@pytest.mark.parametrize("family", FAMILIES)
def test_eval_outputs(family):
    torch.manual_seed(0)
    model = build_model(family_cfg(family)).eval()
    batch = [{k: v for k, v in d.items() if k != "instances"} for d in detection_inputs()]
    with torch.no_grad():
        outs = model(batch)
    for i, out in enumerate(outs):
        assert "instances" in out
        f = out["flops"]
        assert math.isfinite(f["backbone"]) and f["model"] > f["backbone"] > 0
        assert FAMILY_OUTPUTS[family] <= set(out)
        assert not ({"ponder_map", "unit_policy"} - FAMILY_OUTPUTS[family]) & set(out)
        if family in ("aig", "blockdrop"):
            assert list(out["unit_policy"]) == model.backbone.unit_names
        if family in ("sact", "act"):
            h = batch[i]["image"].shape[1]
            assert out["ponder_map"].shape == (math.ceil(h / 4), 32)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("hw", [(64, 96), (70, 45)])
def test_flops_equal_twice_fvcore_when_every_unit_runs(family, hw):
    torch.manual_seed(0)
    bb = build_backbone(family_cfg(family)).eval()
    run_every_unit(bb)
    expect = fvcore_flops(bb, hw)
    # AIG gates / the BlockDrop policy decide through Python control flow, which the trace prunes:
    # fvcore counts them on their own inputs (a pooled vector per gate; the resized image for the policy)
    if family == "aig":
        expect += sum(fvcore_flops(bb._block(n).gate, None, torch.randn(1, bb._block(n).in_channels))
                      for n in bb.gated_units)
    elif family == "blockdrop":
        size = bb.policy_input_size
        expect += fvcore_flops(bb.policy, (size, size))
    with torch.no_grad():
        bb(torch.randn(1, 3, *hw))
    assert bb.image_flops(0) == pytest.approx(expect, rel=1e-12)


def test_image_sizes_are_per_image():
    bb = build_backbone(family_cfg("dense")).eval()
    bb.set_image_sizes([(64, 96), (32, 48)])
    with torch.no_grad():
        bb(torch.randn(2, 3, 64, 96))
    flops = bb.image_flops(1)
    assert flops == pytest.approx(fvcore_flops(bb, (32, 48)), rel=1e-12)
    with torch.no_grad():
        bb(torch.randn(1, 3, 64, 96))  # the sizes were for that forward only
    assert bb.image_size(0) == (64, 96)
    bb.set_image_sizes([(64, 96)])
    with pytest.raises(ValueError, match="1 sizes for a batch of 2"):
        bb(torch.randn(2, 3, 64, 96))


@pytest.mark.parametrize("family", ["aig", "blockdrop", "dense"])
def test_families_without_sparse_kernels_accept_only_dense(family):
    bb = build_backbone(family_cfg(family))
    bb.set_execution("dense")
    if family != "dense":  # (dense is SACTResNet with MODE none: no adaptive stage to switch)
        with pytest.raises(ValueError, match="dense"):
            bb.set_execution("sparse")
