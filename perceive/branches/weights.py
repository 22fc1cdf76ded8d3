"""Deprecated: moved to :mod:`perceive.reencode.weights`. Importing a name from here works for one
release and warns."""

from perceive.deprecation import moved_names

__getattr__, __dir__ = moved_names(__name__, dict.fromkeys(
    ["library_rename", "read_config_file", "strict_load"], "perceive.reencode.weights"))
__all__ = __dir__()  # a star import still works: each name comes through its warning
