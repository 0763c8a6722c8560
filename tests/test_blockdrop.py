"""BlockDrop: policy arithmetic by hand, dense equivalence, skip semantics, per-image execution,
FLOPs (policy included), the REINFORCE step with detection's "correct", curriculum and phases."""
import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone, build_model
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from detectron2.utils.events import EventStorage

import sact_det.modeling.skipping.blockdrop  # noqa: F401  (registers the backbone and cfg.MODEL.BLOCKDROP)
import sact_det.modeling.skipping.blockdrop_rcnn  # noqa: F401
from sact_det.modeling.skipping.blockdrop import (PolicyNet, blockdrop_reward, bounded_probs, curriculum_mask,
                                         detection_correct, policy_input, reinforce_loss)
from tests.helpers import detection_inputs, fvcore_flops, randomize_bn, tiny_cfg
from tests.test_aig import r18_residual_flops


def bd_cfg(depth=18, norm="BN", **bd):
    cfg = tiny_cfg(depth=depth, mode="none", norm=norm)
    cfg.MODEL.BACKBONE.NAME = "build_blockdrop_resnet_backbone"
    cfg.MODEL.META_ARCHITECTURE = "BlockDropRCNN"
    cfg.MODEL.BLOCKDROP.POLICY_INPUT_SIZE = 32
    cfg.MODEL.BLOCKDROP.POLICY_NORM = "GN"
    for k, v in bd.items():
        setattr(cfg.MODEL.BLOCKDROP, k, v)
    return cfg


def set_policy(bb, probs_by_unit):
    """Make the policy output fixed probabilities, whatever the image: logit bias = logit(p), weights 0."""
    bb.policy.logit.weight.data.zero_()
    for j, name in enumerate(bb.unit_names):
        p = probs_by_unit.get(name, 0.9)
        bb.policy.logit.bias.data[j] = math.log(p / (1 - p))


def test_bounded_probabilities_and_reward_by_hand():
    p = torch.tensor([0.0, 0.5, 1.0, 0.3])
    assert bounded_probs(p, 0.8).tolist() == pytest.approx([0.2, 0.5, 0.8, 0.38])
    actions = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)
    reward = blockdrop_reward(actions, torch.tensor([True, True, False]), penalty=-5.0)
    assert reward.tolist() == pytest.approx([1 - 0.5 ** 2, 0.0, -5.0])


def test_detection_correct_is_relative_to_all_units_loss():
    ref = torch.tensor([1.0, 1.0, 2.0])
    assert detection_correct(torch.tensor([1.05, 1.2, 1.0]), ref, 0.1).tolist() == [True, False, True]
    assert detection_correct(torch.tensor([1.05, 1.0, 2.0]), ref, 0.0).tolist() == [False, True, True]


def test_reinforce_loss_by_hand():
    q = torch.tensor([[0.8, 0.2]], requires_grad=True)
    a = torch.tensor([[1, 0]])
    adv = torch.tensor([2.0])
    loss = reinforce_loss(q, a, adv)
    assert float(loss.detach()) == pytest.approx(-2 * 2 * math.log(0.8), abs=1e-6)  # log pi = 2 log 0.8
    loss.backward()
    assert q.grad.tolist()[0] == pytest.approx([-2 / 0.8, 2 / 0.8], abs=1e-5)  # taken actions become likelier
    masked = reinforce_loss(q.detach(), a, adv, mask=torch.tensor([False, True]))
    assert float(masked) == pytest.approx(-2 * math.log(0.8), abs=1e-6)
    ent = reinforce_loss(q.detach(), a, adv, entropy_weight=0.1)
    h = -0.8 * math.log(0.8) - 0.2 * math.log(0.2)  # Bernoulli entropy of q = 0.8 and of q = 0.2 alike
    assert float(ent) == pytest.approx(-4 * math.log(0.8) - 0.1 * 2 * h, abs=1e-6)
    q = torch.tensor([[0.3, 0.5, 0.7]], requires_grad=True)
    reinforce_loss(q, torch.zeros(1, 3), torch.zeros(1), entropy_weight=1.0).backward()
    assert q.grad[0, 0] < 0 and q.grad[0, 1].abs() < 1e-6 and q.grad[0, 2] > 0  # pulls towards 0.5
    two = reinforce_loss(torch.tensor([[0.8, 0.2], [0.5, 0.5]]), torch.tensor([[1, 0], [1, 1]]), torch.tensor([2.0, -1.0]))
    assert float(two) == pytest.approx((-4 * math.log(0.8) + 2 * math.log(0.5)) / 2, abs=1e-6)  # mean over images


def test_curriculum_mask_last_units_first():
    assert curriculum_mask(5, 2).tolist() == [False, False, False, True, True]
    assert curriculum_mask(5, 9).all() and not curriculum_mask(5, 0).any()


def test_policy_input_uses_each_images_own_area():
    img = torch.randn(1, 3, 224, 224)
    assert torch.equal(policy_input(img, None, 112), F.avg_pool2d(img, 2))  # the original's 224 -> 112
    batch = torch.zeros(2, 3, 80, 120)
    batch[0, :, :60, :90] = torch.randn(3, 60, 90)
    batch[1] = torch.randn(3, 80, 120)
    got = policy_input(batch, [(60, 90), (80, 120)], 32)
    alone = policy_input(batch[:1, :, :60, :90], None, 32)
    assert got.shape == (2, 3, 32, 32) and torch.equal(got[:1], alone)  # padding never reaches the policy


def test_parameter_names_and_dense_equivalence_when_all_units_run():
    cfg = bd_cfg(depth=50)
    torch.manual_seed(0)
    dense = build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()
    randomize_bn(dense)
    bb = build_backbone(cfg).eval()
    missing, unexpected = bb.load_state_dict(dense.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("policy.") for k in missing)
    assert len(bb.unit_names) == 13 and bb.policy.logit.out_features == 13
    set_policy(bb, {n: 0.9 for n in bb.unit_names})
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(dense(x)["res4"], bb(x)["res4"])
    assert all(e.all() for e in bb.last_executed.values())


def test_skips_follow_the_original_and_run_per_image():
    cfg = bd_cfg(depth=50)
    torch.manual_seed(0)
    bb = build_backbone(cfg).eval()
    randomize_bn(bb)
    calls = {}
    for n in ("res3.0", "res3.2"):
        bb.res3[int(n[-1])].register_forward_hook(lambda m, i, o, n=n: calls.setdefault(n, []).append(i[0].shape[0]))
    actions = torch.ones(2, 13, dtype=torch.bool)
    actions[:, bb.unit_names.index("res3.0")] = False  # projection unit: shortcut conv only, no ReLU
    actions[0, bb.unit_names.index("res3.2")] = False  # identity unit skipped by image 0 only
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = bb.forward_with_policy(x, actions)["res4"]
        ran = {k: list(v) for k, v in calls.items()}
        h = bb.stem(x)
        for blk in bb.res2:
            h = blk(h)
        h = bb.res3[1](bb.res3[0].shortcut(h))
        h = torch.cat([h[:1], bb.res3[2](h[1:])])
        for blk in list(bb.res3)[3:] + list(bb.res4):
            h = blk(h)
    assert ran == {"res3.2": [1]}  # res3.0 never ran, res3.2 on one image
    assert torch.allclose(out, h, atol=1e-5)
    # training with a mask gives the same function (masked dense path, as the original's forward)
    bb.train()
    for m in bb.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    out_train = bb.forward_with_policy(x, actions)["res4"]
    # masked training path vs per-image execution: fp32 round-off of 13 random-weight units (features
    # reach |x| ~ 300), so the absolute tolerance is relative to the feature scale
    torch.testing.assert_close(out_train.detach(), h, rtol=1e-4, atol=1e-5 * float(h.abs().max()))


def test_flops_policy_counts_and_skipped_units_cost_nothing():
    cfg = bd_cfg()
    bb = build_backbone(cfg).eval()
    policy = fvcore_flops(bb.policy, x=torch.randn(1, 3, 32, 32), eval_mode=False)  # the policy on its 32x32 input (convs + fc)
    assert bb.policy.flops(32) == policy
    hw = (64, 96)
    dense = fvcore_flops(build_resnet_backbone(tiny_cfg(depth=18, mode="none"), ShapeSpec(channels=3)), hw)
    with torch.no_grad():
        bb.forward_with_policy(torch.randn(1, 3, *hw), torch.ones(1, 6, dtype=torch.bool))
    assert bb.image_flops(0) == dense + policy
    actions = torch.ones(1, 6, dtype=torch.bool)
    actions[0, bb.unit_names.index("res4.1")] = False
    with torch.no_grad():
        bb.forward_with_policy(torch.randn(1, 3, *hw), actions)
    assert bb.image_flops(0) == dense + policy - 2 * (2 * 24 * 256 * 9 * 256)  # two 3x3 convs on 4x6


def test_imagenet_policy_matches_fvcore_at_112():
    net = PolicyNet(33, "imagenet", norm="BN")
    assert net.flops(112) == fvcore_flops(net.eval(), x=torch.randn(1, 3, 112, 112), eval_mode=False)
    assert net(torch.randn(2, 3, 112, 112)).shape == (2, 33)


def test_bad_values_raise_clear_errors():
    for kw, match in [(dict(ALPHA=0.3), "ALPHA"), (dict(PHASE="joint"), "PHASE"), (dict(STAGES=[]), "BLOCKDROP.STAGES"),
                      (dict(STAGES=["res5"]), "BLOCKDROP.STAGES"), (dict(POLICY_ARCH="vgg"), "POLICY_ARCH")]:
        with pytest.raises(ValueError, match=match):
            build_backbone(bd_cfg(**kw))
    cfg = bd_cfg()
    cfg.MODEL.META_ARCHITECTURE = "AdaptiveRCNN"
    with pytest.raises(ValueError, match="BlockDropRCNN"):
        build_backbone(cfg)


def _train_step(model, it=0):
    model.train()
    with EventStorage(start_iter=it) as storage:
        storage.iter = it
        losses = model(detection_inputs())
        logged = storage.latest()
    return losses, logged


def test_finetune_step_rewards_from_detector_loss(monkeypatch):
    torch.manual_seed(0)
    model = build_model(bd_cfg(ALPHA=1.0, PENALTY=-5.0, CORRECT_TOLERANCE=0.1))
    bb = model.backbone
    # units 0..3 always chosen; res4.0 never; res4.1 with p = 0.9 -> greedy 1; sampling with alpha = 1 is p
    set_policy(bb, {"res4.0": 1e-6, "res4.1": 0.9})
    passes = []

    def fake_losses(images, gt, actions, seed, proposals=None):
        passes.append((actions.clone(), proposals))
        skipped = (~actions).float().sum(1)  # loss grows by 0.1 per skipped unit (image 0) / 0.3 (image 1)
        total = torch.tensor([1.0, 1.0]) + skipped * torch.tensor([0.1, 0.3])
        return {"loss_cls": total, "loss_rpn_cls": torch.zeros(2)}, ["props0", "props1"]

    monkeypatch.setattr(model, "per_image_losses", fake_losses)
    losses, logged = _train_step(model)
    (ref, p_ref), (greedy, p_greedy), (sample, p_sample) = passes
    assert p_ref is None and p_greedy == p_sample == ["props0", "props1"]  # the reference pass's proposals
    assert ref.all() and greedy[:, :4].all() and not greedy[:, 4].any() and greedy[:, 5].all()
    # correct iff loss <= 1.1 * loss(all units) = 1.1: image 0 with 1 skip (1.1) yes, image 1 (1.3) no
    r_greedy = torch.tensor([1 - (5 / 6) ** 2, -5.0])
    skipped = (~sample).float().sum(1)
    correct = (1.0 + skipped * torch.tensor([0.1, 0.3])) <= 1.1 + 1e-6
    used = sample.float().mean(1)
    r_sample = torch.where(correct, 1 - used ** 2, torch.tensor(-5.0))
    q = bounded_probs(bb.policy_probs(model.preprocess_image(detection_inputs()).tensor).detach(), 1.0)
    expect = reinforce_loss(q, sample, r_sample - r_greedy)
    assert float(losses["loss_policy"].detach()) == pytest.approx(float(expect), rel=1e-5)
    assert float(losses["loss_cls"]) == pytest.approx(float((1.0 + skipped * torch.tensor([0.1, 0.3])).mean()))
    assert "blockdrop/reward" in logged


def test_finetune_step_trains_policy_and_detector():
    torch.manual_seed(0)
    model = build_model(bd_cfg())
    losses, _ = _train_step(model)
    assert {"loss_policy", "loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
    sum(losses.values()).backward()
    assert model.backbone.policy.logit.weight.grad is not None
    assert float(model.backbone.policy.logit.weight.grad.abs().sum()) > 0
    assert model.roi_heads.box_predictor.cls_score.weight.grad is not None


def test_curriculum_freezes_detector_and_forces_early_units():
    torch.manual_seed(0)
    model = build_model(bd_cfg(PHASE="curriculum", CURRICULUM_PERIOD=10, ENTROPY_WEIGHT=0.1))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("backbone.policy.") for n in trainable)
    bb = model.backbone
    set_policy(bb, {n: 0.01 for n in bb.unit_names})  # the policy wants to skip everything
    losses, logged = _train_step(model, it=25)  # step 1 + 25 // 10 = 3: the last 3 units are learnable
    assert all(bb.last_executed[n].all() for n in bb.unit_names[:3])  # units before the curriculum's are forced on
    assert logged["blockdrop/curriculum_units"][0] == 3
    assert not losses["loss_cls"].requires_grad and losses["loss_policy"].requires_grad
    model.train()
    assert not bb.res3[0].conv1.norm.training and bb.policy.training  # the ResNet stays in eval mode


def test_inference_outputs_policy_and_flops():
    torch.manual_seed(0)
    model = build_model(bd_cfg()).eval()
    set_policy(model.backbone, {"res3.1": 0.2})
    batch = [{k: v for k, v in d.items() if k != "instances"} for d in detection_inputs()]
    with torch.no_grad():
        outs = model(batch)
    for i, out in enumerate(outs):
        assert out["unit_policy"]["res3.1"] is False and out["unit_policy"]["res2.0"] is True
        hw = tuple(batch[i]["image"].shape[1:])
        dense = fvcore_flops(build_resnet_backbone(tiny_cfg(depth=18, mode="none"), ShapeSpec(channels=3)), hw)
        policy = fvcore_flops(model.backbone.policy, (32, 32))  # on its 32x32 input (convs + fc)
        assert out["flops"]["backbone"] == dense + policy - r18_residual_flops("res3.1", hw)
