"""sact_det.compat: every patch decided by feature detection, on whichever detectron2 is imported
(the pinned 0.6 install, or a source tree first on PYTHONPATH such as detectron2 main), plus
detectron2 main's vendored sources in subprocesses when ../shared/vendor holds them.

Expectations come from detectron2 itself, not from compat's own detection: a fresh process
without sact_det tries each behaviour a patch fixes (`_bare_detectron2_needs`), and the _C
patches are expected from plain text searches of detectron2's files (`_expected_c_patches`).
CPU, no download.
"""
import inspect
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sact_det  # noqa: F401  (applies compat before detectron2 submodules are imported)
from sact_det import compat

REPO = Path(__file__).resolve().parents[1]
VENDOR = Path(__file__).resolve().parents[2] / "shared" / "vendor"
C_PATCHES = {"deform_conv_torchvision", "rotated_ops_error", "coco_eval_pycocotools"}

pure_python = pytest.mark.skipif(
    compat.has_compiled_ops(), reason="detectron2 built from source: its compiled ops are used"
)


def _patches() -> Set[str]:
    return set(compat.status()["patches"])


# ---------------------------------------------------------------- independent expectations
def _expected_c_patches() -> List[str]:
    """The _C patches this detectron2 needs, from text searches of its files (no sact_det code)."""
    import importlib
    import re
    from pathlib import Path

    import detectron2

    try:
        importlib.import_module("detectron2._C")
        return []
    except ImportError:
        pass
    root = Path(detectron2.__file__).parent

    def code(rel: str) -> str:  # the file without comment lines
        p = root / rel
        text = p.read_text() if p.is_file() else ""
        return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))

    expected = []
    if "_C.deform_conv_forward(" in code("layers/deform_conv.py"):
        expected.append("deform_conv_torchvision")
    rotated = r"(_C|torch\.ops\.detectron2)\.(nms_rotated|box_iou_rotated|roi_align_rotated_forward)\("
    if any(re.search(rotated, code(f"layers/{m}.py"))
           for m in ("nms", "rotated_boxes", "roi_align_rotated")):
        expected.append("rotated_ops_error")
    unguarded = r"(?m)^from detectron2\.evaluation\.fast_eval_api import COCOeval_opt"
    if re.search(unguarded, code("evaluation/coco_evaluation.py")):
        expected.append("coco_eval_pycocotools")
    return expected


def _bare_detectron2_needs() -> Dict[str, Optional[bool]]:
    """Without sact_det, which problem does each non-_C patch fix here? True = the behaviour fails.

    Run in a fresh process (warnings shown once per process, imports), with detectron2._C present
    or stood in for, since detectron2 0.6 cannot import its layers without it.
    """
    import importlib
    import socket
    import sys
    import warnings

    import torch
    import torch.distributed as dist
    from PIL import Image

    needs: Dict[str, Optional[bool]] = {}
    with warnings.catch_warnings(record=True) as caught:  # from the first detectron2 import on
        warnings.simplefilter("always")
        try:
            importlib.import_module("detectron2.data.transforms.transform")
            needs["pillow_removed_aliases"] = False
        except AttributeError as e:
            needs["pillow_removed_aliases"] = "LINEAR" in str(e)
        added_linear = not hasattr(Image, "LINEAR")
        if added_linear:  # so that the probes below can import detectron2.data
            Image.LINEAR = Image.BILINEAR
        importlib.import_module("detectron2.modeling.box_regression")
        importlib.import_module("fvcore.nn.focal_loss")
    needs["jit_script_import_warning"] = any(
        issubclass(w.category, FutureWarning) and "jit.script" in str(w.message) for w in caught)
    from detectron2.data.build import print_instances_class_histogram

    try:
        print_instances_class_histogram([{"annotations": [{"category_id": 0}]}], ["a"])
        needs["numpy_removed_aliases"] = False
    except AttributeError as e:
        needs["numpy_removed_aliases"] = "numpy" in str(e)
    try:
        importlib.import_module("detectron2.model_zoo")
        needs["pkg_resources_shim"] = False
    except ModuleNotFoundError as e:
        needs["pkg_resources_shim"] = e.name == "pkg_resources"
    from detectron2.modeling.anchor_generator import DefaultAnchorGenerator

    gen = DefaultAnchorGenerator(sizes=[[8.0]], aspect_ratios=[[1.0]], strides=[4], offset=0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gen([torch.zeros(1, 1, 2, 3)])
    needs["meshgrid_indexing"] = any("meshgrid" in str(w.message) for w in caught)

    def url() -> str:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return f"tcp://127.0.0.1:{s.getsockname()[1]}"

    from detectron2.engine import defaults
    from detectron2.utils import comm

    dist.init_process_group("gloo", init_method=url(), world_size=1, rank=0)
    saved = comm.get_world_size, comm.get_local_rank
    comm.get_world_size, comm.get_local_rank = (lambda: 2), (lambda: 0)  # as rank 0 of 2
    try:
        defaults.create_ddp_model(torch.nn.Linear(2, 2))
        needs["create_ddp_model_cpu"] = False
    except ValueError as e:
        needs["create_ddp_model_cpu"] = "device_ids" in str(e)
    finally:
        comm.get_world_size, comm.get_local_rank = saved
        dist.destroy_process_group()
    launch_module = sys.modules[importlib.import_module("detectron2.engine.launch").__name__]
    if torch.cuda.is_available():
        needs["launch_cpu"] = None  # cannot tell on a GPU machine by running it
    else:
        ran: List[str] = []
        try:
            launch_module._distributed_worker(0, ran.append, 1, 1, 0, url(), ("ran",))
            needs["launch_cpu"] = ran != ["ran"]
        except AssertionError:  # "cuda is not available"
            needs["launch_cpu"] = True
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
            comm._LOCAL_PROCESS_GROUP = None
    if added_linear:
        del Image.LINEAR
    return needs


_FAKE_C = """
def install_fake_c():
    import importlib.machinery, sys, types
    fake = types.ModuleType("detectron2._C")
    fake.__spec__ = importlib.machinery.ModuleSpec("detectron2._C", None)
    sys.modules["detectron2._C"] = fake
    import detectron2
    detectron2._C = fake  # what importing a real detectron2/_C*.so does
install_fake_c()
"""

_REPORT = """
import json, sys, torch
import detectron2
report = {"detectron2": detectron2.__file__, "c_bound": "_C" in vars(detectron2)}
NEEDS = _bare_detectron2_needs() if FAKE_C else None
if FAKE_C:  # forget the probed modules: sact_det must come first, as in any process using it
    for name in [m for m in sys.modules if m.split(".")[0] in ("detectron2", "fvcore")]:
        del sys.modules[name]
    install_fake_c()
import sact_det
from sact_det import compat
report.update(patches=sorted(compat.status()["patches"]), needs=NEEDS,
              expected_c=_expected_c_patches(), compiled=compat.has_compiled_ops())
import detectron2.layers, detectron2.evaluation
import importlib
dc, nms, rb, ce = (importlib.import_module("detectron2." + m) for m in (
    "layers.deform_conv", "layers.nms", "layers.rotated_boxes", "evaluation.coco_evaluation"))
from pycocotools.cocoeval import COCOeval
report["own_ops"] = {
    "deform_conv": dc.deform_conv == dc._DeformConv.apply,
    "nms_rotated": nms.nms_rotated.__module__ == "detectron2.layers.nms",
    "pairwise_iou_rotated": rb.pairwise_iou_rotated.__module__ == "detectron2.layers.rotated_boxes",
    "COCOeval_opt": ce.COCOeval_opt is not COCOeval,
}
if not FAKE_C:
    report["c_bound_after"] = "_C" in vars(detectron2)
    conv = detectron2.layers.DeformConv(2, 3, 3, padding=1)
    x = torch.randn(1, 2, 5, 5)
    y = conv(x, torch.zeros(1, 18, 5, 5))
    report["deform_equals_conv"] = bool(torch.allclose(y, torch.nn.functional.conv2d(
        x, conv.weight, padding=1), atol=1e-5))
    try:
        detectron2.layers.nms_rotated(torch.zeros(1, 5), torch.ones(1), 0.5)
        report["nms_rotated_error"] = None
    except compat.MissingCompiledOpError:
        report["nms_rotated_error"] = "MissingCompiledOpError"
print("REPORT" + json.dumps(report))
"""


def _run_report(src: Optional[Path], fake_c: bool) -> dict:
    """compat's decisions (and the bare needs with fake_c) in a fresh process, with detectron2 from
    `src` (first on PYTHONPATH) or the one this process imports."""
    code = "\n".join([
        "from typing import Dict, List, Optional",
        _FAKE_C if fake_c else "",
        f"FAKE_C = {fake_c}",
        textwrap.dedent(inspect.getsource(_expected_c_patches)),
        textwrap.dedent(inspect.getsource(_bare_detectron2_needs)),
        _REPORT,
    ])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), str(REPO)] + (
            [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=600, cwd=REPO, env=env)
    lines = [x for x in out.stdout.splitlines() if x.startswith("REPORT")]
    assert out.returncode == 0 and lines, out.stdout[-2000:] + out.stderr[-4000:]
    return json.loads(lines[-1][len("REPORT"):])


_REPORTS: Dict[Tuple[Optional[str], bool], dict] = {}


def _report(src: Optional[Path], fake_c: bool) -> dict:
    key = (str(src) if src else None, fake_c)
    if key not in _REPORTS:
        _REPORTS[key] = _run_report(src, fake_c)
    return _REPORTS[key]


@pytest.fixture(scope="session")
def main_src(tmp_path_factory) -> Path:
    """detectron2 main's Python sources, extracted from ../shared/vendor (skip without it)."""
    tars = sorted(VENDOR.glob("detectron2-main-*.tar.gz")) if VENDOR.is_dir() else []
    if not tars:
        pytest.skip(f"no detectron2-main-*.tar.gz in {VENDOR} (a user's clone has no ../shared)")
    dest = tmp_path_factory.mktemp("d2main")
    with tarfile.open(tars[-1]) as tar:
        tar.extractall(dest, filter="data")
    assert (dest / "detectron2" / "__init__.py").is_file()
    return dest


def _tree_digest(root: Path) -> str:
    """sha256 over the relative paths and contents of the .py files below `root`."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


# ---------------------------------------------------------------- the decisions
def test_status_reports_what_it_detected():
    st = compat.status()
    import detectron2

    assert st["detectron2"].endswith(detectron2.__path__[0])
    assert st["compiled_ops"] == compat.ops.compiled_state()[1]
    for name, p in st["patches"].items():
        assert set(p) == {"target", "detected", "change"} and all(p.values()), name
    # a patch that acts while a module executes is not reported for modules imported before sact_det
    assert compat._hooks.not_yet_imported(["json", "sact_det_no_such_module"]) == [
        "sact_det_no_such_module"]


def _check_decisions(with_fake_c: dict, without_c: Optional[dict]) -> None:
    """Patches with compiled ops = exactly those whose problem the bare detectron2 shows; without
    _C, exactly those plus the _C patches its files call for."""
    needs = with_fake_c["needs"]
    needed = {name for name, need in needs.items() if need}
    decided = set(with_fake_c["patches"])
    assert not decided & C_PATCHES, decided
    undecidable = {name for name, need in needs.items() if need is None}
    assert decided - undecidable == needed - undecidable, needs
    assert all(with_fake_c["own_ops"].values()), with_fake_c["own_ops"]  # ops left untouched
    assert with_fake_c["compiled"] and with_fake_c["c_bound"]
    if without_c is not None:
        assert set(without_c["patches"]) - decided == set(without_c["expected_c"])
        assert decided <= set(without_c["patches"])


def test_decisions_match_this_detectron2():
    """The detectron2 this process imports: in-process status vs a bare process with a stand-in _C."""
    fake = _report(None, fake_c=True)
    import detectron2

    assert fake["detectron2"] == detectron2.__file__
    here = {"patches": sorted(_patches()), "expected_c": _expected_c_patches()}
    _check_decisions(fake, here)


def test_decisions_on_detectron2_main(main_src):
    """detectron2 main's sources: with compiled ops (stand-in _C) only the patches main needs;
    without _C exactly the _C-related ones more, and DeformConv / COCOEvaluator / rotated ops work."""
    import detectron2

    if _tree_digest(Path(detectron2.__file__).parent) == _tree_digest(main_src / "detectron2"):
        pytest.skip("this process imports these very sources: see test_decisions_match_this_detectron2")
    fake = _report(main_src, fake_c=True)
    bare = _report(main_src, fake_c=False)
    assert fake["detectron2"].startswith(str(main_src)) and bare["detectron2"] == fake["detectron2"]
    _check_decisions(fake, bare)
    # main guards its fast_eval_api import itself: no COCOeval patch; its own fallback is used
    assert "coco_eval_pycocotools" not in bare["patches"]
    assert bare["own_ops"]["COCOeval_opt"] is False  # main's fallback: pycocotools' COCOeval
    assert set(bare["patches"]) - set(fake["patches"]) <= C_PATCHES
    assert bare["c_bound_after"] is False  # the placeholder _C existed only during imports
    assert bare["deform_equals_conv"] and bare["nms_rotated_error"] == "MissingCompiledOpError"
    # what main still needs on this stack (each confirmed by the bare probe above)
    assert not fake["needs"]["numpy_removed_aliases"] and not fake["needs"]["pillow_removed_aliases"]
    assert not fake["needs"]["launch_cpu"] and "launch_cpu" not in fake["patches"]


def test_launch_delegates_where_detectron2_supports_cpu(monkeypatch):
    import detectron2.engine

    calls = []
    monkeypatch.setattr(detectron2.engine, "launch", lambda *a, **k: calls.append((a, k)))
    monkeypatch.setattr(compat.distributed, "_LAUNCH_GPU_ONLY", None)  # as on detectron2 main
    compat.launch(print, 2, dist_url="auto", args=(1,))
    assert calls and calls[0][0][:5] == (print, 2, 1, 0, "auto") and calls[0][1]["args"] == (1,)
    if not torch.cuda.is_available():
        calls.clear()
        monkeypatch.setattr(compat.distributed, "_LAUNCH_GPU_ONLY", "GPU-only (as 0.6)")
        ran = []
        compat.launch(ran.append, 1, args=("ran",))  # one process: runs here, no detectron2 call
        assert ran == ["ran"] and not calls
    assert ("launch_cpu" in _patches()) == (compat.distributed.launch_gpu_only() is not None)


def test_create_ddp_model_keeps_detectron2_defaults(monkeypatch):
    """The wrapped create_ddp_model adds device_ids=None for CPU models and nothing else."""
    from detectron2.engine import defaults

    if "create_ddp_model_cpu" not in _patches():
        assert not hasattr(defaults.create_ddp_model, "__wrapped__")
        pytest.skip("this detectron2's create_ddp_model handles CPU models itself")
    seen = []

    class StandIn:
        def __init__(self, module, **kwargs):
            seen.append(kwargs)

    monkeypatch.setattr(defaults, "DistributedDataParallel", StandIn)
    monkeypatch.setattr(defaults.comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(defaults.comm, "get_local_rank", lambda: 1)
    model = torch.nn.Linear(2, 2)
    compat.create_ddp_model(model)
    compat.create_ddp_model(model, broadcast_buffers=False, find_unused_parameters=True)
    compat.create_ddp_model(model, device_ids=[3])
    assert seen == [{"device_ids": None},
                    {"device_ids": None, "broadcast_buffers": False, "find_unused_parameters": True},
                    {"device_ids": [3]}]
    original = defaults.create_ddp_model.__wrapped__
    assert original.__module__ == "detectron2.engine.defaults"
    assert inspect.signature(original).parameters.keys() >= {"model", "fp16_compression"}
    monkeypatch.setattr(defaults.comm, "get_world_size", lambda: 1)
    assert compat.create_ddp_model(model) is model  # one process: no wrapper


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
    import detectron2
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
    # the placeholder _C existed only while detectron2's modules executed
    assert "_C" not in vars(detectron2)
    with pytest.raises(ImportError):  # collect_env reports the truth
        __import__("detectron2._C")


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
def test_extent_transform_and_pillow_left_alone():
    from detectron2.data.transforms import ExtentTransform
    from PIL import Image

    img = np.arange(8 * 6 * 3, dtype=np.uint8).reshape(8, 6, 3)
    t = ExtentTransform(src_rect=(0, 0, 6, 8), output_size=(4, 3))
    assert t.apply_image(img).shape == (4, 3, 3)
    if "pillow_removed_aliases" in _patches():  # the alias existed only while detectron2 imported
        assert not hasattr(Image, "LINEAR")
        assert inspect.signature(ExtentTransform).parameters["interp"].default == Image.BILINEAR


def test_model_zoo_imports_without_pkg_resources():
    from detectron2 import model_zoo

    path = model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_C4_1x.yaml")
    assert os.path.isfile(path) and path.endswith("faster_rcnn_R_50_C4_1x.yaml")
    with pytest.raises(RuntimeError, match="not available in Model Zoo"):
        model_zoo.get_config_file("COCO-Detection/no_such_config.yaml")
    if "pkg_resources_shim" in _patches():  # the shim exists only while model_zoo is imported
        assert "pkg_resources" not in sys.modules


def test_numpy_removed_aliases_on_detectron2_paths():
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


# ---------------------------------------------------------------- torch warnings
def test_anchor_grid_matches_hand_values_without_meshgrid_warning():
    from detectron2.modeling.anchor_generator import DefaultAnchorGenerator

    gen = DefaultAnchorGenerator(sizes=[[8.0]], aspect_ratios=[[1.0]], strides=[4], offset=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (anchors,) = gen([torch.zeros(1, 1, 2, 3)])
    # centres at (x, y) = (2 + 4j, 2 + 4i), row-major over the 2x3 grid; boxes 8x8
    cx = torch.tensor([2.0, 6.0, 10.0, 2.0, 6.0, 10.0])
    cy = torch.tensor([2.0, 2.0, 2.0, 6.0, 6.0, 6.0])
    torch.testing.assert_close(anchors.tensor, torch.stack([cx - 4, cy - 4, cx + 4, cy + 4], 1))


def test_meshgrid_patch_keeps_detectron2s_function():
    """Same signature as this detectron2's own function, same values, still TorchScript-able."""
    from detectron2.modeling import anchor_generator as ag

    if "meshgrid_indexing" not in _patches():
        pytest.skip("this detectron2 / torch needs no meshgrid patch")
    fn = ag._create_grid_offsets
    original = fn._sact_det_original
    assert inspect.signature(fn) == inspect.signature(original)
    assert "indexing" not in inspect.getsource(original) and "indexing='ij'" in inspect.getsource(fn)
    params = list(inspect.signature(fn).parameters.values())
    last = torch.zeros(1) if params[3].annotation is torch.Tensor else torch.device("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the original warns; jit.script is deprecated
        expected = original([2, 3], 4, 0.5, last)
        scripted = torch.jit.script(fn)
    for got in (fn([2, 3], 4, 0.5, last), scripted([2, 3], 4, 0.5, last)):
        torch.testing.assert_close(got, expected)


def test_fresh_import_has_no_future_warnings():
    code = "import sact_det, detectron2.modeling, fvcore.nn, detectron2.engine; print('OK')"
    out = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", code],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


def test_apply_is_idempotent():
    from detectron2.layers import deform_conv as dc
    from detectron2.modeling import anchor_generator as ag

    before = (dc.deform_conv, ag._create_grid_offsets, compat.status())
    compat.apply()
    assert (dc.deform_conv, ag._create_grid_offsets, compat.status()) == before


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


def test_launch_arguments_and_single_process(monkeypatch):
    calls = []
    compat.launch(calls.append, 1, args=("ran",))
    assert calls == ["ran"]
    if torch.cuda.is_available():
        return
    # sact_det's own CPU launcher (used where detectron2's is GPU-only) checks its arguments
    monkeypatch.setattr(compat.distributed, "_LAUNCH_GPU_ONLY", "GPU-only (as 0.6)")
    with pytest.raises(ValueError, match="machine_rank"):
        compat.launch(calls.append, 1, num_machines=2, machine_rank=2)
    with pytest.raises(ValueError, match="num_gpus_per_machine"):
        compat.launch(calls.append, 0)
    with pytest.raises(ValueError, match="one machine"):
        compat.launch(calls.append, 2, num_machines=2, machine_rank=0, dist_url="auto")
