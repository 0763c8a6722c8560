"""SACT backbone contract, detectron2 compatibility, dense equivalence, freezing and bad values."""
import pickle

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import build_backbone
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from sact_det.modeling.sact.backbone import SACTResNet
from tests.helpers import disable_halting, randomize_bn, tiny_cfg


def test_contract_r50_res4_stride16_1024_channels():
    cfg = tiny_cfg(depth=50)
    bb = build_backbone(cfg)
    assert isinstance(bb, SACTResNet)
    assert bb.output_shape() == {"res4": ShapeSpec(channels=1024, stride=16)}
    bb.eval()
    with torch.no_grad():
        out = bb(torch.randn(2, 3, 64, 96))
    assert out["res4"].shape == (2, 1024, 4, 6)
    assert set(bb.last_ponder) == {"res2", "res3", "res4"}
    assert bb.last_ponder["res4"].ponder_cost.shape == (2, 1, 4, 6)
    # 6 units in res4 of R-50: units 1..5 have masks
    assert len(bb.last_ponder["res4"].masks) <= 5


@pytest.mark.parametrize("depth", [18, 50])
def test_parameter_names_are_detectron2_names_plus_halting(depth):
    cfg = tiny_cfg(depth=depth)
    ours = set(build_backbone(cfg).state_dict())
    theirs = set(build_resnet_backbone(cfg, ShapeSpec(channels=3)).state_dict())
    assert theirs <= ours
    extra = ours - theirs
    assert extra and all(".halting." in k for k in extra)
    # the last unit of each adaptive stage has no halting branch; the first units do
    assert any(k.startswith("res2.0.halting.") for k in extra)
    last = {18: "res4.1", 50: "res4.5"}[depth]
    assert not any(k.startswith(last + ".halting") for k in extra)


@pytest.mark.parametrize("depth,mode", [(18, "sact"), (50, "sact"), (50, "act")])
def test_dense_equivalence_when_halting_disabled(depth, mode):
    cfg = tiny_cfg(depth=depth, mode=mode)
    torch.manual_seed(0)
    dense = build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()
    randomize_bn(dense)
    ours = build_backbone(cfg).eval()
    missing, unexpected = ours.load_state_dict(dense.state_dict(), strict=False)
    assert not unexpected and all(".halting." in k for k in missing)
    disable_halting(ours)
    x = torch.randn(2, 3, 80, 112)
    with torch.no_grad():
        a, b = dense(x)["res4"], ours(x)["res4"]
    assert torch.equal(a, b)  # bit for bit
    assert all(m.all() for p in ours.last_ponder.values() for m in p.masks)


def test_mode_none_has_no_halting_and_matches_detectron2():
    cfg = tiny_cfg(depth=18, mode="none")
    torch.manual_seed(0)
    dense = build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()
    ours = build_backbone(cfg).eval()
    assert set(ours.state_dict()) == set(dense.state_dict())
    ours.load_state_dict(dense.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(dense(x)["res4"], ours(x)["res4"])
    assert ours.last_ponder == {}


def test_loads_detectron2_pkl_by_name(tmp_path):
    cfg = tiny_cfg(depth=18)
    torch.manual_seed(1)
    dense = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    weights = {f"backbone.{k}": v.numpy().copy() for k, v in dense.state_dict().items()}
    path = tmp_path / "R-18-dense.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": weights, "__author__": "test", "matching_heuristics": False}, f)
    from tests.helpers import build_tiny_model

    model = build_tiny_model(depth=18)
    halting_before = {k: v.clone() for k, v in model.state_dict().items() if ".halting." in k}
    DetectionCheckpointer(model).load(str(path))
    sd = model.state_dict()
    for k, v in dense.state_dict().items():
        assert np.array_equal(sd["backbone." + k].numpy(), v.numpy()), k
    for k, v in halting_before.items():
        assert torch.equal(sd[k], v), k  # halting parameters are new: untouched


def test_freeze_at_never_freezes_halting():
    cfg = tiny_cfg(depth=18)
    cfg.MODEL.BACKBONE.FREEZE_AT = 3  # stem, res2, res3
    bb = build_backbone(cfg)
    for name, p in bb.named_parameters():
        frozen_part = name.startswith(("stem.", "res2.", "res3.")) and ".halting." not in name
        assert p.requires_grad == (not frozen_part), name
    assert isinstance(bb.res2[0].conv1.norm, FrozenBatchNorm2d)
    assert isinstance(bb.res2[0].halting.local_norm, torch.nn.BatchNorm2d)


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("TAU", -0.1, "TAU"),
        ("EPS", 0.0, "EPS"),
        ("EPS", 1.0, "EPS"),
        ("MODE", "sometimes", "MODE"),
        ("STAGES", ["res2", "res9"], "res9"),
        ("STAGES", ["res5"], "res5"),  # C4 backbone stops at res4
        ("EXECUTION", "fast", "EXECUTION"),
    ],
)
def test_bad_values_raise_clear_errors(key, value, match):
    cfg = tiny_cfg(depth=18)
    setattr(cfg.MODEL.SACT, key, value)
    with pytest.raises(ValueError, match=match):
        build_backbone(cfg)
