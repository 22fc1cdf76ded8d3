"""The projector building blocks, where the model has always imported them from. They are part of
the plugin API and live in :mod:`perceive.branches.projectors`."""

from perceive.branches.projectors import ConditionedProjector, TokenProjector, condition, xavier

_Conditioned = ConditionedProjector  # the names before they were public
_xavier = xavier

__all__ = ["ConditionedProjector", "TokenProjector", "condition", "xavier"]
