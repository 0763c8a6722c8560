"""ConvNet-AIG and BlockDrop classifiers (CIFAR ResNet-110, ImageNet ResNet-50 / 101) built by
build_classifier from cfg.MODEL.BACKBONE.NAME: construction, BlockDrop's training losses, FLOPs."""
import pytest
import torch

from sact_det.classification import get_classification_cfg
from sact_det.classification.losses import classification_losses, prepare_classifier_training
from sact_det.modeling.skipping.blockdrop import BlockDropResNet
from sact_det.modeling.meta_arch.classifier import build_classifier
from tests.test_classification_model import one_thread  # noqa: F401  (autouse fixture)

FAMILIES = {"aig": "build_aig_resnet_backbone", "blockdrop": "build_blockdrop_resnet_backbone"}


def family_cfg(family, num_units=2, **over):
    cfg = get_classification_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = FAMILIES[family]
    cfg.MODEL.SACT.MODE = "none"
    cfg.SACT_CLS.CIFAR.NUM_UNITS = num_units
    cfg.MODEL.BLOCKDROP.POLICY_ARCH = "cifar"
    cfg.MODEL.BLOCKDROP.POLICY_INPUT_SIZE = 32
    for k, v in over.items():
        setattr(cfg.MODEL.BLOCKDROP if family == "blockdrop" else cfg.MODEL.AIG, k, v)
    return cfg


def cifar_classifier(family, num_units=2, **over):
    cfg = family_cfg(family, num_units, **over)
    torch.manual_seed(0)
    model = build_classifier(cfg, 10)
    prepare_classifier_training(model)
    return cfg, model


@pytest.mark.parametrize("family", ["aig", "blockdrop"])
def test_cifar_resnet110_has_54_decided_units(family):
    _, model = cifar_classifier(family, 18)
    bb = model.backbone
    assert len(bb.unit_names) == 54 and model.family == family
    if family == "blockdrop":
        assert bb.policy.logit.out_features == 54  # the original's Policy32 for R110_C10
    else:
        assert len(bb.gated_units) == 54


def imagenet_backbone(family, depth, **over):
    """The classifier's backbone for an ImageNet ResNet-``depth`` (on the meta device: no weights)."""
    cfg = family_cfg(family, **over)
    cfg.SACT_CLS.ARCH, cfg.MODEL.RESNETS.DEPTH = "imagenet", depth
    with torch.device("meta"):
        return build_classifier(cfg, 1000).backbone


def test_imagenet_resnet50_aig_seed_schedule_and_resnet101_blockdrop():
    all4 = ["res2", "res3", "res4", "res5"]
    bb = imagenet_backbone("aig", 50, STAGES=all4, SCHEDULE="resnet50", TARGET_RATE=0.5)
    assert list(bb.target_rates.values()) == [1, 1, 0.8, 1, .5, .5, .5, 1, .5, .5, .5, .5, .5, 1, 0.7, 1]
    assert len(bb.gated_units) == 10
    bb = imagenet_backbone("blockdrop", 101, STAGES=all4, POLICY_ARCH="imagenet", POLICY_INPUT_SIZE=112)
    assert len(bb.unit_names) == 33  # the original's Policy224 for R101_ImgNet


def test_unknown_backbone_name_is_an_error():
    cfg = family_cfg("aig")
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    with pytest.raises(ValueError, match="registered, but not a classifier family"):
        build_classifier(cfg, 10)
    cfg.MODEL.BACKBONE.NAME = "build_nothing"
    with pytest.raises(ValueError, match="not registered"):
        build_classifier(cfg, 10)


def test_blockdrop_reinforce_against_hand_computed_rewards():
    """All-on greedy policy right, sampled policy (half the units) right: advantage = (1 - 0.5^2) - (1 - 1^2)."""
    cfg, model = cifar_classifier("blockdrop", 2, PENALTY=-5.0, ENTROPY_WEIGHT=0.0, ALPHA=0.8)
    bb: BlockDropResNet = model.backbone
    model.train()
    images = torch.randn(2, 3, 32, 32)
    sample = torch.tensor([[True, False, True, False, True, False]] * 2)
    probs = torch.full((2, 6), 0.9, requires_grad=True)
    with torch.no_grad():
        logits = model.head_logits(bb.forward_with_policy(images, sample))
        greedy_logits = model.head_logits(bb.forward_with_policy(images, torch.ones(2, 6, dtype=torch.bool)))
    bb.last_probs, bb.last_actions = probs, sample
    labels = logits.argmax(1)
    losses = classification_losses(model, images, logits, labels, cfg, iteration=0)
    greedy_right = (greedy_logits.argmax(1) == labels).float()
    advantage = 0.75 - torch.where(greedy_right > 0, torch.zeros(2), torch.full((2,), -5.0))
    q = 0.8 * 0.9 + 0.2 * 0.1  # bounded probability 0.74
    logp = 3 * torch.log(torch.tensor(q)) + 3 * torch.log(torch.tensor(1 - q))  # 3 units on, 3 off
    assert losses["loss_policy"].item() == pytest.approx(float((-logp * advantage).mean()), rel=1e-5)
    assert bb.iteration == 1


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
    losses = classification_losses(model, images, logits, labels, cfg, iteration=7)
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
    # CIFAR ResNet-14 at 32x32, counted by hand: stem 3x3 3->16; res2: 2 units of two 3x3 16->16 convs;
    # res3: 3x3 16->32 at 16x16 + 1x1 projection + 3x3 32->32, then a 2-conv unit; res4 likewise at 8x8
    conv = lambda hw, cin, cout, k: 2 * hw * cin * cout * k * k  # noqa: E731
    res3_0 = conv(256, 16, 32, 3) + conv(256, 32, 32, 3) + conv(256, 16, 32, 1)
    full = (conv(1024, 3, 16, 3) + 4 * conv(1024, 16, 16, 3) + res3_0 + 2 * conv(256, 32, 32, 3)
            + conv(64, 32, 64, 3) + conv(64, 64, 64, 3) + conv(64, 32, 64, 1) + 2 * conv(64, 64, 64, 3))
    fc = 2 * 64 * 10
    assert model.dense_flops((32, 32)) == full + fc
    assert model.image_flops(0) == full + fc + bb.policy.flops(32)
    bb.policy.logit.bias.data[bb.unit_names.index("res3.0")] = -5.0  # skip a projection unit: shortcut only
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert model.image_flops(0) == full + fc + bb.policy.flops(32) - res3_0 + conv(256, 16, 32, 1)
