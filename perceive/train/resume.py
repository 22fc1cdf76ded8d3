"""What a resumed run changes: its config against the one stored with the checkpoint.

A checkpoint's ``trainer_state.json`` holds the config of the run that saved it (``config``).
Resuming compares the new run's config with it, key by key (``optim.steps: 100 -> 200``):

- a change to **what is trained** is refused (:class:`~perceive.errors.CheckpointError`): another
  model (``model.*``: the checkpoint's weights belong to the model it names), other training data
  (``data.train``), another ``stage``, ``lora``, ``freeze`` or ``trainable`` (the optimizer's
  state is per trained parameter), or other ``positions``, ``prompts``, ``views`` or ``protocol``
  (stored in the model: it would claim settings most of its training did not use). A resumed run
  continues the checkpoint's run; the same model on other data is a new stage
  (``model.path: OUTPUT/model``). ``allow_changes`` resumes anyway (a dataset moved to another
  folder, say);
- any other change applies from the checkpoint's step on, and is reported: the optimizer settings
  (``optim.lr`` and ``optim.weight_decay`` included, which the trainer sets again after loading
  the optimizer's state), the schedule, evaluation, saving, the output folder.

A checkpoint saved before configs were stored has none to compare with: nothing is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from perceive.errors import CheckpointError
from perceive.train.config import TrainConfig

#: key prefixes that say what is trained: changing one makes a resume another run
WHAT_IS_TRAINED = ("model", "data.train", "stage", "lora", "freeze", "trainable", "positions", "prompts", "views",
                   "protocol")


class ChangeEffect(Enum):
    APPLIES = "applies"  # takes effect from the checkpoint's step on
    REFUSED = "refused"  # changes what is trained


@dataclass(frozen=True)
class ConfigChange:
    """One setting that differs: ``key`` dotted (``optim.steps``); ``old`` the checkpoint's value,
    ``new`` this run's (None where one side does not have the key)."""

    key: str
    old: Any
    new: Any

    @property
    def effect(self) -> ChangeEffect:
        refused = any(self.key == p or self.key.startswith(p + ".") for p in WHAT_IS_TRAINED)
        return ChangeEffect.REFUSED if refused else ChangeEffect.APPLIES

    def __str__(self) -> str:
        return f"{self.key}: {_show(self.old)} -> {_show(self.new)}"


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def config_record(cfg: TrainConfig) -> dict:
    """The config as a checkpoint stores it (JSON types; paths as strings)."""
    return cfg.model_dump(mode="json")


def _diff(old: Any, new: Any, key: str = "") -> list[ConfigChange]:
    """Changes from ``old`` to ``new``: mappings key by key (the new one's order first), anything
    else whole (a list, or a mapping against null, is one change)."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = list(new) + [k for k in old if k not in new]
        return [c for k in keys for c in _diff(old.get(k), new.get(k), f"{key}.{k}" if key else k)]
    return [] if old == new else [ConfigChange(key, old, new)]


def config_changes(stored: dict, cfg: TrainConfig) -> list[ConfigChange]:
    """The settings of ``cfg`` that differ from ``stored`` (a checkpoint's config), in the config's
    key order. ``stored`` is read through today's schema first, so a field added since it was
    written compares as its default rather than as a change."""
    try:
        stored = config_record(TrainConfig.model_validate(stored))
    except ValidationError:
        pass  # written by another version: compare what is there
    return _diff(stored, config_record(cfg))


def resume_changes(checkpoint: str | Path, state: dict, cfg: TrainConfig,
                   allow_changes: bool = False) -> list[ConfigChange] | None:
    """The changes of resuming ``checkpoint`` (whose trainer state is ``state``) with ``cfg``:
    None when the checkpoint stores no config, else the list (empty: the same config). A change
    to what is trained is a ``CheckpointError`` unless ``allow_changes``."""
    stored = state.get("config")
    if not isinstance(stored, dict):
        return None
    changes = config_changes(stored, cfg)
    refused = [c for c in changes if c.effect is ChangeEffect.REFUSED]
    if refused and not allow_changes:
        raise CheckpointError(
            f"cannot resume from {checkpoint}: this config trains another model or on other data than the run "
            f"that saved it ({'; '.join(str(c) for c in refused)})",
            hint="a resumed run continues that run: set these back to the checkpoint's values (the left side); "
                 "other data or another model is a new stage, from a saved model (model.path: OUTPUT/model); "
                 "--allow-changes resumes anyway (say, the same data moved to another folder)")
    return changes


def describe_changes(checkpoint: str | Path, step: int, changes: list[ConfigChange] | None) -> list[str]:
    """Lines that tell a user resuming ``checkpoint`` (at ``step``) what differs; none when
    nothing does."""
    if changes is None:
        return [f"{checkpoint} does not record the config it was saved with (an earlier perceive): what this "
                f"run changes cannot be checked"]
    if not changes:
        return []
    return [f"the config differs from the one {checkpoint} was saved with; these apply from step {step} on:",
            *(f"  {c}" for c in changes)]


__all__ = ["ChangeEffect", "ConfigChange", "config_changes", "config_record", "describe_changes",
           "resume_changes"]
