"""Classifier models: FLOPs against hand counts / the original code, halting semantics, loss, configs."""
import glob

import pytest
import torch

from sact_det.classification import get_classification_cfg
from sact_det.classification.losses import classification_losses
from sact_det.modeling.meta_arch.classifier import build_classifier, classifier_flops
from sact_det.modeling.sact.flops import backbone_flops
from tests.helpers import disable_halting, randomize_bn


@pytest.fixture(autouse=True)
def one_thread():
    """1 torch thread: with 2 threads on the shared 2-core machine OpenMP waits dominate (measured 40x slower)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def cifar_cfg(mode="sact", n=5, width=16):
    cfg = get_classification_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.SACT.MODE = mode
    cfg.SACT_CLS.CIFAR.NUM_UNITS, cfg.SACT_CLS.CIFAR.WIDTH = n, width
    return cfg


def imagenet_cfg(depth, mode="sact", stages=("res2", "res3", "res4", "res5")):
    cfg = get_classification_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.SACT_CLS.ARCH = "imagenet"
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    if depth in (18, 34):
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.SACT.MODE = mode
    cfg.MODEL.SACT.STAGES = list(stages)
    return cfg


def conv(hw, cin, cout, k):
    return 2 * hw * cin * cout * k * k


def dense_cifar_flops(n, classes=10):
    """ResNet-(6n+2) on 32x32 counted by hand: stem, 3 stages of n basic units, projection shortcuts, fc."""
    total = conv(32 * 32, 3, 16, 3) + 2 * 64 * classes
    for hw, cin, cout in ((32 * 32, 16, 16), (16 * 16, 16, 32), (8 * 8, 32, 64)):
        total += conv(hw, cin, cout, 3) + conv(hw, cout, cout, 3) + (conv(hw, cin, cout, 1) if cin != cout else 0)
        total += (n - 1) * 2 * conv(hw, cout, cout, 3)
    return total


@pytest.mark.parametrize("n", [5, 18])
def test_dense_cifar_resnet_flops(n):
    model = build_classifier(cifar_cfg("none", n), 10).eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    assert classifier_flops(model, (32, 32), 1)["total"].item() == dense_cifar_flops(n)
    assert dense_cifar_flops(5) == 138249472  # ResNet-32: 1.38e8 FLOPs (SACT reference: 8.24e7 = 60 %)


def test_dense_imagenet_r101_flops_match_reference():
    """the SACT paper / original code: the dense ResNet-101 does 1.5603e10 FLOPs at 224x224 (fc included)."""
    with torch.device("meta"):
        model = build_classifier(imagenet_cfg(101, "none"), 1000)
    flops = classifier_flops(model, (224, 224), 1, ponder={})["total"].item()
    assert abs(flops - 1.5603e10) / 1.5603e10 < 5e-5


def test_cifar_sact_all_halt_after_first_unit():
    """Halting score ~1 at every unit 0: only unit 0 (+ its halting branch) runs in each stage; rho = 2."""
    model = build_classifier(cifar_cfg("sact", 3), 10).eval()
    for name, p in model.named_parameters():
        if name.endswith("halting.local_conv.bias"):
            p.data.fill_(20.0)
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    expected = conv(32 * 32, 3, 16, 3) + 2 * 64 * 10
    for hw, cin, cout in ((32 * 32, 16, 16), (16 * 16, 16, 32), (8 * 8, 32, 64)):
        expected += conv(hw, cin, cout, 3) + conv(hw, cout, cout, 3) + (conv(hw, cin, cout, 1) if cin != cout else 0)
        expected += conv(hw, cout, 1, 3) + conv(1, cout, 1, 1)  # spatial halting conv + global 1x1
    assert classifier_flops(model, (32, 32), 2)["total"].tolist() == [expected, expected]
    for p in model.ponders.values():
        assert torch.allclose(p.ponder_cost, torch.full_like(p.ponder_cost, 2.0))
    x, labels = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    losses = classification_losses(model, x, model(x), labels, cifar_cfg("sact", 3))  # TAU 0.01
    assert losses["loss_ponder"].item() == pytest.approx(0.01 * 3 * 2.0)


@pytest.mark.parametrize("mode", ["sact", "act"])
def test_halting_disabled_equals_dense_classifier(mode):
    torch.manual_seed(0)
    cfg = cifar_cfg(mode, 2, 8)
    cfg.MODEL.SACT.TAU = 0.1
    adaptive = build_classifier(cfg, 7)
    randomize_bn(adaptive)
    disable_halting(adaptive)
    dense = build_classifier(cifar_cfg("none", 2, 8), 7)
    missing, unexpected = dense.load_state_dict(adaptive.state_dict(), strict=False)
    assert not missing and all(".halting." in k for k in unexpected)
    x = torch.randn(3, 3, 32, 32)
    adaptive.eval(), dense.eval()
    with torch.no_grad():
        assert torch.equal(adaptive(x), dense(x))
    losses = classification_losses(adaptive, x, adaptive(x), torch.tensor([0, 1, 2]), cfg)
    assert losses["loss_ponder"].item() == pytest.approx(0.1 * 3 * (2 + 1))  # rho = L + R = 2 + 1 per stage
    assert losses["loss_cls"].item() == pytest.approx(torch.nn.functional.cross_entropy(dense(x), torch.tensor([0, 1, 2])).item())


def test_imagenet_flops_agree_with_detector_backbone_count():
    """The classifier's per-image count = flops.backbone_flops of its backbone + the fc layer."""
    torch.manual_seed(0)
    model = build_classifier(imagenet_cfg(18), 5).eval()
    for name, p in model.named_parameters():
        if name.endswith("halting.local_conv.weight"):
            p.data.normal_(0, 0.5)
        if name.endswith("halting.local_conv.bias"):
            p.data.fill_(0.0)
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 48))
    per_image = classifier_flops(model, (64, 48), 2)
    for i in range(2):
        expected = backbone_flops(model.backbone, (64, 48), index=i) + 2 * 512 * 5
        assert per_image["total"][i].item() == pytest.approx(expected, rel=1e-12)
    assert per_image["total"][0] != per_image["total"][1]  # masks differ per image


def test_act_ponder_is_constant_per_image():
    torch.manual_seed(0)
    model = build_classifier(cifar_cfg("act", 3, 8), 10).train()
    for name, p in model.named_parameters():
        if "halting" in name and name.endswith("conv.weight"):
            p.data.normal_(0, 1.0)
    model(torch.randn(4, 3, 32, 32))
    for p in model.ponders.values():
        rho = p.ponder_cost.flatten(1)
        assert torch.equal(rho, rho[:, :1].expand_as(rho))


def test_bad_arch_and_class_count():
    cfg = cifar_cfg()
    cfg.SACT_CLS.ARCH = "vgg"
    with pytest.raises(ValueError, match="SACT_CLS.ARCH"):
        build_classifier(cfg, 10)
    with pytest.raises(ValueError, match="num_classes=0"):
        build_classifier(cifar_cfg(), 0)


@pytest.mark.parametrize("path", sorted(glob.glob("configs/Classification/*.yaml")))
def test_shipped_configs_build(path):
    cfg = get_classification_cfg()
    cfg.merge_from_file(path)
    with torch.device("meta"):
        model = build_classifier(cfg, 10)
    family = {"build_aig_resnet_backbone": "aig", "build_blockdrop_resnet_backbone": "blockdrop"}.get(
        cfg.MODEL.BACKBONE.NAME, "dense" if cfg.MODEL.SACT.MODE == "none" else cfg.MODEL.SACT.MODE)
    assert model.family == family
    if cfg.SACT_CLS.ARCH == "cifar":
        assert len(model.backbone.res2) == cfg.SACT_CLS.CIFAR.NUM_UNITS
