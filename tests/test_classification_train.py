"""Training tool: checkpoints, resume with nothing lost, evaluate-once, both data formats, DDP (gloo)."""
import glob
import json
import os
import shutil
import signal

import pytest
import torch

from sact_det.classification import (engine, evaluate_checkpoint, format_metrics, get_classification_cfg,
                                     train_classifier)
from sact_det.classification.checkpoint import CheckpointError, load_classifier_weights, read_weights
from sact_det.modeling.meta_arch.classifier import build_classifier
from tests.test_classification_data import make_cifar, make_folder
from tests.test_classification_model import one_thread  # noqa: F401  (autouse fixture)



@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    return make_cifar(str(tmp_path_factory.mktemp("cifar")), n_train=(40, 24), n_test=10)


def tiny_cfg(out_dir, root, mode="sact", max_iter=6, **opts):
    """ResNet-14-like (2 units per stage), 4 channels: a training step takes milliseconds."""
    cfg = get_classification_cfg()
    cfg.merge_from_file("configs/Classification/Base-CIFAR10.yaml")
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.SACT.MODE = mode
    cfg.OUTPUT_DIR = str(out_dir)
    c = cfg.SACT_CLS
    c.DATA.ROOT = root
    c.CIFAR.NUM_UNITS, c.CIFAR.WIDTH = 2, 4
    c.SOLVER.IMS_PER_BATCH, c.SOLVER.MAX_LENGTH, c.SOLVER.STEPS = 16, max_iter, (4,)
    c.SOLVER.CHECKPOINT_PERIOD, c.SOLVER.EVAL_PERIOD, c.SOLVER.LOG_PERIOD = 3, 0, 1
    c.TEST.IMS_PER_BATCH = 4
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.merge_from_list([x for kv in opts.items() for x in kv])
    return cfg


def state_of(path):
    return read_weights(path)["checkpoint"]


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory, cifar_root):
    """A finished 3-iteration dense run shared by the evaluation / fine-tuning tests."""
    out = tmp_path_factory.mktemp("dense_run")
    train_classifier(tiny_cfg(out, cifar_root, mode="none", max_iter=3), progress=False)
    return out


def test_train_writes_checkpoints_metrics_and_tensorboard(tmp_path, cifar_root):
    metrics = train_classifier(tiny_cfg(tmp_path, cifar_root), progress=False)
    assert sorted(os.listdir(tmp_path / "inference")) == ["eval_0000006.json"]
    assert metrics["num_images"] == 10 and 0.0 <= metrics["top1"] <= metrics["top5"] <= 1.0
    assert set(metrics["stages"]) == {"res2", "res3", "res4"} and metrics["stages"]["res2"]["units"] == 2
    printed = format_metrics(metrics)
    for line in ("res3/ponder_cost_mean[", "res3/ponder_cost_std[", "res4/num_units_executed[", "Total Flops/std["):
        assert line in printed
    with open(tmp_path / "inference" / "eval_0000006.json") as f:
        assert json.load(f)["flops_mean"] == pytest.approx(metrics["flops_mean"])
    # detectron2's conventions: model_<i> after the 0-based iteration i, "iteration" = last one done
    assert (tmp_path / "model_0000002.pth").exists() and (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    final = state_of(str(tmp_path / "model_final.pth"))
    assert final["iteration"] == 5 and final["class_names"] == ["a", "b", "c"]
    assert final["scheduler"]["last_epoch"] == 6 and final["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.01)
    lines = [json.loads(x) for x in (tmp_path / "metrics.json").read_text().splitlines()]
    assert [x["iteration"] for x in lines if "loss_cls" in x] == [0, 1, 2, 3, 4, 5]  # detectron2's JSONWriter
    assert all(x["loss_ponder"] > 0 for x in lines if "loss_ponder" in x)
    assert glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))


def test_resume_after_a_signal_loses_nothing(tmp_path, cifar_root, monkeypatch):
    """Stop with SIGINT at iteration 3 (mid epoch 0 of 4 iterations), resume to 5: weights, optimizer and
    evaluation equal those of an uninterrupted run."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    # a shell's background job starts with SIGINT ignored: install Python's handler, as in a terminal
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    ref = train_classifier(tiny_cfg(full, cifar_root, max_iter=5), progress=False)

    calls = {"n": 0}
    real = engine._any_process

    def interrupt_at_3(flag, device):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # caught by the training loop's handler
            flag = True
        return real(flag, device)

    monkeypatch.setattr(engine, "_any_process", interrupt_at_3)
    with pytest.raises(KeyboardInterrupt, match="after iteration 2"):  # 0-based: 3 iterations done
        train_classifier(tiny_cfg(cut, cifar_root, max_iter=5), progress=False)
    assert (cut / "last_checkpoint").read_text() == "model_0000002.pth"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    signal.signal(signal.SIGINT, previous)
    monkeypatch.setattr(engine, "_any_process", real)
    stale = cut / ".tmp-model_0000003.pth.x1y2"  # what a run killed while saving leaves (sact_det.utils.atomic)
    stale.write_bytes(b"partial")
    resumed = train_classifier(tiny_cfg(cut, cifar_root, max_iter=5), resume=True, progress=False)
    assert not stale.exists()

    a, b = state_of(str(full / "model_final.pth")), state_of(str(cut / "model_final.pth"))
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(pa["momentum_buffer"], pb["momentum_buffer"])
    assert resumed == ref


def test_epoch_batches_cover_the_set_and_split_over_processes():
    one = engine.epoch_batches(70, 16, seed=3, epoch=2, rank=0, world=1)
    assert len(one) == 4 and all(len(b) == 16 for b in one)
    assert len({i for b in one for i, _ in b}) == 64  # 64 distinct of 70, last partial batch dropped
    halves = [engine.epoch_batches(70, 16, 3, 2, r, 2) for r in (0, 1)]
    for b, h0, h1 in zip(one, *halves):
        assert b == h0 + h1  # the two processes together see the single-process batch
    assert engine.epoch_batches(70, 16, 3, 3, 0, 1) != one  # new order every epoch



def test_eval_only_prints_seed_style_and_json(tmp_path, cifar_root, dense_run, capsys, restore_loggers):
    from tools.train_classifier import get_parser, main

    out_json = tmp_path / "eval.json"
    args = get_parser().parse_args([
        "--config-file", "configs/Classification/Base-CIFAR10.yaml", "--eval-only", "--no-progress",
        "--json", str(out_json), "MODEL.DEVICE", "cpu", "SACT_CLS.DATA.ROOT", cifar_root,
        "SACT_CLS.CIFAR.NUM_UNITS", "2", "SACT_CLS.CIFAR.WIDTH", "4", "OUTPUT_DIR", str(dense_run),
        "MODEL.SACT.MODE", "none", "DATALOADER.NUM_WORKERS", "0"])
    metrics = main(args)
    printed = capsys.readouterr().out
    for line in ("eval/Accuracy[", "eval/Mean Loss[", "Total Flops/mean[", "Total Flops/std[", "res3/flops_mean["):
        assert line in printed
    assert metrics["flops_std"] == 0.0 and metrics["flops_ratio"] == 1.0  # dense: every image costs the same
    assert f"Total Flops/mean[{metrics['flops_mean']:.8g}]" in printed
    data = json.loads(out_json.read_text())
    assert data["num_images"] == 10 and data["weights"].endswith("model_final.pth")


def test_eval_class_count_mismatch_names_the_checkpoint(tmp_path, dense_run):
    other = make_cifar(str(tmp_path / "four"), names=("a", "b", "c", "d"))
    cfg = tiny_cfg(tmp_path / "eval", other, mode="none")
    with pytest.raises(CheckpointError, match=r"model_final.pth has a 3-class classifier.*4 classes"):
        evaluate_checkpoint(cfg, str(dense_run / "model_final.pth"), progress=False)


def test_sact_finetunes_from_dense_with_new_halting(tmp_path, cifar_root, dense_run):
    dense = str(dense_run / "model_final.pth")
    cfg = tiny_cfg(tmp_path / "sact", cifar_root, max_iter=1)
    info = load_classifier_weights(build_classifier(cfg, 3), dense)
    assert info["new"] and all(".halting." in k for k in info["new"])
    cfg.MODEL.WEIGHTS = dense
    train_classifier(cfg, progress=False)
    sact = state_of(str(tmp_path / "sact" / "model_final.pth"))["model"]
    assert any(".halting." in k for k in sact)


def test_imagenet_folder_format_trains(tmp_path):
    root = make_folder(str(tmp_path / "inet"), per_class=4, size=(40, 44))
    cfg = tiny_cfg(tmp_path / "out", root, max_iter=1)
    c = cfg.SACT_CLS
    c.ARCH, c.DATA.FORMAT, c.DATA.TEST_SPLIT = "imagenet", "imagenet", "val"
    c.INPUT.CROP_SIZE, c.INPUT.RESIZE, c.INPUT.RANDOM_RESIZED_CROP, c.SOLVER.IMS_PER_BATCH = 32, 36, True, 4
    cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 18, 64
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.SACT.STAGES = ["res2", "res3", "res4", "res5"]
    metrics = train_classifier(cfg, progress=False)
    assert metrics["num_images"] == 8 and set(metrics["stages"]) == {"res2", "res3", "res4", "res5"}


def _ddp_worker(cfg_text: str, result_path: str) -> None:
    from detectron2.config import CfgNode
    from detectron2.utils import comm

    cfg = get_classification_cfg()
    cfg.merge_from_other_cfg(CfgNode.load_cfg(cfg_text))
    metrics = train_classifier(cfg, progress=False)  # each process evaluates its shard with its own model copy
    if comm.is_main_process():
        with open(result_path, "w") as f:
            json.dump({"metrics": metrics, "world": comm.get_world_size()}, f)


def test_ddp_two_cpu_processes(tmp_path, cifar_root):
    from sact_det.compat import launch

    cfg = tiny_cfg(tmp_path / "ddp", cifar_root, max_iter=4)
    cfg.SACT_CLS.TEST.IMS_PER_BATCH = 6  # 3 per process: uneven shards of the 10 test images
    result = tmp_path / "result.json"
    launch(_ddp_worker, 2, args=(cfg.dump(), str(result)))
    res = json.loads(result.read_text())
    assert res["world"] == 2 and res["metrics"]["num_images"] == 10
    # single-process evaluation of rank 0's checkpoint gives the same numbers: both processes held that model
    single = evaluate_checkpoint(cfg, str(tmp_path / "ddp" / "model_final.pth"), json_path=str(tmp_path / "e.json"),
                                 progress=False)
    for k in ("top1", "top5", "mean_loss", "flops_mean", "flops_std"):
        assert single[k] == pytest.approx(res["metrics"][k], rel=1e-6), k
    shutil.rmtree(tmp_path / "ddp")


@pytest.mark.parametrize("config", ["cifar10_resnet110_aig.yaml", "cifar10_resnet110_blockdrop.yaml"])
def test_aig_and_blockdrop_train_and_evaluate_in_the_tool(tmp_path, cifar_root, capsys, restore_loggers, config):
    """tools/train_classifier.py trains the shipped ConvNet-AIG / BlockDrop config (shrunk to ResNet-14,
    width 4, 3 iterations) on CIFAR-10-format data, then --eval-only prints the seeds' statistics."""
    from tools.train_classifier import get_parser, main

    path = f"configs/Classification/{config}"
    small = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "SACT_CLS.DATA.ROOT", cifar_root, "OUTPUT_DIR", str(tmp_path),
             "SACT_CLS.CIFAR.NUM_UNITS", "2", "SACT_CLS.CIFAR.WIDTH", "4", "SACT_CLS.SOLVER.IMS_PER_BATCH", "8",
             "SACT_CLS.SOLVER.UNIT", "iter", "SACT_CLS.SOLVER.STEPS", "()", "SACT_CLS.SOLVER.MAX_LENGTH", "3",
             "SACT_CLS.SOLVER.CHECKPOINT_PERIOD", "3", "SACT_CLS.SOLVER.EVAL_PERIOD", "0",
             "SACT_CLS.SOLVER.LOG_PERIOD", "1", "SACT_CLS.TEST.IMS_PER_BATCH", "4", "DATALOADER.NUM_WORKERS", "0",
             "MODEL.BLOCKDROP.CURRICULUM_PERIOD", "1"]
    trained = main(get_parser().parse_args(["--config-file", path, "--no-progress"] + small))
    family = "aig" if "aig" in config else "blockdrop"
    assert trained["family"] == family and trained["num_images"] == 10
    lines = [json.loads(x) for x in (tmp_path / "metrics.json").read_text().splitlines()]
    key = {"aig": "loss_target_rate", "blockdrop": "loss_policy"}[family]
    assert [x["iteration"] for x in lines if key in x] == [0, 1, 2]
    assert all(x.get("units/used_mean", 0) > 0 for x in lines if key in x)
    capsys.readouterr()
    metrics = main(get_parser().parse_args(["--config-file", path, "--eval-only", "--no-progress"] + small))
    printed = capsys.readouterr().out
    for line in ("eval/Accuracy[", "Total Flops/mean[", "Block Usage:", "Unique Policies:",
                 "Unit execution rates: res2.0:", "res4/num_units_executed["):
        assert line in printed
    assert metrics["unit_policy"]["num_units"] == 6 and metrics["top1"] == trained["top1"]
    weights = read_weights(str(tmp_path / "model_final.pth"))["checkpoint"]["model"]
    own = ".gate." if family == "aig" else "backbone.policy."
    assert any(own in k for k in weights)
