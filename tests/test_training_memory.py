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
