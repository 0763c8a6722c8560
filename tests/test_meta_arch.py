"""AdaptiveRCNN over the SACT backbone: loss_ponder, halting gradients, ponder maps and FLOPs, against
hand-computed values (zero-initialised halting: h = sigmoid(HALT_BIAS_INIT) at every position)."""
import math

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from detectron2.utils.events import EventStorage

from sact_det.modeling.sact.backbone import StagePonder, ponder_loss
from tests.helpers import fvcore_flops, detection_inputs, build_tiny_model, tiny_cfg

H0 = 1.0 / (1.0 + math.exp(3.0))  # sigmoid(-3): every halting score at init
RHO = 2.0 + (1.0 - H0)  # R-18 stages have L = 2 units: N = 2, R = 1 - h0 (h0 < 1 - eps)


@pytest.mark.parametrize("mode", ["sact", "act"])
def test_train_step_ponder_loss_value_and_halting_gradients(mode):
    model = build_tiny_model(depth=18, mode=mode)
    model.train()
    with EventStorage() as storage:
        losses = model(detection_inputs())
        # tau * sum over 3 stages of mean(rho), rho = 3 - sigmoid(-3) everywhere at init
        assert float(losses["loss_ponder"].detach()) == pytest.approx(0.005 * 3 * RHO, rel=1e-6)
        sum(losses.values()).backward()
        assert storage.latest()["ponder/res4_mean"][0] == pytest.approx(RHO, rel=1e-6)
        assert storage.latest()["ponder/res4_std"][0] == pytest.approx(0.0, abs=1e-6)
    grads = {n: p.grad for n, p in model.named_parameters() if ".halting." in n}
    assert grads and all(g is not None for g in grads.values())
    # d loss_ponder / d logit = -tau * h(1-h) * (positions' share): the logit biases get a gradient
    bias = [n for n in grads if n.endswith("conv.bias")]
    assert bias and all(float(grads[n].abs().sum()) > 0 for n in bias)


def test_halted_stage_changes_the_ponder_loss_by_hand():
    model = build_tiny_model(depth=18, mode="sact")
    model.backbone.res4[0].halting.local_conv.bias.data.fill_(10.0)  # res4 halts after unit 0: N = 1, R = 1
    model.train()
    with EventStorage():
        losses = model(detection_inputs())
    assert float(losses["loss_ponder"].detach()) == pytest.approx(0.005 * (2 * RHO + 2.0), rel=1e-5)


def test_ponder_loss_excludes_padding_and_scales_with_tau():
    rho = torch.ones(2, 1, 4, 4)
    rho[1, :, :, 2:] = 100.0  # padding of the second (narrower) image
    p = {"res4": StagePonder(ponder_cost=rho, num_units=rho, stride=16)}
    assert float(ponder_loss(p, 0.5, [(64, 64), (64, 32)])) == pytest.approx(0.5)
    assert float(ponder_loss(p, 1.0, None)) == pytest.approx(rho.mean().item())


def _sact_r18_flops(hw):
    """Dense R-18 up to res4 (fvcore on detectron2's ResNet) + one SACT halting branch per stage by hand:
    3x3 conv C->1 at every position of the stage grid + 1x1 conv C->1 on the pooled vector."""
    cfg = tiny_cfg(depth=18, mode="none")
    dense = fvcore_flops(build_resnet_backbone(cfg, ShapeSpec(channels=3)), hw)
    h, w = (hw[0] - 1) // 2 + 1, (hw[1] - 1) // 2 + 1  # stem conv 7x7/2 pad 3
    h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1  # max pool 3x3/2 pad 1: res2 grid
    halting = 0.0
    for c in (64, 128, 256):
        halting += 2 * h * w * 9 * c + 2 * c
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    return dense + halting


def test_eval_outputs_ponder_maps_and_flops_by_hand():
    model = build_tiny_model(depth=18)
    model.eval()
    batch = [{k: v for k, v in d.items() if k != "instances"} for d in detection_inputs(n=2)]
    with torch.no_grad():
        outs = model(batch)
    heads = []
    for i, out in enumerate(outs):
        h = batch[i]["image"].shape[1]
        assert set(out["ponder_maps"]) == {"res2", "res3", "res4"}
        for name, s in (("res2", 4), ("res3", 8), ("res4", 16)):
            m = out["ponder_maps"][name]
            assert m.shape == (math.ceil(h / s), math.ceil(128 / s))
            assert torch.allclose(m, torch.full_like(m, RHO))
        assert out["ponder_map"].shape == (math.ceil(h / 4), 32)  # the finest (res2) grid
        assert torch.allclose(out["ponder_map"], torch.full_like(out["ponder_map"], 3 * RHO))
        # no position halts before the last unit: every unit runs on the image's own (unpadded) area
        assert out["flops"]["backbone"] == _sact_r18_flops((h, 128))
        heads.append(out["flops"]["model"] - out["flops"]["backbone"])
        assert "instances" in out
    assert heads[0] == heads[1] > 0  # the heads' FLOPs are shared evenly over the batch


def test_dense_model_has_no_ponder_loss_and_dense_flops():
    model = build_tiny_model(depth=18, mode="none")
    model.train()
    with EventStorage():
        losses = model(detection_inputs())
    assert "loss_ponder" not in losses
    model.eval()
    batch = [{k: v for k, v in d.items() if k != "instances"} for d in detection_inputs(n=2)]
    with torch.no_grad():
        outs = model(batch)
    cfg = tiny_cfg(depth=18, mode="none")
    for i, out in enumerate(outs):
        hw = tuple(batch[i]["image"].shape[1:])
        assert out["flops"]["backbone"] == fvcore_flops(build_resnet_backbone(cfg, ShapeSpec(channels=3)), hw)
        assert "ponder_map" not in out
