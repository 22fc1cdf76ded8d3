"""Trigger prompts: text appended to the question that asks a model for a kind of perception.

The paper trains each VPT model with fixed triggers (vpt-paper.md §1.6); a model trained without
them (the paper's "NoPrompt" model, perceive's default model) decides by itself, and a trigger it
never saw only confuses it. So the model carries its conventions (``prompts`` in perceive.json)
and a graph names the *kind* of trigger it wants (``trigger: region``), never the text.
"""

from __future__ import annotations

from enum import Enum

from perceive.errors import ConfigError


class Trigger(str, Enum):
    __str__ = str.__str__
    REGION = "region"  # ask for a Region Selection span
    REENCODE = "reencode"  # ask for a Vision Re-Encoding span


#: the paper's trigger prompts, appended to the question as its training data does
PAPER_TRIGGERS: dict[Trigger, str] = {
    Trigger.REGION: " \nIdentify the region that can help you answer the question, and then answer the question.",
    Trigger.REENCODE: " \nRequire additional perception features, and then answer the question.",
}


def question_suffix(conventions, trigger: Trigger | None, literal: str = "",
                    graph: str = "graph") -> tuple[str, str | None]:
    """``(suffix, note)`` for a graph's ``trigger`` (or its literal ``prompt_suffix``) on a model
    whose ``conventions`` are its perception.json ``prompts`` (None: not declared, the paper's
    triggers are assumed). ``note`` says why a requested trigger was left out.

    Raises :class:`ConfigError` for a literal suffix the model was not trained with."""
    if trigger is not None:
        trigger = Trigger(trigger)
        if conventions is None:
            return PAPER_TRIGGERS[trigger], None
        text = getattr(conventions, trigger.value)
        if text is None:
            return "", (f"the model was trained without a {trigger.value} trigger prompt: none appended, "
                        "the model decides by itself")
        return text, None
    if not literal or conventions is None:
        return literal, None
    known = {t.value: getattr(conventions, t.value) for t in Trigger}
    if literal in known.values():
        return literal, None
    raise ConfigError(
        f"graph {graph!r} appends prompt_suffix {literal!r}, which this model was not trained with "
        f"(its perceive.json prompts: {known})",
        hint="use `trigger: region` or `trigger: reencode` so the model's own prompt is used, or drop prompt_suffix")
