"""Ponder-cost maps as saliency maps and the saliency baselines (keys: sact_det/config/saliency.py).

What the SACT paper specifies for CAT2000 (Fig. 11 and the slides): the input resize (640x360 for
the COCO model, 320x180 for the ImageNet model) and a softmax with temperature 1/5 after a
post-processing "described in the text". Every other step below (which stages are summed, the
interpolation, the blur, the normalisation, the centre prior) is this project's own choice.
Post-processing of a ponder map, all at a working resolution of the image's aspect ratio (longer side <= WORK_MAX_SIZE), then resized to the target
(fixation map) size and renormalised:
    upsample (bilinear) -> Gaussian blur (sigma = BLUR_SIGMA * width) -> NORMALIZE ->
    logits = map / TEMPERATURE + CENTER_PRIOR_WEIGHT * log(centre Gaussian) -> softmax over pixels.
Maps are resized bilinearly (area-averaged when shrinking); the MIT code uses MATLAB's bicubic
``imresize``, which can overshoot below zero on sharp maps.
"""
from typing import Dict, Sequence, Tuple

import cv2
import numpy as np
import torch
from detectron2.config import CfgNode as CN

from ..config.saliency import METHODS, NORMALIZATIONS, add_saliency_config, validate_saliency_cfg

__all__ = [
    "add_saliency_config",
    "validate_saliency_cfg",
    "resize_map",
    "gaussian_blur",
    "center_bias_map",
    "uniform_map",
    "ponder_to_saliency",
    "MeanFixationBaseline",
    "METHODS",
]


def resize_map(m: np.ndarray, hw: Tuple[int, int]) -> np.ndarray:
    """Resize a float (h, w) map to ``hw`` = (H, W): bilinear, area-averaged when shrinking."""
    m = np.asarray(m, dtype=np.float64)
    if m.shape == tuple(hw):
        return m
    shrink = hw[0] < m.shape[0] and hw[1] < m.shape[1]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(m, (int(hw[1]), int(hw[0])), interpolation=interp).astype(np.float64)


def gaussian_blur(m: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur with sigma in pixels (reflect border); ``sigma_px <= 0`` returns ``m``."""
    if sigma_px <= 0:
        return m
    return cv2.GaussianBlur(m, (0, 0), sigmaX=float(sigma_px), sigmaY=float(sigma_px),
                            borderType=cv2.BORDER_REFLECT)


def center_bias_map(hw: Tuple[int, int], sigma_frac: float) -> np.ndarray:
    """(H, W) Gaussian at the image centre, sigma = sigma_frac * (W, H) per axis, sums to 1."""
    h, w = hw
    y = (np.arange(h) + 0.5 - h / 2) / (sigma_frac * h)
    x = (np.arange(w) + 0.5 - w / 2) / (sigma_frac * w)
    g = np.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2))
    return g / g.sum()


def uniform_map(hw: Tuple[int, int]) -> np.ndarray:
    """(H, W) chance map: every pixel 1 / (H * W)."""
    return np.full(tuple(hw), 1.0 / (hw[0] * hw[1]))


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max())
    return e / e.sum()


def _work_size(hw: Tuple[int, int], max_size: int) -> Tuple[int, int]:
    h, w = hw
    if max_size <= 0 or max(h, w) <= max_size:
        return h, w
    s = max_size / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def ponder_to_saliency(ponder_map, out_hw: Tuple[int, int], c: CN) -> np.ndarray:
    """Ponder map (h, w) -> saliency density (H, W) = ``out_hw`` summing to 1 (``c`` = cfg.SACT_SALIENCY).

    The ponder map must cover the whole image (as the model's cropped "ponder_map" does).
    """
    p = ponder_map.detach().cpu().numpy() if torch.is_tensor(ponder_map) else np.asarray(ponder_map)
    if p.ndim != 2 or p.size == 0:
        raise ValueError(f"ponder_map must be a non-empty (h, w) map, got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError("ponder_map has non-finite values")
    wh, ww = _work_size(out_hw, int(c.WORK_MAX_SIZE))
    m = resize_map(p, (wh, ww))
    m = gaussian_blur(m, float(c.BLUR_SIGMA) * ww)
    if c.NORMALIZE == "minmax":
        rng = m.max() - m.min()
        m = (m - m.min()) / rng if rng > 0 else np.zeros_like(m)
    elif c.NORMALIZE == "zscore":
        sd = m.std()
        m = (m - m.mean()) / sd if sd > 0 else np.zeros_like(m)
    elif c.NORMALIZE != "none":
        raise ValueError(f"cfg.SACT_SALIENCY.NORMALIZE must be one of {NORMALIZATIONS}, "
                         f"got {c.NORMALIZE!r}")
    logits = m / float(c.TEMPERATURE)
    w_prior = float(c.CENTER_PRIOR_WEIGHT)
    if w_prior != 0:
        logits = logits + w_prior * np.log(center_bias_map((wh, ww), float(c.CENTER_SIGMA)))
    sal = resize_map(_softmax(logits), out_hw)
    return sal / sal.sum()


class MeanFixationBaseline:
    """Mean continuous fixation map of the OTHER images (leave-one-out) at a fixed size."""

    def __init__(self, size_wh: Sequence[int]) -> None:
        self.hw = (int(size_wh[1]), int(size_wh[0]))
        self._maps: Dict[object, np.ndarray] = {}
        self._sum = np.zeros(self.hw)

    def add(self, key, gt: np.ndarray) -> None:
        """Add image ``key``'s continuous fixation map (any size; stored as a density)."""
        m = resize_map(gt, self.hw)
        m = m / m.sum()
        self._maps[key] = m
        self._sum += m

    def __len__(self) -> int:
        return len(self._maps)

    def map_for(self, key, out_hw: Tuple[int, int]) -> np.ndarray:
        """Density (H, W) = mean of all added maps except ``key``'s, resized to ``out_hw``."""
        own = self._maps.get(key)
        n = len(self._maps) - (own is not None)
        if n < 1:
            raise ValueError("mean_fixation baseline needs at least one other image with fixations")
        m = (self._sum - own if own is not None else self._sum) / n
        out = np.clip(resize_map(m, out_hw), 0, None)
        return out / out.sum()
