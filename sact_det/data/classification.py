"""Classification datasets: ImageNet folder layout and CIFAR-10 python pickle batches.

- ImageNet: ``<root>/<split>/<class>/<image>`` (e.g. train/n01440764/x.JPEG); classes are the
  sorted sub-folder names of the training split; every other split must have the same classes.
- CIFAR-10: ``<root>/data_batch_1..5`` (train), ``<root>/test_batch`` (test), optional
  ``<root>/batches.meta`` (label_names). Each batch is a pickled dict with ``data`` (N, 3072)
  uint8 (R plane, G plane, B plane of 32x32) and ``labels`` (N ints).

Bad input raises :class:`ClassificationDataError` naming the file. Items are (PIL RGB image, label);
with cfg.SACT_CLS.BACKGROUND_CLASS the labels are shifted by 1 (class 0 = background, as the original
ImageNet models).

Transforms (:func:`build_transform`): detectron2-variant models take mean/std-normalised pixels;
cfg.MODEL.SACT.VARIANT original models take the original code's inputs: ImageNet [0, 1] -> central
crop (CENTRAL_FRACTION) -> TF bilinear resize to CROP_SIZE -> (x - 0.5) * 2; CIFAR per-image
standardisation of the 0-255 pixels.
"""
import math
import glob
import os
import pickle
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

__all__ = ["ClassificationDataError", "ImageFolderDataset", "Cifar10Dataset", "build_classification_dataset",
           "build_transform", "write_cifar10_batch", "IMAGE_EXTENSIONS", "per_image_standardization",
           "tf_central_crop", "tf_resize_bilinear", "OriginalImageNetEval"]

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")


class ClassificationDataError(ValueError):
    """A dataset file or folder is missing, empty or unreadable (the message names it)."""


class ImageFolderDataset(Dataset):
    """ImageNet-style folder dataset; ``class_names`` (from the train split) fixes the label order."""

    def __init__(self, root: str, split: str, class_names: Optional[Sequence[str]] = None) -> None:
        self.folder = os.path.join(root, split)
        if not os.path.isdir(self.folder):
            raise ClassificationDataError(
                f"dataset folder {self.folder} does not exist (expected <root>/{split}/<class>/<image>)")
        found = sorted(d.name for d in os.scandir(self.folder) if d.is_dir())
        if not found:
            raise ClassificationDataError(f"dataset folder {self.folder} has no class sub-folders")
        if class_names is not None and list(class_names) != found:
            missing = sorted(set(class_names) - set(found))[:5]
            extra = sorted(set(found) - set(class_names))[:5]
            raise ClassificationDataError(
                f"class folders of {self.folder} differ from the training classes "
                f"(missing e.g. {missing}, extra e.g. {extra})")
        self.class_names: List[str] = found
        self.samples: List[Tuple[str, int]] = []
        for label, name in enumerate(found):
            class_dir = os.path.join(self.folder, name)
            files = sorted(f for f in os.listdir(class_dir) if f.lower().endswith(IMAGE_EXTENSIONS))
            if not files:
                raise ClassificationDataError(
                    f"class folder {class_dir} has no images (extensions {', '.join(IMAGE_EXTENSIONS)})")
            self.samples.extend((os.path.join(class_dir, f), label) for f in files)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[Image.Image, int]:
        path, label = self.samples[index]
        try:
            with Image.open(path) as img:
                return img.convert("RGB"), label
        except Exception as e:  # PIL raises several types for truncated / non-image files
            raise ClassificationDataError(f"cannot read image {path}: {type(e).__name__}: {e}") from e


def _get(d: dict, key: str, path: str) -> Any:
    for k in (key, key.encode()):
        if k in d:
            return d[k]
    raise ClassificationDataError(f"{path}: CIFAR-10 batch has no {key!r} entry (keys: {list(d)[:6]})")


def _load_pickle(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="bytes")
    except Exception as e:
        raise ClassificationDataError(f"{path} is not a CIFAR-10 python pickle batch: {type(e).__name__}: {e}") from e
    if not isinstance(obj, dict):
        raise ClassificationDataError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return obj


class Cifar10Dataset(Dataset):
    """CIFAR-10 python batches; split "train" = data_batch_*, "test" = test_batch (or a batch file name)."""

    def __init__(self, root: str, split: str) -> None:
        if not os.path.isdir(root):
            raise ClassificationDataError(f"CIFAR-10 folder {root} does not exist")
        if split == "train":
            files = sorted(glob.glob(os.path.join(root, "data_batch_*")))
        else:
            name = "test_batch" if split == "test" else split
            files = [os.path.join(root, name)] if os.path.isfile(os.path.join(root, name)) else []
        if not files:
            raise ClassificationDataError(f"no CIFAR-10 batch for split {split!r} in {root} "
                                          "(expected data_batch_1..5 for train, test_batch for test)")
        self.class_names = self._read_meta(root)
        images, labels = [], []
        for path in files:
            batch = _load_pickle(path)
            data = np.asarray(_get(batch, "data", path))
            lab = np.asarray(_get(batch, "labels", path), dtype=np.int64).reshape(-1)
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
                raise ClassificationDataError(
                    f"{path}: 'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}")
            if len(lab) != len(data):
                raise ClassificationDataError(f"{path}: {len(data)} images but {len(lab)} labels")
            if len(lab) and (lab.min() < 0 or lab.max() >= len(self.class_names)):
                raise ClassificationDataError(
                    f"{path}: labels must lie in [0, {len(self.class_names)}), got [{lab.min()}, {lab.max()}]")
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(lab)
        self.images = np.ascontiguousarray(np.concatenate(images))  # (N,32,32,3) uint8
        self.labels = np.concatenate(labels)
        self.files = files

    @staticmethod
    def _read_meta(root: str) -> List[str]:
        path = os.path.join(root, "batches.meta")
        if not os.path.isfile(path):
            return [str(i) for i in range(10)]
        names = _get(_load_pickle(path), "label_names", path)
        return [n.decode() if isinstance(n, bytes) else str(n) for n in names]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Tuple[Image.Image, int]:
        return Image.fromarray(self.images[index]), int(self.labels[index])


def write_cifar10_batch(path: str, images: np.ndarray, labels: Sequence[int], label_names: Optional[Sequence[str]] = None
                        ) -> None:
    """Write (N,32,32,3) uint8 images in the CIFAR-10 pickle format (and batches.meta if names given)."""
    images = np.asarray(images, dtype=np.uint8)
    if images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise ValueError(f"CIFAR images must be (N,32,32,3) uint8, got {images.shape}")
    data = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
    with open(path, "wb") as f:
        pickle.dump({b"data": data, b"labels": [int(x) for x in labels]}, f)
    if label_names is not None:
        with open(os.path.join(os.path.dirname(path), "batches.meta"), "wb") as f:
            pickle.dump({b"label_names": [n.encode() for n in label_names]}, f)


def per_image_standardization(x: torch.Tensor) -> torch.Tensor:
    """TF ``per_image_standardization``: (x - mean) / max(std, 1/sqrt(N)) over all N values of (3,H,W) ``x``."""
    mean = x.mean()
    std = torch.sqrt(((x - mean) ** 2).mean())
    return (x - mean) / torch.clamp(std, min=1.0 / math.sqrt(x.numel()))


def tf_central_crop(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """TF ``central_crop`` of (C,H,W): start = int((n - n * fraction) / 2), size = n - 2 * start."""
    if fraction >= 1.0:
        return x
    h, w = x.shape[-2:]
    top, left = int((h - h * fraction) / 2), int((w - w * fraction) / 2)
    return x[..., top: h - top, left: w - left]


def tf_resize_bilinear(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """TF 1.x ``resize_bilinear(align_corners=False)`` of (C,H,W): source = dst * in / out (no
    half-pixel offset, unlike PyTorch's ``interpolate``), neighbours clamped to the image."""
    out = x
    for axis, (n_in, n_out) in zip((-2, -1), zip(x.shape[-2:], size)):
        if n_in == n_out:
            continue
        src = torch.arange(n_out, dtype=torch.float32) * (float(n_in) / float(n_out))
        lo = torch.floor(src).long().clamp(max=n_in - 1)
        hi = (lo + 1).clamp(max=n_in - 1)
        frac = src - lo.float()
        shape = [1] * out.dim()
        shape[axis] = n_out
        a, b = out.index_select(axis, lo), out.index_select(axis, hi)
        out = a + (b - a) * frac.view(shape)
    return out


def _to_float_255(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32).copy()).permute(2, 0, 1)


class OriginalImageNetEval:
    """The original ImageNet evaluation input (inception_preprocessing.preprocess_for_eval):
    PIL RGB -> [0, 1] -> central crop ``fraction`` -> bilinear resize to ``size`` (0: keep) -> (x - 0.5) * 2."""

    def __init__(self, size: int, fraction: float) -> None:
        self.size, self.fraction = int(size), float(fraction)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        x = tf_central_crop(_to_float_255(image) * (1.0 / 255.0), self.fraction)
        if self.size:
            x = tf_resize_bilinear(x, (self.size, self.size))
        return (x - 0.5) * 2.0


def _original_transform(cfg, train: bool):
    """Input pipeline of the original SACT code (cfg.MODEL.SACT.VARIANT original)."""
    import torchvision.transforms as T

    inp, size = cfg.SACT_CLS.INPUT, int(cfg.SACT_CLS.INPUT.CROP_SIZE)
    if cfg.SACT_CLS.ARCH == "cifar":  # cifar_data_provider: pad to 32 + 2*PAD, random crop, flip; test crop_or_pad
        ops = []
        if train:
            ops.append(T.RandomCrop(size, padding=int(inp.PAD)) if int(inp.PAD) else T.RandomCrop(size))
            if inp.FLIP:
                ops.append(T.RandomHorizontalFlip())
        elif size:
            ops.append(T.CenterCrop(size))
        return T.Compose(ops + [_to_float_255, per_image_standardization])
    if not train:
        return OriginalImageNetEval(size, float(inp.CENTRAL_FRACTION))
    # inception_preprocessing.preprocess_for_train, approximated with torchvision (no object boxes):
    # distorted crop (area 5-100 %, aspect 3/4-4/3), flip, colour distortion, then [-1, 1]
    ops = [T.RandomResizedCrop(size, scale=(0.05, 1.0), ratio=(3 / 4, 4 / 3))]
    if inp.FLIP:
        ops.append(T.RandomHorizontalFlip())
    ops += [T.ColorJitter(brightness=32.0 / 255.0, contrast=0.5, saturation=0.5, hue=0.2), T.ToTensor(),
            T.Lambda(_to_minus_one_one)]
    return T.Compose(ops)


def _to_minus_one_one(x: torch.Tensor) -> torch.Tensor:
    return (x - 0.5) * 2.0


def build_transform(cfg, train: bool):
    """torchvision transform: PIL RGB -> normalised (3,H,W) float tensor (cfg.SACT_CLS.INPUT;
    the original networks' own preprocessing for cfg.MODEL.SACT.VARIANT original)."""
    import torchvision.transforms as T

    if cfg.MODEL.SACT.VARIANT == "original":
        return _original_transform(cfg, train)
    inp = cfg.SACT_CLS.INPUT
    size = int(inp.CROP_SIZE)
    ops = []
    if train:
        if inp.RANDOM_RESIZED_CROP:
            ops.append(T.RandomResizedCrop(size))
        else:
            ops.append(T.RandomCrop(size, padding=int(inp.PAD)) if int(inp.PAD) else T.CenterCrop(size))
        if inp.FLIP:
            ops.append(T.RandomHorizontalFlip())
    else:
        if int(inp.RESIZE):
            ops.append(T.Resize(int(inp.RESIZE)))
        ops.append(T.CenterCrop(size))
    ops += [T.ToTensor(), T.Normalize([m / 255.0 for m in inp.PIXEL_MEAN], [s / 255.0 for s in inp.PIXEL_STD])]
    return T.Compose(ops)


def build_classification_dataset(cfg, split: str, class_names: Optional[Sequence[str]] = None) -> Dataset:
    """The dataset of cfg.SACT_CLS.DATA for ``split`` (items: PIL image, label)."""
    d = cfg.SACT_CLS.DATA
    if d.FORMAT == "imagenet":
        ds = ImageFolderDataset(d.ROOT, split, class_names)
    elif d.FORMAT == "cifar10":
        ds = Cifar10Dataset(d.ROOT, split)
        if class_names is not None and list(class_names) != ds.class_names:
            raise ClassificationDataError(f"{d.ROOT}: split {split!r} class names differ from the training split")
    else:
        raise ValueError(f"cfg.SACT_CLS.DATA.FORMAT must be 'cifar10' or 'imagenet', got {d.FORMAT!r}")
    return ShiftedLabels(ds, 1) if cfg.SACT_CLS.BACKGROUND_CLASS else ds


class ShiftedLabels(Dataset):
    """A dataset whose labels are shifted by ``offset`` (class 0 = background); keeps ``class_names``."""

    def __init__(self, base: Dataset, offset: int) -> None:
        self.base, self.offset = base, int(offset)
        self.class_names = base.class_names

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> Tuple[Image.Image, int]:
        image, label = self.base[index]
        return image, label + self.offset
