"""One settings model: every setting the loop reads has a home in the run config (a YAML file and
``--set``); perceive serve reads the run config too, its flags over it; the hop budget is the
run's for every graph that reads it, whatever its name; eval's batch is the run's setting;
plugins get their validated ``Options`` instance; one strict pydantic base."""

from __future__ import annotations

import ast
import json
import typing
from pathlib import Path

import pytest
from pydantic import Field

from perceive import hookimpl
from perceive.cli.run_config import cli_overrides
from perceive.config import PerceiveConfig, load_config
from perceive.loop.options import CONFIG_HOMES, LoopOptions, options_from_config
from perceive.settings import MANY_SAMPLES_BATCH_SIZE

ROOT = Path(__file__).resolve().parents[1]


def other_value(name: str):
    """A valid value of the ``LoopOptions`` field ``name`` that is not its default."""
    field = LoopOptions.model_fields[name]
    default = field.get_default(call_default_factory=True)
    kind = field.annotation
    if typing.get_origin(kind) is not typing.Literal:  # X | None: X
        kind = next(a for a in (typing.get_args(kind) or (kind,)) if a is not type(None))
    if typing.get_origin(kind) is typing.Literal:
        return next(v for v in typing.get_args(kind) if v != default)
    if kind is bool:
        return not default
    if kind is int:
        return (default or 0) + 2
    if kind is float:
        return default / 2 if default else 0.5
    if kind is str:
        return "Look closely before you answer."
    raise AssertionError(f"LoopOptions.{name}: no sample value for {field.annotation}; add one to this test")


#: the fields whose home is not a section of their own: their YAML and --set, and what the loop reads
ELSEWHERE = {
    "action_options": ("actions: {zoom: {options: {size: 300}}}", ["actions.zoom.options.size=300"],
                       {"zoom": {"size": 300}}),
    "actions": ("actions: {zoom: {enabled: false}, region_select: {}}",
                ["actions.zoom.enabled=false", "actions.region_select.enabled=true"], ["region_select"]),
    "protocol": ("protocol: hermes_json", ["protocol.name=hermes_json"], "hermes_json"),
    "protocol_options": ("protocol: {name: hermes_json, options: {declare: false}}",
                         ["protocol.name=hermes_json", "protocol.options.declare=false"], {"declare": False}),
}


def loaded(tmp_path, registry, yaml_text: str | None = None, sets: list[str] = ()) -> LoopOptions:
    """The loop options of a run config written as ``yaml_text``, or of ``--set`` items alone (parsed
    as the CLI parses them)."""
    path = None
    if yaml_text is not None:
        path = tmp_path / "run.yaml"
        path.write_text(yaml_text + "\n")
    cfg = load_config(path, registry, overrides=cli_overrides(list(sets), [], PerceiveConfig.model_fields))
    return options_from_config(cfg)


@pytest.mark.parametrize("name", list(LoopOptions.model_fields))
def test_every_loop_setting_is_reachable_from_a_config_file_and_from_set(tmp_path, registry, name):
    assert name in CONFIG_HOMES, f"LoopOptions.{name} has no home in the run config (perceive.loop.options)"
    home = CONFIG_HOMES[name]
    if name in ELSEWHERE:
        yaml_text, sets, want = ELSEWHERE[name]
    else:
        assert len(home) == 2, home  # a field of a section: runtime.x or sampling.x
        want = other_value(name)
        yaml_text, sets = f"{home[0]}:\n  {name}: {json.dumps(want)}", [f"{'.'.join(home)}={json.dumps(want)}"]
        assert want != LoopOptions.model_fields[name].default
    assert getattr(loaded(tmp_path, registry, yaml_text), name) == want
    assert getattr(loaded(tmp_path, registry, sets=sets), name) == want


def test_a_bare_set_of_a_setting_names_its_section():
    from typer.testing import CliRunner

    from perceive.cli import app

    res = CliRunner().invoke(app, ["ask", "x.png", "Q", "--set", "temperature=0.5"], env={"COLUMNS": "200"})
    assert res.exit_code == 2 and "did you mean 'sampling.temperature'" in res.output, res.output


def test_the_loop_and_the_config_share_one_set_of_defaults():
    assert options_from_config(PerceiveConfig()) == LoopOptions()
    assert set(LoopOptions.model_fields) == set(CONFIG_HOMES)


def test_loop_options_validate_and_copy():
    with pytest.raises(ValueError, match="max_hop"):
        LoopOptions(max_hop=2)
    with pytest.raises(ValueError, match="temperature"):
        LoopOptions(temperature=0)
    o = LoopOptions(max_hops=2, action_timeout_s=float("inf"))  # in Python, inf is no deadline
    assert o.replace(seed=3).seed == 3 and o.replace(seed=3).max_hops == 2 and o.seed == 0
    with pytest.raises(ValueError, match="top_p"):
        o.replace(top_p=2)


# -- perceive serve ---------------------------------------------------------------------------------


def test_serve_reads_the_run_config_and_its_flags_override_it(tmp_path, monkeypatch):
    pytest.importorskip("uvicorn")
    pytest.importorskip("fastapi")
    from typer.testing import CliRunner

    import perceive.cli.serve_cmd as serve_cmd
    import perceive.netserve as netserve
    from perceive.cli import app

    images = tmp_path / "images"
    images.mkdir()
    run = tmp_path / "run.yaml"
    run.write_text("serve:\n  host: 127.0.0.9\n  port: 9123\n  model_name: cards\n  max_queue: 3\n  deadline_s: 30\n"
                   "  max_body_mb: 1\n  allow_local_images: images\nruntime:\n  max_batch_size: 2\n")
    seen = {}
    settings = serve_cmd.serve_settings
    monkeypatch.setattr(serve_cmd, "serve_settings", lambda cfg: seen.setdefault("settings", settings(cfg)))

    def no_listen(host, port):  # stop before the model loads: what it would bind is what we test
        seen["bind"] = (host, port)
        raise OSError(98, "Address already in use")

    monkeypatch.setattr(netserve, "listen", no_listen)
    res = CliRunner().invoke(app, ["serve", "--config", str(run), "--max-queue", "5", "--port", "9200"])
    assert res.exit_code == 1 and "cannot listen on 127.0.0.9:9200" in res.output, res.output
    s = seen["settings"]
    assert seen["bind"] == ("127.0.0.9", 9200)
    assert (s.model_name, s.max_batch, s.max_queue, s.deadline_s, s.max_body_bytes) == ("cards", 2, 5, 30.0, 1 << 20)
    assert s.allow_local_images == images  # relative to the config file

    seen.clear()
    res = CliRunner().invoke(app, ["serve", "--model-name", "m", "--max-batch", "4", "--deadline", "9"])
    s = seen["settings"]
    assert (s.model_name, s.max_batch, s.max_queue, s.deadline_s) == ("m", 4, 64, 9.0)
    assert seen["bind"] == ("127.0.0.1", 8000)
    res = CliRunner().invoke(app, ["serve", "--config", str(run), "--set", "serve.allow_local_images=nowhere"])
    assert res.exit_code == 1 and "serve.allow_local_images (--set serve.allow_local_images): nowhere is not a " \
        "folder" in res.output


def test_serve_defaults_run_a_batch_of_a_few(tmp_path):
    pytest.importorskip("fastapi")
    from perceive.cli.serve_cmd import serve_settings

    cfg = PerceiveConfig(model=tmp_path)
    assert serve_settings(cfg).max_batch == MANY_SAMPLES_BATCH_SIZE and serve_settings(cfg).model_name == tmp_path.name


# -- the hop budget ---------------------------------------------------------------------------------

#: a graph of no shipped name whose budget is ${max_hops}, declared nowhere
LOOKER = {"name": "looker", "budget": "${max_hops}", "start": "look",
          "nodes": {"look": {"kind": "generate", "next": "called"},
                    "called": {"kind": "route", "switch": "call", "cases": {"*": "act"}, "default": "done"},
                    "act": {"kind": "action", "action": "*", "next": "look"}, "done": {"kind": "answer"}}}


@pytest.mark.parametrize("graph", ["free_choice", "iterative_zoom", LOOKER], ids=["free_choice", "iterative_zoom",
                                                                                  "any-name"])
def test_every_graph_that_reads_max_hops_takes_the_runs_budget(registry, graph):
    from perceive.graph import compile_graph, run_controller

    cfg = PerceiveConfig(runtime={"max_hops": 2})
    assert compile_graph(graph, registry, params=cfg.graph_params()).spec.budget == 2
    assert run_controller(graph, registry, max_hops=3).spec.budget == 3
    assert run_controller(graph, registry, max_hops=3, params={"max_hops": 1}).spec.budget == 1  # params win
    cfg = PerceiveConfig(runtime={"max_hops": 2}, params={"max_hops": 5})
    assert compile_graph(graph, registry, params=cfg.graph_params()).spec.budget == 5


def test_a_graph_with_a_budget_of_its_own_keeps_it(registry):
    from perceive.graph import compile_graph, run_controller

    spec = run_controller("region_then_answer", registry, max_hops=7).spec
    assert spec.budget == 1 and "max_hops" not in spec.params  # so running out says: raise `budget` in the graph
    assert compile_graph("free_choice", registry).spec.budget == LoopOptions().max_hops  # outside a run


def test_a_compiled_graph_takes_a_requests_budget_and_params(registry):
    """A loop built from a config holds its graph compiled with the run's params: a request's own
    max_hops or params compile it again over them."""
    from perceive.graph import compile_graph

    cfg = PerceiveConfig(runtime={"max_hops": 2}, params={"max_hops": 3})
    g = compile_graph("iterative_zoom", registry, params=cfg.graph_params())
    assert g.spec.budget == 3 and g.with_params({}) is g
    assert g.with_params({"max_hops": 1}).spec.budget == 1 and g.spec.budget == 3


# -- eval's batch -----------------------------------------------------------------------------------


def test_eval_runs_the_batch_its_settings_give(tmp_path, monkeypatch):
    from perceive.errors import PerceiveError
    from perceive.eval.runner import EvalConfig, evaluate, load_eval_config

    ev = tmp_path / "eval.yaml"
    ev.write_text("model: m\ndata: d.json\nruntime: {max_batch_size: 3}\n")
    assert load_eval_config(ev).runtime.max_batch_size == 3
    assert load_eval_config(ev, batch_size=5).runtime.max_batch_size == 5  # --batch-size: a flag over the file
    ev.write_text("model: m\ndata: d.json\n")
    assert load_eval_config(ev).runtime.max_batch_size == MANY_SAMPLES_BATCH_SIZE
    ev.write_text("model: m\ndata: d.json\nbatch_size: 2\n")
    with pytest.warns(DeprecationWarning, match="eval.yaml line 3: the eval config's batch_size is deprecated"):
        cfg = load_eval_config(ev)
    assert cfg.runtime.max_batch_size == 2 and cfg.batch_size == 2 and "batch_size" not in cfg.model_dump()
    ev.write_text("model: m\ndata: d.json\nbatch_size: 2\nruntime: {max_batch_size: 3}\n")
    with pytest.raises(PerceiveError, match="disagree"), pytest.warns(DeprecationWarning):
        load_eval_config(ev)

    from perceive.data.cards import generate

    data = generate(tmp_path / "cards", 1, seed=3, split="eval")
    caps = []

    def batch_of(loop, work, cap, oracle=None):  # the cap the runner hands the batch
        caps.append((cap, loop.options.max_batch_size))
        raise PerceiveError("stop here")

    monkeypatch.setattr("perceive.eval.stream.answers", batch_of)
    from perceive.testing.tiny import tiny_vpt_model

    cfg = EvalConfig(model=tmp_path / "unused", data=data / "region.json", runtime={"max_batch_size": 3})
    with pytest.raises(PerceiveError, match="stop here"):
        evaluate(cfg, model=tiny_vpt_model(), progress=False)
    assert caps == [(3, 3)]


# -- plugins get their Options ----------------------------------------------------------------------


class Recorder:
    """A call hook that keeps each call's ``context.options``."""

    def __init__(self):
        self.options = []

    @hookimpl
    def perceive_before_action(self, action, call, context):
        self.options.append(context.options)


def test_a_plugin_gets_its_options_instance_with_the_defaults_filled_in(model, photo):
    from perceive_region_select import RegionSelectOptions
    from perceive_zoom import ZoomOptions

    from perceive.loop import PerceptionLoop
    from perceive.plugins import load_registry
    from perceive.testing.scripted import ScriptedPolicy, span_tokens

    recorder = Recorder()
    registry = load_registry([("recorder", recorder)])
    tok = model.tokenizer
    script = span_tokens(tok, "<|region_token_start|><|x_2|><|y_0|><|x_3|><|y_1|><|region_token_end|>"
                              "<|zoom_start|><|x_0|><|y_0|><|zoom_end|>7<|im_end|>")
    options = LoopOptions(max_new_tokens=len(script), action_options={"region_select": {"margin": 0}})
    loop = PerceptionLoop(model, registry=registry, policy=ScriptedPolicy(tok, {0: script}), options=options)
    answer = loop.ask(photo, "What is written here?")
    assert [h.error for h in answer.trace.hops] == [None, None], answer.trace.to_json()
    region, zoom = recorder.options
    assert type(region).__name__ == "RegionSelectOptions" and isinstance(region, RegionSelectOptions)
    assert region.margin == 0 and region.model_fields_set == {"margin"}
    assert isinstance(zoom, ZoomOptions) and zoom.size == 448 and not zoom.model_fields_set  # the default, filled in
    view = answer.trace.hops[1].views[0]
    assert max(view["width"], view["height"]) == 448  # ... which zoom read
    assert RegionSelectOptions.model_validate(region) is region  # old code validating it again still works


def test_options_that_do_not_fit_fail_the_call_before_it_runs(registry):
    from PIL import Image

    from perceive.actions import ActionCall, ActionContext
    from perceive.dispatch import dispatch

    zoom = registry.action("zoom")
    ctx = ActionContext.for_image(Image.new("RGB", (32, 32)), options={"sise": 3})
    res = dispatch(registry.pm, zoom, ActionCall("zoom", zoom.examples()[0]), ctx)
    assert res.failure.stage == "before" and res.failure.typed and "sise: action 'zoom': not an option" \
        in res.failure.message and "did you mean 'size'" in res.failure.message


def test_dict_style_reads_of_options_warn_and_see_the_options_given(registry):
    from perceive.actions import action_options

    opts = action_options(registry.action("zoom"), {"size": 300})
    for read in (lambda: opts["size"], lambda: opts.get("size"), lambda: "size" in opts,
                 lambda: {"size": 448, **opts}["size"]):
        with pytest.warns(DeprecationWarning, match=r"read context\.options\.\S+ \(dict-style access") as seen:
            assert read() in (300, True)
        assert all("dict-style access" in str(w.message) for w in seen)
    with pytest.warns(DeprecationWarning, match=r"read context\.options\.size \(dict-style access, \x27size\x27"):
        opts.get("size")
    fresh = action_options(registry.action("zoom"), {})
    assert fresh.size == 448  # the default, as an attribute
    with pytest.warns(DeprecationWarning):  # as a dict: only what was given, as before
        assert fresh.get("size", 123) == 123 and {"size": 336, **fresh} == {"size": 336}
    assert action_options(registry.action("zoom"), opts) is opts
    with pytest.raises(Exception, match="not an option"):
        action_options(registry.action("zoom"), {"sise": 1})


# -- one strict base --------------------------------------------------------------------------------


def _forbids_extra(node: ast.AST) -> bool:
    """``extra="forbid"`` as a keyword (ConfigDict, class keywords) or a dict entry."""
    forbid = lambda v: isinstance(v, ast.Constant) and v.value == "forbid"  # noqa: E731
    if isinstance(node, ast.keyword):
        return node.arg == "extra" and forbid(node.value)
    if isinstance(node, ast.Dict):
        return any(isinstance(k, ast.Constant) and k.value == "extra" and forbid(v)
                   for k, v in zip(node.keys, node.values, strict=True))
    return False


def test_one_strict_base():
    """No module of perceive sets ``extra="forbid"`` itself: every strict model derives from
    perceive.strict.StrictModel (the plugin templates are plugin code, not perceive's)."""
    own = []
    for path in sorted((ROOT / "perceive").rglob("*.py")):
        if "templates" in path.parts or path == ROOT / "perceive" / "strict.py":
            continue
        own += [f"{path.relative_to(ROOT)}:{n.lineno}" for n in ast.walk(ast.parse(path.read_text()))
                if _forbids_extra(n)]
    assert not own, f"derive from perceive.strict.StrictModel (or FrozenStrictModel) instead: {own}"


def test_the_strict_base_refuses_unknown_fields():
    from perceive.strict import FrozenStrictModel, StrictModel

    class Knob(StrictModel):
        size: int = Field(1, ge=1)

    class Frozen(FrozenStrictModel):
        size: int = 1

    with pytest.raises(ValueError, match="sise"):
        Knob(sise=2)
    with pytest.raises(ValueError, match="frozen"):
        Frozen().size = 2
    with pytest.raises(ValueError, match="sise"):
        Frozen(sise=2)


def test_the_cli_shows_a_deprecated_config_key_as_a_warning(tmp_path):
    """Python hides deprecation warnings raised outside __main__; a config key that moved is for
    the person running the command, so the console script prints it (found by a new-user trial)."""
    import subprocess
    import sys

    (tmp_path / "d.json").write_text('[{"image": "x.png", "question": "q", "answer": "a"}]')
    (tmp_path / "ev.yaml").write_text("model: m\ndata: d.json\nbatch_size: 2\n")
    run = subprocess.run([sys.executable, "-m", "perceive", "config", "check", "ev.yaml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert ("warning: ev.yaml line 3: the eval config's batch_size is deprecated: set runtime.max_batch_size"
            in run.stderr), run.stderr
    assert "DeprecationWarning" not in run.stderr and "Traceback" not in run.stderr
