"""The classifier over the adaptive-backbone contract, for every family x {CIFAR, tiny ImageNet}:
built by build_classifier from the config, one step of the classification tool's training loop
(finite losses, non-zero gradients on the family's own parameters), the family's evaluation
statistics printed, and per-image FLOPs = 2 x fvcore's conv + linear count when every unit runs."""
import pytest
import torch
from fvcore.nn import FlopCountAnalysis
from torch.utils.data import TensorDataset

from sact_det.classification import engine, get_classification_cfg
from sact_det.classification.evaluator import evaluate_classifier, format_metrics
from sact_det.classification.losses import prepare_classifier_training
from sact_det.modeling.meta_arch.classifier import build_classifier
from tests.helpers import disable_halting
from tests.test_classification_model import one_thread  # noqa: F401  (autouse fixture)

FAMILIES = ("sact", "act", "dense", "original", "aig", "blockdrop")
ARCHS = ("cifar", "imagenet")
NAMES = {"aig": "build_aig_resnet_backbone", "blockdrop": "build_blockdrop_resnet_backbone"}
# the family's own parameters, which must receive gradients in a training step
OWN = {"sact": ".halting.", "act": ".halting.", "original": ".halting.", "aig": ".gate.", "blockdrop": "policy.",
       "dense": "backbone.res"}
EXPECTED_FAMILY = {"original": "sact"}


def family_cfg(family: str, arch: str):
    cfg = get_classification_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.SACT_CLS.ARCH = arch
    cfg.SACT_CLS.CIFAR.NUM_UNITS, cfg.SACT_CLS.CIFAR.WIDTH = 2, 4
    cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 18, 64
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    stages = ["res2", "res3", "res4"] + (["res5"] if arch == "imagenet" else [])
    cfg.MODEL.SACT.STAGES = stages
    cfg.MODEL.SACT.MODE = {"dense": "none", "aig": "none", "blockdrop": "none", "original": "sact"}.get(family, family)
    if family == "original":
        cfg.MODEL.SACT.VARIANT = "original"
        cfg.MODEL.SACT.ORIGINAL_UNITS, cfg.MODEL.SACT.ORIGINAL_BASE_CHANNELS = [1, 2, 1, 1], 8
    if family in NAMES:
        cfg.MODEL.BACKBONE.NAME = NAMES[family]
    cfg.MODEL.AIG.STAGES = stages
    cfg.MODEL.AIG.GATE_NORM = "LN"
    b = cfg.MODEL.BLOCKDROP
    b.STAGES, b.POLICY_ARCH, b.POLICY_INPUT_SIZE = stages, arch, 16
    b.POLICY_BIAS_INIT, b.ENTROPY_WEIGHT = 2.0, 0.1  # the entropy term: policy gradients whatever the rewards
    return cfg


def run_every_unit(model, family: str) -> None:
    """Parameters that make every unit run on every image / position."""
    if family in ("sact", "act", "original"):
        disable_halting(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if family == "aig" and name.endswith("gate.fc2.bias"):
                p.copy_(torch.tensor([-10.0, 10.0]))
            if family == "blockdrop" and name.endswith("policy.logit.bias"):
                p.fill_(10.0)


def fvcore_conv_linear(model, *inputs) -> float:
    counts = (FlopCountAnalysis(model, inputs).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
              .by_operator())
    return float(sum(v for k, v in counts.items() if k in ("conv", "linear", "addmm", "matmul", "bmm")))


def fvcore_decisions(model, family: str, x) -> float:
    """fvcore count of the AIG gates / the BlockDrop policy on their own inputs: their outputs only steer
    control flow, so a trace of the whole model drops them as dead code."""
    bb = model.backbone
    if family == "aig":
        return sum(fvcore_conv_linear(bb._block(n).gate, torch.randn(1, bb._block(n).in_channels))
                   for n in bb.gated_units)
    if family == "blockdrop":
        size = bb.policy_input_size
        return fvcore_conv_linear(bb.policy, torch.randn(1, 3, size, size))
    return 0.0


@pytest.fixture(params=[(f, a) for f in FAMILIES for a in ARCHS], ids=lambda p: f"{p[0]}-{p[1]}")
def case(request):
    family, arch = request.param
    cfg = family_cfg(family, arch)
    torch.manual_seed(0)
    model = build_classifier(cfg, 5)
    return family, arch, cfg, model


def test_builds_the_named_family(case):
    family, arch, cfg, model = case
    assert model.family == EXPECTED_FAMILY.get(family, family)
    head = {"original": "postnorm" if arch == "imagenet" else "final_norm"}.get(family, "linear")
    assert model.head == head and model.num_classes == 5


def test_train_step_gives_finite_losses_and_own_gradients(case):
    family, arch, cfg, model = case
    prepare_classifier_training(model)
    model.train()
    x, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    losses, _ = engine.train_step(model, optimizer, x, labels, cfg, 0)  # the tool's training step
    expected_keys = {"sact": {"loss_ponder"}, "act": {"loss_ponder"}, "original": {"loss_ponder"},
                     "aig": {"loss_target_rate"}, "blockdrop": {"loss_policy"}, "dense": set()}[family]
    assert set(losses) == {"loss_cls"} | expected_keys
    assert all(torch.isfinite(v) for v in losses.values())
    own = [p.grad for n, p in model.named_parameters() if OWN[family] in n and p.requires_grad]
    assert own and any(g is not None and float(g.abs().sum()) > 0 for g in own)
    assert model.linear.weight.grad is not None and float(model.linear.weight.grad.abs().sum()) > 0


def test_evaluation_prints_the_family_statistics(case):
    family, arch, cfg, model = case
    data = TensorDataset(torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 4, 0]))
    m = evaluate_classifier(model, data, batch_size=4, tau=float(cfg.MODEL.SACT.TAU))
    printed = format_metrics(m)
    assert m["num_images"] == 6 and m["family"] == model.family and "Total Flops/mean[" in printed
    if family in ("sact", "act", "original"):
        assert "res2/ponder_cost_mean[" in printed and "res3/num_units_executed[" in printed
    if family in ("aig", "blockdrop"):
        for line in ("Block Usage:", "Unique Policies:", "Unit execution rates: res2.0:", "res3/num_units_executed["):
            assert line in printed
        assert m["unit_policy"]["num_images"] == 6


def test_flops_are_twice_fvcore_when_every_unit_runs(case):
    family, arch, cfg, model = case
    model.eval()
    run_every_unit(model, family)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        model(x)
        flops = model.image_flops(0)
        assert flops == pytest.approx(2 * (fvcore_conv_linear(model, x) + fvcore_decisions(model, family, x)), rel=1e-9)
    if family in ("dense", "aig", "blockdrop"):
        assert flops > model.dense_flops((32, 32)) or family == "dense"
