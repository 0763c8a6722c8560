"""Training of the classification tool on detectron2's engine (one process per device; DDP when world size > 1).

:class:`ClassifierTrainer` is a detectron2 ``SimpleTrainer`` whose ``run_step`` adds the backbone
family's losses (:func:`classification_losses`), with detectron2's hooks as the detection
``Trainer`` has them: ``IterationTimer``, ``LRScheduler`` (a MultiStepLR from cfg.SACT_CLS.SOLVER),
``PeriodicCheckpointer`` with the atomic checkpointer, ``EvalHook`` and ``PeriodicWriter``
(``CommonMetricPrinter``, ``JSONWriter`` -> OUTPUT_DIR/metrics.json, ``TensorboardXWriter`` ->
OUTPUT_DIR/tensorboard), plus the detection side's ``AverageBuffers`` (BN statistics averaged over
the ranks after every step) and ``PerIterationSeed``. Iterations, checkpoint names and the stored
``iteration`` follow detectron2: 0-based, ``model_<i>.pth`` after iteration i, resume at i + 1.

Resume loses nothing: the sample order of every epoch and the augmentation of every sample are
pure functions of (seed, epoch, index), the torch / numpy RNGs are reseeded per iteration, the
checkpoint holds model, optimizer, scheduler, seed, iteration and hook states, and checkpoints are
written atomically (temporaries of killed runs removed at start). SIGINT / SIGTERM stop the run at
the next iteration boundary with a checkpoint (all processes agree on the stop iteration).
"""
import contextlib
import logging
import os
import signal
import time
import weakref
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from detectron2.engine import SimpleTrainer, hooks
from detectron2.solver.build import get_default_optimizer_params
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter
from torch.utils.data import DataLoader, Dataset

from ..compat import create_ddp_model
from ..data.classification import build_classification_dataset, build_transform
from ..engine.hooks import AverageBuffers, PerIterationSeed, unwrap_model
from ..modeling.meta_arch.classifier import build_classifier
from ..utils.atomic import remove_stale_temporaries
from .checkpoint import ClassifierCheckpointer, load_classifier_weights
from .config import validate_classification_cfg
from .evaluator import TransformedDataset, evaluate_classifier, format_metrics, write_metrics_json
from .losses import classification_losses, prepare_classifier_training

__all__ = ["train_classifier", "train_step", "ClassifierTrainer", "EpochBatchLoader", "epoch_batches", "SeededDataset"]

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


class EpochBatchLoader:
    """Endless (images, labels) batches of this process from :func:`epoch_batches`, starting at
    iteration ``start_iter`` with ``seed`` (both read when iteration begins, i.e. after resume)."""

    def __init__(self, dataset: SeededDataset, batch_size: int, num_workers: int, seed: int) -> None:
        self.dataset, self.batch_size, self.num_workers = dataset, int(batch_size), int(num_workers)
        self.seed, self.start_iter = int(seed), 0
        self.iters_per_epoch = len(dataset) // self.batch_size

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        it = self.start_iter
        while True:
            epoch, first = divmod(it, self.iters_per_epoch)
            batches = epoch_batches(len(self.dataset), self.batch_size, self.seed, epoch, comm.get_rank(),
                                    comm.get_world_size())[first:]
            for batch in DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers):
                it += 1
                yield batch


class ClassifierTrainer(SimpleTrainer):
    """SimpleTrainer for (images (B,3,H,W), labels (B,)) batches: loss = cross-entropy + the backbone
    family's losses (ponder cost, AIG target rates, BlockDrop policy curriculum)."""

    def __init__(self, cfg, model: torch.nn.Module, data_loader: EpochBatchLoader,
                 optimizer: torch.optim.Optimizer) -> None:
        super().__init__(model, data_loader, optimizer)
        self.cfg = cfg
        self._batches: Optional[Iterator] = None

    def run_step(self) -> None:
        assert self.model.training, "[ClassifierTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        if self._batches is None:
            self._batches = iter(self.data_loader)
        images, labels = next(self._batches)
        data_time = time.perf_counter() - start
        losses, logits = train_step(self.model, self.optimizer, images, labels, self.cfg, self.iter)
        self._write_metrics(losses, data_time)
        stats = {"train_top1": float((logits.argmax(1) == labels.to(logits.device)).float().mean())}
        stats.update(unwrap_model(self.model).backbone.log_statistics())  # ponder/<stage>_mean, units/..., per family
        self.storage.put_scalars(**stats)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
               cfg, iteration: int) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
    """One SGD step on cross-entropy + the backbone family's losses (:func:`classification_losses`) for
    images (B,3,H,W) and labels (B,) on cfg.MODEL.DEVICE; returns (losses, logits (B,K))."""
    device = cfg.MODEL.DEVICE
    images, labels = images.to(device), labels.to(device)
    logits = model(images)
    losses = classification_losses(model, images, logits, labels, cfg, iteration=iteration)
    loss = sum(losses.values())
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss became {loss.item()} at iteration {iteration}: {losses}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return losses, logits

class StopOnSignal(hooks.HookBase):
    """After every step: if any process got SIGINT / SIGTERM (``flag["stop"]``), save a checkpoint of
    this iteration and raise KeyboardInterrupt (placed before the checkpoint / evaluation hooks)."""

    def __init__(self, flag: Dict[str, bool], checkpointer: ClassifierCheckpointer, device: str) -> None:
        self.flag, self.checkpointer, self.device = flag, checkpointer, device

    def after_step(self) -> None:
        if _any_process(self.flag["stop"], self.device):
            it = self.trainer.iter
            self.checkpointer.save(f"model_{it:07d}", iteration=it)
            comm.synchronize()
            raise KeyboardInterrupt(f"stopped by a signal after iteration {it}; resume with --resume")


class ProgressBar(hooks.HookBase):
    """tqdm bar over the iterations (main process)."""

    def before_train(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=self.trainer.max_iter, initial=self.trainer.start_iter, desc="train", dynamic_ncols=True)

    def after_step(self) -> None:
        self.bar.update(1)

    def after_train(self) -> None:
        self.bar.close()


def train_classifier(cfg, resume: bool = False, progress: bool = True) -> Dict[str, Any]:
    """Train (or resume) per cfg; evaluates every EVAL_PERIOD and at the end; returns the last metrics."""
    validate_classification_cfg(cfg)
    s, device, out_dir = cfg.SACT_CLS.SOLVER, cfg.MODEL.DEVICE, cfg.OUTPUT_DIR
    world = comm.get_world_size()
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
    # BN policy of the detection Trainer: no DDP buffer broadcast, buffers averaged after every step
    ddp = create_ddp_model(model, broadcast_buffers=False, find_unused_parameters=model.family != "dense")
    loader = EpochBatchLoader(SeededDataset(train_set, build_transform(cfg, train=True)), int(s.IMS_PER_BATCH),
                              cfg.DATALOADER.NUM_WORKERS, seed)
    trainer = ClassifierTrainer(cfg, ddp, loader, optimizer)
    extra = {"seed": seed, "num_classes": num_classes, "class_names": class_names, "config": cfg.dump()}
    checkpointer = ClassifierCheckpointer(model, out_dir, extra, optimizer=optimizer, scheduler=scheduler,
                                          trainer=weakref.proxy(trainer))
    test_data = TransformedDataset(test_set, build_transform(cfg, train=False))
    result: Dict[str, Any] = {}

    def evaluate() -> Dict[str, float]:
        it = trainer.iter + 1 if trainer.iter < max_iter else max_iter  # iterations done
        m = evaluate_classifier(model, test_data, batch_size=max(1, int(cfg.SACT_CLS.TEST.IMS_PER_BATCH) // world),
                                tau=float(cfg.MODEL.SACT.TAU), device=device, num_workers=cfg.DATALOADER.NUM_WORKERS,
                                max_images=int(cfg.SACT_CLS.DATA.MAX_TEST_IMAGES))
        if comm.is_main_process():
            logger.info("evaluation after %d iterations:\n%s", it, format_metrics(m))
            write_metrics_json(m, os.path.join(out_dir, "inference", f"eval_{it:07d}.json"), {"iteration": it})
        result.clear()
        result.update(m)
        return {f"eval/{k}": float(m[k]) for k in ("top1", "top5", "mean_loss", "flops_mean", "flops_std")}

    with _stop_on_signals() as flag:
        hook_list: List[hooks.HookBase] = [hooks.IterationTimer(), hooks.LRScheduler(optimizer, scheduler)]
        if world > 1:
            hook_list.append(AverageBuffers())
        seed_hook = PerIterationSeed(seed)
        hook_list += [seed_hook, StopOnSignal(flag, checkpointer, device),
                      hooks.PeriodicCheckpointer(checkpointer, ckpt_period, max_iter=max_iter,
                                                 max_to_keep=int(s.MAX_TO_KEEP) or None),
                      hooks.EvalHook(eval_period, evaluate)]
        if comm.is_main_process():
            os.makedirs(out_dir, exist_ok=True)
            writers = [CommonMetricPrinter(max_iter), JSONWriter(os.path.join(out_dir, "metrics.json")),
                       TensorboardXWriter(os.path.join(out_dir, "tensorboard"))]
            hook_list.append(hooks.PeriodicWriter(writers, period=int(s.LOG_PERIOD)))
            if progress:
                hook_list.append(ProgressBar())
        trainer.register_hooks(hook_list)

        if comm.is_main_process():
            removed = remove_stale_temporaries(out_dir) if os.path.isdir(out_dir) else 0
            if removed:
                logger.info("removed %d stale checkpoint temporaries from %s", removed, out_dir)
        comm.synchronize()
        start_iter = 0
        if resume and checkpointer.has_checkpoint():
            state = checkpointer.resume_or_load("", resume=True)  # model, optimizer, scheduler, trainer (iter, hooks)
            start_iter, seed = trainer.iter + 1, int(state["seed"])
            loader.seed = seed
            logger.info("resumed from %s at iteration %d", checkpointer.get_checkpoint_file(), start_iter)
        elif cfg.MODEL.WEIGHTS:
            load_classifier_weights(model, cfg.MODEL.WEIGHTS, reset_fc=cfg.SACT_CLS.RESET_FC)
        loader.start_iter = start_iter
        trainer.train(start_iter, max_iter)
    comm.synchronize()
    return dict(result)
