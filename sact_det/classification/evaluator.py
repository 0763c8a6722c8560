"""Evaluation as in the original SACT, ConvNet-AIG and BlockDrop code: accuracy, mean loss, per-image
FLOPs mean / std, and each family's statistics: per-stage ponder cost and units executed (SACT /
ACT), block usage, unique policies and per-unit execution rates (AIG / BlockDrop). Runs sharded over processes (detectron2's
InferenceSampler) and gathers per-image records, so every image counts exactly once.
"""
import json
import logging
import os
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.data.samplers import InferenceSampler
from detectron2.utils import comm
from torch.utils.data import DataLoader, Dataset, Subset

from ..evaluation.unit_stats import format_unit_policy_stats, unit_policy_stats
from ..modeling.meta_arch.classifier import AdaptiveClassifier, classifier_flops

__all__ = ["evaluate_classifier", "evaluate_checkpoint", "format_metrics", "write_metrics_json", "TransformedDataset"]

logger = logging.getLogger(__name__)


class TransformedDataset(Dataset):
    """(PIL image, label) dataset -> (transform(image), label)."""

    def __init__(self, base: Dataset, transform) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, label = self.base[index]
        return self.transform(image), label


SACT_FAMILIES = ("sact", "act")
POLICY_FAMILIES = ("aig", "blockdrop")


def _per_image_records(model: AdaptiveClassifier, images: torch.Tensor, labels: torch.Tensor, tau: float
                       ) -> Dict[str, np.ndarray]:
    """One batch -> per-image records (first axis B): ce, top1, top5, loss, flops, dense_flops, and
    per family: SACT / ACT <stage>/ponder_cost, num_units, units_run, flops; AIG / BlockDrop policy (B,U)."""
    logits = model(images)
    b = images.shape[0]
    ce = F.cross_entropy(logits, labels, reduction="none")
    k = min(5, logits.shape[1])
    topk = logits.topk(k, dim=1).indices
    rec = {"ce": ce, "top1": (topk[:, 0] == labels).float(), "top5": (topk == labels[:, None]).any(1).float()}
    rec["flops"] = torch.tensor([model.image_flops(i) for i in range(b)], dtype=torch.float64)
    rec["dense_flops"] = torch.full((b,), model.dense_flops(images.shape[-2:]), dtype=torch.float64)
    ponder_total = torch.zeros(b, device=logits.device)
    if model.family in SACT_FAMILIES or model.family == "dense":
        for name, p in model.ponders.items():
            rho = p.ponder_cost.flatten(1).mean(1)
            ponder_total = ponder_total + rho
            rec[f"{name}/ponder_cost"] = rho
            rec[f"{name}/num_units"] = p.num_units.flatten(1).mean(1)
            ran = [m.flatten(1).any(1).float() for m in p.masks]
            rec[f"{name}/units_run"] = 1.0 + (torch.stack(ran, 1).sum(1) if ran else torch.zeros(b, device=logits.device))
        for name, f in classifier_flops(model, images.shape[-2:], b).items():
            if name in model.backbone.stage_names:
                rec[f"{name}/flops"] = f
    elif model.family in POLICY_FAMILIES:
        policies = [model.backbone.image_outputs(i)["unit_policy"] for i in range(b)]
        rec["policy"] = torch.tensor([[bool(v) for v in p.values()] for p in policies], dtype=torch.bool)
    rec["loss"] = ce + tau * ponder_total
    return {key: v.detach().cpu().numpy() if v.dtype == torch.bool else v.detach().double().cpu().numpy()
            for key, v in rec.items()}


@torch.no_grad()
def evaluate_classifier(model: AdaptiveClassifier, dataset: Dataset, *, batch_size: int, tau: float, device: str = "cpu",
                        num_workers: int = 0, max_images: int = 0, progress: bool = False) -> Dict[str, Any]:
    """Evaluate on ``dataset`` (items: normalised tensor, label) over all processes; every process
    returns the same metrics dict (see :func:`format_metrics` for the printed names)."""
    model = getattr(model, "module", model)
    was_training = model.training
    model.eval()
    if max_images > 0 and max_images < len(dataset):
        dataset = Subset(dataset, range(max_images))
    loader = DataLoader(dataset, batch_size=batch_size, sampler=InferenceSampler(len(dataset)),
                        num_workers=num_workers)
    if progress and comm.is_main_process():
        from tqdm import tqdm

        loader = tqdm(loader, desc="eval", leave=False, dynamic_ncols=True)
    chunks: List[Dict[str, np.ndarray]] = []
    for images, labels in loader:
        chunks.append(_per_image_records(model, images.to(device), labels.to(device), tau))
    model.train(was_training)
    gathered = [c for part in comm.all_gather(chunks) for c in part]
    records = {k: np.concatenate([c[k] for c in gathered]) for k in gathered[0]}
    return summarize(records, model)


def summarize(records: Dict[str, np.ndarray], model: AdaptiveClassifier) -> Dict[str, Any]:
    """Per-image records -> metrics (means over images; std = standard deviation over images)."""
    flops, dense = records["flops"], float(records["dense_flops"][0])
    bb = model.backbone
    out: Dict[str, Any] = {
        "num_images": int(len(flops)), "family": model.family,
        "top1": float(records["top1"].mean()), "top5": float(records["top5"].mean()),
        "mean_loss": float(records["loss"].mean()), "mean_ce": float(records["ce"].mean()),
        "flops_mean": float(flops.mean()), "flops_std": float(flops.std()), "flops_min": float(flops.min()),
        "flops_max": float(flops.max()), "dense_flops": dense, "flops_ratio": float(flops.mean() / dense),
        "stages": {},
    }
    unit_names = list(bb.unit_names) if "policy" in records else []
    if unit_names:
        policies = [dict(zip(unit_names, row.tolist())) for row in records["policy"]]
        out["unit_policy"] = unit_policy_stats(policies, flops.tolist())
    for name, stage in zip(bb.stage_names, bb.stages):
        st: Dict[str, Any] = {"units": len(stage)}
        if f"{name}/flops" in records:
            st.update(flops_mean=float(records[f"{name}/flops"].mean()), flops_std=float(records[f"{name}/flops"].std()))
        if f"{name}/ponder_cost" in records:
            rho, n = records[f"{name}/ponder_cost"], records[f"{name}/num_units"]
            st.update(ponder_cost_mean=float(rho.mean()), ponder_cost_std=float(rho.std()),
                      num_units_mean=float(n.mean()), num_units_executed_mean=float(records[f"{name}/units_run"].mean()),
                      num_units_executed_max=int(records[f"{name}/units_run"].max()))
        cols = [i for i, u in enumerate(unit_names) if u.split(".")[0] == name]
        if cols:  # AIG / BlockDrop: units of this stage the policy decides, executed per image
            ran = records["policy"][:, cols].sum(1) + (len(stage) - len(cols))
            st.update(num_units_executed_mean=float(ran.mean()), num_units_executed_max=int(ran.max()))
        out["stages"][name] = st
    return out


def format_metrics(m: Dict[str, Any]) -> str:
    """Lines in the original implementations' style, e.g. ``Total Flops/mean[82393168]``; SACT / ACT add
    per-stage ponder cost, AIG / BlockDrop the seeds' block usage, unique policies and unit rates."""
    def g(v: float) -> str:
        return f"{v:.8g}"

    lines = [f"eval/Accuracy[{g(m['top1'])}]", f"eval/Top-5 Accuracy[{g(m['top5'])}]",
             f"eval/Mean Loss[{g(m['mean_loss'])}]", f"eval/Mean Cross-Entropy[{g(m['mean_ce'])}]",
             f"Total Flops/mean[{g(m['flops_mean'])}]", f"Total Flops/std[{g(m['flops_std'])}]",
             f"Total Flops/dense[{g(m['dense_flops'])}]", f"Total Flops/ratio[{m['flops_ratio']:.4f}]"]
    for name, st in m["stages"].items():
        if "flops_mean" in st:
            lines += [f"{name}/flops_mean[{g(st['flops_mean'])}]", f"{name}/flops_std[{g(st['flops_std'])}]"]
        if "ponder_cost_mean" in st:
            lines += [f"{name}/ponder_cost_mean[{g(st['ponder_cost_mean'])}]",
                      f"{name}/ponder_cost_std[{g(st['ponder_cost_std'])}]",
                      f"{name}/num_units_mean[{g(st['num_units_mean'])}]"]
        if "num_units_executed_mean" in st:
            lines.append(f"{name}/num_units_executed[{g(st['num_units_executed_mean'])} of {st['units']}, "
                         f"max {st['num_units_executed_max']}]")
    if "unit_policy" in m:
        lines.append(format_unit_policy_stats(m["unit_policy"]))
    lines.append(f"eval/num_images[{m['num_images']}]")
    return "\n".join(lines)


def write_metrics_json(metrics: Dict[str, Any], path: str, extra: Optional[Dict[str, Any]] = None) -> None:
    """Write ``metrics`` (+ ``extra``) as indented JSON (parent folders created)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({**metrics, **(extra or {})}, f, indent=2, sort_keys=True)


def evaluate_checkpoint(cfg, weights: str, json_path: Optional[str] = None, progress: bool = True) -> Dict[str, Any]:
    """Evaluate-once: build the classifier for cfg.SACT_CLS.DATA.TEST_SPLIT's classes, load ``weights``
    (an error names the file when its class count differs), print and write JSON (main process)."""
    from ..data.classification import build_classification_dataset, build_transform
    from ..modeling.meta_arch.classifier import build_classifier
    from .checkpoint import load_classifier_weights
    from .config import validate_classification_cfg

    validate_classification_cfg(cfg)
    test_set = build_classification_dataset(cfg, cfg.SACT_CLS.DATA.TEST_SPLIT)
    model = build_classifier(cfg, len(test_set.class_names)).to(cfg.MODEL.DEVICE)
    load_classifier_weights(model, weights)
    m = evaluate_classifier(model, TransformedDataset(test_set, build_transform(cfg, train=False)),
                            batch_size=max(1, int(cfg.SACT_CLS.TEST.IMS_PER_BATCH) // comm.get_world_size()),
                            tau=float(cfg.MODEL.SACT.TAU), device=cfg.MODEL.DEVICE,
                            num_workers=cfg.DATALOADER.NUM_WORKERS, max_images=int(cfg.SACT_CLS.DATA.MAX_TEST_IMAGES),
                            progress=progress)
    if comm.is_main_process():
        print(format_metrics(m), flush=True)
        path = json_path or os.path.join(cfg.OUTPUT_DIR, "inference", "eval_once.json")
        write_metrics_json(m, path, {"weights": os.path.abspath(weights)})
        logger.info("metrics written to %s", path)
    return m
