"""ConvNet-AIG and BlockDrop classifiers (CIFAR ResNet-110, ImageNet ResNet-50 / 101) through the
classification seams of sact_det.modeling.family: construction, a training step, FLOPs."""
import pytest
import torch
import torch.nn.functional as F

from sact_det.config import get_sact_cfg
from sact_det.modeling.backbone import make_resnet_stages
from sact_det.modeling.blockdrop import BlockDropResNet
from sact_det.modeling.cifar_resnet import CifarStem, make_cifar_stages
from sact_det.modeling.classifier import SACTClassifier
from sact_det.modeling.family import build_family_backbone, family_classification_losses, prepare_family_classifier
from sact_det.modeling.gates import unit_flops

FAMILIES = {"aig": "build_aig_resnet_backbone", "blockdrop": "build_blockdrop_resnet_backbone"}


def _cfg(family):
    cfg = get_sact_cfg()
    cfg.MODEL.BACKBONE.NAME = FAMILIES[family]
    cfg.MODEL.AIG.STAGES = ["res2", "res3", "res4"]
    cfg.MODEL.BLOCKDROP.STAGES = ["res2", "res3", "res4"]
    cfg.MODEL.BLOCKDROP.POLICY_ARCH = "cifar"
    cfg.MODEL.BLOCKDROP.POLICY_INPUT_SIZE = 32
    return cfg


def cifar_classifier(family, num_units, **over):
    cfg = _cfg(family)
    for k, v in over.items():
        setattr(cfg.MODEL.BLOCKDROP if family == "blockdrop" else cfg.MODEL.AIG, k, v)
    torch.manual_seed(0)
    bb = build_family_backbone(cfg, CifarStem(3, 16, "BN"), make_cifar_stages(num_units), ["res2", "res3", "res4"], 0)
    model = SACTClassifier(bb, 10)
    prepare_family_classifier(model)
    return cfg, model


@pytest.mark.parametrize("family", ["aig", "blockdrop"])
def test_cifar_resnet110_has_54_decided_units(family):
    _, model = cifar_classifier(family, 18)
    bb = model.backbone
    assert len(bb.unit_names) == 54 and model.mode == family
    if family == "blockdrop":
        assert bb.policy.logit.out_features == 54  # the original's Policy32 for R110_C10
    else:
        assert len(bb.gated_units) == 54


def test_imagenet_resnet50_aig_seed_schedule_and_resnet101_blockdrop():
    cfg = _cfg("aig")
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.AIG.STAGES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.AIG.SCHEDULE, cfg.MODEL.AIG.TARGET_RATE = "resnet50", 0.5
    stem, stages = make_resnet_stages(cfg, 3)
    bb = build_family_backbone(cfg, stem, stages, ["res2", "res3", "res4", "res5"], 0)
    assert list(bb.target_rates.values()) == [1, 1, 0.8, 1, .5, .5, .5, 1, .5, .5, .5, .5, .5, 1, 0.7, 1]
    assert len(bb.gated_units) == 10
    cfg = _cfg("blockdrop")
    cfg.MODEL.RESNETS.DEPTH = 101
    cfg.MODEL.BLOCKDROP.STAGES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.BLOCKDROP.POLICY_ARCH, cfg.MODEL.BLOCKDROP.POLICY_INPUT_SIZE = "imagenet", 112
    with torch.device("meta"):
        stem, stages = make_resnet_stages(cfg, 3)
        bb = build_family_backbone(cfg, stem, stages, ["res2", "res3", "res4", "res5"], 0)
    assert len(bb.unit_names) == 33  # the original's Policy224 for R101_ImgNet


@pytest.mark.parametrize("family", ["aig", "blockdrop"])
def test_cifar_training_step_adds_family_loss(family):
    cfg, model = cifar_classifier(family, 2)
    model.train()
    images = torch.randn(4, 3, 32, 32)
    logits = model(images)
    labels = logits.detach().argmax(1)  # the sampled policy is right: its reward beats the all-units baseline
    losses = {"loss_cls": F.cross_entropy(logits, labels)}
    losses.update(family_classification_losses(model, images, logits, labels, cfg, iteration=0))
    key = {"aig": "loss_target_rate", "blockdrop": "loss_policy"}[family]
    assert key in losses and torch.isfinite(losses[key])
    sum(losses.values()).backward()
    grads = [p.grad for n, p in model.named_parameters() if (".gate." in n or "policy." in n)]
    assert grads and any(g is not None and float(g.abs().sum()) > 0 for g in grads)
    assert model.linear.weight.grad is not None


def test_blockdrop_classifier_curriculum_fixes_resnet_and_fc():
    cfg, model = cifar_classifier("blockdrop", 2, PHASE="curriculum", CURRICULUM_PERIOD=5)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("backbone.policy.") for n in trainable)
    bb: BlockDropResNet = model.backbone
    bb.policy.logit.weight.data.zero_()
    bb.policy.logit.bias.data.fill_(-20.0)  # the policy wants to skip every unit
    model.train()
    images, labels = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2])
    bb.iteration = 7  # curriculum step 1 + 7 // 5 = 2: only the last 2 units are the policy's
    logits = model(images)
    assert bb.last_actions[:, :-2].all() and not bb.last_actions[:, -2:].any()
    losses = family_classification_losses(model, images, logits, labels, cfg, iteration=7)
    assert not losses["loss_cls"].requires_grad and losses["loss_policy"].requires_grad
    assert bb.iteration == 8


def test_classifier_flops_all_units_and_skips():
    _, model = cifar_classifier("blockdrop", 2)
    model.eval()
    bb = model.backbone
    bb.policy.logit.weight.data.zero_()
    bb.policy.logit.bias.data.fill_(5.0)
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    parts = bb.image_stage_flops((32, 32), 0)
    # CIFAR ResNet-14: stem 3x3 3->16 at 32x32; res2: 2 units of two 3x3 16->16 convs at 32x32
    assert parts["stem"] == 2 * 1024 * 16 * 27
    assert parts["res2"] == 2 * 2 * (2 * 1024 * 16 * 9 * 16)
    assert parts["extra"] == bb.policy.flops(32)
    bb.policy.logit.bias.data[bb.unit_names.index("res3.0")] = -5.0  # skip a projection unit: shortcut only
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    shortcut = 2 * 256 * 32 * 16  # 1x1 16->32 at 16x16
    full = unit_flops(bb.res3[0], (32, 32))[0]
    assert bb.image_stage_flops((32, 32), 0)["res3"] == parts["res3"] - full + shortcut
