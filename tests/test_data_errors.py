"""Bad input gives clear errors naming the file / key; empty images behave as in detectron2."""
import copy
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sact_det  # noqa: F401  (compat patches first)
from sact_det.data import (
    DatasetFormatError,
    ImageReadError,
    ImageTooSmallError,
    SACTDatasetMapper,
    register_coco_dataset,
    validate_coco_json,
)
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts
from detectron2.data import transforms as T


def _write_set(root: Path, sizes=((64, 48), (64, 48), (64, 48)), empty=(2,)) -> Path:
    """Tiny COCO set: image i has size sizes[i] (w, h) and one box unless i in ``empty``."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / f"images/{i}.jpg")
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "height": h, "width": w})
        if i not in empty:
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1,
                         "bbox": [2.0, 3.0, w / 2, h / 2], "area": w * h / 4.0, "iscrowd": 0})
    data = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}
    (root / "ann.json").write_text(json.dumps(data))
    return root / "ann.json"


@pytest.fixture
def dataset(tmp_path):
    json_file = _write_set(tmp_path)
    yield json_file, json.loads(json_file.read_text())
    for name in [n for n in DatasetCatalog if n.startswith("errtest_")]:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _mapper(is_train=False, augs=(), min_size=16):
    return SACTDatasetMapper(is_train, augmentations=list(augs), image_format="BGR", min_size=min_size)


def _record(json_file: Path, i: int = 0) -> dict:
    data = json.loads(json_file.read_text())
    img = data["images"][i]
    return {"file_name": str(json_file.parent / "images" / img["file_name"]), "image_id": img["id"],
            "height": img["height"], "width": img["width"], "annotations": []}


def test_valid_set_passes_and_maps(dataset):
    json_file, _ = dataset
    assert validate_coco_json(json_file, json_file.parent / "images", check_image_files=True)["images"]
    out = _mapper()(_record(json_file))
    assert tuple(out["image"].shape) == (3, 48, 64)


def test_missing_image_file(dataset):
    json_file, _ = dataset
    (json_file.parent / "images/1.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"Image file not found: .*images/1\.jpg"):
        _mapper()(_record(json_file, 1))
    with pytest.raises(DatasetFormatError, match=r"image file not found: .*images/1\.jpg"):
        validate_coco_json(json_file, json_file.parent / "images", check_image_files=True)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_jpeg(dataset, damage):
    json_file, _ = dataset
    path = json_file.parent / "images/0.jpg"
    data = path.read_bytes()
    path.write_bytes(b"this is not a jpeg" * 10 if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"Cannot decode image .*images/0\.jpg"):
        _mapper()(_record(json_file))


@pytest.mark.parametrize(
    "section,key",
    [("images", "file_name"), ("images", "height"), ("images", "width"), ("images", "id"),
     ("annotations", "bbox"), ("annotations", "category_id"), ("annotations", "image_id"),
     ("annotations", "id")],
)
def test_json_missing_field(dataset, tmp_path, section, key):
    json_file, data = dataset
    bad = copy.deepcopy(data)
    del bad[section][1][key]
    bad_file = tmp_path / "bad.json"
    bad_file.write_text(json.dumps(bad))
    with pytest.raises(DatasetFormatError) as err:
        validate_coco_json(bad_file)
    msg = str(err.value)
    assert str(bad_file) in msg and f"{section}[1]" in msg and f"missing key '{key}'" in msg
    # register_coco_dataset validates before registering
    with pytest.raises(DatasetFormatError):
        register_coco_dataset("errtest_bad", bad_file, tmp_path / "images")
    assert "errtest_bad" not in DatasetCatalog


@pytest.mark.parametrize(
    "edit,expected",
    [(lambda d: d.pop("categories"), "missing top-level key 'categories'"),
     (lambda d: d["annotations"][0].update(category_id=7), "category_id 7 is not in 'categories'"),
     (lambda d: d["annotations"][0].update(image_id=99), "image_id 99 is not the id of any"),
     (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "'bbox' must be 4 finite numbers"),
     (lambda d: d["annotations"][0].update(bbox=[1, 2, -3, 4]), "negative width or height"),
     (lambda d: d["annotations"][0].update(bbox=[500, 2, 3, 4]), "lies outside its image '0.jpg'"),
     (lambda d: d["images"][0].update(height="48"), "'height' must be a positive integer"),
     (lambda d: d["images"].append(dict(d["images"][0])), "duplicate image id 1")],
)
def test_json_inconsistent_values(dataset, tmp_path, edit, expected):
    json_file, data = dataset
    edit(data)
    bad_file = tmp_path / "bad.json"
    bad_file.write_text(json.dumps(data))
    with pytest.raises(DatasetFormatError, match=str(bad_file)) as err:
        validate_coco_json(bad_file)
    assert expected in str(err.value)


def test_json_not_found_or_not_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        validate_coco_json(tmp_path / "nope.json")
    (tmp_path / "broken.json").write_text('{"images": [')
    with pytest.raises(DatasetFormatError, match=r"broken\.json: not a valid JSON"):
        validate_coco_json(tmp_path / "broken.json")


def test_image_smaller_than_stride(tmp_path):
    json_file = _write_set(tmp_path, sizes=((20, 20),), empty=())
    rec = _record(json_file)
    with pytest.raises(ImageTooSmallError, match=r"0\.jpg is 20x20 px .*stride of 32"):
        _mapper(min_size=32)(rec)
    # documented behaviour: ResizeShortestEdge (INPUT.MIN_SIZE_*) upscales small images
    out = _mapper(augs=[T.ResizeShortestEdge(64, 1000)], min_size=32)(rec)
    assert tuple(out["image"].shape) == (3, 64, 64)
    # extreme aspect ratio: still too small after the resize
    json_file = _write_set(tmp_path / "thin", sizes=((400, 10),), empty=())
    with pytest.raises(ImageTooSmallError, match=r"400x10 px \(1000x25 after"):
        _mapper(augs=[T.ResizeShortestEdge(64, 1000)], min_size=32)(_record(json_file))


def test_min_size_from_config():
    cfg = get_cfg()
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res4"]  # C4
    assert SACTDatasetMapper(cfg, is_train=False).min_size == 16
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]  # FPN
    assert SACTDatasetMapper(cfg, is_train=True).min_size == 32
    cfg.MODEL.RESNETS.RES5_DILATION = 2
    assert SACTDatasetMapper(cfg, is_train=True).min_size == 16


def test_image_without_annotations(dataset):
    json_file, _ = dataset
    register_coco_dataset("errtest_ok", json_file, json_file.parent / "images")
    assert MetadataCatalog.get("errtest_ok").evaluator_type == "coco"
    train = get_detection_dataset_dicts(["errtest_ok"], filter_empty=True)  # FILTER_EMPTY_ANNOTATIONS
    test = get_detection_dataset_dicts(["errtest_ok"], filter_empty=False)  # evaluation keeps all
    assert sorted(d["image_id"] for d in train) == [1, 2]
    assert sorted(d["image_id"] for d in test) == [1, 2, 3]
    empty = next(d for d in test if d["image_id"] == 3)
    out = _mapper(is_train=True)(empty)
    assert len(out["instances"]) == 0 and tuple(out["image"].shape) == (3, 48, 64)
    full = next(d for d in test if d["image_id"] == 1)
    boxes = _mapper(is_train=True)(full)["instances"].gt_boxes.tensor.tolist()
    assert boxes == [[2.0, 3.0, 34.0, 27.0]]  # XYWH [2, 3, 32, 24] -> XYXY
