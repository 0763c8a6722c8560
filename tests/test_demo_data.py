"""Embedded demo data: determinism, valid COCO, class / size variety, cache and registration."""
import contextlib
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

import sact_det  # noqa: F401  (compat patches first)
from sact_det.data import demo
from sact_det.data.demo import CLASS_NAMES, DemoSpec, ensure_demo_split, generate_demo_dataset
from sact_det.data.validation import validate_coco_json
from detectron2.data import DatasetCatalog, MetadataCatalog

SMALL = DemoSpec(num_images=10, seed=7)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo_small")
    generate_demo_dataset(out, SMALL)
    return out


def _coco(path: Path):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def test_generation_is_deterministic(small_set, tmp_path):
    generate_demo_dataset(tmp_path / "again", SMALL)
    assert (tmp_path / "again/annotations.json").read_bytes() == (small_set / "annotations.json").read_bytes()
    for f in sorted((small_set / "images").iterdir()):
        a = np.asarray(Image.open(f))
        b = np.asarray(Image.open(tmp_path / "again/images" / f.name))
        assert a.shape == (256, 256, 3) and np.array_equal(a, b), f.name
    # a different seed gives different data (the check above can fail)
    generate_demo_dataset(tmp_path / "other", DemoSpec(num_images=2, seed=8))
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "other/images/000000.jpg")),
                              np.asarray(Image.open(small_set / "images/000000.jpg")))


def test_json_is_valid_coco(small_set):
    json_file = small_set / "annotations.json"
    validate_coco_json(json_file, small_set / "images", check_image_files=True)
    coco = _coco(json_file)
    assert sorted(c["name"] for c in coco.loadCats(coco.getCatIds())) == sorted(CLASS_NAMES)
    assert len(coco.imgs) == SMALL.num_images and len(coco.anns) >= SMALL.num_images
    for img_id, img in coco.imgs.items():
        union = np.zeros((img["height"], img["width"]), np.int32)
        for ann in coco.imgToAnns[img_id]:
            x, y, w, h = ann["bbox"]
            assert 0 <= x and 0 <= y and x + w <= img["width"] and y + h <= img["height"]
            m = coco.annToMask(ann)
            ys, xs = np.nonzero(m)
            assert m.sum() == ann["area"] > 0
            # tight box computed independently from the mask pixels
            assert [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()] == [x, y, w, h]
            union += m
        assert union.max() <= 1, f"objects overlap in {img['file_name']}"


def test_shapes_are_what_their_class_says(small_set):
    coco = _coco(small_set / "annotations.json")
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    fill, holes = {}, 0
    for ann in coco.anns.values():
        x, y, w, h = ann["bbox"]
        fill.setdefault(names[ann["category_id"]], []).append(ann["area"] / (w * h))
        if names[ann["category_id"]] == "ring" and w > 20:  # the centre is a hole
            assert coco.annToMask(ann)[int(y + h / 2), int(x + w / 2)] == 0
            holes += 1
    assert holes >= 1
    # area / box-area, independent of rotation: a disc fills pi/4 of its box; ring and star less
    assert {"circle", "ring", "star"} <= set(fill), sorted(fill)
    assert abs(np.mean(fill["circle"]) - np.pi / 4) < 0.05
    assert np.mean(fill["ring"]) < np.pi / 4 - 0.1 and np.mean(fill["star"]) < 0.5


def test_class_balance_and_size_variety(tmp_path):
    generate_demo_dataset(tmp_path, DemoSpec(num_images=60, seed=11))
    anns = json.loads((tmp_path / "annotations.json").read_text())["annotations"]
    per_class = Counter(a["category_id"] for a in anns)
    assert len(per_class) == len(CLASS_NAMES)
    assert min(per_class.values()) >= 0.5 * len(anns) / len(CLASS_NAMES)
    areas = np.array([a["area"] for a in anns])
    for bucket in (areas < 32 ** 2, (areas >= 32 ** 2) & (areas < 96 ** 2), areas >= 96 ** 2):
        assert bucket.mean() >= 0.05  # COCO small, medium and large objects all present


@pytest.mark.parametrize("bad", [dict(image_size=16), dict(max_object_frac=1.2), dict(min_objects=9)])
def test_invalid_spec_is_rejected(bad):
    with pytest.raises(ValueError, match="DemoSpec: invalid"):
        DemoSpec(num_images=1, seed=0, **bad)


def test_object_mask_is_union_of_instances(small_set):
    from detectron2.data.datasets import load_coco_json

    with contextlib.redirect_stdout(io.StringIO()):
        record = load_coco_json(str(small_set / "annotations.json"), str(small_set / "images"))[0]
    m = demo.object_mask(record)
    assert m.shape == (256, 256) and m.dtype == bool
    assert m.sum() == sum(mask_util.area(mask_util.merge(mask_util.frPyObjects(a["segmentation"], 256, 256)))
                          for a in record["annotations"])


def test_cache_reuse_regeneration_and_atomicity(tmp_path, monkeypatch):
    spec = DemoSpec(num_images=3, seed=1)
    split_dir = ensure_demo_split(tmp_path, "s", spec)
    stamp = (split_dir / "manifest.json").stat().st_mtime_ns
    assert ensure_demo_split(tmp_path, "s", spec) == split_dir
    assert (split_dir / "manifest.json").stat().st_mtime_ns == stamp  # reused, not regenerated

    # a killed run leaves a tmp folder: never used as the data set, cleaned up by the next run
    (tmp_path / ".s2.tmp-killed/images").mkdir(parents=True)
    (tmp_path / ".s2.tmp-killed/annotations.json").write_text("{")
    calls = []
    real = demo.render_image

    def failing(spec_, index):
        calls.append(index)
        if index == 2:
            raise KeyboardInterrupt  # interrupted mid-way
        return real(spec_, index)

    monkeypatch.setattr(demo, "render_image", failing)
    with pytest.raises(KeyboardInterrupt):
        ensure_demo_split(tmp_path, "s2", spec)
    assert calls == [0, 1, 2]
    assert not (tmp_path / "s2").exists() and not list(tmp_path.glob(".s2.tmp-*"))
    monkeypatch.setattr(demo, "render_image", real)

    # parameters changed -> manifest hash differs -> regenerated in place
    bigger = DemoSpec(num_images=4, seed=1)
    assert spec.digest() != bigger.digest()
    ensure_demo_split(tmp_path, "s", bigger)
    assert len(json.loads((split_dir / "annotations.json").read_text())["images"]) == 4
    assert json.loads((split_dir / "manifest.json").read_text())["hash"] == bigger.digest()
    # a damaged manifest also triggers regeneration
    (split_dir / "manifest.json").write_text("garbage")
    ensure_demo_split(tmp_path, "s", bigger)
    assert json.loads((split_dir / "manifest.json").read_text())["hash"] == bigger.digest()


def test_registration_is_lazy_and_standard(tmp_path, monkeypatch):
    for name in ("sact_demo_train", "sact_demo_val", "sact_demo_tiny_train", "sact_demo_tiny_val"):
        assert name in DatasetCatalog
        assert MetadataCatalog.get(name).evaluator_type == "coco"
    monkeypatch.setenv("SACT_DEMO_DIR", str(tmp_path / "env"))
    assert demo.demo_root() == tmp_path / "env"
    try:
        dirs = demo.register_demo_datasets(tmp_path, {"unit": DemoSpec(num_images=3, seed=5)})
        assert dirs == {"sact_demo_unit": tmp_path / "unit"}
        assert not (tmp_path / "unit").exists()  # lazy: nothing generated by registration
        dicts = DatasetCatalog.get("sact_demo_unit")
        meta = MetadataCatalog.get("sact_demo_unit")
        assert len(dicts) == 3 and Path(meta.json_file).is_file()
        assert meta.thing_classes == list(CLASS_NAMES)
        ann = dicts[0]["annotations"][0]
        assert set(ann) >= {"bbox", "bbox_mode", "category_id", "segmentation"}
        assert 0 <= ann["category_id"] < len(CLASS_NAMES)
        assert Path(dicts[0]["file_name"]).is_file() and dicts[0]["height"] == 256
    finally:
        DatasetCatalog.remove("sact_demo_unit")
        MetadataCatalog.remove("sact_demo_unit")


def test_coco_evaluator_scores_ground_truth_as_perfect(tmp_path):
    import torch
    from detectron2.evaluation import COCOEvaluator
    from detectron2.structures import Boxes, BoxMode, Instances

    demo.register_demo_datasets(tmp_path, {"evaltest": DemoSpec(num_images=4, seed=9)})
    try:
        dicts = DatasetCatalog.get("sact_demo_evaltest")
        evaluator = COCOEvaluator("sact_demo_evaltest", output_dir=None, use_fast_impl=False)
        evaluator.reset()
        for d in dicts:
            boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in d["annotations"]]
            inst = Instances((d["height"], d["width"]), pred_boxes=Boxes(torch.tensor(boxes)),
                             scores=torch.ones(len(boxes)),
                             pred_classes=torch.tensor([a["category_id"] for a in d["annotations"]]))
            evaluator.process([d], [{"instances": inst}])
        assert evaluator.evaluate()["bbox"]["AP"] == pytest.approx(100.0)
    finally:
        DatasetCatalog.remove("sact_demo_evaltest")
        MetadataCatalog.remove("sact_demo_evaltest")
