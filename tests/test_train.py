"""Trainer: exact resumption after a crash, atomic checkpoints, config errors, evaluation results."""
import json
import os
import subprocess
import sys

import pytest
import torch
from detectron2.engine import HookBase

from sact_det.engine.checkpoint import AtomicDetectionCheckpointer
from sact_det.engine.hooks import PerIterationSeed, TauWarmup, iteration_seed
from sact_det.engine.sampler import ResumableTrainingSampler
from sact_det.engine.setup_config import ConfigError, load_config
from sact_det.engine.trainer import Trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CFG = "configs/Demo/sact_R_50_C4.yaml"


def small_opts(out_dir, **extra):
    """Demo detector on the tiny demo split at 128 px: 6 iterations, LR steps at 3 and 5."""
    opts = {
        "DATASETS.TRAIN": '("sact_demo_tiny_train",)', "DATASETS.TEST": "()",
        "INPUT.MIN_SIZE_TRAIN": "(128,)", "INPUT.MAX_SIZE_TRAIN": "128",
        "INPUT.MIN_SIZE_TEST": "128", "INPUT.MAX_SIZE_TEST": "128",
        "SOLVER.IMS_PER_BATCH": "2", "SOLVER.MAX_ITER": "6", "SOLVER.STEPS": "(3, 5)",
        "SOLVER.WARMUP_ITERS": "2", "SOLVER.CHECKPOINT_PERIOD": "2",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": "16", "MODEL.RPN.POST_NMS_TOPK_TRAIN": "50",
        "OUTPUT_DIR": str(out_dir),
    }
    opts.update(extra)
    return [x for kv in opts.items() for x in kv]


class CrashBefore(HookBase):
    """Raise before iteration ``at`` runs (a run killed between two iterations)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def before_step(self) -> None:
        if self.trainer.iter == self.at:
            raise KeyboardInterrupt(f"simulated kill before iteration {self.at}")


def _train(out_dir, resume=False, crash_at=None, **extra):
    cfg = load_config(DEMO_CFG, small_opts(out_dir, **extra))
    trainer = Trainer(cfg)
    if crash_at is not None:
        trainer.register_hooks([CrashBefore(crash_at)])
    trainer.resume_or_load(resume=resume)
    seen = []  # image ids of each training batch, recorded when the model receives it
    trainer.model.register_forward_pre_hook(lambda _, args: seen.append([d["image_id"] for d in args[0]]))
    start = trainer.start_iter
    try:
        trainer.train()
    except KeyboardInterrupt:
        pass
    model = getattr(trainer.model, "module", trainer.model)
    return {"state": {k: v.detach().clone() for k, v in model.state_dict().items()}, "iter": trainer.iter,
            "start": start, "lr": trainer.optimizer.param_groups[0]["lr"], "seen": seen,
            "scheduler": trainer.scheduler.state_dict()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("full"))


def test_resume_after_kill_equals_uninterrupted_run(uninterrupted, tmp_path):
    crashed = _train(tmp_path, crash_at=4)  # checkpoints after iterations 1 and 3, killed before 4
    assert open(tmp_path / "last_checkpoint").read() == "model_0000003.pth"
    saved = torch.load(tmp_path / "model_0000003.pth", weights_only=False)["trainer"]
    assert saved["iteration"] == 3 and saved["_trainer"]["optimizer"]["state"]  # AdamW moments, on 0.6 and main
    resumed = _train(tmp_path, resume=True)
    assert resumed["start"] == 4
    # the same images in the same order: iterations 0-3 before the kill, 4-5 after the resume
    assert crashed["seen"][:4] + resumed["seen"] == uninterrupted["seen"]
    assert resumed["iter"] == uninterrupted["iter"]
    assert resumed["lr"] == pytest.approx(uninterrupted["lr"]) and resumed["lr"] < 0.02 * 0.1 ** 1.5  # 2 LR steps
    assert resumed["scheduler"]["last_epoch"] == uninterrupted["scheduler"]["last_epoch"]
    for k, v in uninterrupted["state"].items():
        assert torch.equal(resumed["state"][k], v), k


def test_resume_without_checkpoint_starts_at_zero(tmp_path, caplog):
    cfg = load_config(DEMO_CFG, small_opts(tmp_path, SEED="-1"))
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 0
    # SEED -1: one drawn seed for weights, data stream and per-iteration seeds, recorded in the trainer's cfg
    assert trainer.cfg.SEED >= 0 and trainer.data_loader.sampler.seed == trainer.cfg.SEED == trainer.base_seed
    # a checkpoint without optimizer state (detectron2 0.6's DefaultTrainer) loads with a warning
    trainer.load_state_dict({"iteration": 5})
    assert trainer.iter == 5 and "no optimizer state" in caplog.text


def test_sampler_stream_is_detectron2s_training_sampler():
    from detectron2.data.samplers import TrainingSampler

    for shuffle in (True, False):
        ours, theirs = iter(ResumableTrainingSampler(5, shuffle, seed=4)), iter(TrainingSampler(5, shuffle, seed=4))
        assert [next(ours) for _ in range(23)] == [next(theirs) for _ in range(23)]


def test_sampler_start_continues_the_stream():
    full = ResumableTrainingSampler(7, seed=3)
    it = iter(full)
    head = [next(it) for _ in range(30)]
    part = ResumableTrainingSampler(7, seed=3)
    part.set_start(12)
    it2 = iter(part)
    assert [next(it2) for _ in range(18)] == head[12:]
    assert sorted(head[:7]) == list(range(7))  # each epoch is a permutation


def test_iteration_seed_and_tau_warmup():
    assert iteration_seed(1, 0, 5) == iteration_seed(1, 0, 5)
    assert len({iteration_seed(1, r, i) for r in range(2) for i in range(50)}) == 100
    model = torch.nn.Module()
    model.tau = 0.01
    hook = TauWarmup(model, start=10, iters=4)
    assert [hook.tau_at(i) for i in (0, 9, 10, 11, 13, 14, 100)] == pytest.approx(
        [0, 0, 0.0025, 0.005, 0.01, 0.01, 0.01])
    seed_hook = PerIterationSeed(7)
    seed_hook.load_state_dict({"base_seed": 11})
    assert seed_hook.state_dict() == {"base_seed": 11}


def test_atomic_checkpoint_survives_a_crash_while_saving(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    ckpt = AtomicDetectionCheckpointer(model, str(tmp_path))
    ckpt.save("model_0000001")
    good = torch.load(tmp_path / "model_0000001.pth", weights_only=False)["model"]

    def broken_save(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError("disk full / killed")

    monkeypatch.setattr(torch, "save", broken_save)
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(OSError):
        ckpt.save("model_0000001")  # overwrite attempt of the same file
    with pytest.raises(OSError):
        ckpt.save("model_0000002")
    monkeypatch.undo()
    assert open(tmp_path / "last_checkpoint").read() == "model_0000001.pth"
    assert not os.path.exists(tmp_path / "model_0000002.pth")
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]  # no temporaries left
    reloaded = torch.load(tmp_path / "model_0000001.pth", weights_only=False)["model"]
    assert all(torch.equal(reloaded[k], good[k]) for k in good)


def test_stale_temporaries_and_missing_tagged_file(tmp_path):
    ckpt = AtomicDetectionCheckpointer(torch.nn.Linear(1, 1), str(tmp_path))
    (tmp_path / ".tmp-model_0000009.pth.abc").write_bytes(b"partial")
    assert ckpt.remove_stale_temporaries() == 1
    (tmp_path / "last_checkpoint").write_text("model_0000042.pth")
    with pytest.raises(FileNotFoundError, match="model_0000042.pth"):
        ckpt.get_checkpoint_file()


def test_unknown_config_key_in_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f'_BASE_: "{os.path.join(REPO, DEMO_CFG)}"\nMODEL:\n  SACT:\n    TAUU: 0.1\n')
    with pytest.raises(ConfigError, match=r"bad\.yaml.*unknown config key MODEL\.SACT\.TAUU.*MODEL\.SACT\.TAU\b"):
        load_config(str(bad))


def test_unknown_key_wrong_type_and_missing_file_on_command_line(tmp_path):
    with pytest.raises(ConfigError, match=r"command line: unknown config key SOLVER\.MAX_ITERS.*SOLVER\.MAX_ITER"):
        load_config(DEMO_CFG, ["SOLVER.MAX_ITERS", "10"])
    with pytest.raises(ConfigError, match=r"SOLVER\.MAX_ITER=ten"):
        load_config(DEMO_CFG, ["SOLVER.MAX_ITER", "ten"])
    with pytest.raises(ConfigError, match=r"MODEL\.SACT\.MODE"):
        load_config(DEMO_CFG, ["MODEL.SACT.MODE", "sometimes"])
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(str(tmp_path / "nope.yaml"))


def test_train_net_cli_reports_unknown_key_without_traceback():
    proc = subprocess.run([sys.executable, "tools/train_net.py", "--config-file", DEMO_CFG, "MODEL.SACT.TAUU", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "unknown config key MODEL.SACT.TAUU; did you mean MODEL.SACT.TAU" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_eval_only_reports_ap_and_flops(tmp_path):
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import train_net

    args = train_net.build_parser().parse_args(
        ["--config-file", DEMO_CFG, "--eval-only", "--random-weights"]
        + small_opts(tmp_path, **{"DATASETS.TEST": '("sact_demo_tiny_val",)', "TEST.DETECTIONS_PER_IMAGE": "10"}))
    results = train_net.main(args)
    assert set(results) >= {"bbox", "flops", "ponder_eval"}
    assert results["flops"]["num_images"] == 8
    saved = json.load(open(tmp_path / "eval_results.json"))
    assert saved["datasets"]["sact_demo_tiny_val"]["flops"]["num_images"] == 8
    assert saved["sact"]["mode"] == "sact"


def test_optimizer_choice_and_tau_warmup_hook(tmp_path):
    cfg = load_config(DEMO_CFG, small_opts(tmp_path, **{"SACT_TRAIN.OPTIMIZER": "AdamW",
                                                        "SACT_TRAIN.TAU_WARMUP_START": "2",
                                                        "SACT_TRAIN.TAU_WARMUP_ITERS": "2",
                                                        "MODEL.SACT.TAU": "0.01"}))
    trainer = Trainer(cfg)
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    warm = [h for h in trainer._hooks if isinstance(h, TauWarmup)]
    assert len(warm) == 1 and [warm[0].tau_at(i) for i in (1, 2, 3)] == pytest.approx([0.0, 0.005, 0.01])
    cfg.defrost()
    cfg.SACT_TRAIN.OPTIMIZER = "Adagrad"
    with pytest.raises(ValueError, match="SACT_TRAIN.OPTIMIZER"):
        Trainer.build_optimizer(cfg, torch.nn.Linear(2, 2))


def test_sigkill_then_resume_equals_uninterrupted_run(uninterrupted, tmp_path):
    """A real kill (SIGKILL) of tools/train_net.py right after its first checkpoint, then --resume."""
    import signal
    import time

    opts = small_opts(tmp_path, **{"SOLVER.CHECKPOINT_PERIOD": "1"})
    log = open(tmp_path / "run.log", "w")
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))  # same float op order as this process
    proc = subprocess.Popen([sys.executable, "tools/train_net.py", "--config-file", DEMO_CFG] + opts, cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    tag = tmp_path / "last_checkpoint"
    deadline = time.time() + 600
    while not tag.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    log.close()
    assert proc.returncode == -signal.SIGKILL, open(tmp_path / "run.log").read()[-3000:]
    assert not (tmp_path / "model_final.pth").exists()  # killed mid-way
    killed_at = int(open(tag).read()[len("model_"):-len(".pth")])
    resumed = _train(tmp_path, resume=True, **{"SOLVER.CHECKPOINT_PERIOD": "1"})
    assert resumed["start"] == killed_at + 1 < 6
    for k, v in uninterrupted["state"].items():
        assert torch.equal(resumed["state"][k], v), k
