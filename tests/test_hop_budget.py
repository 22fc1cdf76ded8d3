"""A spent hop budget (``--max-hops 0`` above all): the model answers without looking; a call it still
makes goes unanswered, and the ``budget_exhausted`` event says which call, that the budget is 0 and
how to raise it. The unanswered call is no part of the answer, in any protocol."""

import pytest
from PIL import Image

from perceive.loop import LoopOptions, PerceptionLoop
from perceive.testing.scripted import ScriptedPolicy, span_tokens
from perceive.testing.tiny import tiny_vpt_model

REGION = "<|region_token_start|><|x_2|><|y_0|><|x_3|><|y_1|><|region_token_end|>"
HERMES = ('<tool_call>\n{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [8, 4, 48, 36]}}\n</tool_call>')
IMAGE = Image.new("RGB", (64, 48), "navy")


@pytest.fixture(scope="module")
def model():
    return tiny_vpt_model(base="qwen2_5_vl", branches=())


def ask(model, script: str, max_hops: int, **options):
    tok = model.tokenizer
    tokens = span_tokens(tok, script)
    loop = PerceptionLoop(model, options=LoopOptions(max_hops=max_hops, max_new_tokens=len(tokens), **options),
                          policy=ScriptedPolicy(tok, {0: tokens}))
    return loop.ask(IMAGE, "What is written here?")


def budget_events(ans):
    return [e for e in ans.trace.events if e["type"] == "budget_exhausted"]


@pytest.mark.parametrize("protocol,call", [("vpt", REGION), ("hermes_json", HERMES)])
def test_zero_hops_the_call_goes_unanswered_and_the_event_says_why(model, protocol, call):
    ans = ask(model, call + "42<|im_end|>", 0, protocol=protocol)
    assert not ans.trace.hops and ans.ok
    assert ans.text == "42"  # the model's answer, without the call it made
    (event,) = budget_events(ans)
    assert event["action"] == "region_select" and event["max_hops"] == 0
    assert "".join(event["tokens"]) == call
    msg = event["message"]
    assert msg.startswith("the model's 'region_select' call <") and "went unanswered" in msg, msg
    assert "the hop budget is 0 (the model answers without looking)" in msg and "--max-hops N" in msg, msg


def test_a_spent_budget_names_how_many_hops_it_had(model):
    ans = ask(model, REGION + REGION + "7<|im_end|>", 1)
    assert len(ans.trace.hops) == 1
    (event,) = budget_events(ans)
    assert "the hop budget of 1 hop is spent" in event["message"] and "--max-hops N" in event["message"]


def test_a_graph_that_sets_its_own_budget_says_so(model):
    """A forced node past the graph's own budget is skipped; --max-hops would not change it."""
    graph = {"name": "forced_crop", "start": "crop", "budget": 0,
             "nodes": {"crop": {"kind": "action", "action": "region_select", "args": {"box": [0, 0, 32, 24]},
                                "next": "answer"},
                       "answer": {"kind": "generate", "next": "done"}, "done": {"kind": "answer"}}}
    tok = model.tokenizer
    loop = PerceptionLoop(model, graph=graph, options=LoopOptions(max_new_tokens=4),
                          policy=ScriptedPolicy(tok, {0: span_tokens(tok, "7<|im_end|>")}))
    ans = loop.ask(IMAGE, "What is written here?")
    (event,) = budget_events(ans)
    assert event["message"] == ("node 'crop' (forced 'region_select') was skipped: the hop budget is 0 (the model "
                                "answers without looking); graph 'forced_crop' sets its budget: raise `budget` in "
                                "the graph")
    assert not ans.trace.hops and ans.text == "7"
