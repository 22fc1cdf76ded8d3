"""Deprecated: moved to :mod:`perceive.config.settings` (every name below is importable from
:mod:`perceive.config` too). Importing a name from here works for one release and warns."""

from perceive.deprecation import moved_names

__getattr__, __dir__ = moved_names(__name__, dict.fromkeys(
    ["AUTO_PROTOCOL", "DEFAULT_GRAPH", "MANY_SAMPLES_BATCH_SIZE", "MAX_ACTION_TIMEOUT_S", "ActionTimeout",
     "LoopRuntime", "RuntimeConfig", "SamplingConfig", "ServeConfig"], "perceive.config.settings"))
__all__ = __dir__()  # a star import still works: each name comes through its warning
