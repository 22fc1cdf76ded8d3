"""The one strict pydantic base of perceive's models.

Every config model (a run, train, eval or graph config, ``perceive.json``, a serve request) and
every plugin-facing argument or option model derives from :class:`StrictModel`, so an unknown
field is an error wherever a value comes from: a typo in a file must never be ignored in silence.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A pydantic model that refuses unknown fields (``extra="forbid"``). A subclass may add
    settings of its own in ``model_config`` (pydantic merges them over these)."""

    model_config = ConfigDict(extra="forbid")


class FrozenStrictModel(StrictModel):
    """A :class:`StrictModel` whose instances cannot change (hashable values: call arguments,
    action and encoder options)."""

    model_config = ConfigDict(frozen=True)


__all__ = ["FrozenStrictModel", "StrictModel"]
