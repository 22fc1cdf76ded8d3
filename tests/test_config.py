import textwrap
from pathlib import Path

import pytest

from perceive.config import PerceiveConfig, load_config
from perceive.errors import ConfigError
from perceive.loop import PerceptionLoop
from perceive.loop.options import options_from_config


def write(tmp_path, text):
    p = tmp_path / "run.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_full_config(tmp_path):
    p = write(tmp_path, """
        model:
          path: models/vpt
        encoders:
          - name: dinov2_large
            weights: weights/dinov2-large
            options: {crop: 224}
        actions:
          region_select: {}
          dino: {encoder: dinov2_large}
          zoom: {enabled: false, options: {size: 336}}
        runtime: {max_hops: 2, max_new_tokens: 64, on_malformed: stop}
        device: cpu
        dtype: float32
    """)
    cfg = load_config(p)
    assert cfg.model.path == tmp_path / "models/vpt"  # relative to the file
    assert cfg.encoder_configs()["dinov2_large"].weights == tmp_path / "weights/dinov2-large"
    assert cfg.enabled_actions() == ["region_select", "dino"]
    assert cfg.runtime.max_hops == 2 and cfg.runtime.on_malformed == "stop"


def test_wrong_field_names_field_file_and_line(tmp_path):
    p = write(tmp_path, """
        model:
          path: m
        runtime:
          max_hop: 3
    """)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "runtime.max_hop (line 5)" in msg and "did you mean 'max_hops'" in msg


def test_wrong_type_and_value(tmp_path):
    p = write(tmp_path, """
        runtime: {max_new_tokens: -1}
        dtype: float64
    """)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "runtime.max_new_tokens (line 2)" in str(e.value) and "dtype (line 3)" in str(e.value)


def test_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "model: [unclosed\n"))


def test_unknown_names_against_the_registry(registry):
    cfg = PerceiveConfig.model_validate({"actions": {"region_selct": {}, "dino": {"encoder": "dinov2_larg"}},
                                         "encoders": [{"name": "sam_vit_x"}]})
    errors = cfg.check_names(registry)
    assert any("region_selct" in e and "did you mean 'region_select'" in e for e in errors)
    assert any("dinov2_larg" in e and "dinov2_large" in e for e in errors)
    assert any("sam_vit_x" in e for e in errors)


def model_dir(tmp_path):
    """A folder that passes config check's model-folder test (config check loads no weights)."""
    m = tmp_path / "models" / "vpt"
    m.mkdir(parents=True)
    (m / "config.json").write_text("{}")
    return m


@pytest.mark.slow
def test_cli_config_check(tmp_path):
    import subprocess
    import sys

    model_dir(tmp_path)
    good = write(tmp_path, "model: {path: models/vpt}\nactions: {zoom: {}}\n")
    out = subprocess.run([sys.executable, "-m", "perceive", "config", "check", str(good)], capture_output=True,
                         text=True)
    assert out.returncode == 0 and "ok" in out.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("actions: {zooom: {}}\n")
    out = subprocess.run([sys.executable, "-m", "perceive", "config", "check", str(bad)], capture_output=True,
                         text=True)
    assert out.returncode == 1 and "did you mean 'zoom'" in out.stdout


# -- what fails at run time is refused by config load or config check -----------------------------

def check_cli(*args):
    from typer.testing import CliRunner

    from perceive.cli import app

    result = CliRunner().invoke(app, ["config", "check", *map(str, args)], env={"COLUMNS": "400"})
    return result.exit_code, result.output


def test_device_is_parsed_like_torch(tmp_path):
    for ok in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        assert load_config(write(tmp_path, f"device: '{ok}'\n")).device == ok
    for bad in ("quantum", "cuda:x", "CPU", "gpu"):
        with pytest.raises(ConfigError) as e:
            load_config(write(tmp_path, f"model: {{path: m}}\ndevice: {bad}\n"))
        assert f"device (line 2): '{bad}' is not a device: use auto, cpu, cuda, cuda:N, mps" in str(e.value)


def test_ill_typed_action_option_names_action_field_and_line(tmp_path):
    p = write(tmp_path, """
        model: {path: m}
        actions:
          region_select:
            options:
              margin: "lots"
    """)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "actions.region_select.options.margin (line 6): action 'region_select': " in msg
    assert "valid integer" in msg and "'lots'" in msg


def test_unknown_action_and_encoder_options(tmp_path):
    p = write(tmp_path, """
        encoders:
          - name: dinov2_large
            options: {crop: 224, max_sid: 512}
        actions:
          zoom: {options: {sise: 336}}
          tiles: {options: {rows: 3}}
    """)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "3 invalid option(s)" in msg
    assert "encoders.0.options.max_sid (line 4): encoder 'dinov2_large': not an option; did you mean " \
           "'max_side'?" in msg
    assert "actions.zoom.options.sise (line 6): action 'zoom': not an option; did you mean 'size'?" in msg
    assert "actions.tiles.options.rows (line 7): action 'tiles': not an option; tiles takes no options" in msg


def test_config_check_refuses_what_fails_at_run_time(tmp_path):
    p = write(tmp_path, """
        model: {path: nowhere}
        encoders:
          - name: sam_vit_l
            weights: weights/sam.pth
        actions:
          dino: {encoder: sam_vit_l}
          zoom: {encoder: dinov2_large}
    """)
    code, out = check_cli(p)
    assert code == 1
    assert f"{p}: actions.dino.encoder (line 7): action 'dino' takes tokens features but encoder 'sam_vit_l' " \
           "gives a map" in out
    assert f"{p}: actions.zoom.encoder (line 8): action 'zoom' is a view action and uses no encoder" in out
    assert f"{p}: model.path (line 2): {tmp_path / 'nowhere'} does not exist: point it at a local model folder" in out
    assert f"{p}: encoders.0.weights (line 5): {tmp_path / 'weights/sam.pth'} does not exist" in out
    assert "4 problem(s); checked as a run config" in out


def test_config_check_model_folder_needs_a_config_json(tmp_path):
    (tmp_path / "m").mkdir()
    code, out = check_cli(write(tmp_path, "model: {path: m}\n"))
    assert code == 1 and "model.path (line 1): " in out and "has no config.json" in out
    code, out = check_cli(write(tmp_path, "device: cpu\n"))
    assert code == 1 and "model.path: not set" in out


def test_config_check_on_a_train_config(tmp_path):
    (tmp_path / "train.json").write_text("[]")
    p = tmp_path / "train.yaml"
    p.write_text(textwrap.dedent("""
        model:
          tiny: {hidden: 32}
          action_defaults: {region_select: {margin: 0}}
        data: {train: train.json}
        optim: {steps: 10}
    """))
    code, out = check_cli(p)
    assert code == 0, out
    assert "ok, checked as a train config (top-level keys data, model, optim; --kind to choose)" in out
    p.write_text(textwrap.dedent("""
        model:
          tiny: {hidden: 32}
          action_defaults: {region_select: {margin: wide}}
        data: {train: missing.json}
        optim: {stepz: 10}
    """))
    code, out = check_cli(p)
    assert code == 1 and "optim.stepz (line 6): Extra inputs are not permitted" in out
    assert "checked as a train config" in out and "invalid field(s)" in out
    p.write_text(p.read_text().replace("stepz", "steps"))
    code, out = check_cli(p)
    assert code == 1
    assert "model.action_defaults.region_select.margin (line 4): action 'region_select': Input should be a valid " \
           "integer" in out
    assert f"data.train (line 5): {tmp_path / 'missing.json'} does not exist" in out


def test_config_check_on_an_eval_config(tmp_path):
    model_dir(tmp_path)
    (tmp_path / "eval.json").write_text("[]")
    p = tmp_path / "eval.yaml"
    p.write_text("model: models/vpt\ndata: eval.json\ngraph: free_choice\nruntime: {max_new_tokens: 16}\n")
    code, out = check_cli(p)
    assert code == 0, out
    assert "ok, checked as an eval config" in out
    p.write_text("model: models/vpt\ndata: eval.json\ngraph: region_then_answr\nruntime: {max_new_tokens: 16}\n"
                 "actions: {zooom: {}}\n")
    code, out = check_cli(p)
    assert code == 1
    assert "graph (line 3): no graph file region_then_answr" in out
    assert "actions.zooom (line 5): no such action; did you mean 'zoom'?" in out
    p.write_text("model: models/vpt\ndata: eval.json\nactions: {zoom: {options: {size: -1}}}\n")
    code, out = check_cli(p)  # an eval config is a run config: its options are checked when it loads
    assert code == 1
    assert "actions.zoom.options.size (line 3): action 'zoom': Input should be greater than or equal to 1" in out
    p.write_text("model: models/vpt\ndata: eval.json\nmax_new_tokens: 16\n")  # the eval config before 0.x
    code, out = check_cli(p)
    assert code == 1 and "max_new_tokens (line 3): moved to runtime.max_new_tokens" in out
    p.write_text("model: models/vpt\ndata: eval.json\ndevice: quantum\n")  # the schema, as `perceive eval` loads it
    code, out = check_cli(p)
    assert code == 1 and "device (line 3): 'quantum' is not a device" in out and "checked as an eval config" in out
    code, out = check_cli(p, "--kind", "run")
    assert code == 1 and "checked as a run config (--kind" in out


def test_graph_node_options_are_validated(tmp_path, registry):
    from perceive.graph import check

    p = tmp_path / "g.yaml"
    p.write_text(textwrap.dedent("""
        name: g
        start: ask
        nodes:
          ask: {kind: generate, next: crop}
          crop:
            kind: action
            action: zoom
            args: {box: [0, 0, 10, 10]}
            options: {size: huge}
            next: done
          done: {kind: answer}
    """))
    _, issues = check(p, registry)
    assert [(i.code, i.node, i.line) for i in issues] == [("bad-options", "crop", 10)]
    assert "options.size: action 'zoom': Input should be a valid integer" in issues[0].message


def test_validate_action_options(registry):
    from perceive.actions import validate_action_options

    rs, zoom, dino = (registry.action(n) for n in ("region_select", "zoom", "dino"))
    assert validate_action_options(rs, {"margin": "2"}) == {"margin": 2}  # coerced, only what was given
    assert validate_action_options(zoom, {}) == {}
    assert validate_action_options(dino, {"encoder": "dinov2_small"}) == {"encoder": "dinov2_small"}
    with pytest.raises(ConfigError) as e:
        validate_action_options(rs, {"margin": "lots", "colour": "red"}, source="LoopOptions.action_options")
    msg = str(e.value)
    assert msg.startswith("LoopOptions.action_options: 2 invalid option(s)\n  margin: action 'region_select': "
                          "Input should be a valid integer, unable to parse string as an integer (got 'lots')\n")
    assert "\n  colour: action 'region_select': not an option; known: margin" in msg
    assert "action region_select takes margin" in msg


def test_third_party_action_without_options_keeps_working(tmp_path, registry):
    from perceive.actions import validate_action_options
    from tests.plugins import good

    assert registry.register(good, "good").ok
    action = registry.action("left_half")
    assert action.Options is None
    opts = {"anything": [1, 2], "goes": "here"}
    assert validate_action_options(action, opts) == opts
    cfg = load_config(write(tmp_path, "actions: {left_half: {options: {anything: 1}}}\n"), registry)
    assert cfg.actions["left_half"].options == {"anything": 1} and cfg.check_names(registry) == []


def test_encoder_hub_checks_options_before_building(registry):
    from perceive.config import EncoderConfig
    from perceive.encoders import EncoderHub

    hub = EncoderHub(registry.encoder_specs(), {"sam_vit_b": EncoderConfig(name="sam_vit_b",
                                                                           options={"device": "quantum"})})
    with pytest.raises(ConfigError, match=r"encoders.sam_vit_b.options: 1 invalid option\(s\)\n  device: encoder "
                                          r"'sam_vit_b': 'quantum' is not a device"):
        hub.get("sam_vit_b")


# -- one options check, one message, wherever options come from ----------------------------------

def _counting_options():
    from pydantic import BaseModel, ConfigDict, model_validator

    calls = []

    class Opts(BaseModel):
        model_config = ConfigDict(extra="forbid")
        size: int = 1

        @model_validator(mode="before")
        @classmethod
        def _count(cls, data):
            calls.append(data)
            return data

    return Opts, calls


def test_options_are_validated_once(registry):
    from types import SimpleNamespace

    from perceive.actions import option_problems, validate_action_options
    from perceive.encoders import EncoderSpec, validate_encoder_options

    Opts, calls = _counting_options()
    assert validate_action_options(SimpleNamespace(name="x", Options=Opts), {"size": "2"}) == {"size": 2}
    assert len(calls) == 1
    spec = EncoderSpec(name="e", family="t", layout="tokens", feature_dim=None, build=lambda **k: None,
                       Options=Opts)
    assert validate_encoder_options(spec, {"size": "3"}) == {"size": 3}
    assert len(calls) == 2
    assert option_problems("action", "x", Opts, {"sise": 2}) == (
        None, [(("sise",), "action 'x': not an option; did you mean 'size'?")])
    assert option_problems("encoder", "e", None, {"any": 1}) == ({"any": 1}, [])  # no model: unchecked


def test_an_ill_typed_option_reads_the_same_from_every_source(tmp_path, registry):
    from perceive.actions import validate_action_options
    from perceive.config_check import check_config_file
    from perceive.graph import check

    same = "action 'zoom': Input should be a valid integer, unable to parse string as an integer (got 'huge')"
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "actions: {zoom: {options: {size: huge}}}\n"), registry)
    assert f"actions.zoom.options.size (line 1): {same}" in str(e.value)
    with pytest.raises(ConfigError) as e:
        validate_action_options(registry.action("zoom"), {"size": "huge"}, "LoopOptions.action_options")
    assert str(e.value).startswith(f"LoopOptions.action_options: 1 invalid option(s)\n  size: {same}")
    g = tmp_path / "g.yaml"
    g.write_text("name: g\nstart: ask\nnodes:\n  ask: {kind: generate, next: crop}\n"
                 "  crop: {kind: action, action: zoom, args: {box: [0, 0, 9, 9]}, options: {size: huge}, next: done}\n"
                 "  done: {kind: answer}\n")
    assert [i.message for i in check(g, registry)[1]] == [f"options.size: {same}"]
    model_dir(tmp_path)
    (tmp_path / "eval.json").write_text("[]")
    ev = tmp_path / "eval.yaml"
    ev.write_text("model: models/vpt\ndata: eval.json\nactions: {zoom: {options: {size: huge}}}\n")
    with pytest.raises(ConfigError) as e:
        check_config_file(ev, registry=registry)
    assert f"actions.zoom.options.size (line 3): {same}" in str(e.value)


def test_an_encoder_an_action_cannot_use_reads_the_same_in_a_config_and_a_graph(tmp_path, registry):
    from perceive.graph import check

    cfg = PerceiveConfig.model_validate({"actions": {"zoom": {"encoder": "dinov2_small"},
                                                     "dino": {"encoder": "sam_vit_l"}}})
    no_encoder = "action 'zoom' is a view action and uses no encoder: remove `encoder`"
    layout = "action 'dino' takes tokens features but encoder 'sam_vit_l' gives a map: use one of"
    errors = cfg.check_names(registry)
    assert errors[0] == f"actions.zoom.encoder: {no_encoder}"
    assert errors[1].startswith(f"actions.dino.encoder: {layout}")
    g = tmp_path / "g.yaml"
    # a forced re-encode opens the first assistant turn, so it comes before the generate node
    g.write_text("name: g\nstart: feat\nnodes:\n"
                 "  feat: {kind: action, action: dino, args: {}, encoder: sam_vit_l, next: ask}\n"
                 "  ask: {kind: generate, next: crop}\n"
                 "  crop: {kind: action, action: zoom, args: {box: [0, 0, 9, 9]}, encoder: dinov2_small, next: done}\n"
                 "  done: {kind: answer}\n")
    issues = check(g, registry)[1]
    assert [(i.code, i.node, i.line) for i in issues] == [("bad-encoder", "feat", 4), ("bad-encoder", "crop", 6)]
    assert issues[1].message == no_encoder and issues[0].message.startswith(layout)


def test_config_modules_stay_under_400_lines():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "perceive"
    modules = [*(root / "config").glob("*.py"), root / "cli" / "config_check.py"]
    assert len(modules) > 5
    for path in modules:
        assert len(path.read_text().splitlines()) <= 400, path


def test_eval_config_device_is_checked_when_loaded(tmp_path):
    from perceive.eval.runner import load_eval_config

    p = tmp_path / "eval.yaml"
    p.write_text("model: m\ndata: d.json\ndevice: cuda:1\n")
    assert load_eval_config(p).device == "cuda:1"
    p.write_text("model: m\ndata: d.json\ndevice: quantum\n")
    with pytest.raises(ConfigError) as e:
        load_eval_config(p)
    assert "device (line 3): 'quantum' is not a device: use auto, cpu, cuda" in str(e.value)
    with pytest.raises(ConfigError, match="'gpu' is not a device"):
        load_eval_config(tmp_path / "eval.yaml", device="gpu")  # --device is checked the same way


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1e12", "1.0e+12", "86401"])
def test_action_timeout_is_bounded(tmp_path, value):
    from perceive.eval.runner import load_eval_config

    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, f"runtime:\n  action_timeout_s: {value}\n"))
    assert "runtime.action_timeout_s (line 2): " in str(e.value)
    p = tmp_path / "eval.yaml"
    p.write_text(f"model: m\ndata: d.json\nruntime:\n  action_timeout_s: {value}\n")
    with pytest.raises(ConfigError) as e:
        load_eval_config(p)
    assert "runtime.action_timeout_s (line 4): " in str(e.value)


def test_action_timeout_up_to_a_day_is_fine(tmp_path):
    from perceive.eval.runner import load_eval_config

    assert load_config(write(tmp_path, "runtime: {action_timeout_s: 86400}\n")).runtime.action_timeout_s == 86400
    assert load_config(write(tmp_path, "runtime: {action_timeout_s: null}\n")).runtime.action_timeout_s is None
    p = tmp_path / "eval.yaml"
    p.write_text("model: m\ndata: d.json\nruntime: {action_timeout_s: 0.5}\n")
    assert load_eval_config(p).runtime.action_timeout_s == 0.5


# -- one run config: extends, --set, precedence ----------------------------------------------------

def test_extends_chains_merge_mappings_and_replace_everything_else(tmp_path):
    (tmp_path / "weights").mkdir()
    (tmp_path / "base.yaml").write_text(textwrap.dedent("""
        model: {path: models/vpt, base: qwen2_vl}
        encoders:
          - {name: dinov2_small, weights: weights/small}
        actions:
          zoom: {options: {size: 336}}
          region_select: {options: {margin: 0}}
        runtime: {max_hops: 2, max_new_tokens: 64}
        params: {max_hops: 3}
    """))
    (tmp_path / "mid.yaml").write_text("extends: base.yaml\nruntime: {max_hops: 5}\nactions: {zoom: {enabled: false}}\n"
                                       "encoders:\n  - {name: dinov2_base, weights: weights/base}\n")
    (tmp_path / "sub").mkdir()
    top = tmp_path / "sub" / "top.yaml"
    top.write_text("extends: ../mid.yaml\ndevice: cpu\nparams: {zoom_size: 2}\ngraph: my_graph.yaml\n")
    cfg = load_config(top)
    assert cfg.model.base == "qwen2_vl" and cfg.device == "cpu"
    assert cfg.model.path == tmp_path / "models/vpt"  # relative to base.yaml, the file that wrote it
    assert cfg.graph == str(tmp_path / "sub" / "my_graph.yaml")  # relative to top.yaml
    assert cfg.runtime.max_hops == 5 and cfg.runtime.max_new_tokens == 64  # mappings merge key by key
    assert cfg.actions["zoom"].enabled is False and cfg.actions["zoom"].options == {"size": 336}
    assert cfg.actions["region_select"].options == {"margin": 0}
    assert [(e.name, e.weights) for e in cfg.encoders] == [("dinov2_base", tmp_path / "weights/base")]  # replaced
    assert cfg.graph_params() == {"max_hops": 3, "zoom_size": 2}


def test_an_error_names_the_file_and_line_that_wrote_the_value(tmp_path):
    (tmp_path / "base.yaml").write_text("model: {path: m}\nruntime:\n  max_hops: -1\n")
    top = tmp_path / "top.yaml"
    top.write_text("extends: base.yaml\ndtype: float64\n")
    with pytest.raises(ConfigError) as e:
        load_config(top)
    msg = str(e.value)
    assert msg.startswith(f"{top}: 2 invalid field(s)")
    assert f"runtime.max_hops ({tmp_path / 'base.yaml'} line 3): Input should be greater than or equal to 0" in msg
    assert "dtype (line 2): Input should be" in msg
    (tmp_path / "base.yaml").write_text("actions: {zoom: {options: {size: huge}}}\n")
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path / "t2.yaml", "extends: base.yaml\n"))
    assert f"actions.zoom.options.size ({tmp_path / 'base.yaml'} line 1): action 'zoom'" in str(e.value)
    (tmp_path / "base.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match=f"{tmp_path / 'base.yaml'}:2:1: not valid YAML"):
        load_config(top)


def _write(path, text):
    path.write_text(text)
    return path


def test_extends_cycles_and_missing_bases_are_refused(tmp_path):
    a, b, c = (tmp_path / f"{n}.yaml" for n in "abc")
    a.write_text("extends: b.yaml\n")
    b.write_text("device: cpu\nextends: c.yaml\n")
    c.write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError) as e:
        load_config(a)
    assert f"{c}: extends (line 1): the chain of bases is a cycle: {a} -> {tmp_path / 'b.yaml'} -> " \
           f"{tmp_path / 'c.yaml'} -> {tmp_path / 'a.yaml'}" in str(e.value)
    a.write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(a)
    a.write_text("device: cpu\nextends: nowhere.yaml\n")
    with pytest.raises(ConfigError) as e:
        load_config(a)
    assert e.value.message == f"{a}: extends (line 2): {tmp_path / 'nowhere.yaml'} does not exist"
    a.write_text("extends: [b.yaml, c.yaml]\n")
    with pytest.raises(ConfigError, match=r"extends \(line 1\): give the path of one base config file"):
        load_config(a)
    b.write_text("- a list\n")
    a.write_text("extends: b.yaml\n")
    with pytest.raises(ConfigError, match=f"{b}: the top level is a list"):
        load_config(a)


def test_set_keys_are_config_paths_and_bare_unknown_keys_graph_params():
    from perceive.config_files import parse_sets

    fields = PerceiveConfig.model_fields
    sets = parse_sets(["runtime.max_hops=2", "device=cpu", "max_hops=3", "encoders.0.weights=w",
                       "actions.zoom.options={size: 336}", "params.x=[1, 2]", "action_timeout=null"], fields)
    assert [(s.path, s.value, s.origin) for s in sets] == [
        (("runtime", "max_hops"), 2, "--set runtime.max_hops"), (("device",), "cpu", "--set device"),
        (("params", "max_hops"), 3, "--set max_hops"), (("encoders", 0, "weights"), "w", "--set encoders.0.weights"),
        (("actions", "zoom", "options"), {"size": 336}, "--set actions.zoom.options"),
        (("params", "x"), [1, 2], "--set params.x"), (("params", "action_timeout"), None, "--set action_timeout")]
    assert parse_sets(["max_hops=3"])[0].path == ("max_hops",)  # no fields (train): always a config path
    for bad in ("runtime.max_hops", "=2", "runtime..max_hops=2"):
        with pytest.raises(ValueError, match="--set takes KEY=VALUE"):
            parse_sets([bad])
    with pytest.raises(ConfigError, match=r"--set device:1:\d+: not valid YAML"):
        parse_sets(["device=[cpu"])


def test_flag_over_set_over_file_over_base_over_default(tmp_path):
    from perceive.config_files import Override, parse_sets

    (tmp_path / "base.yaml").write_text("runtime: {max_hops: 1, max_new_tokens: 11, on_malformed: stop}\n")
    top = _write(tmp_path / "run.yaml", "extends: base.yaml\nruntime: {max_hops: 2, max_new_tokens: 22}\n")
    sets = parse_sets(["runtime.max_hops=3", "runtime.max_new_tokens=33"])
    flags = [Override(("runtime", "max_hops"), 4, "--max-hops")]
    cfg = load_config(top, overrides=[*sets, *flags])
    rt = cfg.runtime
    assert (rt.max_hops, rt.max_new_tokens, rt.on_malformed, rt.action_timeout_s) == (4, 33, "stop", 120.0)
    assert options_from_config(cfg).max_hops == 4 and cfg.graph_params() == {"max_hops": 4}
    with pytest.raises(ConfigError) as e:
        load_config(top, overrides=parse_sets(["runtime.max_new_tokens=0"]))
    assert "runtime.max_new_tokens (--set runtime.max_new_tokens): Input should be greater than or equal to 1" in (
        str(e.value))
    with pytest.raises(ConfigError) as e:
        load_config(top, overrides=parse_sets(["runtime.max_hops.deep=1"]))
    assert str(e.value).startswith("--set runtime.max_hops.deep: runtime.max_hops is 2 (line 2), not a mapping")
    with pytest.raises(ConfigError, match="--set encoders.0.weights: encoders has no item 0"):
        load_config(top, overrides=parse_sets(["encoders.0.weights=w"]))
    # a path from the command line stays relative to the working folder; one from a file, to its folder
    cfg = load_config(top, overrides=parse_sets(["model.path=rel/model", "encoders=[{name: dinov2_small, "
                                                                         "weights: w}]"]))
    assert cfg.model.path == Path("rel/model") and cfg.encoders[0].weights == Path("w")
    cfg = load_config(None, overrides=parse_sets(["model=m"]))  # no file at all, and the model shorthand
    assert cfg.model.path == Path("m") and cfg.source == "the command line"


def test_train_config_extends_and_set(tmp_path):
    from perceive.config_files import parse_sets
    from perceive.train.config import load_train_config

    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "base.yaml").write_text(
        "model: {tiny: {hidden: 32}}\ndata: {train: data/train.json, max_eval_samples: 8}\noptim: {lr: 1e-3}\n")
    top = _write(tmp_path / "stage.yaml", "extends: recipes/base.yaml\ndata: {eval: e.json}\noutput: runs/x\n")
    cfg = load_train_config(top, overrides=parse_sets(["optim.steps=7", "data.max_eval_samples=4"]))
    assert cfg.data.train == tmp_path / "recipes" / "data" / "train.json"  # relative to the base that wrote it
    assert cfg.data.eval == tmp_path / "e.json" and cfg.output == tmp_path / "runs/x"
    assert (cfg.optim.lr, cfg.optim.steps, cfg.data.max_eval_samples, cfg.model.tiny.hidden) == (1e-3, 7, 4, 32)
    with pytest.raises(ConfigError) as e:
        load_train_config(top, overrides=parse_sets(["optim.lr=fast"]))
    assert "optim.lr (--set optim.lr): Input should be a valid number" in str(e.value)


def test_an_eval_config_is_a_run_config_plus_data(tmp_path):
    from perceive.eval.runner import EvalConfig, load_eval_config

    assert set(PerceiveConfig.model_fields) < set(EvalConfig.model_fields)
    run = _write(tmp_path / "run.yaml", "model: {path: m, base: qwen2_vl}\nruntime: {max_new_tokens: 16}\n"
                                        "actions: {region_select: {options: {margin: 0}}}\n")
    ev = _write(tmp_path / "ev.yaml", "extends: run.yaml\nmodel: runs/m2\ndata: d.json\nbatch_size: 4\n")
    cfg = load_eval_config(ev)
    assert cfg.model.path == tmp_path / "runs/m2" and cfg.model.base == "qwen2_vl"  # shorthand merges as a mapping
    assert cfg.data == tmp_path / "d.json" and cfg.runtime.max_new_tokens == 16
    assert options_from_config(cfg).action_options == {"region_select": {"margin": 0}}
    cfg = load_eval_config([run, _write(tmp_path / "only.yaml", "data: d.json\n")])  # --config RUN + CONFIG
    assert cfg.model.path == tmp_path / "m" and cfg.data == tmp_path / "d.json"
    with pytest.raises(ConfigError, match="model.path is not set"):
        load_eval_config(tmp_path / "only.yaml")


def tiny_dino_model(tmp_path):
    from perceive.model import save_model
    from perceive.testing.tiny import tiny_vpt_model

    return save_model(tiny_vpt_model(branches=("dino",)), tmp_path / "dino-model")


def test_an_encoder_swap_is_one_line_and_refused_when_its_width_does_not_fit(tmp_path, registry):
    from perceive import EncoderSpec, hookimpl
    from perceive.config_check import check_config_file
    from perceive.model import load_model
    from perceive.plugins import load_registry

    built = []

    class ThirdParty:  # an encoder of the dino branch's width (32), from another plugin
        @hookimpl
        def perceive_register_encoders(self):
            def build(weights, options, model):
                from perceive_dino.encoder import build_tiny

                built.append(weights)
                return build_tiny()
            return [EncoderSpec(name="my_dino32", family="dinov2", layout="tokens", feature_dim=32, build=build)]

    reg = load_registry([("third", ThirdParty())])
    path = tiny_dino_model(tmp_path)
    (tmp_path / "w32").mkdir()
    run = _write(tmp_path / "run.yaml", f"model: {path}\nencoders: [{{name: my_dino32, weights: w32}}]\n"
                                        "actions:\n  dino: {encoder: my_dino32}\n")
    cfg = load_config(run, reg)
    model = load_model(path)
    loop = PerceptionLoop.from_config(cfg, registry=reg, model=model)
    assert loop.options.action_options["dino"]["encoder"] == "my_dino32"
    loop.hub.get("my_dino32")
    assert built == [tmp_path / "w32"]  # the config's local weights reach the swapped encoder
    assert check_config_file(run, registry=reg)[2] == []
    run.write_text(f"model: {path}\nactions:\n  dino: {{encoder: dinov2_small}}\n")  # 384 wide, not 32
    want = ("actions.dino.encoder (line 3): 'dinov2_small' gives 384-wide features but the model's dino projector "
            "takes 32: use an encoder with 32-wide output, e.g. 'dinov2_small'")
    with pytest.raises(ConfigError) as e:
        PerceptionLoop.from_config(load_config(run, reg), registry=reg, model=model)
    assert str(e.value).startswith(f"{run}: 1 problem(s)\n  {want}")
    assert check_config_file(run, registry=reg)[2] == [want]


def test_the_reference_example_is_a_valid_run_config(tmp_path, registry):
    """docs/reference/config.md's full example loads (its base, and the names, against the installed plugins)."""
    import re

    doc = (Path(__file__).resolve().parents[1] / "docs" / "reference" / "config.md").read_text()
    example = re.search(r"```yaml\n(extends: base\.yaml.*?)```", doc, re.S).group(1)
    (tmp_path / "base.yaml").write_text("device: cpu\n")
    cfg = load_config(_write(tmp_path / "run.yaml", example), registry)
    assert cfg.graph == "free_choice" and cfg.graph_params() == {"max_hops": 2} and cfg.device == "auto"
    assert cfg.check_names(registry) == []
    assert options_from_config(cfg).action_options["dino"] == {"encoder": "dinov2_large"}
