"""DDP (gloo, 2 CPU processes, find_unused_parameters=False) with units skipped for a whole batch.

BlockDrop skips a unit no image chose (its parameters would get no gradient) and adds a
zero-weighted term instead; ConvNet-AIG computes every unit in training (straight-through
gates). Both must train without DDP's unused-parameter error and stay in sync across ranks;
without the zero-weighted terms BlockDrop must fail (the test can fail).
"""
import math
import os

import pytest
import sact_det  # noqa: F401  (first: spawned workers do not run conftest; compat patches before detectron2)
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from torch.nn.parallel import DistributedDataParallel

import sact_det.modeling.skipping.aig  # noqa: F401
import sact_det.modeling.skipping.blockdrop  # noqa: F401
import sact_det.modeling.skipping.blockdrop_rcnn  # noqa: F401
from sact_det.compat.distributed import find_free_port
from tests.helpers import detection_inputs, tiny_cfg

SKIPPED = "res3.1"


def _model(family: str):
    cfg = tiny_cfg(depth=18, mode="none")
    if family == "aig":
        cfg.MODEL.BACKBONE.NAME, cfg.MODEL.META_ARCHITECTURE = "build_aig_resnet_backbone", "AdaptiveRCNN"
        cfg.MODEL.AIG.GATE_NORM = "LN"
    else:
        cfg.MODEL.BACKBONE.NAME, cfg.MODEL.META_ARCHITECTURE = "build_blockdrop_resnet_backbone", "BlockDropRCNN"
        cfg.MODEL.BLOCKDROP.ALPHA = 1.0  # sample exactly p: a unit with p ~ 0 is never chosen
        cfg.MODEL.BLOCKDROP.POLICY_INPUT_SIZE = 32
        cfg.MODEL.BLOCKDROP.POLICY_NORM = "GN"
    torch.manual_seed(0)
    model = build_model(cfg)
    bb = model.backbone
    if family == "aig":  # gate of SKIPPED closed for every image
        fc2 = bb._block(SKIPPED).gate.fc2
        fc2.weight.data.zero_()
        fc2.bias.data.copy_(torch.tensor([1e4, -1e4]))
    else:
        bb.policy.logit.weight.data.zero_()
        for j, name in enumerate(bb.unit_names):
            bb.policy.logit.bias.data[j] = -20.0 if name == SKIPPED else math.log(0.9 / 0.1)
    return model


def _worker(rank: int, world: int, port: int, family: str, out_dir: str, zero_terms: bool) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model = _model(family)
        if not zero_terms:
            model.backbone.zero_unused_loss = lambda: torch.zeros(())
        ddp = DistributedDataParallel(model, find_unused_parameters=False, broadcast_buffers=False)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
        ddp.train()
        for it in range(2):
            with EventStorage(it):
                losses = ddp(detection_inputs(n=1, h=64, w=64, seed=rank))
            sum(losses.values()).backward()
            opt.step()
            opt.zero_grad()
        executed = model.backbone.last_executed[SKIPPED]
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        torch.save({"params": flat, "skipped_ran": bool(executed.any())}, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _run(family, tmp_path, zero_terms=True):
    mp.spawn(_worker, args=(2, find_free_port(), family, str(tmp_path), zero_terms), nprocs=2, join=True)
    return [torch.load(tmp_path / f"{r}.pt") for r in range(2)]


@pytest.mark.parametrize("family", ["aig", "blockdrop"])
def test_ddp_trains_with_skipped_units_and_stays_in_sync(family, tmp_path):
    r0, r1 = _run(family, tmp_path)
    assert not r0["skipped_ran"] and not r1["skipped_ran"]  # the unit really was skipped by every image
    assert torch.equal(r0["params"], r1["params"])  # gradients were all-reduced over every parameter


def test_ddp_blockdrop_without_zero_terms_fails(tmp_path):
    with pytest.raises(Exception, match="(?s)reduction|unused|did not receive|finished"):
        _run("blockdrop", tmp_path, zero_terms=False)
