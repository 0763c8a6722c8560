"""2-process distributed training on CPU (gloo over loopback) through sact_det.compat.launch."""
import os

import torch

import sact_det  # noqa: F401
from sact_det.compat import launch

from tests.test_train import DEMO_CFG, REPO, small_opts


def _ddp_worker(opts, out_dir: str) -> None:
    """Train with the Trainer in every process; each rank saves its final weights."""
    os.chdir(REPO)
    from detectron2.utils import comm

    from sact_det.engine.setup_config import load_config
    from sact_det.engine.trainer import Trainer

    torch.set_num_threads(1)
    trainer = Trainer(load_config(DEMO_CFG, opts))
    trainer.resume_or_load(resume=False)
    trainer.train()
    model = getattr(trainer.model, "module", trainer.model)
    ponder = model.backbone.last_ponder
    torch.save({"state": model.state_dict(), "ddp": type(trainer.model).__name__,
                "active_later": {k: sum(int(m.sum()) for m in p.masks) for k, p in ponder.items()}, "world": comm.get_world_size()},
               os.path.join(out_dir, f"rank{comm.get_rank()}.pth"))


def test_two_process_gloo_training_all_positions_halt(tmp_path, halt_bias=10.0):
    # HALT_BIAS_INIT 10: every position halts after the first unit of each stage, so units 1.. never
    # run and their parameters get no gradient (DDP must not fail on them).
    opts = small_opts(tmp_path / "out", **{"SOLVER.IMS_PER_BATCH": "4", "SOLVER.MAX_ITER": "3", "SOLVER.STEPS": "(2,)",
                                           "SOLVER.CHECKPOINT_PERIOD": "100",
                                           "MODEL.SACT.HALT_BIAS_INIT": str(halt_bias),
                                           "MODEL.SACT.HALT_INIT": "zeros"})
    launch(_ddp_worker, 2, num_machines=1, machine_rank=0, dist_url="auto", args=(opts, str(tmp_path)))
    r0 = torch.load(tmp_path / "rank0.pth", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pth", weights_only=False)
    assert r0["world"] == r1["world"] == 2
    assert r0["ddp"] == "DistributedDataParallel"
    assert r0["active_later"] == r1["active_later"] == {"res2": 0, "res3": 0, "res4": 0}  # no position ran them
    assert r0["state"].keys() == r1["state"].keys()
    for k, v in r0["state"].items():  # parameters and BN statistics identical on both ranks
        assert torch.equal(v, r1["state"][k]), k
    final = torch.load(tmp_path / "out" / "model_final.pth", weights_only=False)  # written by rank 0 only
    assert final["iteration"] == 2
    assert all(torch.equal(final["model"][k], v) for k, v in r0["state"].items())
