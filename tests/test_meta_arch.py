"""SACTRCNN: a training step with loss_ponder and halting gradients; eval outputs ponder maps + FLOPs."""
import math

import pytest
import torch
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from sact_det.modeling.flops import backbone_flops
from sact_det.modeling.meta_arch import ponder_loss
from tests.helpers import build_tiny_model


def _inputs(n=2, h=96, w=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = []
    for i in range(n):
        inst = Instances((h - 8 * i, w))
        inst.gt_boxes = Boxes(torch.tensor([[10.0, 12.0, 60.0, 70.0], [30.0, 5.0, 90.0, 40.0]]))
        inst.gt_classes = torch.tensor([0, 2])
        img = torch.randint(0, 255, (3, h - 8 * i, w), generator=g).float()
        batch.append({"image": img, "instances": inst, "height": h - 8 * i, "width": w})
    return batch


@pytest.mark.parametrize("mode", ["sact", "act"])
def test_train_step_has_ponder_loss_and_halting_gradients(mode):
    model = build_tiny_model(depth=18, mode=mode)
    model.train()
    with EventStorage() as storage:
        losses = model(_inputs())
        assert "loss_ponder" in losses and torch.isfinite(losses["loss_ponder"])
        # tau * sum of 3 stage means; each rho in [1, L+1] with L = 2 units for R-18
        assert 0.005 * 3 * 1.0 <= float(losses["loss_ponder"]) <= 0.005 * 3 * 3.0
        sum(losses.values()).backward()
        assert "ponder/res4_mean" in storage.latest()
    grads = {n: p.grad for n, p in model.named_parameters() if ".halting." in n}
    assert grads and all(g is not None for g in grads.values())
    assert any(float(g.abs().sum()) > 0 for n, g in grads.items() if "conv" in n)


def test_ponder_loss_excludes_padding_and_scales_with_tau():
    from sact_det.modeling.backbone import StagePonder

    rho = torch.ones(2, 1, 4, 4)
    rho[1, :, :, 2:] = 100.0  # padding of the second (narrower) image
    p = {"res4": StagePonder(ponder_cost=rho, num_units=rho, stride=16)}
    assert float(ponder_loss(p, 0.5, [(64, 64), (64, 32)])) == pytest.approx(0.5)
    assert float(ponder_loss(p, 1.0, None)) == pytest.approx(rho.mean().item())


def test_eval_outputs_ponder_map_and_flops():
    model = build_tiny_model(depth=18)
    model.eval()
    batch = [{k: v for k, v in d.items() if k != "instances"} for d in _inputs(n=2)]
    with torch.no_grad():
        outs = model(batch)
    for i, out in enumerate(outs):
        h = batch[i]["image"].shape[1]
        assert out["ponder_map"].shape == (math.ceil(h / 4), math.ceil(128 / 4))  # res2 resolution
        assert set(out["ponder_maps"]) == {"res2", "res3", "res4"}
        assert out["ponder_maps"]["res4"].shape == (math.ceil(h / 16), 8)
        # each stage has 2 units: 1 <= rho <= 3, so the sum over 3 stages is in [3, 9]
        assert float(out["ponder_map"].min()) >= 3.0 and float(out["ponder_map"].max()) <= 9.0
        assert 0 < out["flops"]["backbone"] < out["flops"]["model"]
        assert "instances" in out
    # per-image backbone FLOPs follow the image's own size
    assert outs[0]["flops"]["backbone"] > outs[1]["flops"]["backbone"]


def test_dense_model_has_no_ponder_loss():
    model = build_tiny_model(depth=18, mode="none")
    model.train()
    with EventStorage():
        losses = model(_inputs())
    assert "loss_ponder" not in losses
