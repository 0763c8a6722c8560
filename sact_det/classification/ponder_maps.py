"""Ponder-cost maps of a classifier on whole images (the original SACT code's ``imagenet_ponder_map``).

Pipeline per image (:func:`classifier_ponder_map`): read (EXIF-oriented RGB) -> shrink so the longer
side is at most ``max_size`` (bicubic, aspect kept; never enlarged) -> the classifier's own eval
preprocessing without its centre crop / resize (:func:`drawing_transform`) -> forward -> per-stage
ponder cost rho (``model.ponders``) -> summed over the adaptive stages on the finest stage grid by
the detector's helper :func:`sact_det.modeling.core.ponder_maps.sum_ponder_maps` -> upsampled to the image,
each cell of that grid over its stride x stride pixels (:func:`upsample_to_image`; the detector mode
places its cells the same way). The original's ``summary_utils.sact_map`` instead resizes every block's
map to the image (nearest) and sums there; both agree when the image sides are multiples of the
coarsest stride, and differ by a few pixels of cell-boundary placement otherwise.

:func:`draw_classifier_ponder_map` writes one PNG: image | ponder map with a colorbar; the title gives
the top-5 logit indices (1001-logit ImageNet nets: index 0 = background, class k = index k) and FLOPs.
"""
import os
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import yaml
from detectron2.config import CfgNode
from PIL import Image

from ..data.classification import build_transform
from ..data.mapper import read_image_checked
from ..modeling.meta_arch.classifier import AdaptiveClassifier, build_classifier, classifier_flops
from ..modeling.core.ponder_maps import sum_ponder_maps

__all__ = ["is_classification_config", "load_drawing_classifier", "drawing_transform", "resize_longer_side",
           "classifier_ponder_map", "ClassifierPonderMap", "upsample_to_image", "figure_size_px", "draw_classifier_ponder_map"]

TOP_K = 5


def _yaml_with_base(path: str) -> dict:
    """The YAML mapping of ``path`` merged over its ``_BASE_`` chain (keys only matter here)."""
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    base = data.pop("_BASE_", None)
    if base:
        base_path = base if os.path.isabs(base) else os.path.join(os.path.dirname(path), base)
        merged = _yaml_with_base(os.path.expanduser(base_path))
        merged.update(data)
        return merged
    return data


def is_classification_config(config_file: str, opts: Sequence[str] = ()) -> bool:
    """True when the config file (or a ``_BASE_`` it includes) or an override sets ``SACT_CLS`` keys."""
    if any(str(k).startswith("SACT_CLS.") for k in list(opts)[0::2]):
        return True
    if not config_file or not os.path.isfile(config_file):
        return False
    return "SACT_CLS" in _yaml_with_base(config_file)


def _num_classes(cfg: CfgNode, weights: str) -> int:
    """Data-set classes for build_classifier: cfg.SACT_CLS.NUM_CLASSES, else the rows of the weights'
    ``linear.weight`` (minus the background class of cfg.SACT_CLS.BACKGROUND_CLASS)."""
    n = int(cfg.SACT_CLS.NUM_CLASSES)
    if n > 0:
        return n
    if not weights:
        raise ValueError("SACT_CLS.NUM_CLASSES is 0 (= from the data set) and there are no weights to read the "
                         "class count from: pass SACT_CLS.NUM_CLASSES N with --random-weights")
    from .checkpoint import CheckpointError, read_weights

    fc = read_weights(weights)["model"].get("linear.weight")
    if fc is None:
        raise CheckpointError(f"{weights} has no classifier (linear.weight); pass SACT_CLS.NUM_CLASSES")
    return int(fc.shape[0]) - int(bool(cfg.SACT_CLS.BACKGROUND_CLASS))


def load_drawing_classifier(cfg: CfgNode) -> AdaptiveClassifier:
    """build_classifier(cfg) with cfg.MODEL.WEIGHTS loaded (empty: random weights), eval mode, on
    cfg.MODEL.DEVICE. A dense model (MODE none) has no ponder map: ValueError."""
    from .checkpoint import load_classifier_weights

    if cfg.MODEL.SACT.MODE == "none":
        raise ValueError("MODEL.SACT.MODE='none': a dense classifier has no ponder map (use a SACT or ACT config)")
    weights = str(cfg.MODEL.WEIGHTS or "")
    model = build_classifier(cfg, _num_classes(cfg, weights))
    if weights:
        load_classifier_weights(model, weights)
    return model.to(cfg.MODEL.DEVICE).eval()


def drawing_transform(cfg: CfgNode):
    """The classifier's eval preprocessing (sact_det.data.classification.build_transform) without its
    geometry: no central crop, no resize, no centre crop. PIL RGB -> (3,H,W) float tensor of the same size.

    VARIANT original ImageNet: [0, 1] -> (x - 0.5) * 2; original CIFAR: per-image standardisation;
    detectron2 variant: ToTensor + Normalize(SACT_CLS.INPUT.PIXEL_MEAN / STD).
    """
    import torchvision.transforms as T

    c = cfg.clone()
    c.defrost()
    c.SACT_CLS.INPUT.CROP_SIZE = 0
    c.SACT_CLS.INPUT.RESIZE = 0
    c.SACT_CLS.INPUT.CENTRAL_FRACTION = 1.0
    tf = build_transform(c, train=False)
    if isinstance(tf, T.Compose):
        tf = T.Compose([op for op in tf.transforms if not isinstance(op, (T.CenterCrop, T.Resize))])
    return tf


def resize_longer_side(image: Image.Image, max_size: int) -> Image.Image:
    """Shrink (bicubic, as the original's imagenet_ponder_map) so that max(H, W) <= ``max_size``; the
    aspect ratio is kept (sides rounded); smaller images and ``max_size`` <= 0 leave it unchanged."""
    w, h = image.size
    if max_size <= 0 or max(h, w) <= max_size:
        return image
    s = max_size / float(max(h, w))
    return image.resize((max(1, int(round(w * s))), max(1, int(round(h * s)))), Image.BICUBIC)


def upsample_to_image(grid_map: torch.Tensor, stride: int, image_hw: Tuple[int, int]) -> torch.Tensor:
    """(h, w) map of a stride-``stride`` grid -> (H, W): pixel (y, x) takes cell (y // stride, x // stride)
    (clamped to the grid), i.e. each cell covers its stride x stride pixels, as the detector mode draws it."""
    iy = (torch.arange(image_hw[0]) // stride).clamp(max=grid_map.shape[0] - 1)
    ix = (torch.arange(image_hw[1]) // stride).clamp(max=grid_map.shape[1] - 1)
    return grid_map[iy][:, ix]


@dataclass
class ClassifierPonderMap:
    """What the classifier did on one image (all on CPU)."""

    file: str
    image: np.ndarray  # (H, W, 3) uint8 RGB, the (resized) image the net saw
    logits: torch.Tensor  # (num_logits,)
    stage_maps: Dict[str, torch.Tensor]  # adaptive stage -> (h_s, w_s) ponder cost rho
    ponder_map: torch.Tensor  # (h, w) sum over the stages on the finest stage grid
    ponder_image: torch.Tensor  # (H, W) ponder_map upsampled (nearest) to the image
    flops: float  # classifier FLOPs of this image (convs + fc)
    dense_flops: float  # the same network run densely

    def topk(self, k: int = TOP_K) -> List[Tuple[int, float]]:
        """(logit index, softmax probability) of the k best classes."""
        p = torch.softmax(self.logits.double(), 0)
        v, i = p.topk(min(k, p.numel()))
        return [(int(a), float(b)) for a, b in zip(i, v)]


@torch.no_grad()
def classifier_ponder_map(model: AdaptiveClassifier, cfg: CfgNode, path: str, max_size: int = 640,
                          transform=None) -> ClassifierPonderMap:
    """Run ``model`` on the whole image ``path`` (see the module docstring) and collect its ponder maps.

    Raises FileNotFoundError / ImageReadError (an OSError) naming the file when it cannot be read.
    """
    transform = drawing_transform(cfg) if transform is None else transform
    rgb = read_image_checked(path, "RGB")
    image = resize_longer_side(Image.fromarray(rgb), max_size)
    x = transform(image)
    device = next(model.parameters()).device
    model.eval()
    logits = model(x[None].to(device))[0].float().cpu()
    ponders = model.ponders
    if not ponders:
        raise ValueError(f"the classifier (family {model.family!r}) recorded no ponder cost")
    order = list(model.backbone.stage_names)
    names = sorted(ponders, key=order.index)  # finest stage first: the summation grid
    stage_maps = {n: ponders[n].ponder_cost[0, 0].detach().float().cpu() for n in names}
    total = sum_ponder_maps([stage_maps[n] for n in names])
    hw = x.shape[-2:]
    up = upsample_to_image(total, int(ponders[names[0]].stride), (int(hw[0]), int(hw[1])))
    f = classifier_flops(model, hw, 1)["total"][0]
    dense = classifier_flops(model, hw, 1, ponder={})["total"][0]
    return ClassifierPonderMap(file=path, image=np.asarray(image), logits=logits, stage_maps=stage_maps,
                               ponder_map=total, ponder_image=up, flops=float(f), dense_flops=float(dense))


# Figure layout in pixels (dpi 100): [pad | image | pad | map | pad | colorbar | colorbar labels],
# a title band on top and a pad below. Panels show the image at its size, enlarged so that its longer
# side is at least MIN_PANEL px; the figure is at least MIN_WIDTH px wide (room for the title).
DPI = 100
PAD, TITLE_H, CBAR_W, CBAR_LABELS, MIN_PANEL, MIN_WIDTH = 10, 56, 15, 60, 320, 480


def figure_size_px(image_hw: Sequence[int]) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """((fig_w, fig_h), (panel_w, panel_h)) in pixels for an image of ``image_hw``:
    s = max(1, 320 / max(H, W)), panel = (round(W s), round(H s)),
    fig_w = max(480, 3 * 10 + 2 * panel_w + 15 + 60), fig_h = 56 + panel_h + 10."""
    h, w = int(image_hw[0]), int(image_hw[1])
    s = max(1.0, MIN_PANEL / float(max(h, w)))
    pw, ph = int(round(w * s)), int(round(h * s))
    return (max(MIN_WIDTH, 3 * PAD + 2 * pw + CBAR_W + CBAR_LABELS), TITLE_H + ph + PAD), (pw, ph)


def title_lines(result: ClassifierPonderMap, background_class: bool) -> List[str]:
    """File and size; top-5 logit indices with probabilities; FLOPs and ponder cost range."""
    h, w = result.image.shape[:2]
    top = ", ".join(f"{i} ({p:.2f})" for i, p in result.topk())
    note = " (index 0 = background)" if background_class else ""
    pm = result.ponder_image
    return [f"{os.path.basename(result.file)}  {w}x{h}",
            f"top-{min(TOP_K, result.logits.numel())}{note}: {top}",
            f"{result.flops / 1e9:.3g} GFLOPs = {100 * result.flops / result.dense_flops:.0f} % of dense; "
            f"ponder cost {float(pm.min()):.2f}-{float(pm.max()):.2f}"]


def draw_classifier_ponder_map(result: ClassifierPonderMap, out_path: str, vmin: float, vmax: float,
                               background_class: bool = False) -> str:
    """Write image | ponder cost (sum over stages, on the image) + colorbar as a PNG of
    :func:`figure_size_px`; returns ``out_path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (fw, fh), (pw, ph) = figure_size_px(result.image.shape[:2])
    fig = plt.figure(figsize=(fw / DPI, fh / DPI), dpi=DPI)

    def axes(left_px: float, width_px: float, height_px: float):
        return fig.add_axes([left_px / fw, PAD / fh, width_px / fw, height_px / fh])

    ax_img = axes(PAD, pw, ph)
    ax_img.imshow(result.image, interpolation="nearest")
    ax_map = axes(2 * PAD + pw, pw, ph)
    im = ax_map.imshow(result.ponder_image.numpy(), cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
    for ax in (ax_img, ax_map):
        ax.set_xticks([])
        ax.set_yticks([])
    cax = axes(3 * PAD + 2 * pw, CBAR_W, ph)
    fig.colorbar(im, cax=cax)
    cax.tick_params(labelsize=8)
    cax.set_ylabel("ponder cost (sum over stages)", fontsize=8)
    fig.text(PAD / fw, 1.0 - 4.0 / fh, "\n".join(title_lines(result, background_class)), ha="left", va="top",
             fontsize=9)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path, dpi=DPI)
    plt.close(fig)
    return out_path
