"""Tiny offline models for tests: re-exported from :mod:`perceive.model.tiny`, where the trainer
builds from-scratch models (``model.tiny`` in a training config) with the same code."""

from perceive.model.tiny import *  # noqa: F403
from perceive.model.tiny import __all__  # noqa: F401
