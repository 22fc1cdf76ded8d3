"""Every observation invariant the conformance kit checks holds at run time too: a plugin that
breaks one gets a hop error in the trace (stage ``observation``, the invariant named), and the
kit reports the same breach, because both go through one check (perceive.observations)."""

from fractions import Fraction

import pytest
import torch
from PIL import Image

from perceive import Box, Features, Frame, View, hookimpl
from perceive.observations import Invariant, Text
from perceive.plugins import load_registry
from perceive.testing import check_action, real_photos

SPANS = {"region_select": ["<|region_token_start|>", "<|x_2|>", "<|y_2|>", "<|region_token_end|>"],
         "ocr": ["<|ocr_start|>", "<|ocr_end|>"],
         "dino": ["<|detection_action_start|>"]}  # the loop forces the rest of a re-encode span


def crop(ctx) -> View:
    """A well-formed view: the top-left quarter of the view the call runs on."""
    w, h = ctx.frame.size
    return ctx.crop_root(Box(0, 0, max(1, w // 2), max(1, h // 2), ctx.frame.id))


def features(ctx, **kw) -> Features:
    """Well-formed features of the encoder the call uses, as wide as the model's dino branch takes
    (the registered width without a model), with ``kw`` changed."""
    name = ctx.options.get("encoder") or "dinov2_small"
    spec, model = ctx.encoders.spec(name), ctx.encoders.model
    width = model.branch_config("dino").feature_dim if model is not None else spec.feature_dim
    good = {"tensor": torch.zeros(4, width), "encoder": name, "placeholder": "<|detection_image_pad|>",
            "num_placeholders": 4, "source": ctx.frame}
    return Features(**{**good, **kw})


class WiderBox(View):
    """A view that reports a box other than the one its frame maps to."""

    @property
    def box(self) -> Box:
        b = self.frame.root_box()
        return Box(b.x0, b.y0, b.x1 + 1, b.y1, b.frame)


def _outside(ctx) -> View:
    """The issue's case: a view of pixels right of and below the original image."""
    W, H = ctx.root.size
    frame = Frame.root(W, H).child("v9", Box(W, H, W + 10, H + 10))
    return View(Image.new("RGB", (10, 10)), Frame(frame.id, 10, 10, frame.ox, frame.oy, parent=ctx.frame.id))


#: one plugin that breaks each invariant: (the action it answers for, what it returns)
BREAKERS = {
    Invariant.KIND: ("region_select", lambda ctx: []),
    Invariant.VIEW_RGB: ("region_select", lambda ctx: View(crop(ctx).image.convert("L"), crop(ctx).frame)),
    Invariant.VIEW_SIZE: ("region_select", lambda ctx: View(Image.new("RGB", (3, 3)), crop(ctx).frame)),
    Invariant.VIEW_INSIDE: ("region_select", _outside),
    Invariant.VIEW_PARENT: ("region_select", lambda ctx: View(crop(ctx).image, Frame(
        "v9", *crop(ctx).image.size, parent="elsewhere"))),
    Invariant.VIEW_SCALE: ("region_select", lambda ctx: WiderBox(crop(ctx).image, crop(ctx).frame)),
    Invariant.VIEW_PIXELS: ("region_select", lambda ctx: View(crop(ctx).image, Frame(
        "v9", *crop(ctx).image.size, oy=Fraction(ctx.root.height - crop(ctx).image.height), parent=ctx.frame.id))),
    Invariant.TEXT_TYPES: ("ocr", lambda ctx: Text(460, ctx.frame)),
    Invariant.TEXT_SOURCE: ("ocr", lambda ctx: Text("460", Frame.root(1, 1))),
    Invariant.TEXT_REGION: ("ocr", lambda ctx: Text("460", ctx.frame, region=Box(0, 0, ctx.root.width + 5, 1))),
    Invariant.TEXT_BOXES: ("ocr", lambda ctx: Text("460", ctx.frame, boxes=((Box(0, 0, 1, 1, frame="v7"), "460"),))),
    Invariant.FEATURES_TENSOR: ("dino", lambda ctx: features(ctx, tensor=[[0.0]])),
    Invariant.FEATURES_FINITE: ("dino", lambda ctx: features(ctx, tensor=features(ctx).tensor.fill_(float("nan")))),
    Invariant.FEATURES_LAYOUT: ("dino", lambda ctx: features(ctx, tensor=features(ctx).tensor[None])),
    Invariant.FEATURES_PLACEHOLDERS: ("dino", lambda ctx: features(ctx, num_placeholders=0)),
    Invariant.FEATURES_SOURCE: ("dino", lambda ctx: features(ctx, source=Frame.root(1, 1))),
}


class Breaker:
    """A plugin that answers ``action``'s calls with what ``make`` returns (before the action runs)."""

    def __init__(self, action: str, make):
        self.action, self.make = action, make

    @hookimpl(tryfirst=True)
    def perceive_run_action(self, action, call, context):
        return self.make(context) if action.name == self.action else None


def test_every_invariant_has_a_plugin_that_breaks_it():
    assert set(BREAKERS) == set(Invariant)


@pytest.fixture(scope="module")
def model():
    from perceive.testing.tiny import build_tokenizer, tiny_vpt_model

    reg = load_registry()
    tokens = [t for a in ("ocr",) for t in (reg.action(a).grammar.start, reg.action(a).grammar.end)]
    tokenizer = build_tokenizer(branches=["dino"], extra_tokens=tokens, registry=reg)
    return tiny_vpt_model(branches=["dino"], tokenizer=tokenizer, registry=reg)


@pytest.mark.parametrize("invariant", list(Invariant), ids=str)
def test_a_breach_is_a_hop_error_at_run_time_and_a_conformance_failure(model, invariant):
    from perceive.loop import LoopOptions, PerceptionLoop
    from perceive.loop.scripted import ScriptedPolicy
    from perceive.trace import FinishReason

    action, make = BREAKERS[invariant]
    reg = load_registry([("breaker", Breaker(action, make))])
    photo = real_photos()["astronaut"].resize((96, 64))
    loop = PerceptionLoop(model, registry=reg, options=LoopOptions(max_new_tokens=12, max_hops=1),
                          policy=ScriptedPolicy(model.tokenizer, {0: SPANS[action]}))
    ans = loop.ask(photo, "What?")
    assert [h.action for h in ans.trace.hops] == [action], ans.trace.events
    hop = ans.trace.hops[0]
    assert hop.error is not None, f"{invariant}: accepted at run time"
    assert (hop.error["stage"], hop.error["invariant"], hop.error["code"]) == (
        "observation", invariant.value, "observation-invalid"), hop.error
    assert not hop.views and not hop.text and not hop.features
    assert ans.trace.finish_reason is FinishReason.ACTION_FAILED and ans.trace.error["invariant"] == invariant.value

    # the conformance kit finds the same breach
    report = check_action(action, registry=reg, quick=True)
    assert f"(invariant {invariant.value})" in report.render(), report.render()


@pytest.mark.parametrize("make,invariant", [
    (lambda ctx: View(__import__("numpy").zeros((4, 4, 3)), crop(ctx).frame), Invariant.VIEW_RGB),
    (lambda ctx: View(crop(ctx).image, None), Invariant.VIEW_SIZE),
], ids=["array-not-an-image", "no-frame"])
def test_a_view_of_the_wrong_types_is_a_breach_not_a_crash(make, invariant):
    from perceive import ActionCall, ActionContext, dispatch
    from perceive.regions import RegionArgs

    reg = load_registry([("breaker", Breaker("region_select", make))])
    ctx = ActionContext.for_image(real_photos()["astronaut"])
    res = dispatch(reg.pm, reg.action("region_select"), ActionCall("region_select", RegionArgs(xs=(1,), ys=(1,))), ctx)
    assert (res.failure.stage, res.failure.invariant, res.failure.code) == ("observation", invariant.value,
                                                                             "observation-invalid"), res.failure
