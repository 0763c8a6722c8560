"""CAT2000 saliency dataset (Borji & Itti 2015) in detectron2's DatasetCatalog.

On-disk layout (root = $SACT_CAT2000_ROOT, else $DETECTRON2_DATASETS/CAT2000, else datasets/CAT2000)::

    trainSet/Stimuli/<Category>/NNN.jpg        1920x1080 images
    trainSet/FIXATIONMAPS/<Category>/NNN.jpg   blurred 8-bit fixation maps
    trainSet/FIXATIONLOCS/<Category>/NNN.mat   variable ``fixLocs``: binary fixation map
    testSet/Stimuli/<Category>/NNN.jpg         stimuli only

Paths containing "Output" are ignored. Registration is lazy: importing this module touches no
disk; the folder is read when ``DatasetCatalog.get("cat2000_train")`` is called.

Dataset dicts: ``file_name``, ``image_id`` ("<Category>/<stem>"), ``category``, ``height``,
``width``; train split also ``fixation_file`` (.mat) and ``fixation_map_file`` (image).
"""
import os
from typing import Dict, List, Optional

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

__all__ = [
    "CAT2000_CATEGORIES",
    "ROOT_ENV",
    "cat2000_root",
    "load_cat2000",
    "register_cat2000",
    "load_fixation_locs",
    "load_fixation_map",
    "write_synthetic_cat2000",
]

ROOT_ENV = "SACT_CAT2000_ROOT"
CAT2000_CATEGORIES = [
    "Action", "Affective", "Art", "BlackWhite", "Cartoon", "Fractal", "Indoor", "Inverted",
    "Jumbled", "LineDrawing", "LowResolution", "Noisy", "Object", "OutdoorManMade",
    "OutdoorNatural", "Pattern", "Random", "Satelite", "Sketch", "Social",
]
SPLIT_DIRS = {"train": "trainSet", "test": "testSet"}
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
_LAYOUT_HINT = (
    "expected <root>/trainSet/{Stimuli,FIXATIONMAPS,FIXATIONLOCS}/<Category>/ and "
    "<root>/testSet/Stimuli/<Category>/ (see datasets/README.md)"
)


def cat2000_root() -> str:
    """Dataset root from $SACT_CAT2000_ROOT, else $DETECTRON2_DATASETS/CAT2000."""
    env = os.environ.get(ROOT_ENV)
    if env:
        return env
    return os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "CAT2000")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTS)


def _list_stimuli(stim_dir: str) -> Dict[str, List[str]]:
    """{category: sorted image file names} of one Stimuli folder, skipping "Output" paths."""
    out: Dict[str, List[str]] = {}
    for cat in sorted(os.listdir(stim_dir)):
        cat_dir = os.path.join(stim_dir, cat)
        if "Output" in cat or not os.path.isdir(cat_dir):
            continue
        names = sorted(n for n in os.listdir(cat_dir) if _is_image(n) and "Output" not in n)
        if names:
            out[cat] = names
    return out


def _find_image(folder: str, stem: str) -> Optional[str]:
    for ext in IMAGE_EXTS + tuple(e.upper() for e in IMAGE_EXTS):
        path = os.path.join(folder, stem + ext)
        if os.path.isfile(path):
            return path
    return None


def _missing_error(what: str, missing: List[str], total: int) -> FileNotFoundError:
    shown = "\n  ".join(missing[:5])
    more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
    return FileNotFoundError(
        f"CAT2000 is incomplete: {len(missing)} of {total} stimuli have no {what}:\n  {shown}{more}"
    )


def load_cat2000(root: str, split: str) -> List[dict]:
    """Dataset dicts of one split ("train" or "test") of the CAT2000 folder at ``root``."""
    if split not in SPLIT_DIRS:
        raise ValueError(f"CAT2000 split must be one of {sorted(SPLIT_DIRS)}, got {split!r}")
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"CAT2000 root {root!r} does not exist; set ${ROOT_ENV} (or $DETECTRON2_DATASETS, "
            f"which holds CAT2000/); {_LAYOUT_HINT}"
        )
    split_dir = os.path.join(root, SPLIT_DIRS[split])
    stim_dir = os.path.join(split_dir, "Stimuli")
    if not os.path.isdir(stim_dir):
        raise FileNotFoundError(f"CAT2000 folder {stim_dir!r} is missing; {_LAYOUT_HINT}")
    stimuli = _list_stimuli(stim_dir)
    if not stimuli:
        raise FileNotFoundError(f"CAT2000 folder {stim_dir!r} has no <Category>/ with images")
    fix_dir = os.path.join(split_dir, "FIXATIONLOCS")
    map_dir = os.path.join(split_dir, "FIXATIONMAPS")
    if split == "train":
        for d in (fix_dir, map_dir):
            if not os.path.isdir(d):
                raise FileNotFoundError(f"CAT2000 folder {d!r} is missing; {_LAYOUT_HINT}")

    dicts: List[dict] = []
    missing_locs: List[str] = []
    missing_maps: List[str] = []
    for cat, names in stimuli.items():
        for name in names:
            stem = os.path.splitext(name)[0]
            file_name = os.path.join(stim_dir, cat, name)
            with Image.open(file_name) as im:
                width, height = im.size
            record = {
                "file_name": file_name,
                "image_id": f"{cat}/{stem}",
                "category": cat,
                "height": height,
                "width": width,
            }
            if split == "train":
                loc = os.path.join(fix_dir, cat, stem + ".mat")
                if not os.path.isfile(loc):
                    missing_locs.append(loc)
                fmap = _find_image(os.path.join(map_dir, cat), stem)
                if fmap is None:
                    missing_maps.append(os.path.join(map_dir, cat, stem + ".jpg"))
                record.update(fixation_file=loc, fixation_map_file=fmap)
            dicts.append(record)
    if missing_locs:
        raise _missing_error("FIXATIONLOCS .mat file", missing_locs, len(dicts))
    if missing_maps:
        raise _missing_error("FIXATIONMAPS image", missing_maps, len(dicts))
    return dicts


def load_fixation_locs(path: str) -> np.ndarray:
    """The ``fixLocs`` binary fixation map (H, W) of a CAT2000 .mat file, as stored."""
    from scipy.io import loadmat  # lazy: scipy is only needed for CAT2000

    try:
        mat = loadmat(path)
    except NotImplementedError as e:  # MATLAB v7.3 (HDF5) files
        raise ValueError(f"{path}: cannot read this .mat version with scipy ({e})") from e
    except Exception as e:  # scipy raises MatReadError, IndexError, ... on garbage
        raise ValueError(f"{path}: not a readable .mat file ({e})") from e
    if "fixLocs" not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise KeyError(f"{path}: no variable 'fixLocs' (found {keys})")
    locs = np.asarray(mat["fixLocs"])
    if locs.ndim != 2:
        raise ValueError(f"{path}: fixLocs must be 2-D (H, W), got shape {locs.shape}")
    return locs


def load_fixation_map(path: str) -> np.ndarray:
    """A FIXATIONMAPS image as a float64 (H, W) map in [0, 1] (colour images averaged)."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("L"), dtype=np.float64)
    return arr / 255.0


def register_cat2000(name: str, split: str, root: Optional[str] = None) -> None:
    """Register one split lazily; ``root=None`` resolves :func:`cat2000_root` at load time."""
    if split not in SPLIT_DIRS:
        raise ValueError(f"CAT2000 split must be one of {sorted(SPLIT_DIRS)}, got {split!r}")
    DatasetCatalog.register(name, lambda: load_cat2000(root or cat2000_root(), split))
    MetadataCatalog.get(name).set(evaluator_type="saliency", split=split)


def write_synthetic_cat2000(
    root: str,
    categories=("Action", "Art"),
    images_per_category: int = 2,
    size=(64, 36),
    test_images_per_category: int = 1,
    seed: int = 0,
) -> str:
    """Write a tiny folder in the CAT2000 layout (for tests and dry runs); returns ``root``.

    Each image (width, height = ``size``) shows a few bright discs on a dark background; the
    fixations fall on the discs, FIXATIONMAPS are the blurred fixations. A stray
    ``Stimuli/<Category>/Output/`` folder checks that such paths are ignored.
    """
    import cv2
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    w, h = size
    for split, n_img in (("train", images_per_category), ("test", test_images_per_category)):
        base = os.path.join(root, SPLIT_DIRS[split])
        for cat in categories:
            for sub in ("Stimuli", "FIXATIONMAPS", "FIXATIONLOCS") if split == "train" else ("Stimuli",):
                os.makedirs(os.path.join(base, sub, cat), exist_ok=True)
            os.makedirs(os.path.join(base, "Stimuli", cat, "Output"), exist_ok=True)
            Image.new("RGB", (8, 8)).save(os.path.join(base, "Stimuli", cat, "Output", "001.jpg"))
            for i in range(1, n_img + 1):
                img = np.full((h, w, 3), 30, np.uint8) + rng.integers(0, 20, (h, w, 3), dtype=np.uint8)
                fix = np.zeros((h, w), np.float64)
                for _ in range(2):
                    cx, cy = int(rng.integers(w // 6, w - w // 6)), int(rng.integers(h // 6, h - h // 6))
                    r = max(2, min(w, h) // 8)
                    cv2.circle(img, (cx, cy), r, tuple(int(c) for c in rng.integers(150, 255, 3)), -1)
                    for _ in range(6):
                        fx = int(np.clip(cx + rng.integers(-r, r + 1), 0, w - 1))
                        fy = int(np.clip(cy + rng.integers(-r, r + 1), 0, h - 1))
                        fix[fy, fx] = 1.0
                stem = f"{i:03d}"
                Image.fromarray(img).save(os.path.join(base, "Stimuli", cat, stem + ".jpg"))
                if split == "train":
                    savemat(os.path.join(base, "FIXATIONLOCS", cat, stem + ".mat"), {"fixLocs": fix})
                    blur = cv2.GaussianBlur(fix, (0, 0), sigmaX=max(1.0, 0.03 * w))
                    fmap = np.uint8(np.round(255 * blur / blur.max()))
                    Image.fromarray(fmap).save(os.path.join(base, "FIXATIONMAPS", cat, stem + ".jpg"))
    return root


def _register_all() -> None:
    for split in SPLIT_DIRS:
        name = f"cat2000_{split}"
        if name not in DatasetCatalog.list():
            register_cat2000(name, split)


_register_all()
