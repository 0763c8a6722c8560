"""Classification datasets in both on-disk formats, and clear errors for bad input."""
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from sact_det.classification import get_classification_cfg
from sact_det.data.classification import (ClassificationDataError, Cifar10Dataset, ImageFolderDataset,
                                          build_classification_dataset, build_transform, write_cifar10_batch)
from tests.test_classification_model import one_thread  # noqa: F401  (autouse fixture)



def make_cifar(root, n_train=(6, 4), n_test=5, names=("a", "b", "c"), seed=0):
    """Two train batches + a test batch of random 32x32 images with labels 0..len(names)-1."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    for i, n in enumerate(n_train, start=1):
        write_cifar10_batch(os.path.join(root, f"data_batch_{i}"), rng.integers(0, 256, (n, 32, 32, 3)),
                            rng.integers(0, len(names), n), names)
    write_cifar10_batch(os.path.join(root, "test_batch"), rng.integers(0, 256, (n_test, 32, 32, 3)),
                        np.arange(n_test) % len(names), names)
    return root


def make_folder(root, classes=("n01", "n02"), per_class=3, splits=("train", "val"), size=(20, 24)):
    rng = np.random.default_rng(0)
    for split in splits:
        for c in classes:
            os.makedirs(os.path.join(root, split, c), exist_ok=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8)
                Image.fromarray(arr).save(os.path.join(root, split, c, f"img{i}.JPEG"), format="JPEG")
    return root


def test_cifar_pickle_roundtrip(tmp_path):
    root = str(tmp_path / "cifar")
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    os.makedirs(root)
    write_cifar10_batch(os.path.join(root, "data_batch_1"), imgs, [2, 0, 1], ["u", "v", "w"])
    ds = Cifar10Dataset(root, "train")
    assert len(ds) == 3 and ds.class_names == ["u", "v", "w"]
    img, label = ds[0]
    assert label == 2 and np.array_equal(np.asarray(img), imgs[0])
    # the on-disk layout is CIFAR's: R plane, G plane, B plane, row-major
    with open(os.path.join(root, "data_batch_1"), "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert raw[b"data"][1, 1024 + 32 * 3 + 5] == imgs[1, 3, 5, 1]


def test_cifar_splits_and_transform(tmp_path):
    root = make_cifar(str(tmp_path / "cifar"))
    cfg = get_classification_cfg()
    cfg.SACT_CLS.DATA.ROOT = root
    train = build_classification_dataset(cfg, "train")
    test = build_classification_dataset(cfg, "test", class_names=train.class_names)
    assert (len(train), len(test)) == (10, 5)
    x = build_transform(cfg, train=True)(train[0][0])
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    # normalisation: a pixel of value 255 * mean becomes 0
    mean = cfg.SACT_CLS.INPUT.PIXEL_MEAN
    flat = Image.fromarray(np.full((32, 32, 3), [int(round(m)) for m in mean], dtype=np.uint8))
    assert build_transform(cfg, train=False)(flat).abs().max() < 0.01


def test_image_folder(tmp_path):
    root = make_folder(str(tmp_path / "inet"))
    train = ImageFolderDataset(root, "train")
    assert train.class_names == ["n01", "n02"] and len(train) == 6
    img, label = train[4]
    assert label == 1 and img.size == (24, 20) and img.mode == "RGB"
    cfg = get_classification_cfg()
    cfg.SACT_CLS.DATA.FORMAT, cfg.SACT_CLS.DATA.ROOT = "imagenet", root
    cfg.SACT_CLS.INPUT.CROP_SIZE, cfg.SACT_CLS.INPUT.RESIZE, cfg.SACT_CLS.INPUT.RANDOM_RESIZED_CROP = 16, 18, True
    val = build_classification_dataset(cfg, "val", class_names=train.class_names)
    assert build_transform(cfg, False)(val[0][0]).shape == (3, 16, 16)
    assert build_transform(cfg, True)(train[0][0]).shape == (3, 16, 16)


def test_corrupt_image_names_the_file(tmp_path):
    root = make_folder(str(tmp_path / "inet"))
    bad = os.path.join(root, "train", "n02", "img1.JPEG")
    with open(bad, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 not really a jpeg")
    ds = ImageFolderDataset(root, "train")
    with pytest.raises(ClassificationDataError, match="img1.JPEG"):
        ds[4]
    ds[3]  # the other images still load


def test_empty_class_folder_names_the_folder(tmp_path):
    root = make_folder(str(tmp_path / "inet"))
    os.makedirs(os.path.join(root, "train", "n03"))
    with pytest.raises(ClassificationDataError, match=r"n03 has no images"):
        ImageFolderDataset(root, "train")


def test_val_classes_must_match_train(tmp_path):
    root = make_folder(str(tmp_path / "inet"))
    make_folder(root, classes=("n01", "n09"), splits=("val2",))
    with pytest.raises(ClassificationDataError, match="val2"):
        ImageFolderDataset(root, "val2", class_names=["n01", "n02"])


def test_missing_split_folder(tmp_path):
    with pytest.raises(ClassificationDataError, match="does not exist"):
        ImageFolderDataset(str(tmp_path), "train")


@pytest.mark.parametrize("content, message", [
    (b"\x80\x04 garbage", "not a CIFAR-10 python pickle batch"),
    (pickle.dumps([1, 2, 3]), "expected a pickled dict"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}), "no 'labels' entry"),
    (pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}), r"shape \(N, 3072\)"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}), "2 images but 1 labels"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}), r"labels must lie in \[0, 10\)"),
])
def test_malformed_pickle_names_the_file(tmp_path, content, message):
    root = tmp_path / "cifar"
    root.mkdir()
    (root / "data_batch_1").write_bytes(content)
    with pytest.raises(ClassificationDataError, match=message) as err:
        Cifar10Dataset(str(root), "train")
    assert "data_batch_1" in str(err.value)


def test_missing_cifar_batches(tmp_path):
    with pytest.raises(ClassificationDataError, match="test_batch"):
        Cifar10Dataset(str(tmp_path), "test")
