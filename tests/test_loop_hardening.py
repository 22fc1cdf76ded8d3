"""The loop ends, and says why: budgets on every path, deadlines on plugin calls, refused inputs,
answers that are text, images plugins cannot paint on."""

import threading
import time

import numpy as np
import pytest
from PIL import ImageDraw

from perceive import hookimpl
from perceive.dispatch import MAX_ABANDONED, abandoned_calls
from perceive.errors import InputError
from perceive.loop import LoopOptions, PerceptionLoop
from perceive.plugins import load_registry
from perceive.testing.images import real_photos
from perceive.testing.scripted import ScriptedPolicy, span_tokens
from perceive.trace import FinishReason

REGION = "<|region_token_start|><|x_2|><|y_0|><|x_3|><|y_1|><|region_token_end|>"
STARTS = {"dino": "<|detection_action_start|>", "sam": "<|seg_action_start|>", "native": "<|clip_action_start|>"}


class Forever:
    """A policy whose every choice is one token: a model stuck on a re-encode start token (a real
    reference checkpoint does this after a forced action token)."""

    def __init__(self, token_id: int):
        self.token_id = token_id

    def __call__(self, index, generated, logits):
        return self.token_id


def scripted(model, scripts, registry=None, **opts):
    opts.setdefault("max_new_tokens", 24)
    tok = model.tokenizer
    return PerceptionLoop(model, registry=registry, options=LoopOptions(**opts),
                          policy=ScriptedPolicy(tok, {i: span_tokens(tok, s) for i, s in scripts.items()}))


@pytest.mark.parametrize("family", sorted(STARTS))
@pytest.mark.parametrize("mode", ["online", "reprefill", "batched"])
@pytest.mark.parametrize("dispatching", [True, False], ids=["dispatch", "no-dispatch"])
def test_start_tokens_forever_end_at_the_token_budget(model, photo, family, mode, dispatching):
    start = model.tokenizer.convert_tokens_to_ids(STARTS[family])
    opts = LoopOptions(max_new_tokens=20, max_hops=100, reprefill=mode == "reprefill", dispatch=dispatching)
    loop = PerceptionLoop(model, options=opts, policy=Forever(start))
    items = [(photo, "What?")] * (3 if mode == "batched" else 1)
    answers = loop.ask_batch(items)
    for ans in answers:
        assert ans.trace.finish_reason is FinishReason.MAX_NEW_TOKENS
        assert len(ans.token_ids) <= 20  # forced action and end tokens count too
        assert start not in model.tokenizer.encode(ans.text, add_special_tokens=False)


def test_forced_tokens_count_and_a_span_that_cannot_fit_is_not_opened(model, photo):
    start = model.tokenizer.convert_tokens_to_ids(STARTS["dino"])
    # 2 tokens of budget: the start token fits, its forced action and end tokens would not
    ans = PerceptionLoop(model, options=LoopOptions(max_new_tokens=2), policy=Forever(start)).ask(photo, "What?")
    assert ans.token_ids == [start] and ans.trace.finish_reason is FinishReason.MAX_NEW_TOKENS
    assert not ans.trace.hops


def drained(seconds: float = 10) -> bool:
    """Wait until no abandoned call is running (they are process-wide state)."""
    deadline = time.time() + seconds
    while abandoned_calls() and time.time() < deadline:
        time.sleep(0.05)
    return not abandoned_calls()


class Hang:
    """A plugin whose call never returns for one image (until the test releases it)."""

    def __init__(self, size):
        self.size = size
        self.release = threading.Event()

    @hookimpl
    def perceive_before_action(self, context):
        if context.root.size == self.size:
            self.release.wait(60)


def test_a_hung_call_times_out_its_own_sample_only(model, photo):
    hang = Hang(photo.size)
    registry = load_registry([("hang", hang)])
    coffee = real_photos()["coffee"]
    try:
        t0 = time.perf_counter()
        out = scripted(model, {0: REGION, 1: REGION}, registry=registry, action_timeout_s=0.5).ask_batch(
            [(photo, "What?"), (coffee, "What?")])
        assert time.perf_counter() - t0 < 30
        assert out[0].trace.finish_reason is FinishReason.ACTION_TIMEOUT
        assert out[0].error["type"] == "action_timeout" and "within 0.5 s" in out[0].error["message"]
        assert out[0].trace.hops[0].error["stage"] == "timeout"
        assert out[1].ok and out[1].trace.hops[0].views
        assert abandoned_calls() == {"region_select": 1}
    finally:
        hang.release.set()
    assert drained()  # the abandoned call returned, and was let go


def test_hung_calls_cannot_pile_up(model, photo):
    hang = Hang(photo.size)
    loop = scripted(model, {0: REGION}, registry=load_registry([("hang", hang)]), action_timeout_s=0.2)
    try:
        for _ in range(MAX_ABANDONED):
            assert loop.ask(photo, "What?").trace.finish_reason is FinishReason.ACTION_TIMEOUT
        assert threading.active_count() >= MAX_ABANDONED + 1
        t0 = time.perf_counter()
        ans = loop.ask(photo, "What?")
        assert time.perf_counter() - t0 < 0.2  # refused at once: no new thread
        assert ans.trace.finish_reason is FinishReason.ACTION_TIMEOUT and "quarantined" in ans.error["message"]
        assert abandoned_calls() == {"region_select": MAX_ABANDONED}
    finally:
        hang.release.set()
    assert drained()


@pytest.mark.parametrize("question", ["", "   ", None])
def test_an_empty_question_is_a_clear_error(model, photo, question):
    loop = scripted(model, {})
    with pytest.raises(InputError, match="question must be non-empty"):
        loop.ask(photo, question)
    out = loop.ask_batch([(photo, question), (photo, "What?")])
    assert out[0].trace.finish_reason is FinishReason.ERROR and out[0].error["type"] == "InputError"
    assert out[1].ok


def test_a_prompt_longer_than_the_context_is_refused_before_any_forward(model, photo, monkeypatch):
    calls = []
    monkeypatch.setattr(model, "lm", lambda *a, **k: calls.append(1))
    limit = model.max_positions
    with pytest.raises(InputError) as info:
        scripted(model, {}).ask(photo, "why " * limit)
    assert str(limit) in info.value.message and "max_position_embeddings" in info.value.message
    assert not calls


def test_perception_tokens_never_reach_the_answer(model, photo):
    stray = "61<|y_1|>1<|region_token_end|>5<|im_end|>"
    ans = scripted(model, {0: stray}).ask(photo, "What?")
    assert ans.text == "6115"
    assert "<|" not in ans.text
    assert any(e["type"] == "parse_error" for e in ans.trace.events)  # the trace says what happened
    assert "<|y_1|>" in ans.trace.text  # the raw generation keeps everything


class Painter:
    """A rude plugin: paints on the images it is given."""

    @hookimpl
    def perceive_before_action(self, context):
        ImageDraw.Draw(context.image).rectangle((0, 0, 50, 50), fill=(255, 0, 0))
        ImageDraw.Draw(context.root).rectangle((0, 0, 50, 50), fill=(0, 255, 0))


def test_a_plugin_cannot_corrupt_the_original(model, photo):
    image = photo.copy()
    before = np.asarray(image).copy()
    loop = scripted(model, {0: REGION + REGION}, registry=load_registry([("painter", Painter())]))
    ans = loop.ask(image, "What?")
    assert len(ans.trace.hops) == 2
    np.testing.assert_array_equal(np.asarray(image), before)


def test_action_timeout_comes_from_the_run_config(tmp_path):
    from perceive.config import load_config
    from perceive.errors import ConfigError

    cfg = tmp_path / "run.yaml"
    cfg.write_text("runtime:\n  action_timeout_s: 7.5\n")
    assert load_config(cfg).runtime.action_timeout_s == 7.5
    cfg.write_text("runtime:\n  action_timeout_s: 0\n")
    with pytest.raises(ConfigError, match="action_timeout_s"):
        load_config(cfg)


HANGING_PLUGIN = '''
import time
from perceive import Action, TriggerGrammar, View, hookimpl


class Slow(Action):
    name = "slow"
    grammar = TriggerGrammar(start="<|slow_start|>", end="<|slow_end|>")
    observation = "view"

    def run(self, call, context):
        time.sleep(3)  # a hung call, as far as a 0.2 s deadline can tell
        return View(image=context.image.copy(), frame=context.frame)


@hookimpl
def perceive_register_actions():
    return [Slow()]
'''


def test_plugins_check_gives_every_call_a_deadline(fake_site):
    from conftest import make_dist
    from typer.testing import CliRunner

    from perceive.cli import app

    make_dist(fake_site, "perceive-slow", {"perceive_slow": HANGING_PLUGIN}, {"slow": "perceive_slow"})
    t0 = time.perf_counter()
    result = CliRunner().invoke(app, ["plugins", "check", "slow", "--quick", "--action-timeout", "0.2"])
    assert time.perf_counter() - t0 < 10  # not 3 s per call: two time out, the rest are refused
    assert result.exit_code == 1, result.output
    assert "did not return within 0.2 s" in result.output and "quarantined" in result.output
    assert "Traceback" not in result.output
    assert drained()  # each abandoned call returns after its 3 s


def test_enums_print_as_their_values():
    from perceive.dispatch import FailureStage
    from perceive.prompts import Trigger
    from perceive.trace import EventType

    for enum in (FinishReason, EventType, FailureStage, Trigger):
        for member in enum:
            assert f"{member}" == str(member) == member.value


def test_ill_typed_action_options_are_refused_when_the_loop_is_built(model):
    from perceive.errors import ConfigError

    with pytest.raises(ConfigError, match="region_select") as info:
        PerceptionLoop(model, options=LoopOptions(action_options={"region_select": {"margin": "lots"}}))
    assert "margin" in str(info.value)
    loop = PerceptionLoop(model, options=LoopOptions(action_options={"region_select": {"margin": "2"}}))
    assert loop.options.action_options["region_select"] == {"margin": 2}


@pytest.mark.parametrize("reprefill", [False, True], ids=["online", "reprefill"])
def test_generation_stops_when_the_context_is_full(model, photo, monkeypatch, reprefill):
    prompt = scripted(model, {}, max_new_tokens=1).ask(photo, "What?").trace.prompt_tokens
    monkeypatch.setattr(type(model), "max_positions", property(lambda self: prompt + 5))
    ans = scripted(model, {}, max_new_tokens=50, reprefill=reprefill).ask(photo, "What?")
    assert ans.trace.finish_reason is FinishReason.CONTEXT_FULL
    assert len(ans.token_ids) == 6  # 5 fed after the prompt fill the context; the 6th is never fed


class Exits:
    """A plugin that calls sys.exit (or raises KeyboardInterrupt itself) inside its call."""

    def __init__(self, exc):
        self.exc = exc

    @hookimpl
    def perceive_before_action(self, context):
        raise self.exc


@pytest.mark.parametrize("exc", [SystemExit(3), KeyboardInterrupt()], ids=["sys.exit", "KeyboardInterrupt"])
def test_a_plugin_that_exits_fails_its_call_at_once_and_is_not_quarantined(model, photo, exc):
    loop = scripted(model, {0: REGION}, registry=load_registry([("exits", Exits(exc))]), action_timeout_s=30)
    for _ in range(MAX_ABANDONED + 1):
        t0 = time.perf_counter()
        ans = loop.ask(photo, "What?")
        assert time.perf_counter() - t0 < 10  # not the 30 s deadline
        assert ans.trace.finish_reason is FinishReason.ACTION_FAILED, ans.error
        assert ans.trace.hops[0].error["error_type"] == type(exc).__name__
    assert "region_select" not in abandoned_calls()


def test_an_unknown_finish_reason_fails_in_the_controller():
    from perceive.control import Finish, Stop

    with pytest.raises(ValueError, match="custom"):
        Stop("custom")
    assert Stop("answer").reason is FinishReason.ANSWER and Finish().reason is FinishReason.EOS


def test_an_infinite_deadline_is_no_deadline(model, photo):
    ans = scripted(model, {0: REGION}, action_timeout_s=float("inf")).ask(photo, "What?")
    assert ans.ok and ans.trace.hops[0].views


class ForceOnEveryCall:
    """A controller that answers every call by forcing ``action``."""

    def __init__(self, action, args):
        self.action, self.args = action, args

    def start(self, run, s):
        return []

    def on_call(self, run, s, call):
        from perceive.control import Force

        return Force(self.action, self.args)

    def on_answer(self, run, s):
        from perceive.control import Finish

        return Finish()


@pytest.mark.parametrize("script,forced", [(STARTS["dino"], "region_select"), (REGION, "dino")],
                         ids=["view after a re-encode call", "re-encode after a view call"])
def test_a_force_the_session_cannot_carry_out_is_a_graph_error_not_a_no_op(model, photo, script, forced, registry):
    args = registry.action(forced).Args(**({"xs": (2, 3), "ys": (0, 1)} if forced == "region_select" else {}))
    loop = PerceptionLoop(model, options=LoopOptions(max_new_tokens=12), controller=ForceOnEveryCall(forced, args),
                          policy=ScriptedPolicy(model.tokenizer, {0: span_tokens(model.tokenizer, script)}))
    ans = loop.ask(photo, "What?")
    assert ans.trace.finish_reason is FinishReason.GRAPH_ERROR
    assert f"cannot force {forced!r}" in ans.error["message"]


def test_generate_ids_ends_at_an_end_token_without_a_controller(model, photo):
    loop = scripted(model, {0: "7<|im_end|>"}, max_new_tokens=30)
    ids = loop.ask(photo, "What?").token_ids  # the scripted answer ends at <|im_end|>
    prompt = model.tokenizer.encode("<|im_start|>user\nWhat?<|im_end|>\n<|im_start|>assistant\n",
                                    add_special_tokens=False)
    out = loop.generate_ids(prompt, max_new_tokens=30)
    assert out[len(prompt):] == ids and loop.options.max_new_tokens == 30  # options untouched


def test_a_control_token_literal_in_the_question_stays_text(model, photo):
    ans = scripted(model, {}, max_new_tokens=2).ask(photo, "what is <|image_pad|> or <|im_end|> here?")
    assert ans.error is None and ans.trace.finish_reason is FinishReason.MAX_NEW_TOKENS
