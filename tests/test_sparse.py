"""Sparse unit execution equals the masked dense path torch.where(active, block(x), x)."""
import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, FrozenBatchNorm2d, get_norm
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, BottleneckBlock

from sact_det.modeling.execution import gather, sparse
from sact_det.modeling.execution.fold import fold_conv
from sact_det.modeling.execution.sparse import dense_folded_forward, fold_unit, sparse_unit_forward

TOL = dict(atol=1e-4, rtol=1e-4)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
H, W = 9, 13


def _randomize_norms(block: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BN statistics and affine parameters, so folding is really exercised."""
    g = torch.Generator().manual_seed(seed)
    for m in block.modules():
        if isinstance(m, (FrozenBatchNorm2d, torch.nn.BatchNorm2d)):
            c = m.num_features
            m.weight.data = torch.rand(c, generator=g) + 0.5
            m.bias.data = torch.randn(c, generator=g) * 0.3
            m.running_mean.data = torch.randn(c, generator=g) * 0.3
            m.running_var.data = torch.rand(c, generator=g) + 0.5
    return block.eval()


def _masks(b: int = 4) -> torch.Tensor:
    """(b,1,H,W): random sparse, borders + corners only, a single blob touching an edge, empty."""
    g = torch.Generator().manual_seed(1)
    m = torch.zeros(b, 1, H, W, dtype=torch.bool)
    m[0] = torch.rand(1, H, W, generator=g) < 0.3
    m[1, 0, [0, -1], :] = True
    m[1, 0, :, [0, -1]] = True
    m[2, 0, 3:8, 9:] = True
    return m  # m[3] stays empty


def _blocks():
    torch.manual_seed(0)
    return {
        "bottleneck_frozenbn": BottleneckBlock(32, 32, bottleneck_channels=8, norm="FrozenBN"),
        "bottleneck_bn": BottleneckBlock(32, 32, bottleneck_channels=8, norm="BN"),
        "bottleneck_dilated": BottleneckBlock(32, 32, bottleneck_channels=8, norm="BN", dilation=2),
        "bottleneck_grouped": BottleneckBlock(32, 32, bottleneck_channels=16, norm="BN", num_groups=4),
        "basic_bn": BasicBlock(16, 16, norm="BN"),
        "basic_frozenbn": BasicBlock(16, 16, norm="FrozenBN"),
    }


@pytest.fixture(params=list(_blocks()))
def block(request):
    return _randomize_norms(_blocks()[request.param], seed=len(request.param))


def _expected(block, x, active):
    with torch.no_grad():
        return torch.where(active, block(x), x)


@pytest.mark.parametrize("max_density", [float("inf"), 1.0, 0.2])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_sparse_equals_masked_dense_per_position(block, max_density, fmt):
    x = torch.randn(4, block.out_channels, H, W).contiguous(memory_format=fmt)
    active = _masks(4)
    out = sparse_unit_forward(fold_unit(block), x, active, max_density=max_density)
    torch.testing.assert_close(out, _expected(block, x, active), **TOL)
    assert torch.equal(out[3], x[3])  # empty image: the state is kept exactly


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_multi_chunk_path(block, monkeypatch, fmt):
    monkeypatch.setattr(gather, "CHUNK_ROWS", 7)
    x = torch.randn(4, block.out_channels, H, W).contiguous(memory_format=fmt)
    active = _masks(4)
    out = sparse_unit_forward(fold_unit(block), x, active, max_density=float("inf"))
    torch.testing.assert_close(out, _expected(block, x, active), **TOL)


def test_full_and_empty_masks(block):
    x = torch.randn(2, block.out_channels, H, W)
    folded = fold_unit(block)
    full = torch.ones(2, 1, H, W, dtype=torch.bool)
    with torch.no_grad():
        dense = block(x)
    torch.testing.assert_close(dense_folded_forward(folded, x), dense, **TOL)
    torch.testing.assert_close(sparse_unit_forward(folded, x, full), dense, **TOL)
    torch.testing.assert_close(sparse_unit_forward(folded, x, full, max_density=float("inf")), dense, **TOL)
    assert sparse_unit_forward(folded, x, ~full) is x  # nothing active: x itself, no copy


def test_act_whole_image_masks(block):
    x = torch.randn(3, block.out_channels, H, W)
    active = torch.tensor([True, False, True]).view(3, 1, 1, 1)
    out = sparse_unit_forward(fold_unit(block), x, active)
    torch.testing.assert_close(out, _expected(block, x, active), **TOL)
    assert torch.equal(out[1], x[1])


def test_inplace_writes_into_x():
    blk = _randomize_norms(_blocks()["bottleneck_bn"])
    x = torch.randn(4, 32, H, W)
    active = _masks(4)
    expected = _expected(blk, x, active)
    out = sparse_unit_forward(fold_unit(blk), x, active, inplace=True)
    assert out is x
    torch.testing.assert_close(x, expected, **TOL)


def _shift_basic_block() -> BasicBlock:
    """1-channel basic unit: conv1 reads the up-right neighbour (x[y-1, x+1]), conv2 is identity."""
    blk = BasicBlock(1, 1, norm="FrozenBN").eval()
    blk.conv1.weight.data.zero_()
    blk.conv1.weight.data[0, 0, 0, 2] = 1.0
    blk.conv2.weight.data.zero_()
    blk.conv2.weight.data[0, 0, 1, 1] = 2.0
    blk.conv2.norm.bias.data.fill_(-1.0)
    return blk


def test_hand_computed_shift_unit_with_borders():
    x = torch.arange(12.0).view(1, 1, 3, 4) - 3.0  # values -3 .. 8
    active = torch.zeros(1, 1, 3, 4, dtype=torch.bool)
    active[0, 0, 0, 1] = active[0, 0, 2, 3] = active[0, 0, 2, 0] = True
    out = sparse_unit_forward(fold_unit(_shift_basic_block()), x, active, max_density=float("inf"))
    # out = relu(2 * relu(x[y-1, x+1]) - 1 + x[y, x]) where active, zero padding outside the map
    expected = x.clone()
    expected[0, 0, 0, 1] = max(0.0, 2 * 0.0 - 1 + (-2.0))  # row -1 is padding -> 0
    expected[0, 0, 2, 3] = max(0.0, 2 * 0.0 - 1 + 8.0)  # column 4 is padding -> 0
    expected[0, 0, 2, 0] = max(0.0, 2 * 2.0 - 1 + 5.0)  # reads x[1, 1] = 2
    torch.testing.assert_close(out, expected)


def test_fold_matches_conv_then_bn_on_1x1():
    conv = Conv2d(3, 2, kernel_size=1, bias=False, norm=get_norm("BN", 2))
    _randomize_norms(conv)
    folded = fold_conv(conv)
    bn = conv.norm
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(folded.mat, conv.weight[:, :, 0, 0] * s[:, None])
    torch.testing.assert_close(folded.bias, bn.bias - bn.running_mean * s)


def test_errors_are_clear():
    proj = BottleneckBlock(16, 32, bottleneck_channels=8, norm="BN").eval()
    with pytest.raises(ValueError, match="projection shortcut"):
        fold_unit(proj)
    with pytest.raises(ValueError, match="GroupNorm"):
        fold_unit(BottleneckBlock(64, 64, bottleneck_channels=32, norm="GN").eval())
    with pytest.raises(ValueError, match="training mode"):
        fold_unit(BottleneckBlock(32, 32, bottleneck_channels=8, norm="BN").train())
    with pytest.raises(TypeError, match="BottleneckBlock or BasicBlock"):
        fold_unit(torch.nn.Conv2d(3, 3, 1))
    folded = fold_unit(BasicBlock(16, 16, norm="FrozenBN"))
    x = torch.randn(1, 16, H, W)
    with pytest.raises(ValueError, match="active must be bool"):
        sparse_unit_forward(folded, x, torch.ones(1, 1, H, W))
    with pytest.raises(ValueError, match="active must be bool"):
        sparse_unit_forward(folded, x, torch.ones(1, 1, H + 1, W, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"x must be \(B,16,H,W\)"):
        sparse_unit_forward(folded, torch.randn(1, 8, H, W), torch.ones(1, 1, H, W, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="inference-only"):
        sparse_unit_forward(folded, x.requires_grad_(), torch.ones(1, 1, H, W, dtype=torch.bool))


def test_dilated_mask_is_exactly_what_conv1_needs():
    """Corrupting x outside the 3x3-dilated mask must not change the sparse result."""
    blk = _randomize_norms(_blocks()["bottleneck_bn"])
    x = torch.randn(4, 32, H, W)
    active = _masks(4)
    dil = F.max_pool2d(active.float(), 3, 1, 1) > 0
    out = sparse_unit_forward(fold_unit(blk), x, active, max_density=float("inf"))
    x_bad = torch.where(dil, x, torch.full_like(x, 1e6))
    out_bad = sparse_unit_forward(fold_unit(blk), x_bad, active, max_density=float("inf"))
    torch.testing.assert_close(torch.where(active, out_bad, x), out, **TOL)


def test_cached_fold_refolds_after_weight_change():
    blk = _randomize_norms(_blocks()["bottleneck_bn"])
    f1 = sparse.cached_fold(blk)
    assert sparse.cached_fold(blk) is f1
    x = torch.randn(4, 32, H, W)
    active = _masks(4)
    blk.load_state_dict(_randomize_norms(_blocks()["bottleneck_bn"], seed=7).state_dict())
    f2 = sparse.cached_fold(blk)
    assert f2 is not f1
    torch.testing.assert_close(sparse_unit_forward(f2, x, active), _expected(blk, x, active), **TOL)


def test_all_images_dense_with_partial_masks(block):
    """max_density 0: every (partly) active image runs the dense folded unit, then keeps x where inactive."""
    x = torch.randn(3, block.out_channels, H, W)
    active = _masks(4)[:3]
    out = sparse_unit_forward(fold_unit(block), x, active, max_density=0.0)
    torch.testing.assert_close(out, _expected(block, x, active), **TOL)


@pytest.mark.parametrize("name,make", [
    ("stem", lambda: BasicStem(3, 16, norm="FrozenBN")),
    ("bottleneck_projection_stride2", lambda: BottleneckBlock(16, 32, bottleneck_channels=8, stride=2, norm="BN")),
    ("bottleneck_stride_in_3x3", lambda: BottleneckBlock(16, 32, bottleneck_channels=8, stride=2, norm="BN",
                                                         stride_in_1x1=False)),
    ("basic_projection_stride2", lambda: BasicBlock(16, 32, stride=2, norm="FrozenBN")),
    ("bottleneck_identity", lambda: BottleneckBlock(32, 32, bottleneck_channels=8, norm="BN")),
])
def test_fold_block_equals_unfolded_module(name, make):
    """Stems and first units (projection shortcut, stride 2) folded give the module's output."""
    from sact_det.modeling.execution.fold import dense_folded_forward, fold_block

    torch.manual_seed(0)
    module = _randomize_norms(make(), seed=3)
    x = torch.randn(2, module.conv1.in_channels, 17, 22)
    with torch.no_grad():
        ref = module(x)
        got = dense_folded_forward(fold_block(module), x)
        got_cl = dense_folded_forward(fold_block(module), x.contiguous(memory_format=torch.channels_last))
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, **TOL)
    torch.testing.assert_close(got_cl, ref, **TOL)


def test_fold_block_rejects_other_modules():
    from sact_det.modeling.execution.fold import fold_block

    with pytest.raises(TypeError, match="BasicStem / BottleneckBlock / BasicBlock"):
        fold_block(torch.nn.Conv2d(3, 3, 1))


def test_fold_norms_keeps_the_function_of_a_resnet():
    """fold_norms: a copy without norms computing what detectron2's ResNet computes; the original is untouched."""
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone.resnet import build_resnet_backbone

    from sact_det.modeling.execution.fold import fold_norms
    from tests.helpers import tiny_cfg

    torch.manual_seed(0)
    cfg = tiny_cfg(depth=18, mode="none", norm="FrozenBN")
    net = _randomize_norms(build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval(), seed=2)
    folded = fold_norms(net)
    assert all(m.norm is None for m in folded.modules() if hasattr(m, "norm") and isinstance(m, torch.nn.Conv2d))
    assert any(m.norm is not None for m in net.modules() if hasattr(m, "norm") and isinstance(m, torch.nn.Conv2d))
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        ref, got = net(x)["res4"], folded(x)["res4"]
    torch.testing.assert_close(got, ref, atol=1e-4 * float(ref.abs().max()), rtol=1e-4)



@pytest.mark.parametrize("depth,fmt", [(18, torch.contiguous_format), (50, torch.channels_last)])
def test_folded_resnet_forward_equals_detectron2(depth, fmt):
    """The fastest dense baseline (every block folded, oneDNN convs) computes detectron2's ResNet outputs, in the
    input's memory format."""
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone.resnet import build_resnet_backbone

    from sact_det.modeling.execution.fold import folded_resnet_forward
    from tests.helpers import tiny_cfg

    torch.manual_seed(0)
    cfg = tiny_cfg(depth=depth, mode="none", norm="FrozenBN")
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res4"]
    net = _randomize_norms(build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval(), seed=4)
    x = torch.randn(2, 3, 40, 56).contiguous(memory_format=fmt)
    with torch.no_grad():
        ref = net(x)
    got = folded_resnet_forward(net)(x)
    assert set(got) == {"res2", "res4"}
    for k in got:
        torch.testing.assert_close(got[k], ref[k], atol=1e-4 * float(ref[k].abs().max()), rtol=1e-4)
        assert got[k].is_contiguous(memory_format=fmt)

def _dense_masks(n: int) -> torch.Tensor:
    """(n,1,H,W) masks of high density: all, all but a corner, all but two rows (>= 0.5, the row-copy path)."""
    m = torch.ones(n, 1, H, W, dtype=torch.bool)
    m[1, 0, :3, :4] = False
    m[2 % n, 0, [1, -2]] = False
    return m


@pytest.mark.parametrize("max_density", [0.0, 0.9])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_dense_path_keeps_inactive_positions(block, max_density, fmt):
    """Images at or above max_density run the dense unit and then restore x at the inactive positions (rows
    copied for channels-last maps, torch.where otherwise): equal to the masked dense unit, x untouched."""
    x = torch.randn(3, block.out_channels, H, W).contiguous(memory_format=fmt)
    x0 = x.clone()
    active = _dense_masks(3)
    out = sparse_unit_forward(fold_unit(block), x, active, max_density=max_density)
    torch.testing.assert_close(out, _expected(block, x0, active), **TOL)
    assert torch.equal(out[~active.expand_as(out)], x0[~active.expand_as(x0)])  # exactly the old state there
    assert torch.equal(x, x0)


def test_outputs_never_alias_the_kept_scratch_buffers(block):
    """Scratch buffers are kept between calls on CPU: a second call must not change the first call's result."""
    folded = fold_unit(block)
    x1, x2 = (torch.randn(4, block.out_channels, H, W).contiguous(memory_format=torch.channels_last)
              for _ in range(2))
    active = _masks(4)
    out1 = sparse_unit_forward(folded, x1, active, max_density=float("inf"))
    kept = out1.clone()
    sparse_unit_forward(folded, x2, active, max_density=float("inf"))
    assert torch.equal(out1, kept)
    torch.testing.assert_close(out1, _expected(block, x1, active), **TOL)
    gather.release_scratch()
    torch.testing.assert_close(sparse_unit_forward(folded, x1, active, max_density=float("inf")), kept, **TOL)


@pytest.mark.parametrize("n,k,c_out", [(1, 5, 3), (37, 64, 16), (300, 9 * 8, 8)])
def test_rows_linear_is_a_matrix_product(n, k, c_out):
    """rows_linear = a @ mat^T + bias, and its ReLU (float64 reference)."""
    from sact_det.modeling.execution.fold import rows_linear

    torch.manual_seed(n)
    a, mat, bias = torch.randn(n, k), torch.randn(c_out, k), torch.randn(c_out)
    ref = (a.double() @ mat.double().t() + bias.double()).float()
    torch.testing.assert_close(rows_linear(a, mat, bias), ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(rows_linear(a[:, :].t().contiguous().t(), mat, bias), ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(rows_linear(a, mat, bias, relu=True), ref.clamp_min(0), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("stride,padding,dilation,groups,k", [(1, 0, 1, 1, 1), (2, 0, 1, 1, 1), (1, 1, 1, 1, 3),
                                                              (2, 3, 1, 1, 7), (1, 2, 2, 4, 3)])
def test_onednn_conv_equals_conv2d(stride, padding, dilation, groups, k):
    from sact_det.modeling.execution.fold import onednn_conv

    torch.manual_seed(k + groups)
    x = torch.randn(2, 8, 13, 17)
    w, b = torch.randn(12, 8 // groups, k, k), torch.randn(12)
    ref = F.conv2d(x, w, b, stride, padding, dilation, groups)
    for fmt in (torch.contiguous_format, torch.channels_last):
        got = onednn_conv(x.contiguous(memory_format=fmt), w, b, stride, padding, dilation, groups)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-4)
        assert got.is_contiguous(memory_format=fmt)
