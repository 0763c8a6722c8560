"""Small shared builders for the tests (tiny configs, random inputs)."""
import torch
from detectron2.modeling import build_backbone, build_model

from sact_det.config import get_sact_cfg


def tiny_cfg(depth: int = 18, mode: str = "sact", stages=("res2", "res3", "res4"), norm: str = "BN"):
    """A small C4 SACT Faster R-CNN config that runs in well under a second per step on CPU."""
    cfg = get_sact_cfg()
    cfg.merge_from_file("configs/Base-SACT-RCNN-C4.yaml")
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.NORM = norm
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    if depth in (18, 34):
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.SACT.MODE = mode
    cfg.MODEL.SACT.STAGES = list(stages)
    cfg.MODEL.SACT.HALT_NORM = "BN"
    cfg.MODEL.SACT.HALT_INIT = "zeros"  # the tests assume position-independent halting at init (h = sigmoid(bias))
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 16
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 50
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 100
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 20
    return cfg


def build_tiny_backbone(**kw):
    return build_backbone(tiny_cfg(**kw))


def build_tiny_model(**kw):
    torch.manual_seed(0)
    return build_model(tiny_cfg(**kw))


def disable_halting(module: torch.nn.Module) -> None:
    """Make every halting score exactly 0 (no position ever halts before the last unit)."""
    for name, p in module.named_parameters():
        if ".halting." in name and name.endswith("conv.bias"):
            p.data.fill_(-1e4)


def randomize_bn(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every (Frozen)BN non-trivial statistics so equivalence tests exercise them."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if hasattr(m, "running_mean") and m.running_mean is not None:
            n = m.running_mean.numel()
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


def detection_inputs(n: int = 2, h: int = 96, w: int = 128, seed: int = 0) -> list:
    """n detector inputs (image i is (3, h - 8i, w), two boxes of classes 0 and 2), as a mapper gives them."""
    from detectron2.structures import Boxes, Instances

    g = torch.Generator().manual_seed(seed)
    batch = []
    for i in range(n):
        inst = Instances((h - 8 * i, w))
        inst.gt_boxes = Boxes(torch.tensor([[10.0, 12.0, 60.0, 70.0], [30.0, 5.0, 90.0, 40.0]]))
        inst.gt_classes = torch.tensor([0, 2])
        img = torch.randint(0, 255, (3, h - 8 * i, w), generator=g).float()
        batch.append({"image": img, "instances": inst, "height": h - 8 * i, "width": w})
    return batch


def fvcore_flops(module: torch.nn.Module, hw=None, x=None, eval_mode: bool = True) -> float:
    """2 x fvcore's multiply-adds of the convolutions, fully-connected layers and batched GEMMs (the SACT
    halting conv runs as one, :func:`~sact_det.modeling.halting.branches.affine_conv`) of ``module`` on one
    random (1,3,h,w) image, or on the input ``x`` (an independent count to test FLOP rules against)."""
    from fvcore.nn import FlopCountAnalysis

    if eval_mode:
        module = module.eval()
    with torch.no_grad():
        fa = FlopCountAnalysis(module, torch.randn(1, 3, int(hw[0]), int(hw[1])) if x is None else x)
        fa.unsupported_ops_warnings(False)
        fa.uncalled_modules_warnings(False)
        ops = fa.by_operator()
    return 2.0 * (ops.get("conv", 0) + ops.get("linear", 0) + ops.get("addmm", 0) + ops.get("bmm", 0))
