"""Sparse halting scores and masked accumulation equal the dense computation at active positions."""
import copy

import pytest
import torch

from sact_det.modeling.halting.branches import GlobalHalting, SpatialHalting
from sact_det.modeling.execution import sparse_halting as sparse_halting_module
from sact_det.modeling.execution.sparse_halting import masked_accumulate_, sparse_halting, supports_sparse_halting

TOL = dict(atol=1e-5, rtol=1e-4)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _halting(norm: str, k: int) -> SpatialHalting:
    g = torch.Generator().manual_seed(k)
    hm = SpatialHalting(64, norm, k, -1.0).eval()
    hm.local_conv.weight.data = torch.randn(hm.local_conv.weight.shape, generator=g) * 0.05
    hm.global_conv.weight.data = torch.randn(hm.global_conv.weight.shape, generator=g) * 0.1
    for mod in (hm.local_norm, hm.global_norm):
        if getattr(mod, "weight", None) is not None:
            mod.weight.data = torch.rand(64, generator=g) + 0.5
            mod.bias.data = torch.randn(64, generator=g) * 0.3
        if getattr(mod, "running_mean", None) is not None:
            mod.running_mean.copy_(torch.randn(64, generator=g) * 0.3)
            mod.running_var.copy_(torch.rand(64, generator=g) + 0.5)
    return hm


def _active(b: int = 3, h: int = 7, w: int = 11) -> torch.Tensor:
    a = torch.rand(b, 1, h, w, generator=torch.Generator().manual_seed(0)) < 0.4
    a[1, 0, 0, :] = True  # a border row
    a[2] = False  # an image with nothing active
    return a


@pytest.mark.parametrize("gather_below", [0.0, 1.0])  # taps on the whole map / on gathered rows
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("norm", ["GN", "BN", ""])
@pytest.mark.parametrize("native_on", [True, False], ids=["native", "torch-only"])
def test_sparse_halting_equals_dense_branch(norm, k, fmt, gather_below, native_on, monkeypatch):
    monkeypatch.setattr(sparse_halting_module, "GATHER_TAPS_BELOW", gather_below)
    monkeypatch.setattr(sparse_halting_module, "NATIVE_GATHER_TAPS_BELOW", gather_below)
    monkeypatch.setenv("SACT_NATIVE", "1" if native_on else "0")  # channels-last fp32: native kernels if built
    hm = _halting(norm, k)
    x = (torch.randn(3, 64, 7, 11) * 2 + 0.5).contiguous(memory_format=fmt)
    active = _active()
    with torch.no_grad():
        # reference: the dense branch in float64 (PyTorch's channels-last GroupNorm is itself ~1e-4 off in fp32)
        dense = copy.deepcopy(hm).double()(x.double()).float()
        got = sparse_halting(hm, x, active)
        everywhere = sparse_halting(hm, x, None)
    torch.testing.assert_close(got[active], dense[active], **TOL)
    assert torch.all(got[~active] == 0)
    torch.testing.assert_close(everywhere, dense, **TOL)


def test_hand_computed_identity_norm_1x1():
    hm = SpatialHalting(2, "", 1, 0.5).eval()
    hm.local_conv.weight.data = torch.tensor([1.0, -2.0]).view(1, 2, 1, 1)
    hm.global_conv.weight.data = torch.tensor([0.5, 0.0]).view(1, 2, 1, 1)
    x = torch.tensor([[1.0, 3.0], [2.0, 2.0]]).view(1, 2, 1, 2)  # position 0: (1, 2), position 1: (3, 2)
    active = torch.tensor([False, True]).view(1, 1, 1, 2)
    with torch.no_grad():
        h = sparse_halting(hm, x, active)
    # position 1: 1*3 - 2*2 + 0.5 (bias) + 0.5 * mean(channel 0) = -1 + 0.5 + 1.0
    assert h[0, 0, 0, 0] == 0
    assert h[0, 0, 0, 1].item() == pytest.approx(torch.sigmoid(torch.tensor(0.5)).item(), abs=1e-6)


def test_unsupported_branches_are_reported():
    assert not supports_sparse_halting(GlobalHalting(8))
    assert not supports_sparse_halting(SpatialHalting(8, "", 5))
    nonlinear = SpatialHalting(8, "BN", 3).eval()
    nonlinear.activation = torch.nn.LeakyReLU(0.1)  # act(norm(x)) is not affine in x
    assert not supports_sparse_halting(nonlinear)
    with pytest.raises(ValueError, match="unsupported halting branch"):
        sparse_halting(GlobalHalting(8), torch.randn(1, 8, 3, 3), torch.ones(1, 1, 3, 3, dtype=torch.bool))


@pytest.mark.parametrize("max_density", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_masked_accumulate_equals_dense(fmt, max_density):
    active = _active()
    x = torch.randn(3, 64, 7, 11).contiguous(memory_format=fmt)
    out = torch.randn(3, 64, 7, 11).contiguous(memory_format=fmt)
    weight = torch.rand(3, 1, 7, 11) * active  # p^l is 0 where the unit did not run
    expected = out + weight * x
    got = masked_accumulate_(out, weight, x, active, max_density=max_density)
    assert got is out
    torch.testing.assert_close(out, expected)


def test_masked_accumulate_act_whole_image_masks():
    active = torch.tensor([True, False, True]).view(3, 1, 1, 1)
    x, out = torch.randn(3, 8, 4, 5), torch.randn(3, 8, 4, 5)
    weight = torch.tensor([0.3, 0.0, 0.7]).view(3, 1, 1, 1)
    expected = out + weight * x
    torch.testing.assert_close(masked_accumulate_(out, weight, x, active), expected)
