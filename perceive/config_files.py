"""Deprecated: moved into :mod:`perceive.config`: a file's ``extends`` chain to
:mod:`perceive.config.files`, ``--set`` and flags to :mod:`perceive.config.overrides`, where a
value came from to :mod:`perceive.config.origins`. Importing a name from here works for one
release and warns."""

from perceive.deprecation import moved_names

__getattr__, __dir__ = moved_names(__name__, {
    **dict.fromkeys(["EXTENDS", "MAX_CHAIN", "load_mapping", "merge", "read_mapping", "stamp", "without"],
                    "perceive.config.files"),
    **dict.fromkeys(["Override", "apply_overrides", "parse_sets"], "perceive.config.overrides"),
    **dict.fromkeys(["at", "format_validation_error", "origin_dir", "rebase", "render_problem", "where"],
                    "perceive.config.origins"),
})
__all__ = __dir__()  # a star import still works: each name comes through its warning
