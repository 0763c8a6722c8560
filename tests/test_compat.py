"""sact_det.compat: detectron2 0.6 on today's stack (CPU, fast, no download)."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sact_det  # noqa: F401  (applies compat before detectron2 submodules are imported)
from sact_det import compat

pure_python = pytest.mark.skipif(
    compat.has_compiled_ops(), reason="detectron2 built from source: its compiled ops are used"
)


# ---------------------------------------------------------------- deformable convolution
def _ref_deform(x: torch.Tensor, w: torch.Tensor, shifts: List[Tuple[int, int]]) -> torch.Tensor:
    """3x3 conv, padding 1, where kernel tap k=(i,j) reads x at (h+i-1+dy_k, w+j-1+dx_k), zero
    outside: a plain sum of shifted 1x1 convolutions. x (B,C,H,W), w (O,C,3,3) -> (B,O,H,W)."""
    H, W = x.shape[-2:]
    xp = F.pad(x, (2, 2, 2, 2))
    out = torch.zeros(x.shape[0], w.shape[0], H, W, dtype=x.dtype)
    for k, (dy, dx) in enumerate(shifts):
        i, j = divmod(k, 3)
        patch = xp[:, :, 1 + i + dy : 1 + i + dy + H, 1 + j + dx : 1 + j + dx + W]
        out = out + torch.einsum("oc,bchw->bohw", w[:, :, i, j], patch)
    return out


def _offsets(shifts: List[Tuple[float, float]], b: int, h: int, w: int) -> torch.Tensor:
    """(B, 2*len(shifts), H, W) offsets, constant over positions, (dy, dx) per kernel tap."""
    per_tap = torch.tensor(shifts, dtype=torch.float64).reshape(1, -1, 1, 1)
    return per_tap.expand(b, -1, h, w).contiguous()


@pure_python
@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 1, 1), (1, 2, 2)])
def test_deform_conv_zero_offset_is_plain_conv_forward_and_backward(stride, padding, dilation):
    from detectron2.layers import DeformConv

    torch.manual_seed(0)
    conv = DeformConv(4, 6, 3, stride=stride, padding=padding, dilation=dilation, groups=2)
    conv = conv.double()
    x = torch.randn(2, 4, 5, 7, dtype=torch.float64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    w2 = conv.weight.detach().clone().requires_grad_(True)
    y2 = F.conv2d(x2, w2, stride=stride, padding=padding, dilation=dilation, groups=2)
    y = conv(x, torch.zeros(2, 18, *y2.shape[-2:], dtype=torch.float64))
    torch.testing.assert_close(y, y2)
    g = torch.randn_like(y)
    y.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(conv.weight.grad, w2.grad)


@pure_python
def test_deform_conv_integer_and_fractional_offsets_match_shifted_convs():
    from detectron2.layers import DeformConv

    torch.manual_seed(1)
    conv = DeformConv(3, 5, 3, padding=1).double()
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    shifts = [tuple(int(v) for v in torch.randint(-1, 2, (2,), generator=g)) for _ in range(9)]
    y = conv(x, _offsets(shifts, 2, 6, 5))
    torch.testing.assert_close(y, _ref_deform(x, conv.weight.detach(), shifts))
    # dx = 0.5 everywhere: bilinear sampling halfway between the dx = 0 and dx = 1 taps
    half = conv(x, _offsets([(0, 0.5)] * 9, 2, 6, 5))
    expected = 0.5 * (_ref_deform(x, conv.weight.detach(), [(0, 0)] * 9)
                      + _ref_deform(x, conv.weight.detach(), [(0, 1)] * 9))
    torch.testing.assert_close(half, expected)


@pure_python
def test_deform_conv_deformable_groups_and_modulation():
    from detectron2.layers import ModulatedDeformConv

    torch.manual_seed(3)
    conv = ModulatedDeformConv(4, 3, 3, padding=1, deformable_groups=2).double()
    torch.nn.init.normal_(conv.bias)
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    s0 = [(0, 1)] * 9  # channels 0-1 read one pixel to the right
    s1 = [(-1, 0)] * 9  # channels 2-3 read one pixel up
    offset = torch.cat([_offsets(s0, 1, 5, 5), _offsets(s1, 1, 5, 5)], dim=1)
    m = torch.linspace(0.1, 0.9, 9, dtype=torch.float64)
    mask = torch.cat([m, 1 - m]).reshape(1, 18, 1, 1).expand(1, 18, 5, 5)
    y = conv(x, offset, mask)
    w = conv.weight.detach()
    expected = conv.bias.detach().reshape(1, 3, 1, 1).clone()
    for g, (shifts, mg) in enumerate([(s0, m), (s1, 1 - m)]):
        wm = w[:, 2 * g : 2 * g + 2] * mg.reshape(1, 1, 3, 3)
        expected = expected + _ref_deform(x[:, 2 * g : 2 * g + 2], wm, shifts)
    torch.testing.assert_close(y, expected)


@pure_python
def test_deform_conv_gradients_numerically():
    from sact_det.compat.ops import modulated_deform_conv

    torch.manual_seed(4)
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    offset = (0.3 * torch.randn(1, 18, 4, 4, dtype=torch.float64) + 0.25).requires_grad_(True)
    mask = torch.rand(1, 9, 4, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *a: modulated_deform_conv(*a, 1, 1), (x, offset, mask, w, b), eps=1e-6, atol=1e-5
    )


@pure_python
def test_deform_conv_bad_offset_shape_is_a_clear_error():
    from detectron2.layers import DeformConv

    conv = DeformConv(3, 5, 3, padding=1)
    with pytest.raises(ValueError, match=r"offset must have shape \(B, 18, H_out, W_out\)"):
        conv(torch.randn(1, 3, 4, 4), torch.zeros(1, 9, 4, 4))


# ---------------------------------------------------------------- rotated ops
@pure_python
def test_rotated_ops_raise_a_clear_error():
    from detectron2 import _C
    from detectron2.layers import ROIAlignRotated, batched_nms_rotated, nms_rotated
    from detectron2.structures import RotatedBoxes, pairwise_iou_rotated

    boxes = torch.tensor([[5.0, 5.0, 4.0, 2.0, 30.0]])
    calls = [
        lambda: pairwise_iou_rotated(RotatedBoxes(boxes), RotatedBoxes(boxes)),
        lambda: nms_rotated(boxes, torch.ones(1), 0.5),
        lambda: batched_nms_rotated(boxes, torch.ones(1), torch.zeros(1), 0.5),
        lambda: ROIAlignRotated((2, 2), 1.0, 0)(torch.zeros(1, 1, 8, 8), torch.zeros(1, 6)),
    ]
    for call in calls:
        with pytest.raises(compat.MissingCompiledOpError, match="from source"):
            call()
    with pytest.raises(AttributeError, match="from source"):
        _ = _C.box_iou_rotated
    with pytest.raises(ImportError):  # collect_env reports the truth
        __import__("detectron2._C")


def test_source_build_with_compiled_ops_is_left_untouched():
    """With a detectron2._C that imports (simulated), no op or evaluator is replaced."""
    code = textwrap.dedent(
        """
        import importlib.machinery, sys, types
        fake = types.ModuleType("detectron2._C")
        fake.__spec__ = importlib.machinery.ModuleSpec("detectron2._C", None)
        sys.modules["detectron2._C"] = fake
        import detectron2
        detectron2._C = fake  # what importing a real detectron2/_C*.so does
        import sact_det
        from sact_det import compat
        import detectron2.layers, detectron2.evaluation
        names = ("layers.deform_conv", "layers.nms", "layers.rotated_boxes",
                 "evaluation.fast_eval_api")
        dc, nms, rb, fe = (sys.modules["detectron2." + m] for m in names)
        assert not compat.status()["python_fallbacks"], compat.status()
        assert detectron2._C is fake
        assert dc.deform_conv == dc._DeformConv.apply
        assert nms.nms_rotated.__module__ == "detectron2.layers.nms"
        assert rb.pairwise_iou_rotated.__module__ == "detectron2.layers.rotated_boxes"
        assert fe.COCOeval_opt.__module__ == "detectron2.evaluation.fast_eval_api"
        print("UNTOUCHED")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "UNTOUCHED" in out.stdout, out.stderr[-3000:]


# ---------------------------------------------------------------- COCO evaluation
def _coco_json(path: Path) -> dict:
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 40, "width": 50},
                   {"id": 2, "file_name": "b.jpg", "height": 40, "width": 50}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 12], "area": 120,
             "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [20, 5, 15, 10], "area": 150,
             "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 3, "bbox": [5, 20, 30, 15], "area": 450,
             "iscrowd": 0},
        ],
    }
    path.write_text(json.dumps(data))
    return data


def _evaluate(tmp_path: Path, name: str, drop_ann_ids: Tuple[int, ...]) -> float:
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances
    from detectron2.evaluation import COCOEvaluator
    from detectron2.structures import Boxes, Instances

    data = _coco_json(tmp_path / f"{name}.json")
    register_coco_instances(name, {}, str(tmp_path / f"{name}.json"), str(tmp_path))
    DatasetCatalog.get(name)  # sets thing_dataset_id_to_contiguous_id
    contiguous = {1: 0, 3: 1}
    evaluator = COCOEvaluator(name, tasks=("bbox",), distributed=False, output_dir=None)
    evaluator.reset()
    for img in data["images"]:
        anns = [a for a in data["annotations"]
                if a["image_id"] == img["id"] and a["id"] not in drop_ann_ids]
        inst = Instances((img["height"], img["width"]))
        inst.pred_boxes = Boxes(torch.tensor([[x, y, x + w, y + h] for x, y, w, h in
                                              (a["bbox"] for a in anns)], dtype=torch.float32
                                             ).reshape(-1, 4))
        inst.scores = torch.full((len(anns),), 0.9)
        inst.pred_classes = torch.tensor([contiguous[a["category_id"]] for a in anns],
                                         dtype=torch.int64)
        evaluator.process([{"image_id": img["id"]}], [{"instances": inst}])
    return evaluator.evaluate()["bbox"]["AP"]


def test_coco_evaluator_perfect_predictions_give_ap_100(tmp_path):
    assert _evaluate(tmp_path, "compat_coco_perfect", ()) == pytest.approx(100.0)


def test_coco_evaluator_missed_box_gives_hand_computed_ap(tmp_path):
    # "cat" has 2 boxes, one found: precision 1 up to recall 0.5 -> 51 of COCO's 101 recall
    # points; "dog" perfect -> AP = (51/101 + 1) / 2
    ap = _evaluate(tmp_path, "compat_coco_missed", (2,))
    assert ap == pytest.approx(100 * (51 / 101 + 1) / 2)


# ---------------------------------------------------------------- Pillow, pkg_resources, numpy
def test_pillow_linear_and_extent_transform():
    from detectron2.data.transforms import ExtentTransform
    from PIL import Image

    assert Image.LINEAR == Image.BILINEAR
    img = np.arange(8 * 6 * 3, dtype=np.uint8).reshape(8, 6, 3)
    out = ExtentTransform(src_rect=(0, 0, 6, 8), output_size=(4, 3)).apply_image(img)
    assert out.shape == (4, 3, 3)


def test_model_zoo_imports_without_pkg_resources():
    from detectron2 import model_zoo

    path = model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_C4_1x.yaml")
    assert os.path.isfile(path) and path.endswith("faster_rcnn_R_50_C4_1x.yaml")
    with pytest.raises(RuntimeError, match="not available in Model Zoo"):
        model_zoo.get_config_file("COCO-Detection/no_such_config.yaml")
    real = subprocess.run([sys.executable, "-c", "import pkg_resources"], capture_output=True)
    if real.returncode != 0:  # the shim exists only while model_zoo is imported
        assert "pkg_resources" not in sys.modules


def test_numpy_removed_aliases_on_detectron2_paths(caplog):
    from detectron2.data.build import print_instances_class_histogram
    from detectron2.structures.masks import polygons_to_bitmask

    dicts = [{"annotations": [{"category_id": 0}, {"category_id": 1}, {"category_id": 1}]}]
    print_instances_class_histogram(dicts, ["a", "b"])  # np.int in detectron2 0.6
    assert polygons_to_bitmask([], 3, 4).shape == (3, 4)
    for alias in compat.np_aliases.missing_aliases():
        assert alias not in vars(np)  # numpy itself is left alone


def test_collect_env_info_works():
    from detectron2.utils.collect_env import collect_env_info

    assert "detectron2" in collect_env_info()


def test_anchor_grid_matches_hand_values_without_meshgrid_warning():
    import warnings

    from detectron2.modeling.anchor_generator import DefaultAnchorGenerator

    gen = DefaultAnchorGenerator(sizes=[[8.0]], aspect_ratios=[[1.0]], strides=[4], offset=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (anchors,) = gen([torch.zeros(1, 1, 2, 3)])
    # centres at (x, y) = (2 + 4j, 2 + 4i), row-major over the 2x3 grid; boxes 8x8
    cx = torch.tensor([2.0, 6.0, 10.0, 2.0, 6.0, 10.0])
    cy = torch.tensor([2.0, 2.0, 2.0, 6.0, 6.0, 6.0])
    torch.testing.assert_close(anchors.tensor, torch.stack([cx - 4, cy - 4, cx + 4, cy + 4], 1))


def test_fresh_import_has_no_future_warnings():
    code = "import sact_det, detectron2.modeling, fvcore.nn, detectron2.engine; print('OK')"
    out = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", code],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


def test_apply_is_idempotent():
    from detectron2.layers import deform_conv as dc

    before = (dc.deform_conv, compat.status())
    assert compat.apply() == before[1]
    assert dc.deform_conv is before[0]


# ---------------------------------------------------------------- distributed on CPU
class _Net(torch.nn.Module):
    """Two linear layers, plus one that forward never uses. (B,3) -> (B,1)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(3, 2)
        self.b = torch.nn.Linear(2, 1)
        self.unused = torch.nn.Linear(2, 2)  # needs find_unused_parameters=True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


def _dist_worker(out_dir: str) -> None:
    """Runs in each of 2 spawned CPU processes."""
    from detectron2.utils import comm
    from torch.nn.parallel import DistributedDataParallel

    rank = comm.get_rank()
    gathered = comm.all_gather({"rank": rank, "payload": list(range(rank + 2))})
    info = {
        "world": comm.get_world_size(), "rank": rank, "local_rank": comm.get_local_rank(),
        "local_size": comm.get_local_size(), "gathered": gathered,
    }
    comm.synchronize()
    torch.manual_seed(rank)  # different init per rank: DDP must broadcast rank 0's
    model = _Net()
    ddp = compat.create_ddp_model(model, find_unused_parameters=True)
    assert isinstance(ddp, DistributedDataParallel) and ddp.device_ids is None
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    for step in range(2):
        x = torch.arange(12, dtype=torch.float32).reshape(4, 3) / (rank + 1 + step)
        loss = ddp(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save({"info": info, "state": model.state_dict()}, os.path.join(out_dir, f"{rank}.pt"))


def test_launch_on_cpu_all_gather_and_ddp(tmp_path):
    compat.launch(_dist_worker, 2, dist_url="auto", args=(str(tmp_path),))
    r0, r1 = (torch.load(tmp_path / f"{r}.pt", weights_only=False) for r in (0, 1))
    for r, res in enumerate((r0, r1)):
        info = res["info"]
        assert (info["world"], info["rank"], info["local_rank"], info["local_size"]) == (2, r, r, 2)
        assert info["gathered"] == [{"rank": 0, "payload": [0, 1]},
                                    {"rank": 1, "payload": [0, 1, 2]}]
    for k in r0["state"]:
        torch.testing.assert_close(r0["state"][k], r1["state"][k], rtol=0, atol=0)
    # independent expectation: rank 0's init, SGD on the gradient averaged over both ranks' data
    torch.manual_seed(0)
    ref = _Net()
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for step in range(2):
        opt.zero_grad()
        for rank in (0, 1):
            x = torch.arange(12, dtype=torch.float32).reshape(4, 3) / (rank + 1 + step)
            (ref(x).pow(2).mean() / 2).backward()
        opt.step()
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(r0["state"][k], v)


def test_launch_arguments_and_single_process():
    from detectron2.engine import defaults

    assert defaults.create_ddp_model is compat.create_ddp_model  # DefaultTrainer uses ours
    model = torch.nn.Linear(2, 2)
    assert compat.create_ddp_model(model) is model  # one process: no wrapper
    calls = []
    compat.launch(calls.append, 1, args=("ran",))
    assert calls == ["ran"]
    with pytest.raises(ValueError, match="num_machines"):
        compat.launch(calls.append, 2, num_machines=2, machine_rank=0, dist_url=None)
    with pytest.raises(ValueError, match="machine_rank"):
        compat.launch(calls.append, 1, num_machines=2, machine_rank=2)
