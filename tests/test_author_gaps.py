"""What a plugin author runs into, fixed: a features action's ``layout`` that disagrees with its
encoder says so (not "use one of" the encoder it just refused); encoder options a model's trained
branch would ignore are refused; ``data cards --reencode`` writes a plugin's re-encode items;
``graph validate --model`` checks a graph against what the model can run; an empty conformance
check is a skip, never a pass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from perceive.cli import app
from tests.conftest import make_dist

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "models" / "default"

# A third-party features plugin as an author writes it: an edge encoder that gives a (C, H, W)
# map, and the action that re-encodes with it. LAYOUT is the line the author may forget.
EDGE_PLUGIN = '''
import numpy as np
import torch
from perceive import BranchTokens, EncoderSpec, ReencodeAction, hookimpl
from perceive.encoders import FeatureLayout  # noqa: F401 - LAYOUT may name it

class EdgeMap:
    """(8, 4, 4): horizontal and vertical grey differences pooled into 4x4 cells, 4 channels each."""

    def encode(self, image):
        g = torch.from_numpy(np.asarray(image.convert("L").resize((16, 16)), dtype=np.float32))
        dx, dy = (g[:, 1:] - g[:, :-1]).abs(), (g[1:] - g[:-1]).abs()
        cells = torch.nn.functional.adaptive_avg_pool2d(torch.stack([dx[:15], dy[:, :15]])[None], 4)[0]
        return torch.cat([cells, cells * 2]) / 255.0

class EdgeReencode(ReencodeAction):
    name = "edge"
    tokens = BranchTokens.named("edge")
    encoders = ("edge_hog",)
LAYOUT

@hookimpl
def perceive_register_actions():
    return [EdgeReencode()]

@hookimpl
def perceive_register_encoders():
    return [EncoderSpec(name="edge_hog", family="edge", layout="map", feature_dim=8, build=lambda **kw: EdgeMap(),
                        build_tiny=EdgeMap, placeholders=16)]
'''


def install_edge(site: Path, layout_line: str):
    from perceive.plugins import get_registry, reset_registry

    code = EDGE_PLUGIN.replace("LAYOUT", f"    {layout_line}" if layout_line else "")
    make_dist(site, "perceive-edge", {"perceive_edge": code}, {"edge": "perceive_edge"})
    reset_registry()
    return get_registry()


def flat(text: str) -> str:
    return " ".join(text.split())


# -- layout -----------------------------------------------------------------------------------

def test_a_forgotten_layout_names_the_real_cause(fake_site):
    from perceive.conformance import check_action

    reg = install_edge(fake_site, "")  # layout left at its default, tokens
    assert not reg.broken, [p.errors for p in reg.broken]
    report = check_action("edge", registry=reg, quick=True)
    assert not report.ok
    by = {r.name: r for r in report.results}
    # the cause is reported once, up front, and the runs that would all fail the same way do not run
    assert by["encoders"].status == "fail" and not any(n.startswith("run[") for n in by)
    detail = by["encoders"].detail
    assert "action 'edge' takes tokens features but encoder 'edge_hog' gives a map" in detail
    assert "EdgeReencode.layout (tokens" in detail and "set `layout = FeatureLayout.MAP`" in detail
    assert "use one of ['edge_hog']" not in detail

    # a call at run time (a loop, a graph) gives the same cause, as a typed error in the trace
    from perceive.actions import ActionCall, ActionContext
    from perceive.conformance import real_photos
    from perceive.dispatch import dispatch
    from perceive.encoders import EncoderHub
    from perceive.reencode import ReencodeArgs

    ctx = ActionContext.for_image(real_photos()["astronaut"], encoders=EncoderHub(reg.encoder_specs(), tiny=True))
    res = dispatch(reg.pm, reg.action("edge"), ActionCall("edge", ReencodeArgs()), ctx)
    assert res.failure.typed and res.failure.error_type == "ActionInputError"
    assert "set `layout = FeatureLayout.MAP`" in res.failure.message and "use one of" not in res.failure.message


@pytest.mark.parametrize("line", ['layout = "map"', "layout = FeatureLayout.MAP"])
def test_a_right_layout_passes_the_kit_as_a_string_or_the_enum(fake_site, line):
    from perceive.conformance import check_action
    from perceive.encoders import FeatureLayout

    reg = install_edge(fake_site, line)
    action = reg.action("edge")
    assert type(action).layout is FeatureLayout.MAP  # a plain string becomes the enum
    report = check_action("edge", registry=reg, quick=True)
    assert report.ok, report.render()
    by = {r.name: r for r in report.results}
    assert by["encoders"].status == "pass" and by["run[astronaut]"].detail == "1 example(s) ran"


def test_a_layout_that_is_no_layout_keeps_the_plugin_out(fake_site):
    reg = install_edge(fake_site, 'layout = "grid"')
    assert "edge" not in reg.actions
    (broken,) = [p for p in reg.broken if p.dist == "perceive-edge"]
    assert "EdgeReencode.layout is 'grid': set FeatureLayout.TOKENS" in " ".join(broken.errors)


def test_plugins_check_prints_the_layout_hint(fake_site):
    install_edge(fake_site, "")
    res = CliRunner().invoke(app, ["plugins", "check", "edge", "--quick"], env={"COLUMNS": "400"})
    assert res.exit_code == 1, res.output
    assert "[FAIL] encoders: action 'edge' takes tokens features but encoder 'edge_hog' gives a map" in res.output
    assert "set `layout = FeatureLayout.MAP`" in res.output and "Traceback" not in res.output


def test_a_config_s_foreign_encoder_is_told_which_of_the_action_s_fit(registry):
    from perceive.config import PerceiveConfig

    cfg = PerceiveConfig.model_validate({"actions": {"sam": {"encoder": "dinov2_small"}}})
    (error,) = cfg.check_names(registry)
    assert error == ("actions.sam.encoder: action 'sam' takes map features but encoder 'dinov2_small' gives tokens: "
                     "use one of ['sam_vit_l', 'sam_vit_b', 'sam_vit_h'], which give map features")


def test_encoder_specs_take_a_layout_as_the_enum_or_its_string():
    from perceive.encoders import EncoderSpec, FeatureLayout, encoder_problems

    spec = EncoderSpec(name="e", family="e", layout="map", feature_dim=1, build=lambda **kw: None)
    assert spec.layout is FeatureLayout.MAP and str(spec.layout) == "map" and not encoder_problems(spec)
    bad = EncoderSpec(name="e", family="e", layout="grid", feature_dim=1, build=lambda **kw: None)
    assert encoder_problems(bad) == ["layout must be FeatureLayout.TOKENS ('tokens') or FeatureLayout.MAP ('map'), "
                                     "got 'grid'"]


# -- an empty conformance check ---------------------------------------------------------------

def centre_action():
    """A view action that refuses, with a typed error, any image under 8 px a side or over 8:1."""
    from perceive.actions import Action, ActionCall, ActionContext, TriggerGrammar
    from perceive.errors import ActionInputError
    from perceive.geometry import Box

    class Centre(Action):
        name = "centre"
        grammar = TriggerGrammar(start="<|centre_start|>", end="<|centre_end|>")
        observation = "view"

        def run(self, call: ActionCall, context: ActionContext):
            w, h = context.image.size
            if min(w, h) < 8 or max(w, h) > 8 * min(w, h):
                raise ActionInputError(f"a {w}x{h} view has no centre to show")
            return context.crop_root(Box(w // 4, h // 4, w // 4 + w // 2, h // 4 + h // 2, context.frame.id))

    return Centre()


def test_a_check_where_no_example_ran_is_a_skip_that_says_why(registry):
    from perceive.conformance import CheckStatus, check_action

    report = check_action(centre_action(), registry=registry, quick=True)
    by = {r.name: r for r in report.results}
    assert report.ok, report.render()
    assert by["run[astronaut]"].status == "pass" and by["run[astronaut]"].detail == "1 example(s) ran"
    for name in ("run[1x1]", "run[4000x300]"):
        assert by[name].status is CheckStatus.SKIP, by[name]
        assert by[name].detail == ("no example ran: each of 1 was refused with a typed error (ActionInputError: a "
                                   f"{name[4:-1]} view has no centre to show), so nothing was checked on this input")
    # no check that ran nothing reads as a pass, in the text or the JSON
    assert not any(r.status == "pass" and r.detail.startswith("0 example") for r in report.results)
    assert report.render().splitlines()[-1].endswith(", 3 skipped")  # box[*], 1x1, 4000x300
    assert {r["name"]: r["status"] for r in json.loads(json.dumps(report.to_dict()))["results"]}["run[1x1]"] == "skip"


def test_an_action_with_no_examples_fails_and_nothing_runs(registry):
    from perceive.conformance import check_action

    action = centre_action()
    action.examples = lambda: []
    report = check_action(action, registry=registry, quick=True)
    assert not report.ok and [r.name for r in report.failures] == ["examples"]
    assert not any(r.name.startswith("run[") for r in report.results)


# -- encoder options and a trained branch -----------------------------------------------------

@pytest.fixture(scope="module")
def dino_model():
    from perceive.testing.tiny import tiny_vpt_model

    return tiny_vpt_model(branches=("dino",))


def test_encoder_options_a_trained_branch_would_ignore_are_refused(dino_model):
    from perceive.config import EncoderConfig
    from perceive.errors import ConfigError
    from perceive.loop import PerceptionLoop

    with pytest.raises(ConfigError) as e:
        PerceptionLoop(dino_model, encoder_configs={
            "dinov2_large": EncoderConfig(name="dinov2_large", options={"crop": 300, "max_side": 256})})
    assert str(e.value) == (
        "encoders.dinov2_large.options: 'crop' would be ignored: the model carries a trained 'dino' branch, which runs "
        "encoder 'dinov2_large' as it was trained (perceive.json); of its options only ['max_side'] apply then. "
        "Remove them, or give 'dinov2_large' local weights to run it standalone with these options")


def test_an_option_the_branch_applies_is_applied(dino_model):
    from perceive.config import EncoderConfig
    from perceive.loop import PerceptionLoop

    loop = PerceptionLoop(dino_model, encoder_configs={
        "dinov2_large": EncoderConfig(name="dinov2_large", options={"max_side": 100})})
    built = loop.hub.get("dinov2_large")
    assert built.max_side == 100 and built.model is dino_model.branch_encoder("dino")  # the branch, with the option


def test_options_are_kept_where_they_apply(dino_model, tmp_path, registry):
    from perceive.config import PerceiveConfig, encoder_fit_problems

    weights = tmp_path / "dinov2"
    weights.mkdir()
    cfg = PerceiveConfig.model_validate({"encoders": [
        {"name": "dinov2_large", "weights": str(weights), "options": {"crop": 300}},  # standalone: applies them
        {"name": "sam_vit_b", "options": {"device": "cpu"}},  # the model has no sam branch
    ]})
    assert encoder_fit_problems(cfg, dino_model.config.branches, registry) == []
    no_branch = PerceiveConfig.model_validate({"encoders": [{"name": "dinov2_large", "options": {"crop": 300}}]})
    assert encoder_fit_problems(no_branch, {}, registry) == []


def test_a_run_config_with_ignored_options_is_refused_with_its_line(dino_model, tmp_path, registry):
    from perceive.config_check import check_config_file
    from perceive.errors import ConfigError
    from perceive.loop import PerceptionLoop
    from perceive.model import save_model

    save_model(dino_model, tmp_path / "m")
    run = tmp_path / "run.yaml"
    run.write_text(f"model: {tmp_path / 'm'}\nencoders:\n  - name: dinov2_small\n    options: {{crop: 300}}\n")
    why = ("encoders.0.options (line 4): 'crop' would be ignored: the model carries a trained 'dino' branch, which "
           "runs encoder 'dinov2_small' as it was trained")
    with pytest.raises(ConfigError) as e:
        PerceptionLoop.from_config(run, registry=registry)
    assert why in str(e.value)
    assert any(why in p for p in check_config_file(run, registry=registry)[2])  # `perceive config check`


# -- data cards --reencode --------------------------------------------------------------------

def test_data_cards_writes_a_plugin_s_reencode_items(fake_site, tmp_path):
    from perceive.plugins import reset_registry

    make_dist(fake_site, "perceive-sobel", {"perceive_sobel": (ROOT / "tests/plugins/sobel.py").read_text()},
              {"sobel": "perceive_sobel"})
    reset_registry()
    res = CliRunner().invoke(app, ["data", "cards", "--n", "2", "--out", str(tmp_path / "c"), "--reencode", "sobel"])
    assert res.exit_code == 0, res.output
    assert "reencode (sobel spans)" in flat(res.output)
    items = json.loads((tmp_path / "c" / "reencode.json").read_text())
    assert len(items) == 2
    assert items[0]["messages"][1]["content"] == "<|sobel_action_start|><|sobel_action|><|sobel_action_end|>"
    assert items[0]["messages"][2]["content"] == "<sobel_image>" and items[0]["sobel_images"] == ["images/000000.png"]


@pytest.mark.parametrize(("name", "expect"), [
    ("dinoo", "error: no installed plugin provides a re-encode branch named 'dinoo' -> did you mean 'dino'?"),
    ("zoom", "error: action 'zoom' gives views, not features: re-encode items need a features action with a model "
             "branch -> use one of dino, native, sam"),
    ("qqq", "-> known: dino, native, sam"),
])
def test_data_cards_refuses_a_name_that_is_no_reencode_branch(tmp_path, name, expect):
    res = CliRunner().invoke(app, ["data", "cards", "--n", "1", "--out", str(tmp_path / "c"), "--reencode", name])
    assert res.exit_code == 2 and expect in flat(res.output), res.output
    assert not (tmp_path / "c").exists()  # refused before anything is written


def test_generate_refuses_before_writing(tmp_path):
    from perceive.data.cards import generate
    from perceive.errors import UnknownActionError

    with pytest.raises(UnknownActionError, match="did you mean 'sam'"):
        generate(tmp_path / "c", 1, reencode="sammy")
    assert not (tmp_path / "c").exists()


# -- graph validate --model -------------------------------------------------------------------

def validate(*args):
    return CliRunner().invoke(app, ["graph", "validate", *map(str, args)], env={"COLUMNS": "400"})


@pytest.mark.skipif(not DEFAULT.is_dir(), reason="needs the shipped models/default")
def test_graph_validate_checks_the_graph_against_the_model(tmp_path):
    from perceive.errors import ConfigError
    from perceive.graph import compile_graph
    from perceive.loop import PerceptionLoop
    from perceive.model import load_model

    # without a model the graph is well formed; the default model has no dino branch
    assert validate("reencode_then_answer").exit_code == 0
    res = validate("reencode_then_answer", "--model", DEFAULT)
    assert res.exit_code == 1
    # the very message `graph run` stops with when it starts
    with pytest.raises(ConfigError) as e:
        PerceptionLoop(load_model(DEFAULT), graph=compile_graph("reencode_then_answer"))
    assert f"error: {e.value.message}" in flat(res.output) and "the model has no 'dino' branch" in e.value.message

    # a graph that forces a view the model was never trained to read
    g = tmp_path / "tiles.yaml"
    g.write_text("name: t\nbudget: 1\nstart: cut\nnodes:\n  cut: {kind: action, action: tiles, args: {rows: 2, "
                 "cols: 2}, next: ask}\n  ask: {kind: generate, next: done}\n  done: {kind: answer}\n")
    res = validate(g, "--model", DEFAULT)
    assert res.exit_code == 1 and "shows 'tiles' views, but the model was trained to read only ['region_select']" \
        in flat(res.output)

    res = validate("free_choice", "--model", DEFAULT)
    assert res.exit_code == 0 and f"free_choice.yaml: ok (4 nodes, budget 4) on the model {DEFAULT}" in flat(res.output)
    res = validate("iterative_zoom", "--model", DEFAULT)  # runs, and says what it leaves out
    assert res.exit_code == 0 and "note: the model was trained without a region trigger prompt" in flat(res.output)


@pytest.mark.skipif(not DEFAULT.is_dir(), reason="needs the shipped models/default")
def test_graph_validate_with_a_run_config(tmp_path):
    run = tmp_path / "run.yaml"
    run.write_text(f"model: {DEFAULT}\ngraph: reencode_then_answer\n")
    # the GRAPH argument wins over the config's graph, as in `graph run`
    assert validate("free_choice", "--config", run).exit_code == 0
    res = validate("reencode_then_answer", "--config", run)
    assert res.exit_code == 1 and "the model has no 'dino' branch" in flat(res.output)
    remote = tmp_path / "remote.yaml"
    remote.write_text("remote: {url: 'http://127.0.0.1:9/v1'}\n")
    res = validate("free_choice", "--config", remote)
    assert res.exit_code == 2 and "drives a served model (remote.url), which cannot be checked" in flat(res.output)
    res = validate("free_choice", "--model", tmp_path / "nowhere")
    assert res.exit_code == 1 and f"error: model folder not found: {tmp_path / 'nowhere'}" in flat(res.output)
