"""End to end: tools/eval_saliency.py on a generated CAT2000 folder and on demo data."""
import csv
import importlib.util
import json
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog

import sact_det  # noqa: F401
from sact_det.config import get_sact_cfg
from sact_det.data.cat2000 import register_cat2000, write_synthetic_cat2000
from sact_det.evaluation.saliency_evaluator import METRICS, SaliencyEvaluator, load_saliency_targets
from sact_det.evaluation.saliency import resize_map
from tests.helpers import tiny_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "eval_saliency.py")
_spec = importlib.util.spec_from_file_location("eval_saliency", TOOL)
eval_saliency = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(eval_saliency)

CATS = ("Action", "Fractal")
FAST = ["SACT_SALIENCY.AUC_SPLITS", "10", "SACT_SALIENCY.WORK_MAX_SIZE", "64"]


@pytest.fixture(scope="module")
def cat_name(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cat") / "CAT2000")
    write_synthetic_cat2000(root, categories=CATS, images_per_category=3, size=(64, 36))
    name = "cat2000_e2e_train"
    if name not in DatasetCatalog.list():
        register_cat2000(name, "train", root=root)
    return name


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_baselines_only_on_cat2000_layout(cat_name, tmp_path):
    out = str(tmp_path / "out")
    res = eval_saliency.main(["--dataset", cat_name, "--baselines-only", "--output", out, *FAST])
    assert set(res) == {"center", "uniform", "mean_fixation"}
    for m in ("auc_judd", "auc_borji", "auc_shuffled"):
        assert res["uniform"][m] == pytest.approx(0.5)  # chance
    assert res["uniform"]["nss"] == 0.0 and res["center"]["info_gain"] == 0.0  # IG over centre
    rows = _read_csv(os.path.join(out, "saliency_summary.csv"))
    assert [(r["method"], r["category"]) for r in rows[:3]] == [
        ("center", "Action"), ("center", "Fractal"), ("center", "overall")]
    assert len(rows) == 3 * 3 and rows[2]["n_images"] == "6"
    assert len(_read_csv(os.path.join(out, "saliency_per_image.csv"))) == 3 * 6
    summ = json.load(open(os.path.join(out, "saliency_summary.json")))
    assert summ["results"]["center"]["overall"]["auc_judd"] == pytest.approx(res["center"]["auc_judd"])


def test_tiny_random_sact_detector_end_to_end(cat_name, tmp_path):
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(tiny_cfg().dump())
    out = str(tmp_path / "out")
    torch.manual_seed(0)
    res = eval_saliency.main(["--config-file", str(cfg_file), "--dataset", cat_name, "--output", out,
                              "--max-images", "3", "--random-weights", "SACT_SALIENCY.INPUT_SIZE", "[64, 36]",
                              "SACT_SALIENCY.VIS_IMAGES", "2", "DATALOADER.NUM_WORKERS", "0", *FAST])
    assert set(res) == {"sact", "center", "uniform", "mean_fixation"}
    for m in METRICS:
        assert np.isfinite(res["sact"][m])
    assert 0.0 <= res["sact"]["auc_judd"] <= 1.0 and 0.0 <= res["sact"]["sim"] <= 1.0
    rows = _read_csv(os.path.join(out, "saliency_per_image.csv"))
    assert sorted({r["category"] for r in rows}) == list(CATS)  # --max-images is round-robin
    pngs = sorted(os.listdir(os.path.join(out, "saliency_vis")))
    assert len(pngs) == 2
    from PIL import Image

    with Image.open(os.path.join(out, "saliency_vis", pngs[0])) as im:
        assert im.size[1] == 240 and im.size[0] > 4 * 240 * 64 / 36  # 4 panels side by side


def test_oracle_ponder_map_beats_center_bias(cat_name):
    # A "ponder map" that is the blurred fixation map at 1/4 resolution must beat the centre
    # baseline: checks that maps are not flipped / transposed anywhere on the way.
    cfg = get_sact_cfg()
    cfg.SACT_SALIENCY.AUC_SPLITS = 10
    cfg.SACT_SALIENCY.NORMALIZE = "minmax"
    dicts = DatasetCatalog.get(cat_name)
    ev = SaliencyEvaluator(dicts, cfg, dataset_name=cat_name)
    for d in dicts:
        fix, gt = load_saliency_targets(d, 0.03)
        ev.process([d], [{"ponder_map": torch.from_numpy(resize_map(gt, (9, 16))).float()}])
    res = ev.evaluate()
    assert res["sact"]["auc_judd"] > res["center"]["auc_judd"] + 0.05
    assert res["sact"]["nss"] > res["center"]["nss"]
    with pytest.raises(KeyError, match="no 'ponder_map'"):
        ev.process([dicts[0]], [{"instances": None}])


def test_stage_selection(cat_name):
    # SACT_SALIENCY.STAGES picks stage maps from "ponder_maps": the good stage alone beats the
    # centre baseline, the inverted stage alone does not.
    dicts = DatasetCatalog.get(cat_name)
    results = {}
    for stage in ("res2", "res4"):
        cfg = get_sact_cfg()
        cfg.SACT_SALIENCY.AUC_SPLITS = 10
        cfg.SACT_SALIENCY.STAGES = [stage]
        ev = SaliencyEvaluator(dicts, cfg, dataset_name=cat_name)
        for d in dicts:
            good = torch.from_numpy(resize_map(load_saliency_targets(d, 0.03)[1], (9, 16))).float()
            ev.process([d], [{"ponder_maps": {"res2": good, "res4": -resize_map(good.numpy(), (3, 4))}}])
        results[stage] = ev.evaluate()
    assert results["res2"]["sact"]["auc_judd"] > results["res2"]["center"]["auc_judd"]
    assert results["res4"]["sact"]["auc_judd"] < 0.5
    cfg.SACT_SALIENCY.STAGES = ["res5"]
    ev = SaliencyEvaluator(dicts, cfg, dataset_name=cat_name)
    with pytest.raises(KeyError, match=r"STAGES \['res5'\] not in the model's ponder_maps \['res2'\]"):
        ev.process([dicts[0]], [{"ponder_maps": {"res2": torch.ones(3, 3)}}])


def test_demo_data_object_masks_act_as_fixations(tmp_path):
    from sact_det.data.demo import DemoSpec, object_mask, register_demo_datasets

    spec = DemoSpec(num_images=4, seed=7, image_size=64)
    register_demo_datasets(root=tmp_path / "demo", specs={"sal_tiny": spec})
    dicts = DatasetCatalog.get("sact_demo_sal_tiny")
    fix, gt = load_saliency_targets(dicts[0], 0.03)
    assert fix.shape == (64, 64) and np.array_equal(fix, object_mask(dicts[0])) and fix.any()
    assert gt.shape == (64, 64) and gt[fix].mean() > gt[~fix].mean()
    out = str(tmp_path / "out")
    res = eval_saliency.main(["--dataset", "sact_demo_sal_tiny", "--baselines-only", "--output", out, *FAST])
    assert res["uniform"]["auc_judd"] == pytest.approx(0.5)
    assert {r["category"] for r in _read_csv(os.path.join(out, "saliency_per_image.csv"))} == {"all"}


def test_split_without_fixations_is_a_clear_error(tmp_path):
    root = write_synthetic_cat2000(str(tmp_path / "CAT2000"), categories=("Art",), images_per_category=1,
                                   size=(32, 18), test_images_per_category=2)
    register_cat2000("cat2000_e2e_test_split", "test", root=root)
    with pytest.raises(ValueError, match="neither 'fixation_file'.*CAT2000 testSet"):
        SaliencyEvaluator(DatasetCatalog.get("cat2000_e2e_test_split"), get_sact_cfg())
