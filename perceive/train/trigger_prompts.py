"""Trigger prompts the training data uses that the trained model will not declare.

A model carries the trigger prompts its training data appended to questions (perceive.json
``prompts``, set by a training config's ``prompts:``): a graph with ``trigger: region`` or
``trigger: reencode`` appends the model's own text, and a free-choice ``perceive ask`` appends
none. A run that starts from a model declaring ``{region: null, reencode: null}`` (both shipped
models) keeps those nulls unless its config sets ``prompts:``; trained on questions that end with
the paper's triggers, the model then waits for a trigger nothing will send, and may never make
the calls it learned. The trainer warns before its first step (see docs/how-to/train-and-evaluate.md,
"Trigger prompts").
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from perceive.prompts import PAPER_TRIGGERS, Trigger


def data_triggers(items: Iterable[Mapping[str, Any]]) -> dict[Trigger, int]:
    """How many ``items`` (paper-layout dataset items, each with ``messages``) hold each of the
    paper's trigger prompts in a user turn."""
    counts = {t: 0 for t in Trigger}
    for item in items:
        said = "\n".join(str(m.get("content", "")) for m in item.get("messages") or []
                         if isinstance(m, Mapping) and m.get("role") == "user")
        for t in Trigger:
            counts[t] += PAPER_TRIGGERS[t].strip() in said
    return counts


def undeclared_triggers(items: list[Mapping[str, Any]], prompts: Any, data: str, from_config: bool) -> list[str]:
    """One warning per kind of trigger the data's questions use and the trained model's
    ``prompts`` (its :class:`~perceive.model.config.PromptConventions`; None: not declared, so the
    paper's are assumed and nothing is missing) leaves out or words differently. ``data``: the
    dataset's name for the message; ``from_config``: whether the training config set ``prompts:``
    (else the model kept its starting model's)."""
    if prompts is None:
        return []
    counts = data_triggers(items)
    missing = [t for t in Trigger
               if counts[t] and (getattr(prompts, t.value) or "").strip() != PAPER_TRIGGERS[t].strip()]
    if not missing:
        return []
    fix = {t.value: PAPER_TRIGGERS[t] if counts[t] else getattr(prompts, t.value) for t in Trigger}
    yaml = "{" + ", ".join(f"{k}: {json.dumps(v)}" for k, v in fix.items()) + "}"  # a JSON string is YAML
    whence = "the training config's `prompts:`" if from_config else "kept from the model it starts from"
    return [
        f"{counts[t]} of {len(items)} item(s) in {data} ask with the paper's {t.value} trigger prompt "
        f"({PAPER_TRIGGERS[t].strip()!r}), but the trained model will declare prompts.{t.value}: "
        f"{json.dumps(getattr(prompts, t.value))} ({whence}): a free-choice `perceive ask` sends no trigger and a "
        f"graph with `trigger: {t.value}` will send none either, so the model may never make the calls it learns here\n"
        f"  -> set `prompts: {yaml}` in the training config (then ask with a graph that has `trigger: {t.value}`), or "
        "train on questions without trigger prompts (`perceive data cards --no-prompts`) for a model that calls by "
        "itself"
        for t in missing
    ]


__all__ = ["data_triggers", "undeclared_triggers"]
