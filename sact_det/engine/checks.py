"""Checks shared by the tools: refuse instead of silently falling back.

- ``check_device``: MODEL.DEVICE names a CUDA device that this machine does not have;
- ``check_weights``: MODEL.WEIGHTS is empty where weights are needed (evaluation, drawing),
  unless the user asked for random weights (``--random-weights``), or names a local file that
  does not exist (URLs and ``detectron2://`` catalog paths are left to detectron2's loader).
"""
import argparse
import logging
import os
from typing import Optional

import torch

from .setup_config import ConfigError

__all__ = ["check_device", "check_weights", "add_random_weights_flag", "is_remote", "has_last_checkpoint"]

logger = logging.getLogger(__name__)


def check_device(cfg) -> None:
    """ConfigError naming MODEL.DEVICE if it is a CUDA device this machine does not have."""
    device = str(cfg.MODEL.DEVICE)
    if not device.startswith("cuda"):
        return
    if not torch.cuda.is_available():
        raise ConfigError(f"MODEL.DEVICE is {device!r} but CUDA is not available on this machine; "
                          f"set MODEL.DEVICE cpu (in the config or as 'MODEL.DEVICE cpu' on the command line)")
    index = device.partition(":")[2]
    if index.isdigit() and int(index) >= torch.cuda.device_count():
        raise ConfigError(f"MODEL.DEVICE is {device!r} but this machine has {torch.cuda.device_count()} "
                          f"CUDA device(s)")


def is_remote(path: str) -> bool:
    """True for URLs and catalog paths (``https://...``, ``detectron2://...``): resolved by detectron2."""
    return "://" in path


def has_last_checkpoint(folder: str) -> bool:
    """True if ``folder`` holds a ``last_checkpoint`` tag (what ``--resume`` continues from)."""
    return bool(folder) and os.path.isfile(os.path.join(folder, "last_checkpoint"))


def check_weights(weights: str, *, required: bool, random_weights: bool = False,
                  resume_dir: Optional[str] = None) -> None:
    """Refuse MODEL.WEIGHTS values that would silently give a model other than the one asked for.

    Args:
        weights: cfg.MODEL.WEIGHTS.
        required: the weights are needed (evaluation, drawing): empty MODEL.WEIGHTS is an error
            unless ``random_weights``. Training from scratch passes False.
        random_weights: the user asked for randomly initialized weights (``--random-weights``);
            then MODEL.WEIGHTS must be empty and there must be no checkpoint to resume from.
        resume_dir: ``--resume``'s output folder; if it holds a ``last_checkpoint``, that
            checkpoint is loaded instead of MODEL.WEIGHTS, which is then not checked.

    Raises ConfigError (one line, naming MODEL.WEIGHTS / the path).
    """
    weights = str(weights or "")
    resuming = resume_dir is not None and has_last_checkpoint(resume_dir)
    if random_weights:
        if weights:
            raise ConfigError(f"--random-weights asks for random weights but MODEL.WEIGHTS is {weights!r}; "
                              f"pass one of them")
        if resuming:
            raise ConfigError(f"--random-weights asks for random weights but --resume would load "
                              f"{os.path.join(resume_dir, 'last_checkpoint')}; pass one of them")
        logger.warning("--random-weights: the model keeps its random initial weights")
        return
    if resuming:
        return
    if not weights:
        if required:
            raise ConfigError("MODEL.WEIGHTS is empty: the model would keep random weights; set MODEL.WEIGHTS "
                              "path/to/model_final.pth, or pass --random-weights to score random weights")
        return
    if is_remote(weights):
        return
    if os.path.isdir(weights):
        raise ConfigError(f"MODEL.WEIGHTS {weights} is a folder, not a checkpoint file")
    if not os.path.isfile(weights):
        raise ConfigError(f"MODEL.WEIGHTS file not found: {weights}")


def add_random_weights_flag(parser: argparse.ArgumentParser) -> None:
    """``--random-weights``: evaluate / draw a model with random weights (MODEL.WEIGHTS empty)."""
    parser.add_argument("--random-weights", action="store_true",
                        help="use the model's random initial weights (MODEL.WEIGHTS must be empty); without "
                             "it, empty MODEL.WEIGHTS is an error")
