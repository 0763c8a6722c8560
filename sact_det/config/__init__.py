from .defaults import add_sact_config, get_sact_cfg, register_config_hook, validate_sact_cfg

__all__ = ["add_sact_config", "get_sact_cfg", "register_config_hook", "validate_sact_cfg"]
