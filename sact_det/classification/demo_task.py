"""A small generated classification task for "does it learn?": one shape on a cluttered background.

32x32 RGB images (CIFAR size). Each holds one object of a class (filled circle, square, triangle,
plus sign) of 11-17 px at a random place and colour, on a background of random colour gradient,
noise and thin clutter strokes. Written in the CIFAR-10 pickle format (so training goes through the
real data path) with a ``masks.npy`` per split: (N,32,32) bool object masks for the ponder analysis.
"""
import json
import os
from typing import Tuple

import numpy as np
from PIL import Image, ImageDraw

from ..data.classification import write_cifar10_batch
from ..modeling.core.ponder_maps import sum_ponder_maps

__all__ = ["CLASS_NAMES", "make_image", "generate_split", "write_demo_dataset", "ponder_on_object",
           "save_ponder_grid"]

CLASS_NAMES = ("circle", "square", "triangle", "plus")
SIZE = 32


def _background(rng: np.random.Generator) -> Image.Image:
    """Gradient + noise + 6-12 thin random strokes and a few dots (clutter)."""
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, SIZE)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, SIZE)[:, None, None]
    img = c0 * (1 - t) + c1 * t + rng.normal(0, 12, (SIZE, SIZE, 3))  # (32,32,3) by broadcasting
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(rng.integers(6, 13)):
        x0, y0 = rng.integers(0, SIZE, 2)
        length, angle = rng.uniform(4, 14), rng.uniform(0, np.pi)
        x1, y1 = x0 + length * np.cos(angle), y0 + length * np.sin(angle)
        draw.line([(int(x0), int(y0)), (int(x1), int(y1))], fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=1)
    for _ in range(rng.integers(2, 6)):
        x, y = rng.integers(0, SIZE, 2)
        draw.rectangle([int(x), int(y), int(x) + 1, int(y) + 1], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return pil


def _shape(draw: ImageDraw.ImageDraw, label: int, box: Tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    if label == 0:
        draw.ellipse(box, fill=fill)
    elif label == 1:
        draw.rectangle(box, fill=fill)
    elif label == 2:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    else:
        w = max(3, (x1 - x0) // 3)
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        draw.rectangle([cx - w // 2, y0, cx - w // 2 + w - 1, y1], fill=fill)
        draw.rectangle([x0, cy - w // 2, x1, cy - w // 2 + w - 1], fill=fill)


def make_image(rng: np.random.Generator, label: int) -> Tuple[np.ndarray, np.ndarray]:
    """One image (32,32,3) uint8 and its object mask (32,32) bool."""
    img = _background(rng)
    size = int(rng.integers(11, 18))
    x0, y0 = (int(v) for v in rng.integers(0, SIZE - size + 1, 2))
    box = (x0, y0, x0 + size - 1, y0 + size - 1)
    mask = Image.new("L", (SIZE, SIZE), 0)
    _shape(ImageDraw.Draw(mask), label, box, 255)
    bg_mean = np.asarray(img, dtype=np.float64)[np.asarray(mask) > 0].mean(0)
    color = rng.integers(0, 256, 3)
    while np.abs(color - bg_mean).sum() < 150:  # keep the object visible against its background
        color = rng.integers(0, 256, 3)
    _shape(ImageDraw.Draw(img), label, box, tuple(int(v) for v in color))
    return np.asarray(img, dtype=np.uint8), np.asarray(mask) > 0


def generate_split(num: int, seed: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images (N,32,32,3) uint8, labels (N,), masks (N,32,32) bool); classes balanced and shuffled."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(num) % len(CLASS_NAMES))
    pairs = [make_image(rng, int(lab)) for lab in labels]
    return np.stack([p[0] for p in pairs]), labels, np.stack([p[1] for p in pairs])


def write_demo_dataset(root: str, num_train: int = 4000, num_test: int = 800, seed: int = 0) -> str:
    """Write data_batch_1, test_batch, batches.meta and {train,test}_masks.npy under ``root`` (cached by spec)."""
    spec = {"num_train": num_train, "num_test": num_test, "seed": seed, "version": 1}
    stamp = os.path.join(root, "spec.json")
    if os.path.isfile(stamp):
        with open(stamp) as f:
            if json.load(f) == spec:
                return root
    os.makedirs(root, exist_ok=True)
    for name, num, s in (("data_batch_1", num_train, seed), ("test_batch", num_test, seed + 1)):
        images, labels, masks = generate_split(num, s)
        write_cifar10_batch(os.path.join(root, name), images, labels, CLASS_NAMES)
        np.save(os.path.join(root, ("train" if name.startswith("data") else "test") + "_masks.npy"), masks)
    with open(stamp, "w") as f:
        json.dump(spec, f)
    return root


def ponder_on_object(model, images, masks, batch_size: int = 200) -> dict:
    """Mean ponder cost on object pixels vs background pixels (summed map and per stage).

    images: (N,3,32,32) normalised tensor; masks: (N,32,32) bool array. Also the fraction of images
    whose object mean exceeds their background mean.
    """
    import torch

    model.eval()
    masks_t = torch.as_tensor(masks)
    sums = {}
    wins, n = 0, 0
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            model(images[i:i + batch_size])
            m = masks_t[i:i + batch_size]
            stage_maps = {name: p.ponder_cost[:, 0] for name, p in model.ponders.items()}
            maps = {"total": sum_ponder_maps(list(stage_maps.values()), size=(SIZE, SIZE))}
            for name, mp in stage_maps.items():
                maps[name] = sum_ponder_maps([mp], size=(SIZE, SIZE))  # one stage, upsampled (nearest)
            for key, mp in maps.items():
                s = sums.setdefault(key, [0.0, 0, 0.0, 0])
                s[0] += float(mp[m].sum()); s[1] += int(m.sum())
                s[2] += float(mp[~m].sum()); s[3] += int((~m).sum())
            tot = maps["total"]
            obj = (tot * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp(min=1)
            bg = (tot * ~m).flatten(1).sum(1) / (~m).flatten(1).sum(1).clamp(min=1)
            wins += int((obj > bg).sum()); n += len(m)
    out = {k: {"object": s[0] / max(s[1], 1), "background": s[2] / max(s[3], 1)} for k, s in sums.items()}
    out["images_object_above_background"] = wins / max(n, 1)
    return out


def save_ponder_grid(model, images_uint8, images, path: str, count: int = 8, scale: int = 4) -> None:
    """PNG: row 1 the images, row 2 their summed ponder maps (grey, min..max of the shown maps)."""
    import torch

    model.eval()
    with torch.no_grad():
        model(images[:count])
    maps = sum_ponder_maps([p.ponder_cost[:, 0] for p in model.ponders.values()], size=(SIZE, SIZE)).numpy()
    lo, hi = float(maps.min()), float(maps.max())
    grey = ((maps - lo) / max(hi - lo, 1e-6) * 255).astype(np.uint8)
    top = np.concatenate(list(images_uint8[:count]), 1)
    bottom = np.concatenate([np.repeat(g[:, :, None], 3, 2) for g in grey], 1)
    grid = Image.fromarray(np.concatenate([top, bottom], 0))
    grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST).save(path)
