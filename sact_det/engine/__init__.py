"""Training engine of tools/train_net.py: Trainer, crash-safe checkpoints, resumable sampling.

``sact_det.engine.config`` (the cfg.SACT_TRAIN / cfg.SACT_EVAL keys) is light; the rest is
imported on first use.
"""
from . import config  # noqa: F401  (registers cfg.SACT_TRAIN / cfg.SACT_EVAL with get_sact_cfg)

__all__ = ["Trainer", "AtomicDetectionCheckpointer", "ResumableTrainingSampler", "load_config",
           "ConfigError", "PerIterationSeed", "TauWarmup"]

_LAZY = {
    "Trainer": "trainer", "AtomicDetectionCheckpointer": "checkpoint", "ResumableTrainingSampler": "sampler",
    "load_config": "setup_config", "ConfigError": "setup_config", "PerIterationSeed": "hooks", "TauWarmup": "hooks",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
