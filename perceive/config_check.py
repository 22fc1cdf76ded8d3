"""Deprecated: ``perceive config check``'s checks moved to :mod:`perceive.cli.config_check`, beside
their command. Importing a name from here works for one release and warns."""

from perceive.deprecation import moved_names

__getattr__, __dir__ = moved_names(__name__, dict.fromkeys(
    ["CONFIG_KINDS", "check_config_file", "config_kind", "model_fit_problems"], "perceive.cli.config_check"))
__all__ = __dir__()  # a star import still works: each name comes through its warning
