"""SACT in FPN detectors: the SACT ResNet-FPN backbones against detectron2's FPN builders, AdaptiveDetector
over GeneralizedRCNN (boxes, masks) and RetinaNet, FPN extractor FLOPs against fvcore, sparse execution
with res5 adaptive, and a short tools/train_net.py run of an FPN demo config."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from detectron2.modeling import build_backbone, build_model
from detectron2.structures import PolygonMasks
from detectron2.utils.events import EventStorage

from sact_det.config import get_sact_cfg
from sact_det.modeling.core.contract import AdaptiveBackbone
from sact_det.modeling.sact.fpn import SACTFPN
from tests.helpers import detection_inputs, disable_halting, fvcore_flops, randomize_bn
from tests.test_sparse_backbone import _halt_partially

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_STAGES = ("res2", "res3", "res4", "res5")
BASES = {"faster": "configs/Base-SACT-RCNN-FPN.yaml", "mask": "configs/Base-SACT-RCNN-FPN.yaml",
         "retinanet": "configs/Base-SACT-RetinaNet.yaml"}
D2_BUILDERS = {"build_sact_resnet_fpn_backbone": "build_resnet_fpn_backbone",
               "build_sact_retinanet_resnet_fpn_backbone": "build_retinanet_resnet_fpn_backbone"}


def fpn_cfg(arch: str = "faster", mode: str = "sact", stages=ALL_STAGES, depth: int = 18):
    """A tiny R-18 FPN detector config: ``arch`` faster | mask | retinanet."""
    cfg = get_sact_cfg()
    cfg.merge_from_file(BASES[arch])
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.MASK_ON = arch == "mask"
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.NORM = "BN"
    if depth in (18, 34):
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.SACT.MODE = mode
    cfg.MODEL.SACT.STAGES = list(stages)
    cfg.MODEL.SACT.HALT_NORM = "BN"
    cfg.MODEL.SACT.HALT_INIT = "zeros"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 16
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 16
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 1
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 50
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 100
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 20
    cfg.MODEL.RETINANET.NUM_CLASSES = 3
    cfg.MODEL.RETINANET.NUM_CONVS = 1
    return cfg


def inputs_with_masks(n: int = 2) -> list:
    """detection_inputs with a polygon mask per box (the box's rectangle), as a mapper gives them."""
    batch = detection_inputs(n)
    for d in batch:
        polys = [[[x0, y0, x1, y0, x1, y1, x0, y1]] for x0, y0, x1, y1 in d["instances"].gt_boxes.tensor.tolist()]
        d["instances"].gt_masks = PolygonMasks(polys)
    return batch


def _d2_cfg(cfg):
    d2 = cfg.clone()
    d2.MODEL.BACKBONE.NAME = D2_BUILDERS[cfg.MODEL.BACKBONE.NAME]
    return d2


# ----------------------------------------------------------------------------- dense equivalence
@pytest.mark.parametrize("arch", ["faster", "retinanet"])
@pytest.mark.parametrize("mode", ["sact", "act", "none"])
def test_equals_detectron2_fpn_when_halting_is_disabled(arch, mode):
    cfg = fpn_cfg(arch, mode)
    torch.manual_seed(0)
    ours = build_backbone(cfg).eval()
    torch.manual_seed(1)
    theirs = build_backbone(_d2_cfg(cfg)).eval()
    assert isinstance(ours, SACTFPN) and isinstance(ours, AdaptiveBackbone)
    assert type(ours.top_block) is type(theirs.top_block)
    randomize_bn(theirs)
    # names: detectron2's, plus the halting branches; loadable both ways
    extra = {k for k in ours.state_dict() if ".halting." in k}
    assert set(ours.state_dict()) - extra == set(theirs.state_dict())
    assert bool(extra) == (mode != "none")
    missing, unexpected = ours.load_state_dict(theirs.state_dict(), strict=False)
    # (torch does not report a BN's missing num_batches_tracked)
    assert set(missing) == {k for k in extra if not k.endswith("num_batches_tracked")} and not unexpected
    disable_halting(ours)
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert list(a) == list(b) == list(theirs.output_shape())
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5)
    theirs2 = build_backbone(_d2_cfg(cfg)).eval()
    missing, unexpected = theirs2.load_state_dict(ours.state_dict(), strict=False)
    assert not missing and set(unexpected) == extra
    with torch.no_grad():
        c = theirs2(x)
    for k in a:
        torch.testing.assert_close(c[k], a[k], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- FLOPs
@pytest.mark.parametrize("arch", ["faster", "retinanet"])
@pytest.mark.parametrize("mode", ["sact", "none"])
@pytest.mark.parametrize("hw", [(64, 96), (96, 160)])
def test_extractor_flops_equal_twice_fvcore_when_every_unit_runs(arch, mode, hw):
    torch.manual_seed(0)
    bb = build_backbone(fpn_cfg(arch, mode)).eval()
    disable_halting(bb)
    expect = fvcore_flops(bb, hw)
    with torch.no_grad():
        bb(torch.randn(1, 3, *hw))
    assert bb.image_flops(0) == pytest.approx(expect, rel=1e-12)
    # the dense reference of the evaluator: the same extractor without halting branches
    assert bb.dense_flops(hw) == pytest.approx(fvcore_flops(build_backbone(fpn_cfg(arch, "none")), hw), rel=1e-12)


def test_flops_are_per_image_on_the_unpadded_size():
    torch.manual_seed(0)
    bb = build_backbone(fpn_cfg("faster", "none")).eval()
    bb.set_image_sizes([(96, 128), (64, 96)])
    with torch.no_grad():
        bb(torch.randn(2, 3, 96, 128))
    got = [bb.image_flops(0), bb.image_flops(1)]  # (fvcore runs the backbone again)
    assert got == pytest.approx([fvcore_flops(bb, (96, 128)), fvcore_flops(bb, (64, 96))], rel=1e-12)


# ----------------------------------------------------------------------------- detectors
ARCHS = {"faster": "GeneralizedRCNN", "mask": "GeneralizedRCNN", "retinanet": "RetinaNet"}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_train_step_has_ponder_loss_and_halting_gradients(arch):
    torch.manual_seed(0)
    model = build_model(fpn_cfg(arch)).train()
    assert type(model).__name__ == ARCHS[arch] and isinstance(model.backbone, SACTFPN)
    batch = inputs_with_masks() if arch == "mask" else detection_inputs()
    with EventStorage() as storage:
        losses = model(batch)
    assert "loss_ponder" in losses and all(torch.isfinite(v) for v in losses.values())
    if arch == "mask":
        assert "loss_mask" in losses
    # the ponder loss = tau * sum over the 4 stages of the mean rho, each >= 1
    assert float(losses["loss_ponder"].detach()) >= 4 * model.backbone.tau
    assert {f"ponder/{s}_mean" for s in ALL_STAGES} <= set(storage.latest())
    sum(losses.values()).backward()
    halting = {n: p.grad for n, p in model.named_parameters() if ".halting." in n}
    assert {n.split(".")[2] for n in halting} == set(ALL_STAGES)  # backbone.bottom_up.<stage>...
    assert all(g is not None and torch.isfinite(g).all() for g in halting.values())
    for stage in ALL_STAGES:
        assert any(float(g.abs().sum()) > 0 for n, g in halting.items() if f".{stage}." in n)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_eval_outputs_ponder_maps_and_flops(arch):
    torch.manual_seed(0)
    model = build_model(fpn_cfg(arch)).eval()
    batch = [{k: v for k, v in d.items() if k != "instances"} for d in detection_inputs()]
    with torch.no_grad():
        outs = model(batch)
    assert len(outs) == 2
    for i, out in enumerate(outs):
        assert "instances" in out
        h, w = batch[i]["image"].shape[1:]
        assert set(out["ponder_maps"]) == set(ALL_STAGES)
        for stage, stride in zip(ALL_STAGES, (4, 8, 16, 32)):
            assert out["ponder_maps"][stage].shape == (math.ceil(h / stride), math.ceil(w / stride))
        assert out["ponder_map"].shape == (math.ceil(h / 4), math.ceil(w / 4))
        f = out["flops"]
        assert f["backbone"] == model.backbone.image_flops(i)
        assert math.isfinite(f["model"]) and f["model"] > f["backbone"] > 0
    assert outs[1]["flops"]["backbone"] < outs[0]["flops"]["backbone"]  # the second image is smaller


def test_state_dict_names_are_detectron2s_and_its_checkpoints_load():
    cfg = fpn_cfg("mask", "none")
    ours = build_model(cfg)
    d2 = cfg.clone()
    d2.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    d2.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    theirs = build_model(d2)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())


def test_adaptive_detector_rejects_a_plain_backbone_and_itself():
    cfg = fpn_cfg("faster")
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    with pytest.raises(TypeError, match="AdaptiveBackbone"):
        build_model(cfg)
    cfg = fpn_cfg("faster")
    cfg.MODEL.SACT.META_ARCHITECTURE = "AdaptiveDetector"
    with pytest.raises(ValueError, match="MODEL.SACT.META_ARCHITECTURE"):
        build_model(cfg)


# ----------------------------------------------------------------------------- sparse execution
def test_sparse_equals_masked_dense_with_res5_adaptive():
    torch.manual_seed(0)
    cfg = fpn_cfg("faster", "sact", depth=50)
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP = 16
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 16
    bb = build_backbone(cfg).eval()
    randomize_bn(bb)
    _halt_partially(bb, 1.5)
    x = torch.randn(2, 3, 96, 128)
    bb.set_execution("dense")
    with torch.no_grad():
        ref = bb(x)
    masks = {k: [m.clone() for m in p.masks] for k, p in bb.last_ponder.items()}
    rho = {k: p.ponder_cost.clone() for k, p in bb.last_ponder.items()}
    flops = [bb.image_flops(i) for i in range(2)]
    assert any(0 < float(m.float().mean()) < 1 for m in masks["res5"]), "res5 must halt partially"
    for execution in ("sparse", "auto"):
        bb.set_execution(execution, 0.5)
        with torch.no_grad():
            out = bb(x)
        for k in ref:
            torch.testing.assert_close(out[k], ref[k], atol=1e-4 * float(ref[k].abs().max()), rtol=1e-4)
        for k in rho:
            torch.testing.assert_close(bb.last_ponder[k].ponder_cost, rho[k], atol=1e-4, rtol=1e-4)
            assert all(torch.equal(a, b) for a, b in zip(bb.last_ponder[k].masks, masks[k]))
        assert [bb.image_flops(i) for i in range(2)] == pytest.approx(flops)


# ----------------------------------------------------------------------------- tools/train_net.py
def test_train_net_trains_and_evaluates_an_fpn_demo_config(tmp_path):
    opts = {
        "DATASETS.TRAIN": '("sact_demo_tiny_train",)', "DATASETS.TEST": '("sact_demo_tiny_val",)',
        "INPUT.MIN_SIZE_TRAIN": "(128,)", "INPUT.MAX_SIZE_TRAIN": "128",
        "INPUT.MIN_SIZE_TEST": "128", "INPUT.MAX_SIZE_TEST": "128",
        "SOLVER.IMS_PER_BATCH": "2", "SOLVER.MAX_ITER": "10", "SOLVER.STEPS": "()", "SOLVER.WARMUP_ITERS": "2",
        "SOLVER.CHECKPOINT_PERIOD": "100", "SACT_TRAIN.TAU_WARMUP_START": "0", "SACT_TRAIN.TAU_WARMUP_ITERS": "0",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": "16", "MODEL.RPN.POST_NMS_TOPK_TRAIN": "50",
        "TEST.DETECTIONS_PER_IMAGE": "10", "OUTPUT_DIR": str(tmp_path),
    }
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "tools/train_net.py", "--config-file", "configs/Demo/sact_mask_rcnn_R_50_FPN.yaml"]
                          + [x for kv in opts.items() for x in kv], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "loss_ponder" in log and "dense ResNet-101-FPN extractor" in log and "copypaste: Task: segm" in log
    saved = json.load(open(tmp_path / "eval_results.json"))["datasets"]["sact_demo_tiny_val"]
    assert saved["flops"]["num_images"] == 8 and saved["flops"]["extractor_gflops_mean"] > 0
    assert "AP" in saved["bbox"] and "AP" in saved["segm"]
    assert set(ALL_STAGES) <= {k[: -len("_units_max")] for k in saved["ponder_eval"] if k.endswith("_units_max")}


# ----------------------------------------------------------------------------- the C4 detector, generically
def test_adaptive_detector_over_a_c4_backbone_equals_adaptive_rcnn():
    from tests.helpers import tiny_cfg

    cfg = tiny_cfg()
    torch.manual_seed(0)
    rcnn = build_model(cfg)
    cfg.MODEL.META_ARCHITECTURE = "AdaptiveDetector"
    generic = build_model(cfg)
    assert type(generic).__name__ == "GeneralizedRCNN"
    generic.load_state_dict(rcnn.state_dict())
    for model in (rcnn, generic):
        model.train()
    torch.manual_seed(1)
    with EventStorage():
        a = rcnn(detection_inputs())
    torch.manual_seed(1)
    with EventStorage():
        b = generic(detection_inputs())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    batch = [{k: v for k, v in d.items() if k != "instances"} for d in detection_inputs()]
    with torch.no_grad():
        a, b = rcnn.eval()(batch), generic.eval()(batch)
    for x, y in zip(a, b):
        assert x["flops"] == y["flops"]
        assert torch.equal(x["ponder_map"], y["ponder_map"])
        assert torch.equal(x["instances"].pred_boxes.tensor, y["instances"].pred_boxes.tensor)


# ----------------------------------------------------------------------------- tools
def test_draw_ponder_maps_draws_one_panel_per_stage_of_an_fpn_model(tmp_path):
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import draw_ponder_maps

    written = draw_ponder_maps.main(["--config-file", "configs/Demo/sact_R_50_FPN.yaml", "--dataset",
                                     "sact_demo_tiny_val", "--num-images", "1", "--output", str(tmp_path),
                                     "--random-weights", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128"])
    from PIL import Image

    width, height = Image.open(written[0]).size
    assert width / height > 4  # the image and four stage panels side by side (a single map: about 2)


def test_plot_tradeoff_labels_fpn_runs_and_plots_mask_ap(tmp_path):
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import plot_tradeoff

    runs = []
    for name, mode, backbone, extra in [("sact_fpn", "sact", "build_sact_resnet_fpn_backbone", 0.0),
                                        ("dense_fpn", "none", "build_sact_resnet_fpn_backbone", 3.0),
                                        ("c4", "sact", "build_sact_resnet_backbone", 1.0)]:
        run = tmp_path / name
        run.mkdir()
        (run / "eval_results.json").write_text(json.dumps({
            "datasets": {"sact_demo_val": {
                "bbox": {"AP": 40.0 + extra, "AP50": 60.0}, "segm": {"AP": 35.0 + extra},
                "flops": {"extractor_gflops_mean": 0.8, "extractor_gflops_std": 0.05, "dense_gflops_mean": 1.2,
                          "pct_of_dense_mean": 66.7, "pct_of_dense_std": 4.0, "pct_of_r101_mean": 3.0,
                          "pct_of_r101_std": 0.2}}},
            "sact": {"mode": mode, "tau": 0.1 if mode == "sact" else 0.0, "depth": 50}}))
        (run / "config.yaml").write_text(
            f"MODEL:\n  META_ARCHITECTURE: AdaptiveDetector\n  MASK_ON: true\n  BACKBONE:\n    NAME: {backbone}\n"
            f"  SACT:\n    META_ARCHITECTURE: GeneralizedRCNN\nDATASETS:\n  TEST:\n  - sact_demo_val\n")
        runs.append(str(run))
    out = str(tmp_path / "t")
    rows = plot_tradeoff.main(runs[:2] + ["--metric", "segm", "--x", "dense", "--output", out])
    assert [r["label"] for r in rows] == ["SACT Mask R-CNN R-50-FPN tau=0.1", "dense Mask R-CNN R-50-FPN"]
    assert [r["segm_AP"] for r in rows] == [35.0, 38.0] and os.path.isfile(out + ".png")
    with pytest.raises(SystemExit, match="cannot mix C4 and FPN runs"):
        plot_tradeoff.main(runs + ["--no-plot", "--output", out])
    with pytest.raises(SystemExit, match="cannot be drawn with FPN runs"):
        plot_tradeoff.main(runs[:1] + ["--paper", "--output", out])
