"""The training path's memory savings keep the function: fused halting logits and the masked unit equal the
plain module compositions (values, input and parameter gradients, BN running statistics)."""
import copy
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock

from sact_det.modeling.halting.branches import SpatialHalting
from sact_det.modeling.sact.backbone import masked_unit

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import benchmark_train  # noqa: E402


def _reference_logit(h: SpatialHalting, x: torch.Tensor) -> torch.Tensor:
    """What SpatialHalting computes, written with the modules themselves."""
    local = h.local_conv(h.local_norm(x))
    return local + h.global_conv(h.global_norm(F.adaptive_avg_pool2d(x, 1)))


def _randomize(module: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(3)
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if t.dtype.is_floating_point:
            with torch.no_grad():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if "var" in name or "weight" in name
                        else torch.randn(t.shape, generator=g) * 0.3)


@pytest.mark.parametrize("norm,train", [("GN", True), ("FrozenBN", True), ("BN", True), ("BN", False), ("", True)])
def test_fused_halting_logit_equals_the_modules(norm, train):
    torch.manual_seed(0)
    h = SpatialHalting(64, norm, 3, -1.0)
    _randomize(h)
    h.train(train)
    ref = copy.deepcopy(h)
    x = torch.randn(3, 64, 9, 11).relu_().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = h.logit(x), _reference_logit(ref, x_ref)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4 * float(y_ref.detach().abs().max()))
    w = torch.randn_like(y)
    (y * w).sum().backward()
    (y_ref * w).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-6)
    for (n, p), p_ref in zip(h.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-4, atol=1e-5, msg=n)
    for (n, b), b_ref in zip(h.named_buffers(), ref.buffers()):  # BN in training: running statistics updated alike
        torch.testing.assert_close(b, b_ref, rtol=1e-5, atol=1e-7, msg=n)


@pytest.mark.parametrize("kind", ["bottleneck", "basic"])
def test_masked_unit_equals_where_of_the_block(kind):
    torch.manual_seed(0)
    block = BottleneckBlock(32, 32, bottleneck_channels=8, norm="BN") if kind == "bottleneck" \
        else BasicBlock(32, 32, norm="BN")
    ref = copy.deepcopy(block)
    x0 = torch.randn(2, 32, 7, 9)
    x0[:, :, :3] = 0.0  # exact zeros where inactive: the ReLU-of-where form must not change their gradient
    x = x0.relu().requires_grad_()
    x_ref = x0.relu().requires_grad_()
    active = torch.rand(2, 1, 7, 9) < 0.5
    y = masked_unit(block, x, active)
    y_ref = torch.where(active, ref(x_ref), x_ref)
    torch.testing.assert_close(y, y_ref)
    w = torch.randn_like(y)
    (y * w).sum().backward()
    (y_ref * w).sum().backward()
    for (n, p), p_ref in zip(block.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-5, atol=1e-6, msg=n)
    # the input gradient may differ only where x == 0 at inactive positions (its ReLU passes none of it)
    differ = ~torch.isclose(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
    assert not (differ & ~((x == 0) & ~active)).any()


class _Scale(torch.nn.Module):
    """loss = sum(batch * w): the multiplication saves the (100,) batch for w's gradient: 400 bytes."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(100))

    def forward(self, batch):
        return {"loss": (batch * self.w).sum()}


def test_saved_activation_bytes_counts_what_backward_keeps():
    model = _Scale()
    assert benchmark_train.saved_activation_bytes(model, torch.randn(100)) == 400  # the parameter is not counted
    assert model.w.grad is None  # freed after the measurement


def _frozen_res2_backbone(halt_norm: str):
    """A tiny R-50 SACT backbone with res2 frozen (FREEZE_AT 2), random norms and halting convs that make the
    halting position-dependent (partial masks)."""
    from detectron2.modeling import build_backbone

    from tests.helpers import tiny_cfg

    cfg = tiny_cfg(depth=50, norm="FrozenBN")
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    cfg.MODEL.SACT.HALT_NORM = halt_norm
    cfg.MODEL.SACT.HALT_INIT = "variance_scaling"
    cfg.MODEL.SACT.HALT_BIAS_INIT = 0.5
    torch.manual_seed(0)
    bb = build_backbone(cfg).train()
    for m in bb.modules():  # random halting norms (the units keep their identity FrozenBN: finite outputs)
        if isinstance(m, SpatialHalting):
            _randomize(m.local_norm)
            _randomize(m.global_norm)
    return bb


def _halting_grads(bb, x, w, recompute: bool):
    for name in bb.adaptive_stages:
        getattr(bb, name).recompute_frozen = recompute
    bb.zero_grad(set_to_none=True)
    out = bb(x)["res4"]
    loss = (out * w).sum() + bb.extra_losses()["loss_ponder"] * 10
    loss.backward()
    return {n: p.grad.clone() for n, p in bb.named_parameters() if p.grad is not None}, \
        [m.clone() for m in bb.last_ponder["res2"].masks]


def test_frozen_stage_recomputed_in_backward_gives_the_same_gradients_with_less_memory():
    """res2 frozen, its halting trained: the stage runs under checkpointing (only its input kept, the units run
    again in backward); every gradient equals the one of the stage that keeps its unit outputs, and the
    tensors saved for backward shrink by about two res2 maps."""
    bb = _frozen_res2_backbone("GN")
    x = torch.randn(2, 3, 64, 96)
    assert bb.res2.recomputes(bb.stem(x)) and not bb.res3.recomputes(torch.randn(1, 256, 8, 8))
    w = torch.randn_like(bb(x)["res4"])
    got, masks = _halting_grads(bb, x, w, recompute=True)
    ref, ref_masks = _halting_grads(bb, x, w, recompute=False)
    assert any(0 < float(m.float().mean()) < 1 for m in ref_masks), "the test needs partially active res2 units"
    assert all(bool(g.isfinite().all()) for g in ref.values())
    assert all(torch.equal(a, b) for a, b in zip(masks, ref_masks))
    assert set(got) == set(ref) and any(".halting." in n and n.startswith("res2.") for n in got)
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-4, atol=1e-6)

    def saved(recompute: bool) -> int:
        bb.res2.recompute_frozen = recompute
        params = {p.untyped_storage().data_ptr() for p in bb.parameters()}
        storages = {}

        def pack(t):
            if t.untyped_storage().data_ptr() not in params:
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = (bb(x)["res4"] * w).sum()
        loss.backward()
        return sum(storages.values())

    res2_map = 2 * 256 * 16 * 24 * 4  # one float32 res2 output map of the batch (stride 4)
    assert saved(False) - saved(True) >= 1.5 * res2_map


def test_no_recompute_with_batchnorm_halting_or_trainable_units():
    """BN halting norms in training would update their running statistics twice; trainable units keep their own
    activations anyway."""
    bb = _frozen_res2_backbone("BN")
    assert not bb.res2.recomputes(bb.stem(torch.randn(1, 3, 32, 32)))
    gn = _frozen_res2_backbone("GN")
    assert not gn.res3.recomputes(torch.randn(1, 256, 8, 8))  # res3 trains its units
    gn.eval()
    assert not gn.res2.recomputes(torch.randn(1, 64, 8, 8))
