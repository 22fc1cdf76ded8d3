"""Deprecated: :mod:`perceive.loop.continuous_batching` (importing a name from here works for one
release and warns)."""

from perceive.deprecation import moved_names

__getattr__, __dir__ = moved_names(__name__, dict.fromkeys(["Batch", "Steps"], "perceive.loop.continuous_batching"))
__all__ = __dir__()  # a star import still works: each name comes through its warning
