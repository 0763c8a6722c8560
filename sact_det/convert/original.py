"""The original SACT TensorFlow code's variables -> sact_det classifier / detector weights.

Names follow the contract of ``cfg.MODEL.SACT.VARIANT original`` (modeling/original/resnet.py,
original_cifar.py): block k, unit u -> ``backbone.res{k+1}.{u-1}``; TF BN {gamma, beta, moving_mean,
moving_variance} -> {weight, bias, running_mean, running_var}; conv kernels HWIO -> OIHW; logits
[1,1,C,K] -> linear [K,C].

ImageNet (scope ``resnet_v2``)                        classifier name
  conv1/{weights,biases}                                backbone.stem.conv1.{weight,bias}
  blockK/unit_U/bottleneck_v2/preact/*                  backbone.resK+1.U-1.preact.*
  .../bottleneck_v2/{shortcut,conv3}/{weights,biases}   backbone.resK+1.U-1.{shortcut,conv3}.*
  .../bottleneck_v2/{conv1,conv2}/weights, /BatchNorm/*  backbone.resK+1.U-1.{conv1,conv2}.weight, .norm.*
  blockK/unit_U/halting_proba/{local,global}_bn/*       backbone.resK+1.U-1.halting.{local,global}_norm.*
  blockK/unit_U/halting_proba/{local,global}_conv/*     backbone.resK+1.U-1.halting.{local,global}_conv.*
  postnorm/*, logits/*                                  postnorm.*, linear.*
CIFAR (scope ``resnet_residual``): Conv -> backbone.stem.conv1, block_K/unit_U/residual/{preact,
conv1,conv1/BatchNorm,conv2} as above, BatchNorm (after the spatial mean) -> final_norm, logits -> linear.

Ignored (TF bookkeeping, listed in ``Converted.ignored``): ``global_step``, optimizer slots
(``<var>/Momentum`` of the original's MomentumOptimizer; Adam / RMSProp slots and beta powers),
zero-debiasing helpers of BN moving averages (``moving_mean/biased``, ``.../local_step``) and
``<var>/ExponentialMovingAverage`` shadows (the original code declares a ``moving_average_decay``
flag but never uses it: its eval restores the raw variables, so the raw values are the model). The
released tarballs (160 MB for ResNet-101, about the weights alone) probably hold no slots; either way works.
"""
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = ["ConversionError", "OriginalArch", "Converted", "tf_to_sact_name", "is_bookkeeping", "convert_original",
           "infer_arch", "align_to_model", "classifier_config", "detector_config", "config_opts", "config_yaml",
           "cfg_with", "classifier_to_detector", "build_classifier_for", "write_classifier_checkpoint",
           "write_detector_pkl", "convert_tf_checkpoint", "STANDARD_UNITS", "IMAGENET_PIXEL"]

STANDARD_UNITS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3), 200: (3, 24, 36, 3)}
# inception_preprocessing: x / 255 -> -0.5 -> x 2, i.e. (x - 127.5) / 127.5, RGB, range [-1, 1]
IMAGENET_PIXEL = {"mean": [127.5, 127.5, 127.5], "std": [127.5, 127.5, 127.5]}
ORIGINAL_EPS = 0.01  # act.py: halting threshold 1 - eps (not stored in checkpoints)

_BN = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
_CONV = {"weights": "weight", "biases": "bias"}
_HALT = {"local_bn": "local_norm", "global_bn": "global_norm", "local_conv": "local_conv", "global_conv": "global_conv"}
_BOOKKEEPING = re.compile(r"(^|/)global_step$|/(Momentum|ExponentialMovingAverage|Adam|Adam_1|RMSProp|RMSProp_1)$|"
                          r"(^|/)beta[12]_power(_\d+)?$|/moving_(mean|variance)/(biased|local_step)$")

_P = r"(gamma|beta|moving_mean|moving_variance)"
_W = r"(weights|biases)"
_IMAGENET_RULES: List[Tuple[re.Pattern, Callable[[re.Match], str]]] = [
    (re.compile(rf"^resnet_v2/conv1/{_W}$"), lambda m: f"backbone.stem.conv1.{_CONV[m[1]]}"),
    (re.compile(rf"^resnet_v2/block([1-9]\d*)/unit_([1-9]\d*)/bottleneck_v2/preact/{_P}$"),
     lambda m: f"{_unit(m)}.preact.{_BN[m[3]]}"),
    (re.compile(rf"^resnet_v2/block([1-9]\d*)/unit_([1-9]\d*)/bottleneck_v2/(shortcut|conv3)/{_W}$"),
     lambda m: f"{_unit(m)}.{m[3]}.{_CONV[m[4]]}"),
    (re.compile(r"^resnet_v2/block([1-9]\d*)/unit_([1-9]\d*)/bottleneck_v2/(conv1|conv2)/weights$"),
     lambda m: f"{_unit(m)}.{m[3]}.weight"),
    (re.compile(rf"^resnet_v2/block([1-9]\d*)/unit_([1-9]\d*)/bottleneck_v2/(conv1|conv2)/BatchNorm/{_P}$"),
     lambda m: f"{_unit(m)}.{m[3]}.norm.{_BN[m[4]]}"),
    (re.compile(rf"^resnet_v2/block([1-9]\d*)/unit_([1-9]\d*)/halting_proba/(local_bn|global_bn)/{_P}$"),
     lambda m: f"{_unit(m)}.halting.{_HALT[m[3]]}.{_BN[m[4]]}"),
    (re.compile(rf"^resnet_v2/block([1-9]\d*)/unit_([1-9]\d*)/halting_proba/(local_conv|global_conv)/{_W}$"),
     lambda m: f"{_unit(m)}.halting.{_HALT[m[3]]}.{_CONV[m[4]]}"),
    (re.compile(rf"^resnet_v2/postnorm/{_P}$"), lambda m: f"postnorm.{_BN[m[1]]}"),
    (re.compile(rf"^resnet_v2/logits/{_W}$"), lambda m: f"linear.{_CONV[m[1]]}"),
]
_CIFAR_RULES: List[Tuple[re.Pattern, Callable[[re.Match], str]]] = [
    (re.compile(rf"^resnet_residual/Conv/{_W}$"), lambda m: f"backbone.stem.conv1.{_CONV[m[1]]}"),
    (re.compile(rf"^resnet_residual/block_([1-9]\d*)/unit_([1-9]\d*)/residual/preact/{_P}$"),
     lambda m: f"{_unit(m)}.preact.{_BN[m[3]]}"),
    (re.compile(r"^resnet_residual/block_([1-9]\d*)/unit_([1-9]\d*)/residual/conv1/weights$"),
     lambda m: f"{_unit(m)}.conv1.weight"),
    (re.compile(rf"^resnet_residual/block_([1-9]\d*)/unit_([1-9]\d*)/residual/conv1/BatchNorm/{_P}$"),
     lambda m: f"{_unit(m)}.conv1.norm.{_BN[m[3]]}"),
    (re.compile(rf"^resnet_residual/block_([1-9]\d*)/unit_([1-9]\d*)/residual/conv2/{_W}$"),
     lambda m: f"{_unit(m)}.conv2.{_CONV[m[3]]}"),
    (re.compile(rf"^resnet_residual/block_([1-9]\d*)/unit_([1-9]\d*)/halting_proba/(local_bn|global_bn)/{_P}$"),
     lambda m: f"{_unit(m)}.halting.{_HALT[m[3]]}.{_BN[m[4]]}"),
    (re.compile(rf"^resnet_residual/block_([1-9]\d*)/unit_([1-9]\d*)/halting_proba/(local_conv|global_conv)/{_W}$"),
     lambda m: f"{_unit(m)}.halting.{_HALT[m[3]]}.{_CONV[m[4]]}"),
    (re.compile(rf"^resnet_residual/BatchNorm/{_P}$"), lambda m: f"final_norm.{_BN[m[1]]}"),
    (re.compile(rf"^resnet_residual/logits/{_W}$"), lambda m: f"linear.{_CONV[m[1]]}"),
]
_SCOPES = {"resnet_v2": ("imagenet", _IMAGENET_RULES), "resnet_residual": ("cifar", _CIFAR_RULES)}
_UNIT_NAME = re.compile(r"^backbone\.res(\d+)\.(\d+)\.")


class ConversionError(ValueError):
    """TF variables that cannot be placed, or model parameters left without a value (all named)."""


def _unit(m: re.Match) -> str:
    return f"backbone.res{int(m[1]) + 1}.{int(m[2]) - 1}"


def is_bookkeeping(tf_name: str) -> bool:
    """True for TF training state that is not part of the model (global_step, optimizer slots, EMA shadows)."""
    return bool(_BOOKKEEPING.search(tf_name))


def tf_to_sact_name(tf_name: str) -> Optional[Tuple[str, str]]:
    """(arch, classifier state_dict name) of an original SACT variable, or None if it has no place."""
    scope = tf_name.split("/", 1)[0]
    if scope not in _SCOPES:
        return None
    arch, rules = _SCOPES[scope]
    for pattern, target in rules:
        m = pattern.match(tf_name)
        if m:
            return arch, target(m)
    return None


def _to_torch_layout(name: str, value: np.ndarray) -> np.ndarray:
    """HWIO conv kernels -> OIHW; the logits 1x1 conv [1,1,C,K] -> linear [K,C]; vectors unchanged."""
    if value.ndim == 4:
        if name.startswith("linear."):
            if value.shape[:2] != (1, 1):
                raise ConversionError(f"logits kernel {name} has shape {list(value.shape)}, expected [1,1,C,K]")
            return np.ascontiguousarray(value[0, 0].T)
        return np.ascontiguousarray(value.transpose(3, 2, 0, 1))
    if value.ndim != 1:
        raise ConversionError(f"{name}: unexpected {value.ndim}-D value of shape {list(value.shape)}")
    return np.ascontiguousarray(value)


@dataclass
class OriginalArch:
    """Architecture facts read off the variable names and shapes.

    ``base_channels``: ImageNet: bottleneck width of block 1 (64 in the real nets; block b has
    4*bc*2^b output channels); CIFAR: channels of block 1 (16). ``mode``: sact / act / none.
    """

    arch: str
    mode: str
    units: List[int]
    base_channels: int
    num_classes: int
    halt_kernel_size: int = 3

    @property
    def depth(self) -> Optional[int]:
        """ResNet depth: 50/101/152/200 for the standard ImageNet unit counts, 6n+2 for CIFAR; None otherwise."""
        if self.arch == "cifar":
            return 6 * self.units[0] + 2 if len(set(self.units)) == 1 else None
        for depth, units in STANDARD_UNITS.items():
            if tuple(self.units) == units:
                return depth
        return None

    @property
    def stages(self) -> List[str]:
        return [f"res{b + 2}" for b in range(len(self.units))]

    def describe(self) -> str:
        kind = {"sact": "SACT", "act": "ACT", "none": "dense"}[self.mode]
        net = "ImageNet pre-activation ResNet v2" if self.arch == "imagenet" else "CIFAR ResNet"
        depth = f"-{self.depth}" if self.depth else ""
        return (f"{net}{depth} ({kind}), units per block {self.units}, base channels {self.base_channels}, "
                f"{self.num_classes} classes")


@dataclass
class Converted:
    """Classifier weights (``state_dict``: torch tensors in classifier names) and what was learnt."""

    state_dict: "OrderedDict[str, torch.Tensor]"
    arch: OriginalArch
    ignored: List[str] = field(default_factory=list)
    tf_names: Dict[str, str] = field(default_factory=dict)  # classifier name -> TF name


def _shape(v: Any) -> Tuple[int, ...]:
    return tuple(int(s) for s in (v.shape if hasattr(v, "shape") else v))


def infer_arch(arch: str, shapes: Mapping[str, Sequence[int]]) -> OriginalArch:
    """Architecture facts from classifier names -> shapes (torch layout); raises naming what is inconsistent."""
    problems: List[str] = []
    units: Dict[int, set] = {}
    halting: Dict[Tuple[int, int], set] = {}
    for name in shapes:
        m = _UNIT_NAME.match(name)
        if m:
            stage, unit = int(m[1]), int(m[2])
            units.setdefault(stage, set()).add(unit)
            if ".halting." in name:
                halting.setdefault((stage, unit), set()).add(name.split(".halting.", 1)[1])
    expected_blocks = 4 if arch == "imagenet" else 3
    stages = sorted(units)
    if stages != list(range(2, 2 + expected_blocks)):
        problems.append(f"expected blocks 1..{expected_blocks}, found blocks {[s - 1 for s in stages]}")
    counts = []
    for stage in stages:
        got = sorted(units[stage])
        if got != list(range(len(got))):
            missing = sorted(set(range(max(got) + 1)) - set(got))
            problems.append(f"block {stage - 1} lacks units {[u + 1 for u in missing]}")
        counts.append(max(got) + 1)

    def need(name: str, dim: int) -> int:
        if name not in shapes:
            problems.append(f"missing {name}")
            return 0
        return _shape(shapes[name])[dim]

    if arch == "imagenet":
        base = need("backbone.res2.0.conv1.weight", 0)
    else:
        base = need("backbone.stem.conv1.weight", 0)
    num_classes = need("linear.bias", 0)

    # mode: SACT units have local_conv, ACT units a global_conv with bias, dense nets no halting at all
    kinds = set()
    for (stage, unit), parts in sorted(halting.items()):
        kinds.add("sact" if any(p.startswith("local_conv.") for p in parts) else "act")
    if len(kinds) > 1:
        problems.append("both SACT (local_conv) and ACT halting branches found")
    mode = kinds.pop() if len(kinds) == 1 else "none"
    if mode != "none":
        for stage, n in zip(stages, counts):
            want = set(range(n - 1))  # every unit but the last has a halting branch
            have = {u for (s, u) in halting if s == stage}
            if have != want:
                problems.append(f"block {stage - 1}: halting branches in units {sorted(u + 1 for u in have)}, "
                                f"expected units 1..{n - 1} (every unit but the last)")
    kernel = 3
    if mode == "sact":
        key = next((f"backbone.res{s}.{u}.halting.local_conv.weight" for (s, u) in sorted(halting)), None)
        if key in shapes:
            kernel = _shape(shapes[key])[-1]
    if problems:
        raise ConversionError("cannot infer the original network:\n  " + "\n  ".join(problems))
    return OriginalArch(arch=arch, mode=mode, units=counts, base_channels=base, num_classes=num_classes,
                        halt_kernel_size=kernel)


def convert_original(tf_vars: Mapping[str, np.ndarray]) -> Converted:
    """TF variables of the original SACT code (ImageNet ``resnet_v2`` or CIFAR ``resnet_residual``)
    -> classifier state_dict (torch layouts) + architecture. Raises ConversionError naming every
    variable it cannot place (bookkeeping variables are skipped and listed in ``ignored``)."""
    sd: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    tf_names: Dict[str, str] = {}
    ignored, unplaced, archs = [], [], set()
    for tf_name in sorted(tf_vars):
        if is_bookkeeping(tf_name):
            ignored.append(tf_name)
            continue
        placed = tf_to_sact_name(tf_name)
        if placed is None:
            unplaced.append(tf_name)
            continue
        arch, name = placed
        archs.add(arch)
        value = np.asarray(tf_vars[tf_name])
        if value.dtype.kind != "f":
            unplaced.append(f"{tf_name} (dtype {value.dtype}, expected floating point)")
            continue
        try:
            sd[name] = torch.from_numpy(_to_torch_layout(name, value).astype(np.float32, copy=False))
        except ConversionError as e:
            unplaced.append(f"{tf_name}: {e}")
            continue
        tf_names[name] = tf_name
    if len(archs) > 1:
        raise ConversionError("the checkpoint mixes the ImageNet (resnet_v2/...) and CIFAR (resnet_residual/...) "
                              "networks of the original code")
    if unplaced:
        raise ConversionError(f"{len(unplaced)} variable(s) have no place in the original SACT networks "
                              "(expected scopes resnet_v2/ or resnet_residual/ with the original layer names):\n  "
                              + "\n  ".join(unplaced))
    if not sd:
        raise ConversionError(f"no variable of the original SACT networks found (got {len(tf_vars)} variables, "
                              f"e.g. {sorted(tf_vars)[:3]})")
    arch = infer_arch(archs.pop(), {k: v.shape for k, v in sd.items()})
    return Converted(state_dict=sd, arch=arch, ignored=ignored, tf_names=tf_names)


def align_to_model(converted: Converted, model_state: Mapping[str, Any], what: str = "model"
                   ) -> "OrderedDict[str, torch.Tensor]":
    """The converted weights in the model's names, order and shapes, ready for a strict load.

    ``model_state``: the model's state_dict (or name -> shape). 1x1 kernels are reshaped when only
    size-1 dims differ (e.g. a Linear vs a 1x1 conv); BN ``num_batches_tracked`` buffers absent from
    TF get 0. Raises ConversionError naming every parameter / buffer left without a value, every
    shape mismatch and every converted value the model has no place for."""
    sd = converted.state_dict
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    missing, mismatched = [], []
    for name, ref in model_state.items():
        shape = _shape(ref)
        if name.endswith("num_batches_tracked"):
            out[name] = torch.zeros(shape, dtype=torch.long)
            continue
        if name not in sd:
            missing.append(f"{name} {list(shape)}")
            continue
        value = sd[name]
        if tuple(value.shape) != shape:
            squeezed = [s for s in value.shape if s != 1]
            if squeezed == [s for s in shape if s != 1]:
                value = value.reshape(shape)
            else:
                tf = converted.tf_names.get(name, "?")
                mismatched.append(f"{name}: converted {list(value.shape)} (from {tf}), {what} expects {list(shape)}")
                continue
        out[name] = value
    unused = [f"{k} (from {converted.tf_names.get(k, '?')})" for k in sd if k not in model_state]
    problems = []
    if missing:
        problems.append(f"{len(missing)} parameter(s)/buffer(s) of the {what} have no value in the checkpoint:\n    "
                        + "\n    ".join(missing))
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es):\n    " + "\n    ".join(mismatched))
    if unused:
        problems.append(f"{len(unused)} converted value(s) have no place in the {what}:\n    " + "\n    ".join(unused))
    if problems:
        raise ConversionError(f"the converted {converted.arch.describe()} does not fit the {what}:\n  "
                              + "\n  ".join(problems))
    return out


# ---------------------------------------------------------------------------------------------
# config keys
# ---------------------------------------------------------------------------------------------

def _net_keys(a: OriginalArch, stages: Sequence[str], halt_norm: str) -> Dict[str, Any]:
    keys: Dict[str, Any] = {"MODEL.SACT.VARIANT": "original", "MODEL.SACT.MODE": a.mode}
    if a.mode != "none":
        keys.update({"MODEL.SACT.STAGES": list(stages), "MODEL.SACT.EPS": ORIGINAL_EPS,
                     "MODEL.SACT.HALT_NORM": halt_norm, "MODEL.SACT.HALT_KERNEL_SIZE": a.halt_kernel_size})
    if a.arch == "imagenet":
        if a.depth is not None:
            keys.update({"MODEL.RESNETS.DEPTH": a.depth, "MODEL.SACT.ORIGINAL_UNITS": []})
        else:
            keys["MODEL.SACT.ORIGINAL_UNITS"] = list(a.units)
        keys["MODEL.SACT.ORIGINAL_BASE_CHANNELS"] = a.base_channels
    return keys


def classifier_config(a: OriginalArch) -> Dict[str, Any]:
    """Config keys (tools/train_classifier.py) of the classifier these weights belong to.

    Halting in every block (as the original: SACT / ACT in all blocks), BN with the converted
    statistics. ImageNet nets with 1001 logits: class 0 is the original's background class
    (SACT_CLS.BACKGROUND_CLASS True, NUM_CLASSES 1000). The classifier's VARIANT original data
    pipeline applies the original preprocessing itself (ImageNet [-1, 1], CIFAR per-image
    standardisation); PIXEL_MEAN / STD 127.5 are set for ImageNet so an export to the detector
    (tools/convert_weights.py) carries the right values."""
    keys = _net_keys(a, a.stages, "BN")
    keys.update({"MODEL.RESNETS.NORM": "BN", "SACT_CLS.ARCH": a.arch})
    background = a.arch == "imagenet" and a.num_classes == 1001
    keys.update({"SACT_CLS.NUM_CLASSES": a.num_classes - int(background), "SACT_CLS.BACKGROUND_CLASS": background})
    if a.arch == "imagenet":
        keys.update({"SACT_CLS.INPUT.PIXEL_MEAN": IMAGENET_PIXEL["mean"],
                     "SACT_CLS.INPUT.PIXEL_STD": IMAGENET_PIXEL["std"]})
    else:
        keys.update({"SACT_CLS.CIFAR.NUM_UNITS": a.units[0], "SACT_CLS.CIFAR.WIDTH": a.base_channels})
    return keys


def detector_config(a: OriginalArch) -> Dict[str, Any]:
    """Config keys of the paper's C4 detector on these weights: blocks 1-3 (res2-res4) are the backbone,
    block 4 + postnorm the box head (OriginalRes5ROIHeads); halting in res2-res4; frozen BN
    (backbone and halting) keeps the converted statistics; inputs RGB in [-1, 1]."""
    if a.arch != "imagenet":
        raise ConversionError("the detector needs the ImageNet network; this checkpoint is the CIFAR ResNet")
    keys = _net_keys(a, ["res2", "res3", "res4"], "FrozenBN")
    keys.update({"MODEL.RESNETS.NORM": "FrozenBN", "MODEL.ROI_HEADS.NAME": "OriginalRes5ROIHeads",
                 "INPUT.FORMAT": "RGB",
                 "MODEL.PIXEL_MEAN": IMAGENET_PIXEL["mean"], "MODEL.PIXEL_STD": IMAGENET_PIXEL["std"]})
    return keys


def config_opts(keys: Mapping[str, Any]) -> str:
    """``KEY VALUE ...`` for the end of a tool's command line (detectron2 merge_from_list), shell-quoted."""
    def fmt(v: Any) -> str:
        if isinstance(v, str):
            return v if v else "''"
        text = repr(v).replace(" ", "")
        return f'"{text}"' if isinstance(v, (list, tuple)) else text
    return " ".join(f"{k} {fmt(v)}" for k, v in keys.items())


def config_yaml(keys: Mapping[str, Any]) -> str:
    """The keys as a nested YAML snippet for a config file."""
    import yaml

    tree: Dict[str, Any] = {}
    for key, value in keys.items():
        node = tree
        *path, leaf = key.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[leaf] = list(value) if isinstance(value, tuple) else value
    return yaml.safe_dump(tree, default_flow_style=None, sort_keys=False).rstrip()


def cfg_with(keys: Mapping[str, Any], base=None):
    """A classification cfg (or ``base``) with ``keys`` set."""
    if base is None:
        from ..classification.config import get_classification_cfg

        base = get_classification_cfg()
    cfg = base.clone()
    cfg.defrost()
    for key, value in keys.items():
        node = cfg
        *path, leaf = key.split(".")
        for p in path:
            node = node[p]
        if leaf not in node:
            raise KeyError(f"config key {key} does not exist")
        node[leaf] = type(node[leaf])(value) if isinstance(node[leaf], (tuple, list)) else value
    return cfg


def classifier_to_detector(state_dict: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """Classifier names -> detectron2 .pkl names: ``backbone.`` dropped (stem.*, res2..res5.*), postnorm.* and
    linear.* kept (the C4 detector loads res5.* / postnorm.* into roi_heads and ignores linear.*)."""
    out = OrderedDict()
    for k, v in state_dict.items():
        if k.endswith("num_batches_tracked"):
            continue
        out[k[len("backbone."):] if k.startswith("backbone.") else k] = v
    return out


# ---------------------------------------------------------------------------------------------
# models, files
# ---------------------------------------------------------------------------------------------

def build_classifier_for(a: OriginalArch, device: str = "cpu"):
    """(classifier, cfg): the sact_det classifier (VARIANT original) of the printed classifier config,
    eval mode. ``device="meta"`` builds it without memory or initialisation (names and shapes only)."""
    from ..modeling.meta_arch.classifier import build_classifier

    cfg = cfg_with({**classifier_config(a), "MODEL.DEVICE": "cpu"})
    with torch.device(device):
        return build_classifier(cfg).eval(), cfg


def write_classifier_checkpoint(path: str, weights: Mapping[str, torch.Tensor], cfg, a: OriginalArch,
                                source: str) -> str:
    """A classification checkpoint tools/train_classifier.py loads as MODEL.WEIGHTS (format of
    sact_det.classification.checkpoint: {"model", "iteration", "num_classes", "config", ...})."""
    from ..classification.checkpoint import FORMAT_KEY
    from ..utils.atomic import atomic_torch_save

    state = {"model": OrderedDict((k, v.contiguous()) for k, v in weights.items()), "iteration": 0,
             "num_classes": a.num_classes, "class_names": None, "config": cfg.dump(), "source": source,
             FORMAT_KEY: 1}
    atomic_torch_save(state, path)
    return path


def write_detector_pkl(path: str, weights: Mapping[str, torch.Tensor], a: OriginalArch, source: str) -> Dict[str, Any]:
    """detectron2 .pkl (MODEL.WEIGHTS of the C4 detector) with the detector config keys in its notes."""
    from ..classification.export import write_d2_pkl

    # STRIDE_IN_1X1 is ignored by VARIANT original (its stride is in the 3x3 conv); the notes need the key
    settings = {**detector_config(a), "MODEL.RESNETS.STRIDE_IN_1X1": False}
    return write_d2_pkl(path, classifier_to_detector(weights), settings, source=source,
                        extra={"original_arch": a.describe(), "variant": "original"})


def _default_log(msg: str) -> None:
    print(msg, flush=True)


def convert_tf_checkpoint(src: str, out_dir: str, check_crc: bool = True,
                          log: Callable[[str], None] = _default_log) -> Dict[str, Any]:
    """Original SACT TF checkpoint (prefix / .index / folder / released .tar.gz) -> ``out_dir``/
    model_classifier.pth (+ model_detector.pkl for ImageNet nets).

    Every parameter and buffer of the classifier built from the classifier config gets a value
    (strict load), else ConversionError names what is missing / mis-shaped / unplaced. Returns
    {"arch", "classifier", "detector", "classifier_config", "detector_config", "ignored", "skipped"}."""
    from .tf_checkpoint import TFCheckpoint

    with TFCheckpoint(src) as ckpt:
        n = len(ckpt.entries)
        log(f"reading {n} variables from {ckpt.source}" + (" (checking crc32c)" if check_crc else ""))
        step = max(1, n // 10)

        def progress(i: int, total: int, name: str) -> None:
            if i % step == 0 and i:
                log(f"  {i}/{total} variables read")

        tf_vars = ckpt.read_all(check_crc=check_crc, progress=progress)
        skipped = list(ckpt.skipped)
    converted = convert_original(tf_vars)
    a = converted.arch
    log(f"found: {a.describe()}; mode {a.mode}; {len(converted.state_dict)} arrays placed"
        + (f", {len(converted.ignored)} bookkeeping variables ignored (e.g. {converted.ignored[0]})"
           if converted.ignored else ""))
    model, cfg = build_classifier_for(a, device="meta")  # names and shapes only: no memory, no init
    weights = align_to_model(converted, model.state_dict(), "classifier")
    model.load_state_dict(weights, strict=True, assign=True)
    os.makedirs(out_dir, exist_ok=True)
    source = f"TensorFlow checkpoint {src}"
    cls_path = write_classifier_checkpoint(os.path.join(out_dir, "model_classifier.pth"), weights, cfg, a, source)
    log(f"wrote {cls_path} ({len(weights)} tensors, strict load into the classifier checked)")
    det_path = None
    if a.arch == "imagenet":
        det_path = os.path.join(out_dir, "model_detector.pkl")
        data = write_detector_pkl(det_path, weights, a, source)
        log(f"wrote {det_path} ({len(data['model'])} arrays: backbone stem/res2-res4, box head res5 + postnorm)")
    else:
        log("no detector weights: the detector needs the ImageNet network")
    return {"arch": a, "classifier": cls_path, "detector": det_path, "classifier_config": classifier_config(a),
            "detector_config": detector_config(a) if det_path else None, "ignored": converted.ignored,
            "skipped": skipped}
