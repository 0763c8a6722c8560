"""The paper's detector on the original ResNet v2 (cfg.MODEL.SACT.VARIANT original): blocks 1-3 as the
SACT backbone, block 4 + postnorm as the box head (OriginalRes5ROIHeads); trains a step and evaluates."""
import math

import torch
from detectron2.utils.events import EventStorage

from sact_det.modeling.meta_arch.classifier import build_classifier
from sact_det.modeling.sact.flops import backbone_flops
from sact_det.modeling.original.resnet import BottleneckV2, OriginalRes5ROIHeads, OriginalSACTResNet
from tests.helpers import detection_inputs, tiny_cfg


def _detector_cfg():
    cfg = tiny_cfg(depth=50)
    cfg.merge_from_file("configs/COCO-Detection/sact_R_101_C4_original_tau0.005_1x.yaml")
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.SACT.ORIGINAL_UNITS = [2, 2, 2, 2]
    cfg.MODEL.SACT.ORIGINAL_BASE_CHANNELS = 4
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.SACT.HALT_NORM = "BN"
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    return cfg


def test_original_detector_trains_a_step_and_evaluates():
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    cfg = _detector_cfg()
    model = build_model(cfg)
    assert isinstance(model.backbone, OriginalSACTResNet) and list(model.backbone.stage_names) == ["res2", "res3", "res4"]
    assert isinstance(model.roi_heads, OriginalRes5ROIHeads)
    assert all(isinstance(b, BottleneckV2) for b in model.roi_heads.res5) and model.roi_heads.res5[0].stride == 2
    assert model.roi_heads.postnorm.num_features == 32 * 4
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert any(n.startswith("backbone.stem.") for n in frozen) and any(n.startswith("backbone.res2.") for n in frozen)
    assert not any(".halting." in n for n in frozen)  # halting stays trainable
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.SGD(params, lr=0.01)
    with EventStorage():
        losses = model(detection_inputs())
    assert "loss_ponder" in losses and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])}
    assert any(n.startswith("roi_heads.postnorm.") for n in changed) and any(".halting." in n for n in changed)
    model.eval()
    batch = [{k: v for k, v in d.items() if k != "instances"} for d in detection_inputs(n=2)]
    with torch.no_grad():
        outs = model(batch)
    for i, out in enumerate(outs):
        h, w = batch[i]["image"].shape[1:]
        assert out["ponder_map"].shape == (math.ceil(h / 4), math.ceil(w / 4))
        assert out["flops"]["backbone"] == backbone_flops(model.backbone, (h, w), index=i)
        assert len(out["instances"]) >= 0


def test_detector_loads_the_classifier_weights_by_name():
    """The .pkl names (classifier names without ``backbone.``) are the detector's backbone / roi_heads names."""
    from detectron2.modeling import build_model

    from sact_det.classification import get_classification_cfg

    cfg = _detector_cfg()
    detector = build_model(cfg)
    ccfg = get_classification_cfg()
    ccfg.SACT_CLS.ARCH = "imagenet"
    for key in ("VARIANT", "ORIGINAL_UNITS", "ORIGINAL_BASE_CHANNELS"):
        ccfg.MODEL.SACT[key] = cfg.MODEL.SACT[key]
    ccfg.MODEL.SACT.STAGES = ["res2", "res3", "res4", "res5"]
    classifier = build_classifier(ccfg, 1001)
    pkl = {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in classifier.state_dict().items()}
    det = detector.state_dict()
    for name in pkl:
        if name.startswith("linear.") or (name.startswith("res5.") and ".halting." in name) \
                or name.endswith("num_batches_tracked"):
            continue
        target = ("roi_heads." + name) if name.startswith(("res5.", "postnorm.")) else ("backbone." + name)
        assert target in det and det[target].shape == pkl[name].shape, name
