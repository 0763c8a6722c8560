"""The generated "does it learn?" task and its ponder-on-object measure."""
import numpy as np
import pytest
import torch

from sact_det.classification.demo_task import CLASS_NAMES, generate_split, ponder_on_object, write_demo_dataset
from sact_det.data.classification import Cifar10Dataset
from sact_det.modeling.core.ponder_maps import sum_ponder_maps
from tests.helpers import disable_halting
from tests.test_classification_model import cifar_cfg, one_thread  # noqa: F401  (autouse fixture)
from sact_det.modeling.meta_arch.classifier import build_classifier



def test_generated_split_is_seeded_balanced_and_masked():
    images, labels, masks = generate_split(12, seed=4)
    again = generate_split(12, seed=4)
    assert np.array_equal(images, again[0]) and np.array_equal(labels, again[1])
    assert images.shape == (12, 32, 32, 3) and images.dtype == np.uint8 and masks.shape == (12, 32, 32)
    assert sorted(np.bincount(labels, minlength=4)) == [3, 3, 3, 3]
    area = masks.reshape(12, -1).sum(1)
    assert area.min() >= 30 and area.max() <= 17 * 17  # objects of 11-17 px
    for img, m in zip(images, masks):  # the object is drawn in one colour over its whole mask
        assert len(np.unique(img[m], axis=0)) == 1


def test_written_in_cifar_format(tmp_path):
    root = write_demo_dataset(str(tmp_path), num_train=8, num_test=4, seed=1)
    train, test = Cifar10Dataset(root, "train"), Cifar10Dataset(root, "test")
    assert (len(train), len(test)) == (8, 4) and train.class_names == list(CLASS_NAMES)
    assert np.load(tmp_path / "test_masks.npy").shape == (4, 32, 32)


def test_summed_map_upsamples_each_stage():
    rho2 = torch.ones(1, 1, 32, 32)
    rho3 = torch.arange(4.0).reshape(1, 1, 2, 2).repeat_interleave(8, 2).repeat_interleave(8, 3)  # 16x16
    m = sum_ponder_maps([rho2[:, 0], rho3[:, 0]], size=(32, 32))
    assert m.shape == (1, 32, 32)
    assert m[0, 0, 0] == 1 and m[0, 31, 31] == 4 and m[0, 0, 31] == 2


def test_constant_ponder_favours_nothing():
    model = build_classifier(cifar_cfg("sact", 2, 4), 4)
    disable_halting(model)  # rho = L + 1 everywhere
    images = torch.randn(6, 3, 32, 32)
    masks = np.zeros((6, 32, 32), bool)
    masks[:, 8:20, 8:20] = True
    out = ponder_on_object(model, images, masks, batch_size=4)
    assert out["total"]["object"] == pytest.approx(9.0) and out["total"]["background"] == pytest.approx(9.0)
    assert out["images_object_above_background"] == 0.0
