"""Embedded demo detection data set: seeded shapes on cluttered backgrounds, COCO json + JPEG.

Six shape classes of varied size (COCO small / medium / large) are pasted, without overlap,
on textured backgrounds (gradients, blotches, stripes, noise) strewn with small distractor
clutter (lines, dots) that is not annotated. Every object has a COCO polygon; its pixel mask is
pycocotools' rasterisation of that polygon, so json, boxes, areas and pixels agree exactly.

Splits are registered on import as ``sact_demo_{train,val,tiny_train,tiny_val}`` and generated
lazily (first ``DatasetCatalog.get``) into ``$SACT_DEMO_DIR`` (default ``~/.cache/sact_det/demo``),
``<root>/<split>/{annotations.json, images/, manifest.json}``. A split is regenerated when missing
or when its manifest hash (generator version + DemoSpec) differs. Generation writes into a
temporary folder that is renamed into place, under a file lock, so a killed run never leaves a
half data set that looks complete.
"""
import functools
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image, ImageDraw

GENERATOR_VERSION = 2
CLASS_NAMES: Tuple[str, ...] = ("circle", "square", "triangle", "ring", "cross", "star")
CLASS_COLORS: Tuple[Tuple[int, int, int], ...] = (
    (220, 50, 40), (40, 90, 220), (40, 170, 60), (235, 200, 30), (200, 50, 200), (30, 200, 210),
)
ENV_DIR = "SACT_DEMO_DIR"


@dataclass(frozen=True)
class DemoSpec:
    """Parameters of one generated split (all of them enter the manifest hash)."""

    num_images: int
    seed: int
    image_size: int = 256  # square images, pixels
    min_objects: int = 1
    max_objects: int = 6
    min_object_frac: float = 0.06  # object diameter range, fraction of image_size (log-uniform)
    max_object_frac: float = 0.75
    max_distractors: int = 40
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        checks = {"num_images": self.num_images >= 0, "image_size": self.image_size >= 32,
                  "min_objects": 0 <= self.min_objects <= self.max_objects,
                  "max_object_frac": 0 < self.min_object_frac <= self.max_object_frac <= 0.9,
                  "jpeg_quality": 1 <= self.jpeg_quality <= 100}
        for key, ok in checks.items():
            if not ok:
                raise ValueError(f"DemoSpec: invalid {key} in {self}")

    def digest(self) -> str:
        text = json.dumps({"generator_version": GENERATOR_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


DEFAULT_SPECS: Dict[str, DemoSpec] = {
    "train": DemoSpec(num_images=500, seed=0),
    "val": DemoSpec(num_images=100, seed=1),
    "tiny_train": DemoSpec(num_images=24, seed=2),
    "tiny_val": DemoSpec(num_images=8, seed=3),
}


# ----------------------------------------------------------------------------- rendering
def _shape_polygon(cls: int, cx: float, cy: float, r: float, rng: np.random.Generator) -> np.ndarray:
    """(K, 2) xy vertices of class ``cls`` inside the circle (cx, cy, r)."""
    rot = rng.uniform(0, 2 * np.pi)
    name = CLASS_NAMES[cls]
    if name in ("circle", "ring"):
        t = np.linspace(0, 2 * np.pi, max(16, int(r)), endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t)], 1)
        if name == "ring":  # outer loop, seam, inner loop reversed: a zero-width slit, no hole needed
            inner = pts[::-1] * rng.uniform(0.45, 0.65)
            pts = np.concatenate([pts, pts[:1], inner[-1:], inner[:-1], inner[-1:]], 0)
        rot = 0.0
    elif name in ("square", "triangle"):  # regular polygon
        t = np.arange(4 if name == "square" else 3) * 2 * np.pi / (4 if name == "square" else 3)
        pts = np.stack([np.cos(t), np.sin(t)], 1)
    elif name == "cross":
        a = rng.uniform(0.22, 0.32)  # arm half-width; arm corners (1, +-a) scaled onto the circle
        arm = np.array([[1, -a], [1, a], [a, a]]) / np.sqrt(1 + a * a)
        pts = np.concatenate([_rot90(arm, k) for k in range(4)], 0)
    else:  # star
        t = np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.38, 0.5))
        pts = np.stack([np.cos(t), np.sin(t)], 1) * rad[:, None]
    c, s = np.cos(rot), np.sin(rot)
    pts = pts @ np.array([[c, s], [-s, c]])
    return pts * r + np.array([cx, cy])


def _rot90(pts: np.ndarray, k: int) -> np.ndarray:
    """(K, 2) points rotated by k * 90 degrees."""
    for _ in range(k):
        pts = np.stack([-pts[:, 1], pts[:, 0]], 1)
    return pts


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1]: gradient + low-frequency blotches + stripes + noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    ang = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(ang) * xx + np.sin(ang) * yy)[..., None]
    c0, c1 = rng.uniform(0.15, 0.85, (2, 3)).astype(np.float32)
    img = c0 + (c1 - c0) * (ramp - ramp.min()) / (np.ptp(ramp) + 1e-6)
    grid = rng.uniform(0, 255, (rng.integers(3, 9), rng.integers(3, 9), 3)).astype(np.uint8)
    blot = np.asarray(Image.fromarray(grid).resize((size, size), Image.BICUBIC), np.float32) / 255
    img += rng.uniform(0.1, 0.35) * (blot - 0.5)
    if rng.random() < 0.6:
        a, f = rng.uniform(0, np.pi), rng.uniform(4, 24)
        img += rng.uniform(0.05, 0.2) * np.sin(2 * np.pi * f * (np.cos(a) * xx + np.sin(a) * yy))[..., None]
    img += rng.normal(0, rng.uniform(0.01, 0.07), img.shape).astype(np.float32)
    return img


def _draw_distractors(img: Image.Image, rng: np.random.Generator, count: int) -> None:
    """Small unannotated clutter: short lines and dots of random colours."""
    draw, size = ImageDraw.Draw(img), img.size[0]
    for _ in range(count):
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        x, y = rng.uniform(0, size, 2)
        if rng.random() < 0.6:
            ln, a = rng.uniform(4, 0.08 * size + 6), rng.uniform(0, 2 * np.pi)
            draw.line([x, y, x + ln * np.cos(a), y + ln * np.sin(a)], fill=col, width=int(rng.integers(1, 3)))
        else:
            r = rng.uniform(0.5, 2.5)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=col)


def _object_fill(rng: np.random.Generator, cls: int, h: int, w: int) -> np.ndarray:
    """(h, w, 3) float32 texture of one object: class colour with brightness, stripes or shading."""
    color = np.array(CLASS_COLORS[cls], np.float32) / 255 * rng.uniform(0.75, 1.1)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = rng.integers(3)
    if kind == 0:
        tone = 1 + 0.08 * rng.standard_normal((h, w)).astype(np.float32)
    elif kind == 1:
        a, period = rng.uniform(0, np.pi), rng.uniform(4, 10)
        tone = 0.7 + 0.3 * (np.sin(2 * np.pi * (np.cos(a) * xx + np.sin(a) * yy) / period) > 0)
    else:
        a = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(a) * xx / max(w, 1) + np.sin(a) * yy / max(h, 1)
        tone = 0.65 + 0.45 * (ramp - ramp.min()) / (np.ptp(ramp) + 1e-6)
    return color * tone[..., None]


def render_image(spec: DemoSpec, index: int) -> Tuple[np.ndarray, List[dict]]:
    """Image ``index`` of a split: (H, W, 3) uint8 RGB and object dicts
    {"category_id" (1-based), "bbox" XYWH, "area", "segmentation" [polygon]}."""
    rng = np.random.default_rng([spec.seed, index])
    size = spec.image_size
    base = (np.clip(_background(rng, size), 0, 1) * 255).astype(np.uint8)
    pil = Image.fromarray(base)
    _draw_distractors(pil, rng, int(rng.integers(spec.max_distractors // 3, spec.max_distractors + 1)))
    img = np.asarray(pil, np.float32) / 255
    lo, hi = np.log(max(8.0, spec.min_object_frac * size)), np.log(spec.max_object_frac * size)
    placed: List[np.ndarray] = []
    objects: List[dict] = []
    n_obj = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    classes = rng.integers(len(CLASS_NAMES), size=n_obj)
    radii = np.sort(np.exp(rng.uniform(lo, hi, n_obj)))[::-1] / 2  # largest first: they need room
    for cls, r in zip(classes.tolist(), radii.tolist()):
        for attempt in range(40):
            r_try = max(4.0, r * 0.85 ** (attempt // 10))  # shrink after repeated collisions
            cx, cy = rng.uniform(r_try + 1, size - r_try - 1, 2)
            box = np.array([cx - r_try - 2, cy - r_try - 2, cx + r_try + 2, cy + r_try + 2])
            if all(box[0] >= p[2] or box[2] <= p[0] or box[1] >= p[3] or box[3] <= p[1] for p in placed):
                r = r_try
                break
        else:
            continue  # no free room for this object
        placed.append(box)
        poly = np.round(_shape_polygon(cls, cx, cy, r, rng), 2).ravel().tolist()
        rle = mask_util.merge(mask_util.frPyObjects([poly], size, size))
        area = float(mask_util.area(rle))
        if area == 0:
            continue
        x, y, w, h = (int(v) for v in mask_util.toBbox(rle))
        mask = mask_util.decode(rle)[y:y + h, x:x + w].astype(bool)
        crop = img[y:y + h, x:x + w]
        crop[mask] = _object_fill(rng, cls, h, w)[mask]
        objects.append({"category_id": cls + 1, "bbox": [float(x), float(y), float(w), float(h)],
                        "area": area, "segmentation": [poly], "iscrowd": 0})
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), objects


def generate_demo_dataset(out_dir: Union[str, Path], spec: DemoSpec) -> Path:
    """Write ``out_dir/images/NNNNNN.jpg``, ``out_dir/annotations.json`` (COCO) and
    ``out_dir/manifest.json`` (written last). Deterministic given ``spec``. Returns the json path."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(spec.num_images):
        pixels, objects = render_image(spec, i)
        file_name = f"{i:06d}.jpg"
        Image.fromarray(pixels).save(out_dir / "images" / file_name, quality=spec.jpeg_quality)
        size = spec.image_size
        images.append({"id": i + 1, "file_name": file_name, "height": size, "width": size})
        for obj in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, **obj})
    coco = {
        "info": {"description": "sact_det demo shapes", "version": str(GENERATOR_VERSION)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": n, "supercategory": "shape"} for k, n in enumerate(CLASS_NAMES)],
    }
    json_file = out_dir / "annotations.json"
    json_file.write_text(json.dumps(coco, separators=(",", ":")))
    manifest = {"generator_version": GENERATOR_VERSION, "spec": asdict(spec), "hash": spec.digest()}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return json_file


# ----------------------------------------------------------------------------- cache
def demo_root() -> Path:
    """Cache root: ``$SACT_DEMO_DIR`` or ``~/.cache/sact_det/demo``."""
    return Path(os.environ.get(ENV_DIR) or Path.home() / ".cache" / "sact_det" / "demo")


def _is_current(split_dir: Path, spec: DemoSpec) -> bool:
    try:
        manifest = json.loads((split_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("hash") == spec.digest() and (split_dir / "annotations.json").is_file()


def ensure_demo_split(root: Union[str, Path], split: str, spec: DemoSpec) -> Path:
    """Return ``root/split``, generating it first if missing or stale (atomic, file-locked)."""
    from iopath.common.file_io import file_lock

    root, target = Path(root), Path(root) / split
    if _is_current(target, spec):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(str(root / f".{split}")):
        if _is_current(target, spec):  # another process finished it while we waited
            return target
        for stale in root.glob(f".{split}.tmp-*"):  # left by killed runs; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{split}.tmp-", dir=root))
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        try:
            generate_demo_dataset(tmp, spec)
            if target.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{split}.tmp-old-", dir=root))
                target.rename(old / split)
            tmp.rename(target)
        finally:
            for leftover in root.glob(f".{split}.tmp-*"):
                shutil.rmtree(leftover, ignore_errors=True)
    return target


def load_demo_split(name: str, root: Union[str, Path], split: str, spec: DemoSpec) -> List[dict]:
    """DatasetCatalog loader: ensure the split exists, then detectron2's ``load_coco_json``."""
    from detectron2.data.datasets import load_coco_json

    split_dir = ensure_demo_split(root, split, spec)
    return load_coco_json(str(split_dir / "annotations.json"), str(split_dir / "images"), name)


def register_demo_datasets(
    root: Optional[Union[str, Path]] = None, specs: Optional[Mapping[str, DemoSpec]] = None
) -> Dict[str, Path]:
    """(Re-)register ``sact_demo_<split>`` for each split of ``specs`` (default DEFAULT_SPECS)
    under ``root`` (default :func:`demo_root`). Nothing is generated here. Returns name -> dir."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    root = Path(root) if root is not None else demo_root()
    out = {}
    for split, spec in (specs or DEFAULT_SPECS).items():
        name, split_dir = f"sact_demo_{split}", root / split
        if name in DatasetCatalog:
            DatasetCatalog.remove(name)
        if name in MetadataCatalog:
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, functools.partial(load_demo_split, name, root, split, spec))
        MetadataCatalog.get(name).set(
            thing_classes=list(CLASS_NAMES),
            thing_colors=[list(c) for c in CLASS_COLORS],
            thing_dataset_id_to_contiguous_id={k + 1: k for k in range(len(CLASS_NAMES))},
            json_file=str(split_dir / "annotations.json"),
            image_root=str(split_dir / "images"),
            evaluator_type="coco",
        )
        out[name] = split_dir
    return out


def ensure_registered(names: Sequence[str]) -> None:
    """Register the demo splits again if one of ``names`` is a ``sact_demo_*`` name missing from
    DatasetCatalog (e.g. removed by another user of the catalog); other names are left alone."""
    from detectron2.data import DatasetCatalog

    if any(n.startswith("sact_demo_") and n not in DatasetCatalog for n in names):
        register_demo_datasets()


def prepare_demo_data(name: str) -> Path:
    """Generate the registered demo split ``name`` now (e.g. before building a COCOEvaluator)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    DatasetCatalog.get(name)
    return Path(MetadataCatalog.get(name).json_file)


def object_mask(record: dict) -> np.ndarray:
    """(H, W) bool union of the object masks of one dataset dict (e.g. as saliency fixations)."""
    h, w = record["height"], record["width"]
    mask = np.zeros((h, w), bool)
    for ann in record.get("annotations", []):
        segm = ann.get("segmentation")
        if segm:
            rles = mask_util.frPyObjects(segm, h, w) if isinstance(segm, list) else [segm]
            mask |= mask_util.decode(mask_util.merge(rles)).astype(bool)
    return mask
