"""A plugin's failure is a value in the result, never an exception out of dispatch."""

import pytest
from PIL import Image

from perceive import Action, ActionCall, ActionContext, Features, TriggerGrammar, dispatch
from perceive.errors import ActionInputError
from perceive.regions import RegionArgs


class Raises(Action):
    name = "raises"
    grammar = TriggerGrammar(start="<|r_start|>", end="<|r_end|>")

    def run(self, call, context):
        raise ZeroDivisionError("plugin bug")


class WrongKind(Action):
    name = "wrong_kind"
    grammar = TriggerGrammar(start="<|w_start|>", end="<|w_end|>")
    observation = "view"

    def run(self, call, context):
        return Features(tensor=None, encoder="x", placeholder="<|p|>", num_placeholders=1, source=context.frame)


@pytest.fixture
def ctx():
    return ActionContext.for_image(Image.new("RGB", (32, 32)))


def test_plugin_exception_is_recorded(registry, ctx):
    res = dispatch(registry.pm, Raises(), ActionCall("raises", Raises.Args()), ctx)
    assert not res.ok and res.observation is None
    assert (res.failure.stage, res.failure.error_type, res.failure.typed) == ("run", "ZeroDivisionError", False)
    assert res.failure.to_dict()["message"] == "plugin bug"


def test_wrong_observation_kind_is_a_typed_failure(registry, ctx):
    res = dispatch(registry.pm, WrongKind(), ActionCall("wrong_kind", WrongKind.Args()), ctx)
    assert res.failure.stage == "observation" and res.failure.error_type == "ObservationError"
    assert "declares observation='view' but returned Features" in res.failure.message


def test_box_outside_is_a_typed_failure(registry, ctx):
    args = RegionArgs(box=(100, 100, 120, 120))
    res = dispatch(registry.pm, registry.action("region_select"), ActionCall("region_select", args), ctx)
    assert res.failure.typed and res.failure.error_type == ActionInputError.__name__


def test_region_crop_of_a_crop(registry):
    """A region chosen inside a crop is cut from the original at full resolution."""
    img = Image.effect_mandelbrot((800, 600), (-2, -1.5, 1, 1.5), 50).convert("RGB")
    rs = registry.action("region_select")
    ctx = ActionContext.for_image(img)
    first = dispatch(registry.pm, rs, ActionCall("region_select", RegionArgs(xs=(4,), ys=(4,))), ctx).observation[0]
    assert first.box.as_tuple() == (300, 225, 600, 450)  # cells 3..5 of 100x75
    ctx2 = ActionContext(image=first.image, frame=first.frame, root=img, id_prefix="c")  # its views: c1, c2, ...
    second = dispatch(registry.pm, rs, ActionCall("region_select", RegionArgs(xs=(0,), ys=(7,)), target=first.frame.id),
                      ctx2).observation[0]
    # cells 0..1 x 6..7 of the 300x225 crop -> (0, int(168.75), 75, 225) -> offset by (300, 225)
    assert second.box.as_tuple() == (300, 393, 375, 450)
    assert second.frame.parent == first.frame.id and second.frame.id != first.frame.id
    assert second.image.tobytes() == img.crop((300, 393, 375, 450)).tobytes()


def test_run_with_timeout_gives_up_on_a_call_quarantines_its_action_and_lets_go_when_it_returns():
    """Plugin call timeouts (perceive.dispatch.timeouts), without a plugin: the work that overruns
    is abandoned and counted, a third call of a quarantined action does not run, and an abandoned
    call that returns leaves the count."""
    import threading

    from perceive.dispatch import MAX_ABANDONED, FailureStage, abandoned_calls, run_with_timeout

    release, started = threading.Event(), []

    def hung():
        started.append(1)
        release.wait(10)
        return "late", None, None

    try:
        for _ in range(MAX_ABANDONED):
            observation, failure, error = run_with_timeout("hung_action", hung, 0.05)
            assert observation is None and failure.stage is FailureStage.TIMEOUT and failure.timed_out
            assert "did not return within 0.05 s" in failure.message and type(error).__name__ == "ActionTimeoutError"
        assert abandoned_calls()["hung_action"] == MAX_ABANDONED
        _, failure, _ = run_with_timeout("hung_action", hung, 5)
        assert "quarantined" in failure.message and len(started) == MAX_ABANDONED  # refused without running
        assert run_with_timeout("other_action", lambda: ("ok", None, None), 5) == ("ok", None, None)
    finally:
        release.set()
    for _ in range(200):
        if "hung_action" not in abandoned_calls():
            break
        threading.Event().wait(0.01)
    assert "hung_action" not in abandoned_calls()


def test_run_with_timeout_reports_what_the_work_raises_as_its_run_failure():
    from perceive.dispatch import FailureStage, run_with_timeout

    def interrupted():
        raise KeyboardInterrupt("the plugin's own")

    observation, failure, error = run_with_timeout("interrupting", interrupted, 5)
    assert observation is None and failure.stage is FailureStage.RUN and isinstance(error, KeyboardInterrupt)
