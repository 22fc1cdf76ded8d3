"""Deprecated: :mod:`perceive.loop.continuous_batching`."""

import warnings

from perceive.loop.continuous_batching import Batch, Steps

warnings.warn("perceive.loop.batch moved to perceive.loop.continuous_batching", DeprecationWarning, stacklevel=2)

__all__ = ["Batch", "Steps"]
