"""The original SACT networks (cfg.MODEL.SACT.VARIANT original): layers against hand-computed values,
config keys, FLOPs of the full-size ResNet-101, preprocessing helpers, faithful defaults."""
import pytest
import torch
import torch.nn.functional as F

from sact_det.classification import get_classification_cfg
from sact_det.modeling.meta_arch.classifier import build_classifier, classifier_flops
from sact_det.modeling.original.layers import TFSameConv2d, TFSameMaxPool2d, tf_same_pad


def _cfg(arch="imagenet", mode="sact", **sact):
    cfg = get_classification_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.SACT_CLS.ARCH = arch
    cfg.MODEL.SACT.VARIANT = "original"
    cfg.MODEL.SACT.MODE = mode
    cfg.MODEL.SACT.STAGES = ["res2", "res3", "res4", "res5"] if arch == "imagenet" else ["res2", "res3", "res4"]
    if arch == "imagenet":
        cfg.MODEL.SACT.ORIGINAL_UNITS, cfg.MODEL.SACT.ORIGINAL_BASE_CHANNELS = [2, 2, 2, 2], 2
    else:
        cfg.SACT_CLS.CIFAR.NUM_UNITS = 2
    for k, v in sact.items():
        cfg.MODEL.SACT[k] = v
    return cfg


def test_tf_same_padding_values():
    # TF 'SAME': out = ceil(n / s), total pad = max((out - 1) * s + k - n, 0), before = total // 2
    assert tf_same_pad(64, 3, 2) == (0, 1) and tf_same_pad(65, 3, 2) == (1, 1)
    assert tf_same_pad(32, 3, 1) == (1, 1) and tf_same_pad(8, 1, 2) == (0, 0) and tf_same_pad(7, 7, 2) == (3, 3)


def test_tf_same_max_pool_pads_after_on_even_sizes_and_never_wins():
    x = -torch.arange(16.0).reshape(1, 1, 4, 4) - 1  # all negative: a zero pad would win
    y = TFSameMaxPool2d(3, 2)(x)
    # windows rows/cols {0,1,2} and {2,3(,pad)}: maxima of the top-left corners of each window
    assert y.tolist() == [[[[-1.0, -3.0], [-9.0, -11.0]]]]
    assert TFSameMaxPool2d(3, 2)(torch.randn(1, 2, 65, 81)).shape[-2:] == (33, 41)


def test_tf_same_conv_is_asymmetric_on_even_stride2():
    conv = TFSameConv2d(2, 3, 3, stride=2, bias=False)
    x = torch.randn(1, 2, 8, 8)
    ref = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, stride=2)  # 0 before, 1 after
    assert torch.allclose(conv(x), ref, atol=1e-6)
    assert conv(torch.randn(1, 2, 9, 9)).shape[-2:] == (5, 5)


def test_v2_unit_structure_and_names():
    model = build_classifier(_cfg(), 1001)
    names = set(model.state_dict())
    for n in ("backbone.stem.conv1.bias", "backbone.res2.0.preact.running_var", "backbone.res2.0.shortcut.bias",
              "backbone.res2.0.conv1.norm.weight", "backbone.res2.0.conv3.bias", "backbone.res3.0.shortcut.weight",
              "backbone.res2.0.halting.local_conv.bias", "postnorm.running_mean", "linear.weight"):
        assert n in names, n
    assert "backbone.res2.1.shortcut.weight" not in names  # identity shortcut inside a block
    assert "backbone.res2.1.halting.local_conv.weight" not in names  # the last unit has no halting branch
    assert "backbone.stem.conv1.norm.weight" not in names and "backbone.res2.0.conv2.bias" not in names
    assert model.linear.out_features == 1001
    bb = model.backbone
    assert bb.res2[0].conv2.stride == (1, 1) and bb.res3[0].conv2.stride == (2, 2)  # stride in unit 1 of blocks 2-4
    assert bb.res2[0].preact.eps == 1e-5 and bb.res2[0].halting.local_norm.eps == 1e-5
    assert bb.res2[0].halting.activation is None


def test_cifar_unit_structure():
    model = build_classifier(_cfg("cifar"), 10)
    names = set(model.state_dict())
    assert "backbone.stem.conv1.bias" in names and "backbone.res2.0.conv2.bias" in names
    assert "final_norm.running_var" in names and not any(".shortcut." in n for n in names)
    bb = model.backbone
    assert bb.res2[0].preact.eps == 1e-3 and bb.res2[0].halting.global_norm.eps == 1e-3
    assert bb.res2[0].halting.activation is not None  # lrelu after the halting BNs
    assert bb.res2[0].activate_before_residual and not bb.res2[1].activate_before_residual
    # shortcut of a depth change: 2x2 average pool, channels zero-padded on both sides
    unit = bb.res3[0].eval()
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        for p in unit.conv2.parameters():
            p.zero_()
        y = unit(x)
    pooled = F.avg_pool2d(x, 2)
    assert torch.equal(y[:, :8], torch.zeros_like(y[:, :8])) and torch.equal(y[:, 24:], torch.zeros_like(y[:, 24:]))
    assert torch.allclose(y[:, 8:24], pooled, atol=1e-6)


def test_dense_resnet101_v2_flops_at_224():
    """the original code: its dense ResNet-101 costs 1.5603e10 FLOPs at 224x224."""
    cfg = _cfg(mode="none", ORIGINAL_UNITS=[], ORIGINAL_BASE_CHANNELS=64)
    cfg.MODEL.RESNETS.DEPTH = 101
    with torch.device("meta"):
        model = build_classifier(cfg, 1001)
    total = float(classifier_flops(model, (224, 224), 1, ponder={})["total"][0])
    assert total == pytest.approx(1.5603e10, rel=5e-5)


def test_sparse_execution_is_refused():
    with pytest.raises(ValueError, match="VARIANT original"):
        build_classifier(_cfg(EXECUTION="sparse"), 10)
    model = build_classifier(_cfg(), 10)
    with pytest.raises(ValueError, match="dense"):  # the contract's error for a family without sparse kernels
        model.backbone.set_execution("auto")


def test_halting_init_option_and_validation():
    model = build_classifier(_cfg(HALT_INIT="zeros"), 10)
    w = model.backbone.res2[0].halting.local_conv.weight.detach()
    assert float(w.abs().sum()) == 0.0
    assert float(build_classifier(_cfg(), 10).backbone.res2[0].halting.local_conv.weight.detach().abs().sum()) > 0
    with pytest.raises(ValueError, match="HALT_INIT"):
        build_classifier(_cfg(HALT_INIT="he"), 10)
    with pytest.raises(ValueError, match="ORIGINAL_UNITS"):
        build_classifier(_cfg(ORIGINAL_UNITS=[1, 2, 3]), 10)


def test_background_class_and_faithful_cifar_schedule(tmp_path):
    from PIL import Image

    from sact_det.data.classification import build_classification_dataset

    cfg = _cfg()
    cfg.SACT_CLS.BACKGROUND_CLASS = True
    assert build_classifier(cfg, 1000).linear.out_features == 1001
    for cls in ("a", "b"):
        (tmp_path / "val" / cls).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(tmp_path / "val" / cls / "x.png")
    cfg.SACT_CLS.DATA.FORMAT, cfg.SACT_CLS.DATA.ROOT = "imagenet", str(tmp_path)
    ds = build_classification_dataset(cfg, "val")
    assert [ds[i][1] for i in range(len(ds))] == [1, 2] and ds.class_names == ["a", "b"]
    s = get_classification_cfg().SACT_CLS.SOLVER  # cifar_main.py: boundaries 60k/75k/90k, stop at 100k
    assert tuple(s.STEPS) == (60000, 75000, 90000) and s.MAX_LENGTH == 100000 and s.BASE_LR == 0.1 and s.GAMMA == 0.1


def test_tf_image_ops_by_hand():
    from sact_det.data.classification import per_image_standardization, tf_central_crop, tf_resize_bilinear

    x = torch.tensor([[[0.0, 10.0]]])  # (1,1,2)
    # TF 1.x resize_bilinear(align_corners=False): source = dst * 2/4 = 0, .5, 1, 1.5 (clamped to the last pixel)
    assert tf_resize_bilinear(x, (1, 4)).tolist() == [[[0.0, 5.0, 10.0, 10.0]]]
    img = torch.arange(3 * 16 * 16.0).reshape(3, 16, 16)
    assert tf_central_crop(img, 0.875).shape == (3, 14, 14)  # start = int((16 - 14) / 2) = 1
    assert torch.equal(tf_central_crop(img, 0.875), img[:, 1:15, 1:15])
    y = per_image_standardization(torch.tensor([[[1.0, 3.0]]]))  # mean 2, std 1
    assert y.tolist() == [[[-1.0, 1.0]]]
    flat = per_image_standardization(torch.full((3, 2, 2), 5.0))  # std 0 -> divided by 1/sqrt(12)
    assert torch.equal(flat, torch.zeros(3, 2, 2))


def test_dense_reference_flops_of_the_original_extractor():
    """flops.dense_backbone_flops(variant="original") counts the v2 extractor: equal to the dense detector
    backbone of VARIANT original, and the full 224x224 classifier minus the head (1.5603e10 in total)."""
    from sact_det.modeling.sact.flops import dense_backbone_flops

    full = dense_backbone_flops((224, 224), depth=101, out_feature="res5", variant="original")
    assert full + 2 * 2048 * 1001 == pytest.approx(1.5603e10, rel=5e-5)
    assert dense_backbone_flops((224, 224), depth=101, out_feature="res4", variant="original") < full


def test_idle_units_count_their_global_halting_conv_like_the_original():
    """The original SACT code runs every unit: once every position halted, a unit with a halting
    branch still counts its unmasked global conv (2*C). Block 1 of [3,1,1,1], bc 2, 32x32 input
    (8x8 positions, 64 -> 8 channels, bottleneck 2), every position halts after unit 1:
    unit 1: conv1 2*64*2*64 + conv2 2*64*2*9*2 + conv3 2*64*8*2 + shortcut 2*64*8*64 = 88576,
    its halting 2*64*9*8 + 2*8 = 9232; unit 2 (idle): global conv 2*8 = 16; unit 3: nothing."""
    cfg = _cfg(ORIGINAL_UNITS=[3, 1, 1, 1], HALT_INIT="zeros", HALT_BIAS_INIT=10.0, STAGES=["res2"])
    model = build_classifier(cfg, 10).eval()
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert float(model.ponders["res2"].num_units.max()) == 1.0
    flops = classifier_flops(model, (32, 32), 2)
    assert flops["res2"].tolist() == [88576 + 9232 + 16] * 2


def test_full_size_original_configs_build():
    from detectron2.modeling import build_backbone

    from sact_det.config import get_sact_cfg
    from sact_det.modeling.original.resnet import OriginalRes5ROIHeads

    cfg = get_classification_cfg()
    cfg.merge_from_file("configs/Classification/imagenet_R_101_sact_tau0.005_original.yaml")
    with torch.device("meta"):
        model = build_classifier(cfg, 1000)  # 1000 class folders + background class 0
    assert [len(s) for s in model.backbone.stages] == [3, 4, 23, 3] and model.linear.out_features == 1001
    assert model.backbone.adaptive_stages == ["res2", "res3", "res4", "res5"]
    cifar = get_classification_cfg()
    cifar.merge_from_file("configs/Classification/cifar10_resnet32_sact_tau0.01_original.yaml")
    assert [len(s) for s in build_classifier(cifar, 10).backbone.stages] == [5, 5, 5]
    det = get_sact_cfg()
    det.merge_from_file("configs/COCO-Detection/sact_R_101_C4_original_tau0.005_1x.yaml")
    assert list(det.MODEL.PIXEL_MEAN) == [127.5] * 3 and list(det.MODEL.PIXEL_STD) == [127.5] * 3
    assert det.INPUT.FORMAT == "RGB"
    with torch.device("meta"):
        bb = build_backbone(det)
        res5, channels = OriginalRes5ROIHeads._build_res5_block(det)
    assert [len(s) for s in bb.stages] == [3, 4, 23] and bb.adaptive_stages == ["res2", "res3", "res4"]
    assert len(res5) == 3 and channels == 2048
