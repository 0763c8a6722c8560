"""Checks of COCO-format annotation files with errors that name the file, the entry and the key.

``validate_coco_json(path)`` collects every problem (up to ``max_errors`` listed) and raises one
:class:`DatasetFormatError`; ``register_coco_dataset`` validates, then registers the data set with
detectron2's ``register_coco_instances`` so it behaves like any builtin COCO split.
"""
import json
import math
import os
from typing import Any, Dict, List, Optional, Set

__all__ = ["DatasetFormatError", "validate_coco_json", "register_coco_dataset"]


class DatasetFormatError(ValueError):
    """An annotation file is not valid COCO (message names file, entry and key)."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _check_categories(cats: List[Any], problems: List[str]) -> Set[Any]:
    ids: Set[Any] = set()
    if not cats:
        problems.append("'categories' is empty: at least one category is needed")
    for i, cat in enumerate(cats):
        where = f"categories[{i}]"
        if not isinstance(cat, dict):
            problems.append(f"{where} is a {type(cat).__name__}, expected an object")
            continue
        for key in ("id", "name"):
            if key not in cat:
                problems.append(f"{where}: missing key '{key}'")
        if "id" in cat:
            if not _is_int(cat["id"]):
                problems.append(f"{where}: 'id' must be an integer, got {cat['id']!r}")
            elif cat["id"] in ids:
                problems.append(f"{where}: duplicate category id {cat['id']}")
            ids.add(cat["id"])
    return ids


def _check_images(images: List[Any], problems: List[str]) -> Dict[Any, dict]:
    by_id: Dict[Any, dict] = {}
    for i, img in enumerate(images):
        if not isinstance(img, dict):
            problems.append(f"images[{i}] is a {type(img).__name__}, expected an object")
            continue
        where = f"images[{i}]" + (f" (id={img['id']!r})" if "id" in img else "")
        for key in ("id", "file_name", "height", "width"):
            if key not in img:
                problems.append(f"{where}: missing key '{key}'")
        if "file_name" in img and not (isinstance(img["file_name"], str) and img["file_name"]):
            problems.append(f"{where}: 'file_name' must be a non-empty string, got {img['file_name']!r}")
        for key in ("height", "width"):
            if key in img and not (_is_int(img[key]) and img[key] > 0):
                problems.append(f"{where}: '{key}' must be a positive integer, got {img[key]!r}")
        if "id" in img:
            if not isinstance(img["id"], (int, str)) or isinstance(img["id"], bool):
                problems.append(f"{where}: 'id' must be an integer or string")
            elif img["id"] in by_id:
                problems.append(f"{where}: duplicate image id {img['id']!r}")
            else:
                by_id[img["id"]] = img
    return by_id


def _check_segmentation(segm: Any) -> Optional[str]:
    if isinstance(segm, dict):
        return None if {"counts", "size"} <= set(segm) else "RLE 'segmentation' needs 'counts' and 'size'"
    if isinstance(segm, list) and all(isinstance(p, list) and all(map(_is_number, p)) for p in segm):
        return None
    return "'segmentation' must be a list of polygons (lists of numbers) or an RLE object"


def _check_annotations(
    anns: List[Any], images: Dict[Any, dict], cat_ids: Set[Any], problems: List[str]
) -> None:
    ann_ids: Set[Any] = set()
    for i, ann in enumerate(anns):
        if not isinstance(ann, dict):
            problems.append(f"annotations[{i}] is a {type(ann).__name__}, expected an object")
            continue
        where = f"annotations[{i}]" + (f" (id={ann['id']!r})" if "id" in ann else "")
        for key in ("id", "image_id", "category_id", "bbox"):
            if key not in ann:
                problems.append(f"{where}: missing key '{key}'")
        if "id" in ann:
            if ann["id"] in ann_ids:
                problems.append(f"{where}: duplicate annotation id {ann['id']!r}")
            ann_ids.add(ann["id"])
        if "image_id" in ann and ann["image_id"] not in images:
            problems.append(f"{where}: image_id {ann['image_id']!r} is not the id of any entry in 'images'")
        if "category_id" in ann and ann["category_id"] not in cat_ids:
            problems.append(f"{where}: category_id {ann['category_id']!r} is not in 'categories'")
        if ann.get("ignore", 0):
            problems.append(f"{where}: 'ignore' is not supported by detectron2; use 'iscrowd': 1")
        if "segmentation" in ann and (msg := _check_segmentation(ann["segmentation"])):
            problems.append(f"{where}: {msg}")
        if "bbox" not in ann:
            continue
        box = ann["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(map(_is_number, box))):
            problems.append(f"{where}: 'bbox' must be 4 finite numbers [x, y, width, height], got {box!r}")
            continue
        x, y, w, h = box
        if w < 0 or h < 0:
            problems.append(f"{where}: 'bbox' {box} has a negative width or height")
        img = images.get(ann.get("image_id"))
        if img and _is_int(img.get("width")) and _is_int(img.get("height")):
            if x >= img["width"] or y >= img["height"] or x + w <= 0 or y + h <= 0:
                problems.append(
                    f"{where}: 'bbox' {box} lies outside its image "
                    f"{img.get('file_name')!r} ({img['width']}x{img['height']})"
                )


def validate_coco_json(
    path: "os.PathLike[str] | str",
    image_root: "Optional[os.PathLike[str] | str]" = None,
    *,
    require_annotations: bool = True,
    check_image_files: bool = False,
    max_errors: int = 20,
) -> dict:
    """Validate a COCO instances json; return its parsed content.

    Requires images[].{id, file_name, height, width}, categories[].{id, name} and (unless
    ``require_annotations`` is False, e.g. for test-dev image-info files)
    annotations[].{id, image_id, category_id, bbox}, with consistent ids. With
    ``check_image_files`` and ``image_root`` every image file must exist.
    Raises FileNotFoundError (missing json) or DatasetFormatError (listing all problems).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise DatasetFormatError(f"{path}: not a valid JSON file ({e})") from e
    if not isinstance(data, dict):
        raise DatasetFormatError(f"{path}: top level must be a JSON object, got {type(data).__name__}")

    problems: List[str] = []
    required = ("images", "categories") + (("annotations",) if require_annotations else ())
    for key in required:
        if key not in data:
            problems.append(f"missing top-level key '{key}'")
    for key in ("images", "categories", "annotations"):
        if key in data and not isinstance(data[key], list):
            problems.append(f"top-level '{key}' must be a list, got {type(data[key]).__name__}")
    if not problems:
        cat_ids = _check_categories(data["categories"], problems)
        images = _check_images(data["images"], problems)
        _check_annotations(data.get("annotations", []), images, cat_ids, problems)
        if check_image_files and image_root is not None:
            root = os.fspath(image_root)
            missing = [img["file_name"] for img in images.values()
                       if isinstance(img.get("file_name"), str)
                       and not os.path.isfile(os.path.join(root, img["file_name"]))]
            problems += [f"image file not found: {os.path.join(root, m)}" for m in missing]
    if problems:
        shown = "\n  - ".join(problems[:max_errors])
        more = f"\n  ... and {len(problems) - max_errors} more" if len(problems) > max_errors else ""
        raise DatasetFormatError(
            f"{path}: invalid COCO annotation file ({len(problems)} problem(s)):\n  - {shown}{more}"
        )
    return data


def register_coco_dataset(
    name: str,
    json_file: "os.PathLike[str] | str",
    image_root: "os.PathLike[str] | str",
    metadata: Optional[dict] = None,
    *,
    check_image_files: bool = False,
) -> None:
    """Validate ``json_file`` now, then register ``name`` with detectron2's
    ``register_coco_instances`` (metadata: json_file, image_root, evaluator_type "coco",
    thing_classes once loaded). Use the name in cfg.DATASETS.TRAIN / TEST."""
    from detectron2.data.datasets import register_coco_instances

    validate_coco_json(json_file, image_root, check_image_files=check_image_files)
    register_coco_instances(name, dict(metadata or {}), os.fspath(json_file), os.fspath(image_root))
