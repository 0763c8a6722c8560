"""Where a user would want to know, the tools refuse instead of silently falling back.

MODEL.DEVICE cuda without CUDA, empty or missing MODEL.WEIGHTS where weights are needed, the FLOPs
evaluator without the resized image, plot_tradeoff.py across datasets or with --paper on another axis.
"""
import glob
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from sact_det.engine.checkpoint import AtomicDetectionCheckpointer
from sact_det.engine.checks import check_weights
from sact_det.engine.setup_config import ConfigError, load_config
from sact_det.evaluation.flops_evaluator import FlopsEvaluator

from tests.helpers import tiny_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))

import draw_ponder_maps  # noqa: E402
import eval_saliency  # noqa: E402
import plot_tradeoff  # noqa: E402
import train_net  # noqa: E402

DEMO_CFG = "configs/Demo/sact_R_50_C4.yaml"


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# ----------------------------------------------------------------------------- MODEL.DEVICE
def test_cuda_device_without_cuda_is_an_error_naming_the_key(no_cuda):
    with pytest.raises(ConfigError, match=r"MODEL\.DEVICE is 'cuda' but CUDA is not available.*MODEL\.DEVICE cpu"):
        load_config(DEMO_CFG, ["MODEL.DEVICE", "cuda"])
    with pytest.raises(SystemExit, match=r"train_net\.py: error: MODEL\.DEVICE is 'cuda:1'"):
        train_net.cli(["--config-file", DEMO_CFG, "MODEL.DEVICE", "cuda:1"])
    assert load_config(DEMO_CFG, ["MODEL.DEVICE", "cuda"], check_device=False).MODEL.DEVICE == "cuda"


@pytest.mark.parametrize("config", sorted(glob.glob(os.path.join(REPO, "configs", "Demo", "*.yaml"))),
                         ids=os.path.basename)
def test_demo_configs_say_cpu(config, no_cuda):
    assert load_config(config).MODEL.DEVICE == "cpu"


# ----------------------------------------------------------------------------- MODEL.WEIGHTS
def test_eval_only_without_weights_needs_random_weights_flag(tmp_path):
    out = ["OUTPUT_DIR", str(tmp_path)]
    with pytest.raises(SystemExit, match=r"MODEL\.WEIGHTS is empty.*--random-weights"):
        train_net.cli(["--config-file", DEMO_CFG, "--eval-only"] + out)
    with pytest.raises(SystemExit, match=r"--random-weights asks for random weights but MODEL\.WEIGHTS is 'x\.pth'"):
        train_net.cli(["--config-file", DEMO_CFG, "--eval-only", "--random-weights", "MODEL.WEIGHTS", "x.pth"] + out)
    with pytest.raises(SystemExit, match=r"--random-weights only applies to --eval-only"):
        train_net.cli(["--config-file", DEMO_CFG, "--random-weights"] + out)
    args = train_net.build_parser().parse_args(["--config-file", DEMO_CFG, "--eval-only"] + out)
    with pytest.raises(ConfigError, match=r"MODEL\.WEIGHTS is empty"):  # also when main() is called directly
        train_net.main(args)


def test_eval_saliency_and_draw_ponder_maps_without_weights(tmp_path):
    with pytest.raises(SystemExit, match=r"eval_saliency\.py: error: MODEL\.WEIGHTS is empty.*--random-weights"):
        eval_saliency.main(["--config-file", DEMO_CFG, "--dataset", "sact_demo_val", "--output", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"no model is run"):
        eval_saliency.main(["--dataset", "sact_demo_val", "--baselines-only", "--random-weights",
                            "--output", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"draw_ponder_maps\.py: error: MODEL\.WEIGHTS is empty.*--random-weights"):
        draw_ponder_maps.main(["--config-file", DEMO_CFG, "--dataset", "sact_demo_val", "--output", str(tmp_path)])


def test_missing_weights_file_is_one_line_naming_the_path(tmp_path):
    missing = str(tmp_path / "runs" / "model_final.pth")
    for argv in (["--eval-only"], []):  # evaluation and training from MODEL.WEIGHTS
        with pytest.raises(SystemExit, match=re.escape(f"train_net.py: error: MODEL.WEIGHTS file not found: {missing}") + "$"):
            train_net.cli(["--config-file", DEMO_CFG, *argv, "MODEL.WEIGHTS", missing, "OUTPUT_DIR", str(tmp_path)])
    with pytest.raises(SystemExit, match=re.escape(f"MODEL.WEIGHTS file not found: {missing}")):
        eval_saliency.main(["--config-file", DEMO_CFG, "--dataset", "sact_demo_val", "--output", str(tmp_path),
                            "MODEL.WEIGHTS", missing])
    with pytest.raises(SystemExit, match=re.escape(f"MODEL.WEIGHTS file not found: {missing}")):
        draw_ponder_maps.main(["--config-file", DEMO_CFG, "--dataset", "sact_demo_val", "--output", str(tmp_path),
                               "MODEL.WEIGHTS", missing])
    with pytest.raises(FileNotFoundError, match=re.escape(f"checkpoint file not found: {missing}")):  # library API
        AtomicDetectionCheckpointer(torch.nn.Linear(1, 1)).load(missing)


def test_train_net_missing_weights_prints_no_traceback(tmp_path):
    missing = str(tmp_path / "nope.pth")
    proc = subprocess.run([sys.executable, "tools/train_net.py", "--config-file", DEMO_CFG, "--eval-only",
                           "MODEL.WEIGHTS", missing], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == f"train_net.py: error: MODEL.WEIGHTS file not found: {missing}"
    assert "Traceback" not in proc.stderr


def test_urls_catalog_paths_and_resumable_runs_stay_allowed(tmp_path):
    for url in ("detectron2://ImageNetPretrained/MSRA/R-50.pkl", "https://example.org/model_final.pth"):
        check_weights(url, required=True)  # resolved (downloaded) by detectron2's loader, not checked here
    check_weights("", required=False)  # training from scratch
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    check_weights("", required=True, resume_dir=str(tmp_path))  # --resume loads the last checkpoint
    with pytest.raises(ConfigError, match="--resume would load"):
        check_weights("", required=True, random_weights=True, resume_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="is a folder"):
        check_weights(str(tmp_path), required=True)


# ----------------------------------------------------------------------------- FLOPs evaluator
def test_flops_evaluator_needs_the_resized_image():
    ev = FlopsEvaluator(tiny_cfg(depth=18))
    out = {"flops": {"backbone": 1.0, "model": 2.0}}
    with pytest.raises(KeyError, match=r"resized input image.*\['height', 'image_id', 'width'\]"):
        ev.process([{"height": 480, "width": 640, "image_id": 3}], [out])  # original size only
    ev.process([{"image": torch.zeros(3, 64, 96), "height": 480, "width": 640}], [out])
    assert ev._records[0]["hw"] == (64, 96)  # the size the model ran at, not height x width


# ----------------------------------------------------------------------------- plot_tradeoff.py
def _eval_results(folder, datasets, ap=40.0):
    folder.mkdir(parents=True)
    per = {d: {"bbox": {"AP": ap + i}, "flops": {"pct_of_r101_mean": 50.0 + i}} for i, d in enumerate(datasets)}
    (folder / "eval_results.json").write_text(json.dumps({"datasets": per,
                                                          "sact": {"mode": "sact", "tau": 0.01, "depth": 50}}))
    return str(folder)


def _metrics(folder, record, config_yaml=None):
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"iteration": 9, "total_loss": 1.0}) + "\n" + json.dumps(record))
    if config_yaml is not None:
        (folder / "config.yaml").write_text(config_yaml)
    return str(folder)


def test_plot_tradeoff_refuses_runs_on_different_datasets(tmp_path):
    a = _eval_results(tmp_path / "a", ["sact_demo_val"])
    b = _eval_results(tmp_path / "b", ["coco_2017_val"])
    with pytest.raises(SystemExit, match=r"different datasets .*a/eval_results.json: sact_demo_val.*coco_2017_val"):
        plot_tradeoff.main([a, b, "--no-plot", "--output", str(tmp_path / "t")])
    # metrics.json of a single-dataset run: the dataset comes from its config.yaml
    c = _metrics(tmp_path / "c", {"bbox/AP": 30.0, "flops/pct_of_r101_mean": 20.0},
                 "DATASETS:\n  TEST:\n  - coco_2017_val\n")
    with pytest.raises(SystemExit, match="different datasets"):
        plot_tradeoff.main([a, c, "--no-plot", "--output", str(tmp_path / "t")])
    rows = plot_tradeoff.main([b, c, "--no-plot", "--output", str(tmp_path / "t")])
    assert [r["AP"] for r in rows] == [40.0, 30.0] and rows[1]["dataset"] == "coco_2017_val"
    # no dataset name and no config.yaml: cannot be compared with another run
    d = _metrics(tmp_path / "d", {"bbox/AP": 30.0})
    with pytest.raises(SystemExit, match=r"cannot tell which dataset .*d/metrics.json"):
        plot_tradeoff.main([b, d, "--no-plot", "--output", str(tmp_path / "t")])


def test_plot_tradeoff_runs_with_several_datasets_need_dataset(tmp_path):
    a = _eval_results(tmp_path / "a", ["sact_demo_val", "sact_demo_tiny_val"])  # AP 40, 41
    m = _metrics(tmp_path / "m", {"sact_demo_val/bbox/AP": 20.0, "sact_demo_tiny_val/bbox/AP": 21.0,
                                  "sact_demo_tiny_val/flops/pct_of_r101_mean": 33.0,
                                  "unit_policy/rate/res2.0": 1.0})
    with pytest.raises(SystemExit, match=r"evaluates several datasets .*choose one with --dataset"):
        plot_tradeoff.main([a, "--no-plot", "--output", str(tmp_path / "t")])
    rows = plot_tradeoff.main([a, m, "--dataset", "sact_demo_tiny_val", "--no-plot", "--output", str(tmp_path / "t")])
    assert [(r["AP"], r["pct_r101"]) for r in rows] == [(41.0, 51.0), (21.0, 33.0)]


def test_plot_tradeoff_paper_points_need_the_r101_axis(tmp_path):
    a = _eval_results(tmp_path / "a", ["sact_demo_val"])
    for x in ("dense", "gflops"):
        with pytest.raises(SystemExit, match=f"--paper .*cannot be drawn with --x {x}"):
            plot_tradeoff.main([a, "--paper", "--x", x, "--output", str(tmp_path / "t")])
    with pytest.raises(SystemExit, match="no effect with --no-plot"):
        plot_tradeoff.main([a, "--paper", "--no-plot", "--output", str(tmp_path / "t")])
    with pytest.raises(ValueError, match="cannot be drawn"):  # library function
        plot_tradeoff.plot([], "dense", str(tmp_path / "t.png"), paper=True)
    assert not os.path.exists(tmp_path / "t.png") and not os.path.exists(tmp_path / "t.csv")
