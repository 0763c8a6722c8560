"""Compare an original-variant classifier with the original TF code's outputs (``../shared/oracle``).

:func:`probe` runs a classifier built with ``cfg.MODEL.SACT.VARIANT original`` and collects every
quantity the oracle stores (logits, stem / block / head outputs, ponder cost, units, halting
distribution and raw halting probabilities / logits, FLOPs per block and in total) under the
oracle's key names, NCHW. :func:`compare` puts them next to an oracle npz (NHWC, permuted to
NCHW) and returns, per key, the exact match of integers or the float difference scaled as
``max|diff| / max(1, max|ref|)`` (oracle README section 9). :func:`oracle_model` builds the model
of an oracle folder from config and loads its TF checkpoint with :mod:`sact_det.convert`;
:func:`check_oracle_model` runs every variant and input set; :func:`report_table` prints the
largest difference per quantity (tools/oracle_report.py).
"""
import contextlib
import json
import os
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from ..meta_arch.classifier import AdaptiveClassifier, classifier_flops
from ..sact import backbone as _backbone

__all__ = ["probe", "compare", "oracle_block_names", "to_nchw", "oracle_config", "oracle_model", "check_oracle_model",
           "quantity", "report_table", "INTEGER_KEYS", "FLOAT_TOLERANCE", "ORACLE_MODELS"]

ORACLE_MODELS = ("cifar_resnet32_sact", "cifar_resnet32_act", "imagenet_small_sact", "imagenet_small_act",
                 "imagenet_small_dense")
ORACLE_VARIANTS = ("init", "varied")

INTEGER_KEYS = ("flops_total", "flops", "num_units")  # compared exactly (key suffixes)
FLOAT_TOLERANCE = 5e-5  # max|diff| <= 5e-5 * max(1, max|ref|) per array (oracle README section 9)


def oracle_block_names(model: AdaptiveClassifier) -> List[Tuple[str, str]]:
    """[(oracle block name, stage name)]: ImageNet block1..4 / CIFAR block_1..3 -> res2, res3, ..."""
    cifar = hasattr(model, "final_norm")
    return [((f"block_{i}" if cifar else f"block{i}"), name)
            for i, name in enumerate(model.backbone.stage_names, start=1)]


@contextlib.contextmanager
def _recording(model: AdaptiveClassifier) -> Iterator[Dict[str, dict]]:
    """Record, per adaptive stage, the weight p^l of every unit (via HaltingState.step) and the raw
    halting score / logit of every halting branch (forward hooks)."""
    bb = model.backbone
    rec: Dict[str, dict] = {n: {"weights": [], "proba": {}, "logit": {}} for n in bb.adaptive_stages}
    current: List[Optional[str]] = [None]
    original_state = _backbone.HaltingState

    class RecordingState(original_state):  # type: ignore[misc, valid-type]
        def step(self, h, last=False, like=None):
            weight = super().step(h, last=last, like=like)
            rec[current[0]]["weights"].append(weight.detach())
            return weight

    handles = []
    for name in bb.adaptive_stages:
        stage = getattr(bb, name)

        def pre_hook(module, inputs, name=name):
            current[0] = name

        handles.append(stage.register_forward_pre_hook(pre_hook))
        for index, block in enumerate(stage):
            halting = getattr(block, "halting", None)
            if halting is None:
                continue

            def hook(module, inputs, output, name=name, index=index):
                rec[name]["proba"][index] = output.detach()
                rec[name]["logit"][index] = module.logit(inputs[0]).detach()

            handles.append(halting.register_forward_hook(hook))
    _backbone.HaltingState = RecordingState
    try:
        yield rec
    finally:
        _backbone.HaltingState = original_state
        for h in handles:
            h.remove()


def _stack_units(maps: Mapping[int, torch.Tensor], count: int, act: bool) -> np.ndarray:
    """Unit-indexed (B,1,h,w) maps -> SACT (B,count,h,w) / ACT (B,count); NaN for units never run."""
    ref = next(iter(maps.values()))
    out = torch.full((ref.shape[0], count) + ((1, 1) if act else tuple(ref.shape[2:])), float("nan"))
    for k, v in maps.items():
        out[:, k] = v[:, 0]
    return (out[:, :, 0, 0] if act else out).numpy()


@torch.no_grad()
def probe(model: AdaptiveClassifier, images: torch.Tensor) -> Dict[str, np.ndarray]:
    """Run ``model`` (eval mode) on NCHW ``images``; the oracle's quantities under its key names.

    Layouts: feature maps (B,C,h,w); SACT ponder_cost / num_units (B,h,w), halting_distribution
    (B,U,h,w), halting_proba_raw / halting_logit_raw (B,U-1,h,w) (NaN where the unit never ran
    because every position of the batch had halted); ACT the same without h, w.
    """
    model.eval()
    out: Dict[str, np.ndarray] = {}
    stem = model.backbone.stem
    captured: Dict[str, torch.Tensor] = {}
    hooks = [stem.conv1.register_forward_hook(lambda m, i, o: captured.__setitem__("conv1", o.detach())),
             stem.register_forward_hook(lambda m, i, o: captured.__setitem__("stem", o.detach()))]
    try:
        with _recording(model) as rec:
            logits, features = model(images, return_features=True)
    finally:
        for h in hooks:
            h.remove()
    out["logits"] = logits.numpy()
    if hasattr(model, "final_norm"):
        out["stem/conv"] = captured["conv1"].numpy()
        out["head/final_bn"] = features["final_norm"].numpy()
    else:
        out["stem/conv1_ch0-7"] = captured["conv1"][:, :8].numpy()
        out["stem/pool1"] = captured["stem"].numpy()
        out["head/postnorm"] = features["postnorm"].numpy()
        out["head/pool5"] = features["pool5"].numpy()
    flops = classifier_flops(model, images.shape[-2:], images.shape[0])
    out["flops_total"] = flops["total"].numpy().round().astype(np.int64)
    ponders = model.ponders
    for block, name in oracle_block_names(model):
        out[f"{block}/output"] = features[name].numpy()
        out[f"{block}/flops"] = flops[name].numpy().round().astype(np.int64)
        if name not in ponders:
            continue
        p, r = ponders[name], rec[name]
        act = model.family == "act"
        units = len(getattr(model.backbone, name))
        pick = (lambda t: t[:, 0, 0, 0]) if act else (lambda t: t[:, 0])
        out[f"{block}/ponder_cost"] = pick(p.ponder_cost).numpy()
        out[f"{block}/num_units"] = pick(p.num_units).numpy().round().astype(np.int32)
        shape = (p.ponder_cost.shape[0], 1, 1, 1) if act else p.ponder_cost.shape
        weights = {k: w.expand(shape) for k, w in enumerate(r["weights"])}
        dist = np.nan_to_num(_stack_units(weights, units, act), nan=0.0)  # units never run: weight 0
        out[f"{block}/halting_distribution"] = dist
        out[f"{block}/halting_proba_raw"] = _stack_units(r["proba"], units - 1, act)
        out[f"{block}/halting_logit_raw"] = _stack_units(r["logit"], units - 1, act)
    return out


def to_nchw(ref: np.ndarray) -> np.ndarray:
    """An oracle array (NHWC maps, unit axis last) in :func:`probe`'s layout."""
    if ref.ndim == 4:  # [B,h,w,C] maps and SACT [B,h,w,U] per-unit maps
        return np.ascontiguousarray(ref.transpose(0, 3, 1, 2))
    return ref


def compare(got: Mapping[str, np.ndarray], npz: Mapping[str, np.ndarray], input_set: str) -> Dict[str, dict]:
    """Per oracle key of ``input_set`` (except pixels / inputs): {"kind": "int"|"float", "ok": bool,
    "scaled": float (floats: max|diff| / max(1, max|ref|) over the entries :func:`probe` has),
    "exact": bool (ints)}. A key the probe lacks is reported with ok False."""
    report: Dict[str, dict] = {}
    prefix = input_set + "/"
    for full in sorted(k for k in npz.keys() if k.startswith(prefix)):
        key = full[len(prefix):]
        if key in ("pixels", "inputs"):
            continue
        ref = to_nchw(np.asarray(npz[full]))
        if key not in got:
            report[key] = {"kind": "missing", "ok": False}
            continue
        mine = np.asarray(got[key])
        if mine.shape != ref.shape:
            report[key] = {"kind": "shape", "ok": False, "got": mine.shape, "ref": ref.shape}
            continue
        if key.split("/")[-1] in INTEGER_KEYS:
            exact = bool(np.array_equal(mine.astype(np.int64), ref.astype(np.int64)))
            report[key] = {"kind": "int", "ok": exact, "exact": exact,
                           "mismatches": int((mine.astype(np.int64) != ref.astype(np.int64)).sum())}
            continue
        seen = np.isfinite(mine)
        if key.endswith(("halting_proba_raw", "halting_logit_raw")) and ref.ndim == 2:
            # ACT: the original runs every unit on every image, so an image's state keeps changing after it
            # halted; sact_det freezes it (as SACT does). Those later scores weigh nothing: compare the
            # scores of the units each image ran (unit k's score where num_units >= k + 1).
            units = np.asarray(npz[prefix + key.rsplit("/", 1)[0] + "/num_units"])
            seen &= np.arange(ref.shape[1])[None, :] < units[:, None]
        diff = float(np.abs(mine[seen].astype(np.float64) - ref[seen]).max()) if seen.any() else 0.0
        scaled = diff / max(1.0, float(np.abs(ref).max()) if ref.size else 1.0)
        report[key] = {"kind": "float", "ok": scaled <= FLOAT_TOLERANCE, "scaled": scaled, "abs": diff,
                       "compared": int(seen.sum()), "size": int(ref.size)}
    return report


def oracle_config(summary_config: Mapping[str, Any]):
    """Classification cfg of an oracle model from its ``summary.json["config"]`` (net, model_type,
    units, base_channels, halting_eps): VARIANT original, halting in every block, BN."""
    from ...classification.config import get_classification_cfg

    c = summary_config
    cfg = get_classification_cfg()
    s = cfg.MODEL.SACT
    s.VARIANT = "original"
    s.MODE = {"vanilla": "none"}.get(c["model_type"], c["model_type"])
    s.EPS = float(c.get("halting_eps", 0.01))
    s.HALT_NORM = "BN"
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.DEVICE = "cpu"
    units = [int(u) for u in c["units"]]
    if c["net"] == "imagenet":
        cfg.SACT_CLS.ARCH = "imagenet"
        s.ORIGINAL_UNITS, s.ORIGINAL_BASE_CHANNELS = units, int(c["base_channels"])
        s.STAGES = ["res2", "res3", "res4", "res5"]
    elif c["net"] == "cifar":
        if len(set(units)) != 1:
            raise ValueError(f"the CIFAR ResNet has the same unit count in every block, got {units}")
        cfg.SACT_CLS.ARCH = "cifar"
        cfg.SACT_CLS.CIFAR.NUM_UNITS, cfg.SACT_CLS.CIFAR.WIDTH = units[0], int(c["base_channels"])
        s.STAGES = ["res2", "res3", "res4"]
    else:
        raise ValueError(f"unknown oracle net {c['net']!r}")
    cfg.SACT_CLS.NUM_CLASSES = int(c["num_classes"])
    return cfg


def oracle_model(model_dir: str, variant: str) -> AdaptiveClassifier:
    """The classifier of an oracle folder, built from config, with ``<variant>/model.ckpt`` converted
    by sact_det.convert (every parameter and buffer must be placed: strict load)."""
    from ...convert.original import align_to_model, convert_original
    from ...convert.tf_checkpoint import read_tf_checkpoint
    from ..meta_arch.classifier import build_classifier

    with open(os.path.join(model_dir, "summary.json")) as f:
        cfg = oracle_config(json.load(f)["config"])
    model = build_classifier(cfg)
    converted = convert_original(read_tf_checkpoint(os.path.join(model_dir, variant, "model.ckpt")))
    model.load_state_dict(align_to_model(converted, model.state_dict()), strict=True)
    return model.eval()


def check_oracle_model(model_dir: str, variants: Sequence[str] = ORACLE_VARIANTS
                       ) -> Dict[Tuple[str, str], Dict[str, dict]]:
    """{(variant, input set): compare() report} for every variant and input set of an oracle folder."""
    out: Dict[Tuple[str, str], Dict[str, dict]] = {}
    for variant in variants:
        model = oracle_model(model_dir, variant)
        with np.load(os.path.join(model_dir, variant + ".npz")) as npz:
            data = {k: npz[k] for k in npz.files}
        for name in data["input_names"]:
            x = torch.from_numpy(data[f"{name}/inputs"]).permute(0, 3, 1, 2).contiguous()
            out[(variant, str(name))] = compare(probe(model, x), data, str(name))
    return out


_QUANTITIES = [("logits", "logits"), ("/output", "block outputs"), ("/ponder_cost", "ponder cost"),
               ("/halting_proba_raw", "halting proba (raw)"), ("/halting_logit_raw", "halting logit (raw)"),
               ("/halting_distribution", "halting distribution"), ("stem/conv", "stem conv"),
               ("stem/pool1", "pool1"), ("head/postnorm", "postnorm"), ("head/pool5", "pool5"),
               ("head/final_bn", "final BN"), ("/num_units", "num_units"), ("flops", "FLOPs")]


def quantity(key: str) -> str:
    """The report column of an oracle key (block outputs of all blocks together, etc.)."""
    for pattern, name in _QUANTITIES:
        if pattern in key:
            return name
    return key


def report_table(reports: Mapping[str, Mapping[Tuple[str, str], Mapping[str, dict]]]) -> str:
    """Markdown: per oracle model, the largest scaled float difference of each quantity over both
    variants and all input sets ("-": not in that model); integers: "exact" or the mismatch count."""
    columns = [name for _, name in _QUANTITIES]
    cells: Dict[str, Dict[str, str]] = {}
    for model, per_run in reports.items():
        worst: Dict[str, float] = {}
        bad: Dict[str, int] = {}
        for report in per_run.values():
            for key, r in report.items():
                q = quantity(key)
                if r["kind"] == "float":
                    worst[q] = max(worst.get(q, 0.0), r["scaled"])
                elif r["kind"] == "int":
                    bad[q] = bad.get(q, 0) + r["mismatches"]
                else:
                    bad[q] = bad.get(q, 0) + 1
        row = {q: f"{v:.1e}" for q, v in worst.items()}
        row.update({q: ("exact" if n == 0 else f"{n} wrong") for q, n in bad.items()})
        cells[model] = row
    used = [c for c in columns if any(c in row for row in cells.values())]
    lines = ["| model | " + " | ".join(used) + " |", "|---|" + "---|" * len(used)]
    for model, row in cells.items():
        lines.append(f"| {model} | " + " | ".join(row.get(c, "-") for c in used) + " |")
    return "\n".join(lines)
