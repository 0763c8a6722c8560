"""Trainer: detectron2's DefaultTrainer for SACT Faster R-CNN.

Differences from DefaultTrainer:
- evaluation = COCOEvaluator + FlopsEvaluator (AP next to FLOPs and ponder cost);
- checkpoints are written atomically (AtomicDetectionCheckpointer);
- a resumed run restores the optimizer state (detectron2 0.6 does not save it), continues the
  training data stream where it stopped (ResumableTrainingSampler) and, with
  cfg.SACT_TRAIN.PER_ITER_SEED, draws the same random numbers as an uninterrupted run;
- BN running statistics are averaged over the ranks after every iteration, so every rank holds
  identical weights and statistics (the SACT backbone keeps all units in the training graph even where
  every position halted, so ``find_unused_parameters`` is not needed:
  cfg.SACT_TRAIN.FIND_UNUSED_PARAMETERS);
- optional linear warm-up of the ponder-cost weight tau (cfg.SACT_TRAIN.TAU_WARMUP_*).
"""
import json
import logging
import os
import weakref
from collections import OrderedDict
from typing import Any, Dict, List, Optional

import torch
from detectron2.data import (DatasetCatalog, MetadataCatalog, build_detection_test_loader,
                             build_detection_train_loader, get_detection_dataset_dicts)
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, DatasetEvaluators
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from ..compat import create_ddp_model
from ..data.mapper import SACTDatasetMapper
from ..evaluation.flops_evaluator import FlopsEvaluator
from ..modeling.unit_stats import UnitPolicyEvaluator
from .checkpoint import AtomicDetectionCheckpointer
from .hooks import AverageBuffers, PerIterationSeed, TauWarmup, iteration_seed
from .sampler import ResumableTrainingSampler

__all__ = ["Trainer", "build_mapper", "ensure_registered"]

logger = logging.getLogger(__name__)


def ensure_registered(names) -> None:
    """Register the embedded demo splits if a ``sact_demo_*`` name is asked for and missing."""
    if any(n.startswith("sact_demo_") and n not in DatasetCatalog for n in names):
        from ..data.demo import register_demo_datasets

        register_demo_datasets()


def build_mapper(cfg, is_train: bool) -> SACTDatasetMapper:
    """detectron2's DatasetMapper with errors naming unreadable / too small image files."""
    return SACTDatasetMapper(cfg, is_train)


def _shared_seed(cfg) -> int:
    return int(cfg.SEED) if cfg.SEED >= 0 else int(comm.shared_random_seed())


class Trainer(DefaultTrainer):
    """DefaultTrainer with SACT evaluation, atomic checkpoints and exact resumption (see module doc)."""

    def __init__(self, cfg) -> None:  # mirrors DefaultTrainer.__init__ (detectron2 0.6)
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        self.base_seed = _shared_seed(cfg)
        seed_all_rng(self.base_seed + comm.get_rank())  # reproducible initial weights (DDP copies rank 0's)
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        self.train_sampler: Optional[ResumableTrainingSampler] = None
        data_loader = self._build_resumable_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False,
                                 find_unused_parameters=bool(cfg.SACT_TRAIN.FIND_UNUSED_PARAMETERS))
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(model, data_loader, optimizer)
        self._per_iter_seed = bool(cfg.SACT_TRAIN.PER_ITER_SEED)
        self._restart_data_stream()
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = AtomicDetectionCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_optimizer(cls, cfg, model) -> torch.optim.Optimizer:
        """detectron2's SGD, or AdamW (cfg.SACT_TRAIN.OPTIMIZER) with the same parameter groups."""
        name = cfg.SACT_TRAIN.OPTIMIZER
        if name == "SGD":
            return super().build_optimizer(cfg, model)
        if name != "AdamW":
            raise ValueError(f"cfg.SACT_TRAIN.OPTIMIZER must be 'SGD' or 'AdamW', got {name!r}")
        params = get_default_optimizer_params(
            model, base_lr=cfg.SOLVER.BASE_LR, weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR, weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS)
        return maybe_add_gradient_clipping(cfg, torch.optim.AdamW)(
            params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY)

    # ------------------------------------------------------------------ data
    def _build_resumable_train_loader(self, cfg):
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            logger.warning("DATALOADER.SAMPLER_TRAIN=%s: a resumed run restarts its data stream",
                           cfg.DATALOADER.SAMPLER_TRAIN)
            return self.build_train_loader(cfg)
        ensure_registered(cfg.DATASETS.TRAIN)
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
        self.train_sampler = ResumableTrainingSampler(len(dataset), shuffle=True, seed=self.base_seed)
        return build_detection_train_loader(cfg, mapper=build_mapper(cfg, True), dataset=dataset,
                                            sampler=self.train_sampler)

    @classmethod
    def build_train_loader(cls, cfg):
        ensure_registered(cfg.DATASETS.TRAIN)
        return build_detection_train_loader(cfg, mapper=build_mapper(cfg, True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name: str):
        ensure_registered([dataset_name])
        return build_detection_test_loader(cfg, dataset_name, mapper=build_mapper(cfg, False))

    def _restart_data_stream(self) -> None:
        """(Re)start the training iterator; with per-iteration seeds, torch is reseeded after each batch
        is loaded, so that the model's random draws (RPN / ROI sampling) do not depend on whether the
        data loader consumed random numbers while starting (it does on its first batch)."""
        batches = iter(self._trainer.data_loader)
        self._trainer._data_loader_iter = self._seed_after_fetch(batches) if self._per_iter_seed else batches

    def _seed_after_fetch(self, batches):
        rank = comm.get_rank()
        for batch in batches:
            torch.manual_seed(iteration_seed(self.base_seed, rank, self.iter) ^ 0x2545F491)
            yield batch

    # ------------------------------------------------------------------ evaluation
    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str, output_folder: Optional[str] = None) -> DatasetEvaluator:
        """COCOEvaluator (bbox AP) + FlopsEvaluator (FLOPs, ponder cost) + UnitPolicyEvaluator (the AIG /
        BlockDrop seeds' block usage, unique policies, per-unit rates; reports nothing for SACT / dense)."""
        ensure_registered([dataset_name])
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        evaluators: List[DatasetEvaluator] = []
        if cfg.SACT_EVAL.COCO:
            json_file = MetadataCatalog.get(dataset_name).get("json_file")
            if json_file and "://" not in json_file and not os.path.exists(json_file):
                DatasetCatalog.get(dataset_name)  # generated data sets (demo) write their json on first use
            evaluators.append(COCOEvaluator(dataset_name, output_dir=output_folder))
        evaluators.append(FlopsEvaluator(cfg, dataset_name))
        evaluators.append(UnitPolicyEvaluator())
        return DatasetEvaluators(evaluators)

    @classmethod
    def test(cls, cfg, model, evaluators=None) -> "OrderedDict":
        """detectron2's test(); the results are also written to OUTPUT_DIR/eval_results.json."""
        results = super().test(cfg, model, evaluators)
        if comm.is_main_process() and cfg.OUTPUT_DIR and len(cfg.DATASETS.TEST):
            per_dataset = results if len(cfg.DATASETS.TEST) > 1 else {cfg.DATASETS.TEST[0]: results}
            write_eval_results(cfg, per_dataset)
        return results

    # ------------------------------------------------------------------ hooks / resume
    def build_hooks(self) -> list:
        ret = super().build_hooks()
        extra = []
        if comm.get_world_size() > 1:
            extra.append(AverageBuffers())
        if self.cfg.SACT_TRAIN.PER_ITER_SEED:
            extra.append(PerIterationSeed(self.base_seed))
        if self.cfg.SACT_TRAIN.TAU_WARMUP_ITERS > 0 or self.cfg.SACT_TRAIN.TAU_WARMUP_START > 0:
            extra.append(TauWarmup(self.model, self.cfg.SACT_TRAIN.TAU_WARMUP_START,
                                   self.cfg.SACT_TRAIN.TAU_WARMUP_ITERS))
        return extra + ret

    def state_dict(self) -> Dict[str, Any]:
        """Iteration, hook states and the optimizer (detectron2 0.6's DefaultTrainer omits the optimizer,
        so momentum buffers would be lost on resume; newer detectron2 stores it under the same key)."""
        ret = super().state_dict()
        ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
        else:
            logger.warning("The checkpoint has no optimizer state (written by detectron2 0.6's DefaultTrainer?): "
                           "the optimizer restarts with empty momentum buffers")

    def resume_or_load(self, resume: bool = True) -> None:
        """Load the last checkpoint (``resume``) or MODEL.WEIGHTS; a resumed run continues the
        data stream and the per-iteration seeds exactly where the checkpointed run was."""
        if resume:
            self.checkpointer.remove_stale_temporaries()
        super().resume_or_load(resume=resume)
        for h in self._hooks:
            if isinstance(h, PerIterationSeed):
                self.base_seed = h.base_seed  # restored from the checkpoint
        if self.start_iter > 0 and self.train_sampler is not None:
            per_rank = self.cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
            self.train_sampler.set_seed(self.base_seed)
            self.train_sampler.set_start(self.start_iter * per_rank)
            self._restart_data_stream()
            logger.info("Resuming at iteration %d (data stream at image %d of each rank)",
                        self.start_iter, self.start_iter * per_rank)


def write_eval_results(cfg, per_dataset: Dict[str, Any]) -> str:
    """Write {"datasets": {name: results}, "sact": {mode, tau, depth}} to OUTPUT_DIR/eval_results.json."""
    from .checkpoint import atomic_write

    path = os.path.join(cfg.OUTPUT_DIR, "eval_results.json")
    payload = {"datasets": _to_builtin(per_dataset),
               "sact": {"mode": cfg.MODEL.SACT.MODE, "tau": float(cfg.MODEL.SACT.TAU),
                        "depth": int(cfg.MODEL.RESNETS.DEPTH)}}
    atomic_write(path, lambda f: f.write(json.dumps(payload, indent=1).encode()))
    return path


def _to_builtin(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _to_builtin(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_builtin(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    return obj
