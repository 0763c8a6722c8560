"""Training loop of the classification tool (one process per device; DDP when world size > 1).

Resume loses nothing: the sample order of every epoch and the augmentation of every sample are
pure functions of (seed, epoch, index), the checkpoint holds model, optimizer, scheduler, seed
and iteration, and checkpoints are written atomically. SIGINT / SIGTERM stop the run at the next
iteration boundary with a checkpoint (all processes agree on the stop iteration).
"""
import contextlib
import json
import logging
import os
import signal
from typing import Any, Dict, Iterator, List, Tuple

import numpy as np
import torch
import torch.distributed as dist
from detectron2.solver.build import get_default_optimizer_params
from detectron2.utils import comm
from torch.utils.data import DataLoader, Dataset

from ..compat import create_ddp_model
from ..data.classification import build_classification_dataset, build_transform
from ..modeling.classifier import build_classifier
from .checkpoint import last_checkpoint, load_classifier_weights, read_weights, save_checkpoint
from .config import validate_classification_cfg
from .evaluator import TransformedDataset, evaluate_classifier, format_metrics, write_metrics_json
from .losses import classification_losses, prepare_classifier_training

__all__ = ["train_classifier", "epoch_batches", "SeededDataset"]

logger = logging.getLogger("sact_det.classification")


class SeededDataset(Dataset):
    """Items keyed by (index, sample_seed): the training transform runs under that seed."""

    def __init__(self, base: Dataset, transform) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: Tuple[int, int]):
        index, seed = key
        image, label = self.base[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image), label


def epoch_batches(num_samples: int, batch_size: int, seed: int, epoch: int, rank: int, world: int
                  ) -> List[List[Tuple[int, int]]]:
    """This process's batches of ``epoch``: global batches of ``batch_size`` from a seeded permutation
    (incomplete last batch dropped), each split into ``world`` equal parts; items (index, sample_seed)."""
    perm = np.random.default_rng([seed, epoch]).permutation(num_samples)
    sample_seeds = np.random.default_rng([seed, epoch, 1]).integers(0, 2**62, num_samples)  # one per index
    per_rank = batch_size // world
    out = []
    for b in range(num_samples // batch_size):
        idx = perm[b * batch_size + rank * per_rank: b * batch_size + (rank + 1) * per_rank]
        out.append([(int(i), int(sample_seeds[i])) for i in idx])
    return out


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[Dict[str, bool]]:
    """Yield a flag dict set by SIGINT / SIGTERM (handlers restored afterwards; main thread only)."""
    flag = {"stop": False}

    def handler(signum, frame):
        flag["stop"] = True
        logger.warning("signal %d: stopping after this iteration (a checkpoint will be saved)", signum)

    old = {}
    try:
        for s in (signal.SIGINT, signal.SIGTERM):
            old[s] = signal.signal(s, handler)
    except ValueError:  # not in the main thread: no handlers
        pass
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _any_process(flag: bool, device: str) -> bool:
    if comm.get_world_size() == 1:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _sync_buffers(model: torch.nn.Module) -> None:
    """Copy rank 0's BN statistics to every process (DDP broadcasts them before each training forward
    only, so after the last step the processes' running statistics differ slightly)."""
    if comm.get_world_size() > 1:
        for buf in model.buffers():
            dist.broadcast(buf, src=0)


def _setup_data(cfg) -> Tuple[Dataset, Dataset, List[str]]:
    c = cfg.SACT_CLS.DATA
    train = build_classification_dataset(cfg, c.TRAIN_SPLIT)
    test = build_classification_dataset(cfg, c.TEST_SPLIT, class_names=train.class_names)
    return train, test, list(train.class_names)


def _num_classes(cfg, found: int, where: str) -> int:
    n = int(cfg.SACT_CLS.NUM_CLASSES)
    if n and n != found:
        raise ValueError(f"cfg.SACT_CLS.NUM_CLASSES is {n}, but {where} has {found} classes")
    return found


def train_classifier(cfg, resume: bool = False, progress: bool = True) -> Dict[str, Any]:
    """Train (or resume) per cfg; evaluates every EVAL_PERIOD and at the end; returns the last metrics."""
    validate_classification_cfg(cfg)
    s, device, out_dir = cfg.SACT_CLS.SOLVER, cfg.MODEL.DEVICE, cfg.OUTPUT_DIR
    rank, world = comm.get_rank(), comm.get_world_size()
    if int(s.IMS_PER_BATCH) % world:
        raise ValueError(f"cfg.SACT_CLS.SOLVER.IMS_PER_BATCH={s.IMS_PER_BATCH} is not divisible by {world} processes")
    train_set, test_set, class_names = _setup_data(cfg)
    num_classes = _num_classes(cfg, len(class_names), f"{cfg.SACT_CLS.DATA.ROOT} ({cfg.SACT_CLS.DATA.TRAIN_SPLIT})")
    iters_per_epoch = len(train_set) // int(s.IMS_PER_BATCH)
    if iters_per_epoch == 0:
        raise ValueError(f"the training set has {len(train_set)} images, fewer than SOLVER.IMS_PER_BATCH={s.IMS_PER_BATCH}")
    unit = iters_per_epoch if s.UNIT == "epoch" else 1
    max_iter, ckpt_period, eval_period = int(s.MAX_LENGTH) * unit, int(s.CHECKPOINT_PERIOD) * unit, int(s.EVAL_PERIOD) * unit

    seed = int(cfg.SEED) if cfg.SEED >= 0 else comm.shared_random_seed()
    torch.manual_seed(seed)  # model init (DDP then copies rank 0's parameters to every process)
    model = build_classifier(cfg, num_classes).to(device)
    prepare_classifier_training(model)
    optimizer = torch.optim.SGD(
        get_default_optimizer_params(model, base_lr=s.BASE_LR, weight_decay=s.WEIGHT_DECAY,
                                     weight_decay_norm=s.WEIGHT_DECAY_NORM),
        lr=s.BASE_LR, momentum=s.MOMENTUM, nesterov=s.NESTEROV, weight_decay=s.WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [int(x) * unit for x in s.STEPS], gamma=s.GAMMA)
    start_iter = 0
    ckpt = last_checkpoint(out_dir) if resume else None
    if ckpt:
        load_classifier_weights(model, ckpt)
        state = read_weights(ckpt)["checkpoint"]
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_iter, seed = int(state["iteration"]), int(state["seed"])
        logger.info("resumed from %s at iteration %d", ckpt, start_iter)
    elif cfg.MODEL.WEIGHTS:
        load_classifier_weights(model, cfg.MODEL.WEIGHTS, reset_fc=cfg.SACT_CLS.RESET_FC)
    ddp = create_ddp_model(model, broadcast_buffers=True, find_unused_parameters=model.family != "dense")
    data = SeededDataset(train_set, build_transform(cfg, train=True))
    test_data = TransformedDataset(test_set, build_transform(cfg, train=False))
    tau = float(cfg.MODEL.SACT.TAU)
    writer = _Writer(out_dir, enabled=comm.is_main_process())
    bar = _progress(progress and comm.is_main_process(), max_iter, start_iter)

    def state(it: int) -> Dict[str, Any]:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "iteration": it, "seed": seed, "num_classes": num_classes, "class_names": class_names,
                "config": cfg.dump()}

    def evaluate(it: int) -> Dict[str, Any]:
        _sync_buffers(model)
        m = evaluate_classifier(model, test_data, batch_size=max(1, int(cfg.SACT_CLS.TEST.IMS_PER_BATCH) // world),
                                tau=tau, device=device, num_workers=cfg.DATALOADER.NUM_WORKERS,
                                max_images=int(cfg.SACT_CLS.DATA.MAX_TEST_IMAGES))
        if comm.is_main_process():
            logger.info("evaluation at iteration %d:\n%s", it, format_metrics(m))
            write_metrics_json(m, os.path.join(out_dir, "inference", f"eval_{it:07d}.json"), {"iteration": it})
            writer.scalars(it, {"eval/top1": m["top1"], "eval/top5": m["top5"], "eval/mean_loss": m["mean_loss"],
                                "eval/flops_mean": m["flops_mean"], "eval/flops_std": m["flops_std"]})
        return m

    it, metrics = start_iter, {}
    try:
        with _stop_on_signals() as flag:
            while it < max_iter:
                epoch, first = divmod(it, iters_per_epoch)
                batches = epoch_batches(len(train_set), int(s.IMS_PER_BATCH), seed, epoch, rank, world)[first:]
                loader = DataLoader(data, batch_sampler=batches, num_workers=cfg.DATALOADER.NUM_WORKERS)
                model.train()
                for images, labels in loader:
                    images, labels = images.to(device), labels.to(device)
                    losses, logits = _step(ddp, optimizer, scheduler, images, labels, cfg, it)
                    it += 1
                    if it % int(s.LOG_PERIOD) == 0 or it == max_iter:
                        _log(writer, bar, it, losses, logits, labels, model, optimizer)
                    bar.update(1)
                    stop = _any_process(flag["stop"], device)
                    if not stop and ((eval_period and it % eval_period == 0) or it == max_iter):
                        metrics = evaluate(it)
                    if comm.is_main_process() and (stop or it % ckpt_period == 0 or it == max_iter):
                        name = f"model_{it:07d}" if it < max_iter else "model_final"
                        save_checkpoint(out_dir, name, state(it), int(s.MAX_TO_KEEP))
                    if stop:
                        comm.synchronize()
                        raise KeyboardInterrupt(f"stopped by a signal at iteration {it}; resume with --resume")
                    if it >= max_iter:
                        break
        if not metrics:  # resumed a finished run
            metrics = evaluate(it)
    finally:
        bar.close()
        writer.close()
    comm.synchronize()
    return metrics


def _step(ddp, optimizer, scheduler, images, labels, cfg, it: int):
    """One SGD step on cross-entropy + the backbone's losses (classification_losses); returns (losses, logits)."""
    logits = ddp(images)
    losses = classification_losses(ddp, images, logits, labels, cfg, iteration=it)
    loss = sum(losses.values())
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss became {loss.item()} at iteration {it}: {losses}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return losses, logits


def _log(writer, bar, it: int, losses: Dict[str, torch.Tensor], logits, labels, model, optimizer) -> None:
    values = {k: float(v.detach()) for k, v in losses.items()}
    values["total_loss"] = sum(values.values())
    values["train_top1"] = float((logits.argmax(1) == labels).float().mean())
    values["lr"] = optimizer.param_groups[0]["lr"]
    values.update(model.backbone.log_statistics())  # ponder/<stage>_mean, units/..., per family
    if comm.is_main_process():
        writer.scalars(it, values)
        bar.set_postfix({k: f"{v:.3g}" for k, v in values.items() if "/" not in k})
        if not bar.enabled:
            logger.info("iter %d: %s", it, " ".join(f"{k}={v:.4g}" for k, v in values.items()))


class _Writer:
    """TensorBoard (torch.utils.tensorboard) + metrics.json lines, main process only."""

    def __init__(self, out_dir: str, enabled: bool) -> None:
        self.enabled, self.tb, self.path = enabled, None, os.path.join(out_dir, "metrics.json")
        if enabled:
            os.makedirs(out_dir, exist_ok=True)
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(os.path.join(out_dir, "tensorboard"))

    def scalars(self, it: int, values: Dict[str, float]) -> None:
        if not self.enabled:
            return
        for k, v in values.items():
            self.tb.add_scalar(k, v, it)
        with open(self.path, "a") as f:
            f.write(json.dumps({"iteration": it, **values}) + "\n")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class _Bar:
    def __init__(self, enabled: bool, total: int, initial: int) -> None:
        self.enabled, self.tqdm = enabled, None
        if enabled:
            from tqdm import tqdm

            self.tqdm = tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True)

    def update(self, n: int) -> None:
        if self.tqdm is not None:
            self.tqdm.update(n)

    def set_postfix(self, d: Dict[str, str]) -> None:
        if self.tqdm is not None:
            self.tqdm.set_postfix(d, refresh=False)

    def close(self) -> None:
        if self.tqdm is not None:
            self.tqdm.close()


def _progress(enabled: bool, total: int, initial: int) -> _Bar:
    return _Bar(enabled, total, initial)
