"""Deprecated aliases of moved names: a module that moved keeps its old import path for one
release, answering each name from its new home with a ``DeprecationWarning`` that names it."""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any


def moved_names(old: str, new: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module ``__getattr__`` and ``__dir__`` of the alias module ``old``; ``new`` maps each
    name it answers to the module that now holds it. The new module is imported on first use, so
    an alias never creates an import cycle."""

    def __getattr__(name: str) -> Any:
        if name not in new:
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        # `from package import name` asks twice (the import system's hasattr, then the statement):
        # warn once, at the statement, so the warning points at the caller's line
        if sys._getframe(1).f_globals.get("__name__") != "importlib._bootstrap":
            warnings.warn(f"{old}.{name} is deprecated: import {name} from {new[name]}", DeprecationWarning,
                          stacklevel=2)
        return getattr(importlib.import_module(new[name]), name)

    def __dir__() -> list[str]:
        return sorted(new)

    return __getattr__, __dir__


__all__ = ["moved_names"]
