"""Trainer: detectron2's DefaultTrainer for SACT Faster R-CNN, built only on its public extension points.

The Trainer subclasses DefaultTrainer and overrides the builders and hooks that detectron2 0.6
and detectron2 main both expose (``build_optimizer``, ``build_train_loader``, ``build_test_loader``,
``build_evaluator``, ``build_hooks``, ``test``, ``resume_or_load``, ``state_dict``) and uses only
public attributes (``model``, ``data_loader``, ``optimizer``, ``checkpointer``, ``cfg``); it does
not copy ``DefaultTrainer.__init__``. On top of DefaultTrainer:

- evaluation = COCOEvaluator + FlopsEvaluator (AP next to FLOPs and ponder cost), results also
  written to OUTPUT_DIR/eval_results.json;
- checkpoints are written atomically (AtomicDetectionCheckpointer);
- a resumed run restores the optimizer state (detectron2 0.6's DefaultTrainer does not save it),
  continues the training data stream where it stopped (ResumableTrainLoader) and, with
  cfg.SACT_TRAIN.PER_ITER_SEED, draws the same random numbers as an uninterrupted run;
- cfg.SEED < 0 is replaced by one seed shared by all ranks (the trainer's ``cfg.SEED``), which
  seeds the initial weights, the data stream and the per-iteration seeds;
- BN running statistics are averaged over the ranks after every iteration, so every rank holds
  identical weights and statistics (the SACT backbone keeps all units in the training graph even where
  every position halted, so ``find_unused_parameters`` is not needed:
  cfg.SACT_TRAIN.FIND_UNUSED_PARAMETERS);
- optional linear warm-up of the ponder-cost weight tau (cfg.SACT_TRAIN.TAU_WARMUP_*);
- SGD or AdamW (cfg.SACT_TRAIN.OPTIMIZER).
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
from detectron2.engine import DefaultTrainer, TrainerBase
from detectron2.engine import defaults as d2_defaults
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, DatasetEvaluators
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

from ..data.demo import ensure_registered
from ..data.mapper import SACTDatasetMapper
from ..evaluation.flops_evaluator import FlopsEvaluator
from ..evaluation.unit_stats import UnitPolicyEvaluator
from ..utils.atomic import atomic_write
from .checkpoint import AtomicDetectionCheckpointer
from .hooks import AverageBuffers, PerIterationSeed, TauWarmup, unwrap_model
from .sampler import ResumableTrainingSampler, ResumableTrainLoader

__all__ = ["Trainer", "build_mapper", "with_shared_seed"]

logger = logging.getLogger(__name__)


def build_mapper(cfg, is_train: bool) -> SACTDatasetMapper:
    """detectron2's DatasetMapper with errors naming unreadable / too small image files."""
    return SACTDatasetMapper(cfg, is_train)


def with_shared_seed(cfg):
    """``cfg`` if cfg.SEED >= 0, else a copy whose SEED is one random seed shared by all ranks."""
    if cfg.SEED >= 0:
        return cfg
    cfg = cfg.clone()
    frozen = cfg.is_frozen()
    cfg.defrost()
    cfg.SEED = int(comm.shared_random_seed())
    if frozen:
        cfg.freeze()
    return cfg


class Trainer(DefaultTrainer):
    """DefaultTrainer with SACT evaluation, atomic checkpoints and exact resumption (see module doc)."""

    def __init__(self, cfg) -> None:
        cfg = with_shared_seed(cfg)
        self.base_seed = int(cfg.SEED)
        self.seed_hook: Optional[PerIterationSeed] = None
        seed_all_rng(self.base_seed + comm.get_rank())  # reproducible initial weights (DDP copies rank 0's)
        super().__init__(cfg)  # build_model, build_optimizer, build_train_loader, DDP, build_hooks
        if isinstance(self.data_loader, ResumableTrainLoader) and cfg.SACT_TRAIN.PER_ITER_SEED:
            self.data_loader.seed_each_batch(self.base_seed)

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
    @classmethod
    def build_train_loader(cls, cfg):
        """detectron2's training loader with SACT's mapper. With DATALOADER.SAMPLER_TRAIN
        "TrainingSampler" (the default), a ResumableTrainLoader whose stream (seeded with cfg.SEED)
        can be continued at any image; other samplers restart their stream on resume (warning)."""
        ensure_registered(cfg.DATASETS.TRAIN)
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            logger.warning("DATALOADER.SAMPLER_TRAIN=%s: a resumed run restarts its data stream",
                           cfg.DATALOADER.SAMPLER_TRAIN)
            return build_detection_train_loader(cfg, mapper=build_mapper(cfg, True))
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
        sampler = ResumableTrainingSampler(len(dataset), shuffle=True, seed=cfg.SEED if cfg.SEED >= 0 else None)
        loader = build_detection_train_loader(cfg, mapper=build_mapper(cfg, True), dataset=dataset, sampler=sampler)
        return ResumableTrainLoader(loader, sampler)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name: str):
        ensure_registered([dataset_name])
        return build_detection_test_loader(cfg, dataset_name, mapper=build_mapper(cfg, False))

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
        """DefaultTrainer's hooks, preceded by BN-statistics averaging (DDP), per-iteration seeds and
        the tau warm-up. Called at the end of DefaultTrainer.__init__, once model, optimizer and
        checkpointer exist: first replaces the checkpointer by the atomic one (so that the
        PeriodicCheckpointer hook uses it) and, with cfg.SACT_TRAIN.FIND_UNUSED_PARAMETERS, the DDP
        wrapper by one that finds unused parameters."""
        self._use_sact_components()
        ret = super().build_hooks()
        extra = []
        if comm.get_world_size() > 1:
            extra.append(AverageBuffers())
        if self.cfg.SACT_TRAIN.PER_ITER_SEED:
            self.seed_hook = PerIterationSeed(self.base_seed)
            extra.append(self.seed_hook)
        if self.cfg.SACT_TRAIN.TAU_WARMUP_ITERS > 0 or self.cfg.SACT_TRAIN.TAU_WARMUP_START > 0:
            extra.append(TauWarmup(self.model, self.cfg.SACT_TRAIN.TAU_WARMUP_START,
                                   self.cfg.SACT_TRAIN.TAU_WARMUP_ITERS))
        return extra + ret

    def _use_sact_components(self) -> None:
        find_unused = bool(self.cfg.SACT_TRAIN.FIND_UNUSED_PARAMETERS)
        if comm.get_world_size() > 1 and getattr(self.model, "find_unused_parameters", find_unused) != find_unused:
            # DefaultTrainer wraps with find_unused_parameters=False; rewrap the bare model with the function
            # it uses (through the public `model` property) before any hook or checkpointer holds the first wrapper
            self.model = d2_defaults.create_ddp_model(unwrap_model(self.model), broadcast_buffers=False,
                                                      find_unused_parameters=find_unused)
        if not isinstance(self.checkpointer, AtomicDetectionCheckpointer):
            self.checkpointer = AtomicDetectionCheckpointer(self.model, self.cfg.OUTPUT_DIR,
                                                            trainer=weakref.proxy(self))

    def state_dict(self) -> Dict[str, Any]:
        """Iteration, hook states and, under "_trainer", the optimizer state. detectron2 main's
        DefaultTrainer stores its SimpleTrainer's state (optimizer, AMP grad scaler) there; 0.6's
        stores none, so the optimizer is added under the same key (same checkpoint layout on both)."""
        ret = super().state_dict()
        if "_trainer" not in ret:
            ret["_trainer"] = {"iteration": self.iter, "optimizer": self.optimizer.state_dict()}
        return ret

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        if "_trainer" not in state_dict:
            logger.warning("The checkpoint has no optimizer state (written by detectron2 0.6's DefaultTrainer?): "
                           "the optimizer restarts with empty momentum buffers")
            TrainerBase.load_state_dict(self, state_dict)
            return
        super().load_state_dict(state_dict)
        if not _D2_RESTORES_OPTIMIZER:
            self.optimizer.load_state_dict(state_dict["_trainer"]["optimizer"])

    def resume_or_load(self, resume: bool = True) -> None:
        """Load the last checkpoint (``resume``) or MODEL.WEIGHTS; a resumed run continues the
        data stream and the per-iteration seeds exactly where the checkpointed run was."""
        if resume:
            self.checkpointer.remove_stale_temporaries()
        super().resume_or_load(resume=resume)
        if self.seed_hook is not None:
            self.base_seed = self.seed_hook.base_seed  # restored from the checkpoint
        loader = self.data_loader
        if isinstance(loader, ResumableTrainLoader):
            per_rank = self.cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
            loader.set_position(self.start_iter * per_rank, self.base_seed)
            if self.seed_hook is not None:
                loader.seed_each_batch(self.base_seed)
            if self.start_iter > 0:
                logger.info("Resuming at iteration %d (data stream at image %d of each rank)",
                            self.start_iter, self.start_iter * per_rank)


# detectron2 > 0.6: DefaultTrainer.load_state_dict restores the optimizer (and AMP grad scaler) itself
_D2_RESTORES_OPTIMIZER = "load_state_dict" in vars(DefaultTrainer)


def write_eval_results(cfg, per_dataset: Dict[str, Any]) -> str:
    """Write {"datasets": {name: results}, "sact": {mode, tau, depth}} to OUTPUT_DIR/eval_results.json."""
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
