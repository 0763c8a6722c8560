"""Training engine of tools/train_net.py: Trainer, crash-safe checkpoints, resumable sampling.

``sact_det.engine.config`` (the cfg.SACT_TRAIN / cfg.SACT_EVAL keys) is light; the rest is
imported on first use.
"""
from . import config  # noqa: F401  (add_train_config: cfg.SACT_TRAIN / cfg.SACT_EVAL, from sact_det.config)

__all__ = ["Trainer", "AtomicDetectionCheckpointer", "ResumableTrainingSampler", "ResumableTrainLoader",
           "load_config", "ConfigError", "check_device", "check_weights", "PerIterationSeed", "TauWarmup"]

_LAZY = {
    "Trainer": "trainer", "AtomicDetectionCheckpointer": "checkpoint", "ResumableTrainingSampler": "sampler",
    "ResumableTrainLoader": "sampler", "load_config": "setup_config", "ConfigError": "setup_config",
    "check_device": "checks", "check_weights": "checks", "PerIterationSeed": "hooks", "TauWarmup": "hooks",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
