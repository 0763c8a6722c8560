"""Classification datasets: ImageNet folder layout and CIFAR-10 python pickle batches.

- ImageNet: ``<root>/<split>/<class>/<image>`` (e.g. train/n01440764/x.JPEG); classes are the
  sorted sub-folder names of the training split; every other split must have the same classes.
- CIFAR-10: ``<root>/data_batch_1..5`` (train), ``<root>/test_batch`` (test), optional
  ``<root>/batches.meta`` (label_names). Each batch is a pickled dict with ``data`` (N, 3072)
  uint8 (R plane, G plane, B plane of 32x32) and ``labels`` (N ints).

Bad input raises :class:`ClassificationDataError` naming the file. Items are (PIL RGB image, label).
"""
import glob
import os
import pickle
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

__all__ = ["ClassificationDataError", "ImageFolderDataset", "Cifar10Dataset", "build_classification_dataset",
           "build_transform", "write_cifar10_batch", "IMAGE_EXTENSIONS"]

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


def build_transform(cfg, train: bool):
    """torchvision transform: PIL RGB -> normalised (3,H,W) float tensor (cfg.SACT_CLS.INPUT)."""
    import torchvision.transforms as T

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
        return ImageFolderDataset(d.ROOT, split, class_names)
    if d.FORMAT == "cifar10":
        ds = Cifar10Dataset(d.ROOT, split)
        if class_names is not None and list(class_names) != ds.class_names:
            raise ClassificationDataError(f"{d.ROOT}: split {split!r} class names differ from the training split")
        return ds
    raise ValueError(f"cfg.SACT_CLS.DATA.FORMAT must be 'cifar10' or 'imagenet', got {d.FORMAT!r}")
