"""Deprecated: moved to :mod:`perceive.config.safe_yaml` (``LinedDict`` and ``load_yaml`` are
importable from :mod:`perceive.config` too). Importing a name from here works for one release and
warns."""

from perceive.deprecation import moved_names

__getattr__, __dir__ = moved_names(__name__, dict.fromkeys(
    ["MAX_ALIASES", "MAX_BYTES", "MAX_DEPTH", "MAX_VALUES", "LinedDict", "load_yaml", "loads"],
    "perceive.config.safe_yaml"))
__all__ = __dir__()  # a star import still works: each name comes through its warning
