"""perceive's pytest plugin (perceive/testing/pytest_plugin.py), as a plugin author uses it: run
with pytester on test files that know nothing of this repository's conftest."""

import importlib

import pytest

from tests.conftest import make_dist

# A view action defined in the author's own test file, registered by object.
QUADRANT = '''
from pydantic import BaseModel

from perceive import Action, Box, TriggerGrammar, hookimpl
from perceive.actions import NoOptions, SpanError

START, END = "<|quad_start|>", "<|quad_end|>"
CELLS = tuple(f"<|quad_q{k}|>" for k in range(4))


class QuadArgs(BaseModel):
    q: int


class Quad(Action):
    name = "quad"
    grammar = TriggerGrammar(start=START, end=END, inner=CELLS)
    Args = QuadArgs
    Options = NoOptions
    observation = "view"

    def parse(self, pieces):
        if len(pieces) != 1 or pieces[0] not in CELLS:
            raise SpanError("bad_args", "one quadrant token")
        return QuadArgs(q=CELLS.index(pieces[0]))

    def run(self, call, context):
        w, h = context.frame.width, context.frame.height
        col, row = call.args.q % 2, call.args.q // 2
        box = Box(col * w // 2, row * h // 2, w if col else max(1, w // 2), h if row else max(1, h // 2),
                  frame=context.frame.id)
        return context.crop_root(box)

    def examples(self):
        return [QuadArgs(q=k) for k in range(4)]


class Plugin:
    @hookimpl
    def perceive_register_actions(self):
        return [Quad()]
'''


@pytest.fixture(scope="module", autouse=True)
def _imported_here_first():
    """pytester's in-process runs unload every module first imported inside them; torch and the
    transformers model code do not survive being imported twice. Import them out here."""
    from perceive.loop import PerceptionLoop  # noqa: F401
    from perceive.testing.tiny import tiny_vpt_model

    tiny_vpt_model(branches=())


def run(pytester, test_code: str, **outcomes):
    pytester.makepyfile(quad_plugin=QUADRANT, test_it=test_code)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(**outcomes)
    return result


def test_a_view_plugin_registered_by_object_conforms_and_runs_through_the_loop(pytester):
    run(pytester, """
        from quad_plugin import Plugin

        def test_quad(perceive_plugin_registry, perceive_conformance, perceive_tiny_model, perceive_run_span):
            reg = perceive_plugin_registry(("quad", Plugin()))
            assert {"quad", "region_select", "zoom"} <= set(reg.actions)
            report = perceive_conformance("quad", registry=reg, quick=True)
            assert report.ok and report.plugin == "quad"

            model = perceive_tiny_model(reg)
            answer = perceive_run_span(model, "<|quad_start|><|quad_q3|><|quad_end|>", registry=reg)
            assert answer.ok, answer.error
            (hop,) = answer.trace.hops
            assert hop.action == "quad" and hop.args == {"q": 3} and hop.error is None
            (view,) = hop.views
            assert (view["width"], view["height"]) == (256, 256)  # the astronaut photo is 512 x 512
            assert (view["to_root"]["ox"], view["to_root"]["oy"]) == ("256", "256")  # the bottom-right quadrant
    """, passed=1)


def test_a_plugin_is_registered_by_entry_point_name_without_the_others(pytester, fake_site):
    make_dist(fake_site, "perceive-good", {"good_mod": "from tests.plugins.good import *\n"}, {"goodplug": "good_mod"})
    make_dist(fake_site, "perceive-crashy", {"crashy_mod": "raise ImportError('needs libfoo')\n"},
              {"crashy": "crashy_mod"})
    importlib.invalidate_caches()
    run(pytester, """
        def test_by_entry_point(perceive_plugin_registry):
            reg = perceive_plugin_registry("goodplug")
            assert reg.actions["left_half"].dist == "perceive-good" and "region_select" in reg.actions
            assert "crashy" not in reg.plugins  # installed and broken, but not asked for

        def test_by_distribution_alone(perceive_plugin_registry):
            reg = perceive_plugin_registry("perceive-good", reference=False)
            assert set(reg.actions) == {"left_half"}
    """, passed=2)


def test_a_broken_or_missing_plugin_fails_the_test_with_the_reason(pytester):
    result = run(pytester, """
        from quad_plugin import Plugin, Quad

        class Clash:
            from perceive import hookimpl

            @hookimpl
            def perceive_register_actions(self):
                return [Quad()]

        def test_clash(perceive_plugin_registry):
            perceive_plugin_registry(("quad", Plugin()), ("again", Clash()))

        def test_missing(perceive_plugin_registry):
            perceive_plugin_registry("nosuch")
    """, failed=2)
    out = result.stdout.str()
    assert "plugin 'again': duplicate action name 'quad'" in out
    assert "no installed plugin named 'nosuch'" in out and "Traceback" not in out


def test_a_failing_conformance_check_fails_the_test_with_the_report(pytester):
    result = run(pytester, """
        from quad_plugin import Plugin, Quad

        class Mutates(Quad):
            def run(self, call, context):
                context.root.putpixel((0, 0), (0, 0, 0))
                return super().run(call, context)

        def test_kit(perceive_plugin_registry, perceive_conformance):
            perceive_conformance(Mutates(), registry=perceive_plugin_registry(), quick=True)
    """, failed=1)
    assert "[FAIL] run[astronaut]: the action mutated its input image" in result.stdout.str()


def test_a_features_plugin_gets_a_tiny_model_with_its_branch(pytester, fake_site):
    make_dist(fake_site, "perceive-sobel", {"perceive_sobel": "from tests.plugins.sobel import *\n"},
              {"sobel": "perceive_sobel"})
    importlib.invalidate_caches()
    run(pytester, """
        def test_sobel(perceive_plugin_registry, perceive_tiny_model, perceive_run_span):
            reg = perceive_plugin_registry("perceive-sobel")
            model = perceive_tiny_model(reg, branches=["sobel"])
            assert list(model.config.branches) == ["sobel"]
            answer = perceive_run_span(model, "<|sobel_action_start|>", registry=reg, max_hops=1)
            assert answer.ok, answer.error
            (hop,) = answer.trace.hops
            assert hop.action == "sobel" and hop.error is None
            (feat,) = hop.features
            assert feat["encoder"] == "sobel_grid" and feat["num_placeholders"] == 16
    """, passed=1)


def test_the_guides_example_runs_on_the_scaffolded_plugin(pytester, fake_site, tmp_path):
    """The snippet under "Testing your plugin" in docs/how-to/write-a-plugin.md, as written, on
    the plugin `perceive plugins new quadrant` creates."""
    import re

    from perceive.scaffold import new_plugin
    from tests.conftest import ROOT

    pkg = new_plugin("quadrant", tmp_path)
    code = (pkg / "src/perceive_quadrant/__init__.py").read_text()
    make_dist(fake_site, "perceive-quadrant", {"perceive_quadrant": code}, {"quadrant": "perceive_quadrant"})
    importlib.invalidate_caches()
    guide = (ROOT / "docs/how-to/write-a-plugin.md").read_text()
    section = guide[guide.index("## Testing your plugin"):]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    pytester.makepyfile(test_guide=snippet)
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
