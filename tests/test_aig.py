"""ConvNet-AIG: gate arithmetic by hand, target-rate schedules and errors, dense equivalence,
per-image skipping at inference, FLOPs, and the detector's loss dict."""
import math

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone, build_model
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from detectron2.utils.events import EventStorage

import sact_det.modeling.skipping.aig  # noqa: F401  (registers the backbone and cfg.MODEL.AIG)
import sact_det.modeling.skipping.blockdrop_rcnn  # noqa: F401
from sact_det.modeling.skipping.aig import (AIGResNet, gumbel_gate, resolve_target_rates, seed_schedule, target_rate_loss,
                                   threshold_gate)
from sact_det.modeling.skipping.base import pool_valid
from tests.helpers import detection_inputs, fvcore_flops, randomize_bn, tiny_cfg


def r18_residual_flops(unit: str, hw) -> float:
    """Hand count of the two 3x3 convs of R-18 unit ``unit`` ("res3.0") on an image of ``hw`` (what skipping saves)."""
    h, w = (hw[0] - 1) // 2 + 1, (hw[1] - 1) // 2 + 1  # stem conv 7x7/2 pad 3
    h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1  # max pool: the res2 grid
    stage, j = unit.split(".")
    for _ in range({"res2": 0, "res3": 1, "res4": 2}[stage]):
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1  # stride-2 conv1 of the stage's unit 0
    c_out = {"res2": 64, "res3": 128, "res4": 256}[stage]
    c_in = c_out // 2 if (j == "0" and stage != "res2") else c_out
    return 2 * h * w * 9 * (c_in * c_out + c_out * c_out)


def aig_cfg(depth=18, norm="BN", **aig):
    cfg = tiny_cfg(depth=depth, mode="none", norm=norm)
    cfg.MODEL.BACKBONE.NAME = "build_aig_resnet_backbone"
    cfg.MODEL.META_ARCHITECTURE = "AdaptiveRCNN"
    cfg.MODEL.AIG.GATE_NORM = "LN"
    for k, v in aig.items():
        setattr(cfg.MODEL.AIG, k, v)
    return cfg


def force_gates(bb, on: bool = True, units=None):
    """Gate logits -> [-1e4, 1e4] (always on) or [1e4, -1e4] (always off), whatever the input."""
    for name in units or bb.gated_units:
        fc2 = bb._block(name).gate.fc2
        fc2.weight.data.zero_()
        fc2.bias.data.copy_(torch.tensor([-1e4, 1e4] if on else [1e4, -1e4]))


def test_gumbel_gate_matches_hand_computation():
    logits = torch.tensor([[0.1, 2.0], [1.0, -1.0]], requires_grad=True)
    noise = torch.tensor([[0.5, -0.3], [0.0, 0.0]])
    gate, soft = gumbel_gate(logits, 1.0, noise)
    # soft = sigmoid((l_on + g_on) - (l_off + g_off)): sigmoid(1.1), sigmoid(-2)
    assert soft.tolist() == pytest.approx([0.7502601, 0.1192029], abs=1e-6)
    assert gate.tolist() == [1.0, 0.0]  # hard value
    gate[0].backward()  # straight-through: the gradient of the soft sample, s * (1 - s)
    assert logits.grad[0].tolist() == pytest.approx([-0.1873699, 0.1873699], abs=1e-6)
    assert logits.grad[1].tolist() == [0.0, 0.0]
    _, soft2 = gumbel_gate(logits.detach(), 2.0, noise)
    assert float(soft2[0]) == pytest.approx(1 / (1 + math.exp(-0.55)), abs=1e-6)


def test_threshold_gate_and_initial_open_rate():
    logits = torch.tensor([[0.1, 2.0], [1.0, -1.0], [0.5, 0.5]])
    assert threshold_gate(logits).tolist() == [True, False, True]
    # bias init [0.1, 2] with near-zero weights: softmax on-probability sigmoid(1.9) ~ 0.87
    bb = build_backbone(aig_cfg()).eval()
    gate = bb._block("res3.1").gate
    p = torch.softmax(gate(torch.rand(4, gate.fc1.in_channels)), dim=1)[:, 1]
    assert p.tolist() == pytest.approx([1 / (1 + math.exp(-1.9))] * 4, abs=2e-3)


def test_target_rate_loss_by_hand():
    gates = [torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([0.0, 0.0, 1.0, 0.0])]
    # batch means 0.75, 0.25; ((0.5 - 0.75)^2 + (0.6 - 0.25)^2) / 2 = 0.0925
    assert float(target_rate_loss(gates, [0.5, 0.6], 2.0)) == pytest.approx(0.185)
    logits = torch.zeros(4, 2, requires_grad=True)
    g, _ = gumbel_gate(logits, 1.0, torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]))
    target_rate_loss([g], [0.25], 1.0).backward()  # mean gate 0.75 > 0.25: push the on-logits down
    assert (logits.grad[:, 1] > 0).all() and (logits.grad[:, 0] < 0).all()


def test_seed_schedules_in_config():
    r50 = {"res2": 3, "res3": 4, "res4": 6, "res5": 3}
    r101 = {"res2": 3, "res3": 4, "res4": 23, "res5": 3}
    full = ["res2", "res3", "res4", "res5"]
    t = 0.5
    assert seed_schedule("resnet50", t, r50, full) == [1, 1, 0.8, 1, t, t, t, 1, t, t, t, t, t, 1, 0.7, 1]
    assert seed_schedule("resnet101", 0.3, r101, full) == [1] * 8 + [0.3] * 25
    c4 = resolve_target_rates(r50, full[:3], [], "resnet50", 0.6)  # the detector's res2-res4 part
    assert list(c4.values()) == [1, 1, 0.8, 1, 0.6, 0.6, 0.6, 1, 0.6, 0.6, 0.6, 0.6, 0.6]
    assert list(c4)[:2] == ["res2.0", "res2.1"] and list(c4)[-1] == "res4.5"
    cfg = aig_cfg(depth=50, SCHEDULE="resnet50", TARGET_RATE=0.4)
    bb = build_backbone(cfg)
    assert bb.gated_units == ["res2.2", "res3.1", "res3.2", "res3.3", "res4.1", "res4.2", "res4.3", "res4.4", "res4.5"]
    assert bb.target_rates["res2.2"] == 0.8 and bb.target_rates["res4.3"] == 0.4
    cfg = aig_cfg(depth=101, SCHEDULE="resnet101", TARGET_RATE=0.3)
    assert len(build_backbone(cfg).gated_units) == 30 - 8


@pytest.mark.parametrize("aig,match", [
    (dict(TARGET_RATES=[0.5] * 5), r"TARGET_RATES has 5 entries, but .* have 6 units \(res2: 2, res3: 2, res4: 2\)"),
    (dict(TARGET_RATES=[0.5, 0.5, 1.5, 0.5, 0.5, 0.5]), r"TARGET_RATES: the target rate of unit res3.0 .* \[0, 1\], got 1.5"),
    (dict(TARGET_RATES=[0.5, -0.1, 0.5, 0.5, 0.5, 0.5]), r"unit res2.1 .* got -0.1"),
    (dict(TARGET_RATES=[0.5, 0.5, 0.5, 0.5, 0.5, "a"]), r"unit res4.1 .* got 'a'"),
    (dict(TARGET_RATE=1.2), r"cfg.MODEL.AIG.TARGET_RATE: .* got 1.2"),
    (dict(SCHEDULE="resnet50"), r"SCHEDULE='resnet50' expects 3 units in res2, this backbone has 2"),
    (dict(SCHEDULE="resnet34"), r"SCHEDULE must be"),
    (dict(SCHEDULE="resnet50", TARGET_RATES=[0.5] * 6), r"either cfg.MODEL.AIG.TARGET_RATES or cfg.MODEL.AIG.SCHEDULE"),
    (dict(STAGES=["res5"]), r"cfg.MODEL.AIG.STAGES"),
    (dict(TEST_GATES="random"), r"TEST_GATES"),
])
def test_bad_target_rates_raise_clear_errors(aig, match):
    with pytest.raises(ValueError, match=match):
        build_backbone(aig_cfg(**aig))


def test_needs_gated_meta_architecture():
    cfg = aig_cfg()
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    with pytest.raises(ValueError, match="AdaptiveRCNN"):
        build_backbone(cfg)


@pytest.mark.parametrize("depth", [18, 50])
def test_parameter_names_are_detectron2_plus_gates(depth):
    cfg = aig_cfg(depth=depth, TARGET_RATES=[1.0] + [0.5] * ({18: 6, 50: 13}[depth] - 1))
    ours = set(build_backbone(cfg).state_dict())
    theirs = set(build_resnet_backbone(cfg, ShapeSpec(channels=3)).state_dict())
    assert theirs <= ours
    extra = ours - theirs
    assert extra and all(".gate." in k for k in extra)
    assert not any(k.startswith("res2.0.gate") for k in extra)  # rate 1: always runs, no gate
    assert any(k.startswith("res2.1.gate.fc1") for k in extra)


def _dense_and_aig(cfg, seed=0):
    torch.manual_seed(seed)
    dense = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    randomize_bn(dense)
    ours = build_backbone(cfg)
    missing, unexpected = ours.load_state_dict(dense.state_dict(), strict=False)
    assert not unexpected and all(".gate." in k for k in missing)
    return dense, ours


@pytest.mark.parametrize("depth", [18, 50])
def test_dense_equivalence_when_every_gate_is_on(depth):
    dense, ours = _dense_and_aig(aig_cfg(depth=depth))
    dense.eval(), ours.eval()
    force_gates(ours, on=True)
    x = torch.randn(2, 3, 80, 112)
    with torch.no_grad():
        assert torch.equal(dense(x)["res4"], ours(x)["res4"])  # bit for bit
    assert all(e.all() for e in ours.last_executed.values())


def test_training_forward_with_gates_on_equals_dense():
    cfg = aig_cfg(norm="FrozenBN")  # batch statistics would differ between calls; frozen ones do not
    dense, ours = _dense_and_aig(cfg)
    dense.train(), ours.train()
    force_gates(ours, on=True)
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(dense(x)["res4"], ours(x)["res4"])
    assert set(ours.last_gates) == set(ours.gated_units)
    assert all(torch.equal(g, torch.ones(2)) for g in ours.last_gates.values())


def test_skipped_units_are_not_computed_per_image():
    dense, bb = _dense_and_aig(aig_cfg(GATE_NORM=""))
    dense.eval(), bb.eval()
    force_gates(bb, on=True)
    force_gates(bb, on=False, units=["res3.1"])  # res3.1: skipped by every image
    decide = bb._decide  # res4.1: only image 1 runs it
    bb._decide = lambda n, blk, x, s: torch.tensor([False, True]) if n == "res4.1" else decide(n, blk, x, s)
    calls = {}
    for name in ("res3.1", "res4.1"):
        bb._block(name).register_forward_hook(lambda m, i, o, n=name: calls.setdefault(n, []).append(i[0].shape[0]))
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = bb(x)["res4"]
        h = dense.stem(x)
        for n, blk in [(f"res{s}.{j}", b) for s in (2, 3, 4) for j, b in enumerate(getattr(dense, f"res{s}"))]:
            if n == "res3.1":
                continue  # identity
            h = torch.cat([h[:1], blk(h[1:])]) if n == "res4.1" else blk(h)
    assert calls == {"res4.1": [1]}  # res3.1 never ran; res4.1 ran on one image
    assert bb.last_executed["res4.1"].tolist() == [False, True] and not bb.last_executed["res3.1"].any()
    assert torch.allclose(out, h, atol=1e-5)


def test_skipped_unit_outputs_relu_of_shortcut():
    _, bb = _dense_and_aig(aig_cfg(depth=50, GATE_NORM=""))
    bb.eval()
    force_gates(bb, on=True)
    force_gates(bb, on=False, units=["res3.0", "res3.2"])
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = bb(x)["res4"]
        h = bb.stem(x)
        for blk in bb.res2:
            h = blk(h)
        h = torch.relu(bb.res3[0].shortcut(h))  # skipped projection unit: ReLU(shortcut), as the original
        h = bb.res3[3](bb.res3[1](h))  # res3.2 skipped: identity
        for blk in bb.res4:
            h = blk(h)
    assert torch.equal(out, h)


def test_flops_gates_count_and_skipped_units_cost_nothing():
    cfg = aig_cfg()
    _, bb = _dense_and_aig(cfg)
    bb.eval()
    force_gates(bb, on=True)
    hw = (64, 96)
    with torch.no_grad():
        bb(torch.randn(1, 3, *hw))
    dense = fvcore_flops(build_resnet_backbone(tiny_cfg(depth=18, mode="none"), ShapeSpec(channels=3)), hw)
    # gates on the inputs of every R-18 unit: C -> 16 (1x1) and 16 -> 2 on the pooled vector
    in_channels = [64, 64, 64, 128, 128, 256]
    gates = sum(2 * c * 16 + 2 * 16 * 2 for c in in_channels)
    assert bb.image_flops(0) == dense + gates
    force_gates(bb, on=False, units=["res4.1", "res3.0"])
    with torch.no_grad():
        bb(torch.randn(1, 3, *hw))
    res4_1 = 2 * (4 * 6) * 256 * 9 * 256 * 2  # two 3x3 256->256 convs on the 4x6 grid
    res3_0 = 2 * (8 * 12) * (128 * 9 * 64 + 128 * 9 * 128)  # its projection (1x1 64->128) still runs
    assert bb.image_flops(0) == dense + gates - res4_1 - res3_0


def test_stochastic_test_gates_option():
    bb = build_backbone(aig_cfg(TEST_GATES="sample", GATE_NORM="")).eval()
    for n in bb.gated_units:
        bb._block(n).gate.fc2.bias.data.zero_()  # p = 0.5: a fair coin per image
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        torch.manual_seed(0)
        bb(x)
        a = torch.stack(list(bb.last_executed.values()), 1)
        torch.manual_seed(1)
        bb(x)
        b = torch.stack(list(bb.last_executed.values()), 1)
    assert not torch.equal(a, b)


def test_pool_valid_ignores_padding():
    x = torch.full((2, 1, 4, 6), 100.0)
    x[0, :, :2, :3] = 1.0  # image 0 is 32x48 (stride 16 -> 2x3) inside the padded 64x96 batch
    x[1] = 2.0
    assert pool_valid(x, [(32, 48), (64, 96)], 16)[:, 0].tolist() == [1.0, 2.0]
    assert pool_valid(x, [(17, 33), (64, 96)], 16)[0, 0] == pytest.approx((6 * 1.0 + 0 * 100) / 6)


def test_detector_loss_dict_gate_gradients_and_outputs():
    torch.manual_seed(0)
    model = build_model(aig_cfg(TARGET_RATE=0.5))
    model.train()
    with EventStorage() as storage:
        losses = model(detection_inputs())
        assert "units/used_fraction" in storage.latest()
    assert "loss_target_rate" in losses and "loss_ponder" not in losses
    assert 0 < float(losses["loss_target_rate"].detach()) <= 0.25
    sum(losses.values()).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if ".gate." in n}
    assert grads and all(g is not None for g in grads.values())
    assert all(float(grads[f"backbone.{u}.gate.fc2.bias"].abs().sum()) > 0 for u in model.backbone.gated_units)
    model.eval()
    batch = [{k: v for k, v in d.items() if k != "instances"} for d in detection_inputs()]
    with torch.no_grad():
        outs = model(batch)
    bb = model.backbone
    for i, out in enumerate(outs):
        assert list(out["unit_policy"]) == bb.unit_names
        hw = tuple(batch[i]["image"].shape[1:])
        skipped = [u for u, ran in out["unit_policy"].items() if not ran]
        expect = fvcore_flops(build_resnet_backbone(tiny_cfg(depth=18, mode="none"), ShapeSpec(channels=3)), hw)
        expect += sum(2 * bb._block(u).in_channels * 16 + 2 * 16 * 2 for u in bb.gated_units)  # every gate runs
        expect -= sum(r18_residual_flops(u, hw) for u in skipped)
        assert out["flops"]["backbone"] == expect
        assert out["flops"]["model"] > out["flops"]["backbone"]
        assert "ponder_map" not in out


def test_batch_norm_gate_needs_two_images_in_training():
    bb = build_backbone(aig_cfg(GATE_NORM="BN")).train()
    with pytest.raises(ValueError, match="GATE_NORM is a batch norm, which needs >= 2 images"):
        bb(torch.randn(1, 3, 32, 32))
    bb(torch.randn(2, 3, 32, 32))  # fine with two


def test_freeze_keeps_gates_trainable():
    cfg = aig_cfg()
    cfg.MODEL.BACKBONE.FREEZE_AT = 2  # stem + res2 frozen
    bb = build_backbone(cfg)
    assert not bb.res2[1].conv1.weight.requires_grad
    assert bb.res2[1].gate.fc1.weight.requires_grad
    assert isinstance(bb, AIGResNet)
