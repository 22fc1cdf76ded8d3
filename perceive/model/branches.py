"""Deprecated: moved to :mod:`perceive.model.branch_modules`. Importing a name from here works for
one release and warns."""

from perceive.deprecation import moved_names

__getattr__, __dir__ = moved_names(__name__, dict.fromkeys(
    ["Branch", "branch_spec", "build_encoder"], "perceive.model.branch_modules"))
__all__ = __dir__()  # a star import still works: each name comes through its warning
