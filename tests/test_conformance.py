"""The conformance kit, parametrised over the registry: every registered action is checked.
And the kit itself must catch bad actions, with readable reports."""

from fractions import Fraction

import pytest
import torch
from PIL import Image

from perceive import Action, Box, Features, Frame, TriggerGrammar, View
from perceive.plugins import load_registry
from perceive.testing import check_action
from tests.plugins import good

REGISTRY = load_registry()


def _action_params():
    """Every registered action; ``ocr`` is slow (a real OCR model, ~40 runs) and needs its extra."""
    from importlib.util import find_spec

    no_ocr = pytest.mark.skipif(find_spec("rapidocr_onnxruntime") is None,
                                reason='the ocr action needs pip install "perceive[ocr]"')
    return [pytest.param(n, marks=[pytest.mark.slow, no_ocr]) if n == "ocr" else n for n in sorted(REGISTRY.actions)]


@pytest.mark.parametrize("name", _action_params())
def test_registered_action_conforms(name):
    report = check_action(name, registry=REGISTRY)
    assert report.ok, report.render()
    names = {r.name for r in report.results}
    assert {"run[astronaut]", "run[1x1]", "run[4000x300]", "run[grayscale]", "run[rgba]", "run[palette]",
            "nested"} <= names


def test_view_actions_probe_boxes():
    report = check_action("region_select", registry=REGISTRY)
    by = {r.name: r for r in report.results}
    assert by["box[fully-outside]"].detail == "typed error: ActionInputError"
    assert by["box[border]"].status == "pass"


class _Base(Action):
    grammar = TriggerGrammar(start="<|t_start|>", end="<|t_end|>")
    observation = "view"


class Mutates(_Base):
    name = "mutates"

    def run(self, call, context):
        context.root.putpixel((0, 0), (1, 2, 3) if context.root.mode == "RGB" else 1)
        return context.crop_root(context.frame.box())


class LiesAboutBox(_Base):
    name = "lies"

    def run(self, call, context):
        w, h = context.frame.size
        v = context.crop_root(Box(0, 0, w, max(1, h // 2), context.frame.id))
        # shows the top half but claims its frame starts further down
        return View(v.image, Frame(v.frame.id, v.image.width, v.image.height, oy=Fraction(h - v.image.height),
                                   parent=context.frame.id))


class Random(_Base):
    name = "random"
    n = 0

    def run(self, call, context):
        Random.n += 1
        w, h = context.frame.size
        return context.crop_root(Box(0, 0, max(1, w - Random.n % 2), h, context.frame.id))


class Crashes(_Base):
    name = "crashes"

    def run(self, call, context):
        return context.crop_root(context.frame.box()) if context.root.mode == "RGB" else 1 / 0


class WrongFeatures(Action):
    name = "nan_features"
    grammar = TriggerGrammar(start="<|n_start|>", end="<|n_end|>")
    observation = "features"
    encoders = ("ones",)

    def run(self, call, context):
        return Features(torch.full((4, 8), float("nan")), "ones", "<|p|>", 4, context.frame)


@pytest.mark.parametrize(
    ("action", "check", "message"),
    [
        (Mutates(), "run[astronaut]", "mutated its input image"),
        (LiesAboutBox(), "run[astronaut]", "must hold exactly the original's pixels"),
        (Random(), "run[astronaut]", "not deterministic"),
        (Crashes(), "run[rgba]", "ZeroDivisionError"),
        (WrongFeatures(), "run[astronaut]", "NaN"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Action) else None,
)
def test_kit_catches_bad_actions(action, check, message):
    reg = load_registry([("good", good)])
    report = check_action(action, registry=reg, quick=True)
    assert not report.ok
    failed = {r.name: r.detail for r in report.failures}
    assert check in failed and message in failed[check], report.render()
    text = report.render()
    assert "FAIL" in text and "failed" in text.splitlines()[-1]


def test_kit_reports_a_malformed_declaration():
    class NoGrammar(Action):
        name = "Bad-Name"

        def run(self, call, context):
            return None

    report = check_action(NoGrammar(), registry=REGISTRY)
    assert [r.name for r in report.failures] == ["declaration"]
    assert "must match" in report.failures[0].detail and "grammar" in report.failures[0].detail


def test_pytest_fixture_for_plugin_authors(pytester):
    pytester.makepyfile(
        """
        def test_it(perceive_conformance, perceive_photo):
            assert perceive_photo.mode == "RGB"
            report = perceive_conformance("zoom", quick=True)
            assert report.ok
        """
    )
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_images_are_not_shared_between_calls():
    from perceive.testing import awkward_images, real_photos

    a = real_photos()["coffee"]
    original = a.getpixel((0, 0))
    a.putpixel((0, 0), tuple(255 - c for c in original))
    assert real_photos()["coffee"].getpixel((0, 0)) == original  # a fresh copy every call
    assert isinstance(awkward_images()["palette"], Image.Image) and awkward_images()["palette"].mode == "P"


@pytest.mark.parametrize("name", sorted(REGISTRY.branches))
def test_registered_branch_conforms(name):
    from perceive.testing import check_branch

    report = check_branch(name, registry=REGISTRY, quick=True)
    assert report.ok, report.render()
    assert {"declaration", "action", "model", "preprocess[1x1]", "batch", "features", "encoder", "training",
            "save-load"} <= {r.name for r in report.results}


def test_the_branch_kit_catches_a_branch_that_miscounts_its_placeholders():
    """A third-party branch whose projector ignores the control state, and whose placeholder
    count is not what its encoder and projector give: both are reported, by name."""
    from perceive.plugins import load_registry
    from perceive.testing import check_branch
    from tests.plugins import sobel

    class Careless(sobel.SobelBranch):
        def placeholders(self, config):
            return 9

        def project(self, projector, features, control, sizes=None):
            return projector(features, None)  # never conditioned

    reg = load_registry()
    assert reg.register(sobel, "sobel").ok
    report = check_branch(Careless(), registry=reg, quick=True)
    by = {r.name: r for r in report.results}
    assert by["preprocess[astronaut]"].status == "fail"
    assert by["preprocess[astronaut]"].detail == "unconditioned: (16, 64) projected rows, want (9, 64)"
    assert by["features"].status == "fail" and "do not depend on the control vector" in by["features"].detail
    assert by["action"].status == "pass" and by["model"].status == "pass"
    assert "conformance of branch 'sobel'" in report.render()


# -- text observations ------------------------------------------------------------------------

class Describe(Action):
    """A well-formed text action: the size of the view it reads and one box, its top-left quarter."""

    name = "describe"
    grammar = TriggerGrammar(start="<|describe_start|>", end="<|describe_end|>")
    observation = "text"

    def run(self, call, context):
        from perceive.observations import Text

        w, h = context.frame.size
        quarter = context.root_box(Box(0, 0, max(1, w / 2), max(1, h / 2), context.frame.id))
        return Text(f"{w}x{h}", context.frame, boxes=((quarter, "corner"),))


class TextOutsideRegion(Describe):
    name = "text_outside"

    def run(self, call, context):
        from perceive.observations import Text

        W, H = context.root.size
        return Text("far away", context.frame, boxes=((Box(0, 0, W, H), "everything"),))


class TextInViewFrame(Describe):
    name = "text_view_frame"

    def run(self, call, context):
        from perceive.observations import Text

        return Text("x", context.frame, boxes=((Box(0, 0, 1, 1, context.frame.id), "x"),))


class TextNotText(Describe):
    name = "text_not_text"

    def run(self, call, context):
        return context.crop_root(context.frame.box())


def test_a_text_action_passes_the_kit():
    report = check_action(Describe(), registry=REGISTRY)
    assert report.ok, report.render()
    assert {"run[astronaut]", "run[1x1]", "nested"} <= {r.name for r in report.results}


@pytest.mark.parametrize(
    ("action", "check", "message"),
    [
        (TextOutsideRegion(), "nested", "(invariant text_boxes)"),
        (TextInViewFrame(), "nested", "original image's pixels"),
        (TextNotText(), "run[astronaut]", "declares observation='text' but returned View"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Action) else None,
)
def test_kit_catches_bad_text_actions(action, check, message):
    report = check_action(action, registry=REGISTRY, quick=True)
    failed = {r.name: r.detail for r in report.failures}
    assert check in failed and message in failed[check], report.render()
