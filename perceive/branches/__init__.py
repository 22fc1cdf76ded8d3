"""Deprecated: moved into :mod:`perceive.reencode` (every name below is importable from there):
the branch contract to :mod:`perceive.reencode.branch_spec`, ``ModelBranchEncoder`` and
``model_has_branch`` to :mod:`perceive.reencode.branch_encoder`, and the submodules
``projectors`` and ``weights`` to :mod:`perceive.reencode.projectors` and
:mod:`perceive.reencode.weights`. Importing a name from here works for one release and warns."""

from perceive.deprecation import moved_names

__getattr__, __dir__ = moved_names(__name__, {
    **dict.fromkeys(["BranchInput", "BranchSpec", "BranchTokens", "PaperLayout", "branch_problems"],
                    "perceive.reencode.branch_spec"),
    **dict.fromkeys(["ModelBranchEncoder", "model_has_branch"], "perceive.reencode.branch_encoder"),
})
__all__ = __dir__()  # a star import still works: each name comes through its warning
