"""Trigger prompts belong to the model: a graph names the kind, the model's perceive.json the text."""

import pytest

from perceive.errors import ConfigError
from perceive.graph import compile_graph
from perceive.model.config import PromptConventions
from perceive.prompts import PAPER_TRIGGERS, Trigger, question_suffix

OWN = PromptConventions(region=" Look closer.", reencode=None)
NONE = PromptConventions(region=None, reencode=None)


def test_a_trigger_takes_the_models_text_or_the_papers():
    assert question_suffix(None, Trigger.REGION) == (PAPER_TRIGGERS[Trigger.REGION], None)
    assert question_suffix(OWN, "region") == (" Look closer.", None)
    suffix, note = question_suffix(NONE, Trigger.REENCODE)
    assert suffix == "" and "trained without a reencode trigger" in note


def test_a_literal_suffix_the_model_never_saw_is_refused():
    assert question_suffix(None, None, " hint") == (" hint", None)  # undeclared: as written
    assert question_suffix(OWN, None, " Look closer.") == (" Look closer.", None)
    with pytest.raises(ConfigError, match="was not trained with") as info:
        question_suffix(NONE, None, PAPER_TRIGGERS[Trigger.REGION], graph="mine")
    assert "'mine'" in str(info.value) and "trigger: region" in info.value.hint


def test_a_graph_sets_trigger_or_prompt_suffix_not_both():
    from perceive.graph.validate import GraphValidationError

    data = {"name": "g", "start": "a", "trigger": "region", "prompt_suffix": "x",
            "nodes": {"a": {"kind": "generate", "next": "b"}, "b": {"kind": "answer"}}}
    with pytest.raises(GraphValidationError, match="not both"):
        compile_graph(data)


def test_the_graph_appends_the_models_trigger(model, photo):
    from perceive.loop import LoopOptions, PerceptionLoop

    data = {"name": "g", "start": "a", "trigger": "region",
            "nodes": {"a": {"kind": "generate", "next": "b"}, "b": {"kind": "answer"}}}
    g = compile_graph(data)
    saved = model.config.prompts
    try:
        model.config.prompts = OWN
        ans = PerceptionLoop(model, graph=g, options=LoopOptions(max_new_tokens=2)).ask(photo, "What?")
        assert not ans.trace.events
        model.config.prompts = NONE
        ans = PerceptionLoop(model, graph=g, options=LoopOptions(max_new_tokens=2)).ask(photo, "What?")
        assert ans.trace.events[0]["type"] == "prompt"
    finally:
        model.config.prompts = saved
    assert ans.trace.question == "What?"


def test_the_question_fed_carries_the_suffix(model, photo, monkeypatch):
    from perceive.loop import LoopOptions, PerceptionLoop

    data = {"name": "g", "start": "a", "trigger": "region",
            "nodes": {"a": {"kind": "generate", "next": "b"}, "b": {"kind": "answer"}}}
    g = compile_graph(data)
    seen = []
    saved = model.config.prompts
    model.config.prompts = OWN
    try:
        loop = PerceptionLoop(model, graph=g, options=LoopOptions(max_new_tokens=2))
        real = loop.layout.prompt
        monkeypatch.setattr(loop.layout, "prompt", lambda q, *a: seen.append(q) or real(q, *a))
        loop.ask(photo, "What?")
    finally:
        model.config.prompts = saved
    assert seen == ["What? Look closer."]
