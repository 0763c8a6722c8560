"""CAT2000 registration on a tiny generated folder in the CAT2000 layout."""
import os
import shutil

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

import sact_det  # noqa: F401
from detectron2.data import DatasetCatalog, MetadataCatalog
from sact_det.data.cat2000 import (
    load_cat2000,
    load_fixation_locs,
    load_fixation_map,
    register_cat2000,
    write_synthetic_cat2000,
)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cat") / "CAT2000")
    return write_synthetic_cat2000(root, categories=("Action", "Fractal"), images_per_category=2,
                                   size=(40, 24), test_images_per_category=1)


def test_train_split_dicts(tiny_root):
    dicts = load_cat2000(tiny_root, "train")
    assert [d["image_id"] for d in dicts] == ["Action/001", "Action/002", "Fractal/001", "Fractal/002"]
    assert all("Output" not in d["file_name"] for d in dicts)
    d = dicts[2]
    assert d["category"] == "Fractal" and (d["width"], d["height"]) == (40, 24)
    assert d["fixation_file"].endswith(os.path.join("trainSet", "FIXATIONLOCS", "Fractal", "001.mat"))
    locs = load_fixation_locs(d["fixation_file"])
    assert locs.shape == (24, 40) and set(np.unique(locs)) <= {0.0, 1.0} and locs.sum() > 0
    fmap = load_fixation_map(d["fixation_map_file"])
    assert fmap.shape == (24, 40) and 0.0 <= fmap.min() and fmap.max() <= 1.0
    # the blurred map peaks near fixations
    assert fmap[locs > 0].mean() > fmap.mean()


def test_test_split_has_stimuli_only(tiny_root):
    dicts = load_cat2000(tiny_root, "test")
    assert [d["image_id"] for d in dicts] == ["Action/001", "Fractal/001"]
    assert "fixation_file" not in dicts[0]


def test_registration_is_lazy_and_uses_env(tiny_root, monkeypatch, tmp_path):
    assert "cat2000_train" in DatasetCatalog.list() and "cat2000_test" in DatasetCatalog.list()
    assert MetadataCatalog.get("cat2000_train").evaluator_type == "saliency"
    monkeypatch.setenv("SACT_CAT2000_ROOT", tiny_root)
    assert len(DatasetCatalog.get("cat2000_train")) == 4
    monkeypatch.setenv("SACT_CAT2000_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="SACT_CAT2000_ROOT"):
        DatasetCatalog.get("cat2000_test")
    register_cat2000("cat2000_tiny_for_test", "test", root=tiny_root)
    assert len(DatasetCatalog.get("cat2000_tiny_for_test")) == 2


def test_registration_touches_no_disk(monkeypatch, tiny_root):
    def no_disk(*args, **kwargs):
        raise AssertionError("disk access during registration")

    for fn in ("listdir", "stat", "scandir"):
        monkeypatch.setattr(os, fn, no_disk)
    monkeypatch.setattr(os.path, "isdir", no_disk)
    monkeypatch.setattr(os.path, "isfile", no_disk)
    register_cat2000("cat2000_lazy_check", "train")  # what importing the module does per split
    monkeypatch.undo()
    monkeypatch.setenv("SACT_CAT2000_ROOT", tiny_root)  # the root is resolved at load time
    assert len(DatasetCatalog.get("cat2000_lazy_check")) == 4


def test_incomplete_folder_errors_name_what_is_missing(tiny_root, tmp_path):
    root = str(tmp_path / "broken")
    shutil.copytree(tiny_root, root)
    os.remove(os.path.join(root, "trainSet", "FIXATIONLOCS", "Action", "002.mat"))
    missing = r"(?s)1 of 4 stimuli have no FIXATIONLOCS .mat.*Action.002\.mat"
    with pytest.raises(FileNotFoundError, match=missing):
        load_cat2000(root, "train")
    shutil.rmtree(os.path.join(root, "trainSet", "FIXATIONMAPS"))
    with pytest.raises(FileNotFoundError, match=r"FIXATIONMAPS' is missing"):
        load_cat2000(root, "train")
    shutil.rmtree(os.path.join(root, "testSet"))
    with pytest.raises(FileNotFoundError, match=r"testSet.Stimuli' is missing"):
        load_cat2000(root, "test")
    with pytest.raises(ValueError, match="split must be one of"):
        load_cat2000(root, "val")


def test_bad_mat_files(tmp_path):
    savemat(str(tmp_path / "a.mat"), {"fixations": np.zeros((2, 2))})
    with pytest.raises(KeyError, match=r"no variable 'fixLocs' \(found \['fixations'\]\)"):
        load_fixation_locs(str(tmp_path / "a.mat"))
    (tmp_path / "b.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(ValueError, match="b.mat"):
        load_fixation_locs(str(tmp_path / "b.mat"))
    Image.new("L", (3, 2)).save(str(tmp_path / "c.png"))
    assert load_fixation_map(str(tmp_path / "c.png")).shape == (2, 3)
