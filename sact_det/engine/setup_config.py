"""Config loading for the tools: detectron2 + sact_det defaults, yaml file, command-line overrides,
with errors that name the file and the key (and suggest the closest existing key)."""
import difflib
import os
import re
from typing import List, Optional, Sequence

from detectron2.config import CfgNode

from ..config import get_sact_cfg, validate_sact_cfg

__all__ = ["ConfigError", "load_config", "all_keys"]


class ConfigError(ValueError):
    """A config file or override that cannot be used (message names the file / key / value)."""


def all_keys(cfg: CfgNode, prefix: str = "") -> List[str]:
    """Every leaf key of ``cfg`` as a dotted path, e.g. ``MODEL.SACT.TAU``."""
    keys = []
    for k, v in cfg.items():
        full = f"{prefix}{k}"
        keys.extend(all_keys(v, full + ".") if isinstance(v, CfgNode) else [full])
    return keys


def _unknown_key_error(where: str, key: str, cfg: CfgNode) -> ConfigError:
    close = difflib.get_close_matches(key, all_keys(cfg), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return ConfigError(f"{where}: unknown config key {key}{hint}")


def load_config(config_file: Optional[str], opts: Sequence[str] = (), check_device: bool = True,
                base: Optional[CfgNode] = None) -> CfgNode:
    """get_sact_cfg() (or ``base``, e.g. get_classification_cfg()) + ``config_file`` + ``opts`` (KEY VALUE
    pairs), validated, not frozen.

    Raises ConfigError naming the file / key for a missing file, an unknown key, a value of the
    wrong type or an invalid cfg.MODEL.SACT value; with ``check_device``, also when MODEL.DEVICE
    is a CUDA device this machine does not have (no silent switch to CPU: the demo configs say
    ``DEVICE: "cpu"``; pass ``MODEL.DEVICE cpu`` for others).
    """
    cfg = get_sact_cfg() if base is None else base
    if config_file:
        if not os.path.isfile(config_file):
            raise ConfigError(f"config file not found: {config_file}")
        try:
            cfg.merge_from_file(config_file)
        except KeyError as e:
            m = re.search(r"Non-existent config key: (\S+)", str(e))
            if m:
                raise _unknown_key_error(f"{config_file} (or a _BASE_ it includes)", m.group(1).rstrip("'\""),
                                         cfg) from None
            raise ConfigError(f"{config_file}: {e}") from None
        except (ValueError, TypeError, AssertionError) as e:
            raise ConfigError(f"{config_file}: {e}") from None
    opts = list(opts or [])
    if len(opts) % 2:
        raise ConfigError(f"command-line overrides must be KEY VALUE pairs, got an odd number: {opts}")
    for key, value in zip(opts[0::2], opts[1::2]):
        try:
            cfg.merge_from_list([key, value])
        except AssertionError as e:
            if "Non-existent key" in str(e):
                raise _unknown_key_error("command line", key, cfg) from None
            raise ConfigError(f"command line {key}={value}: {e}") from None
        except (ValueError, TypeError, KeyError) as e:
            raise ConfigError(f"command line {key}={value}: {e}") from None
    try:
        validate_sact_cfg(cfg)
    except ValueError as e:
        raise ConfigError(f"{config_file or 'config'}: {e}") from None
    if check_device:
        from .checks import check_device as _check_device

        _check_device(cfg)
    return cfg
