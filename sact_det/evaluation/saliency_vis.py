"""Picture of one scored image: image | fixation map (+ fixations) | ponder map | saliency map."""
import os
from typing import Union

import cv2
import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image

__all__ = ["write_panel", "colorize"]

PANEL_HEIGHT = 240


def colorize(m: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """(H, W) float map -> (H, W, 3) uint8 RGB, min-max scaled."""
    m = np.asarray(m, np.float64)
    rng = m.max() - m.min()
    m = (m - m.min()) / rng if rng > 0 else np.zeros_like(m)
    return (colormaps[cmap](m)[..., :3] * 255).astype(np.uint8)


def _fit(rgb: np.ndarray, w: int, h: int) -> np.ndarray:
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA if rgb.shape[0] > h else cv2.INTER_LINEAR)


def write_panel(path: str, image: Union[str, np.ndarray], fix: np.ndarray, gt: np.ndarray,
                ponder_map, saliency: np.ndarray) -> None:
    """Write a PNG: RGB image, fixation map with fixations in red, raw ponder map (jet,
    nearest-upsampled), post-processed saliency map (jet); every panel PANEL_HEIGHT px high."""
    if isinstance(image, str):
        with Image.open(image) as im:
            image = np.asarray(im.convert("RGB"))
    h, w = fix.shape
    ph = PANEL_HEIGHT
    pw = max(1, round(w * ph / h))
    fixpanel = colorize(gt, "gray")
    fixpanel[np.asarray(fix) > 0] = (255, 0, 0)
    fixpanel = cv2.dilate(fixpanel, np.ones((3, 3), np.uint8)) if max(h, w) > 4 * ph else fixpanel
    p = ponder_map.detach().cpu().numpy() if isinstance(ponder_map, torch.Tensor) else np.asarray(ponder_map)
    ponder_rgb = cv2.resize(colorize(p), (pw, ph), interpolation=cv2.INTER_NEAREST)
    panels = [_fit(image, pw, ph), _fit(fixpanel, pw, ph), ponder_rgb, _fit(colorize(saliency), pw, ph)]
    labels = ["image", "fixations", f"ponder {p.min():.1f}-{p.max():.1f}", "saliency"]
    sep = np.full((ph, 4, 3), 255, np.uint8)
    out = []
    for panel, label in zip(panels, labels):
        panel = np.ascontiguousarray(panel)
        cv2.putText(panel, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        out += [panel, sep]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Image.fromarray(np.concatenate(out[:-1], 1)).save(path)
