import textwrap

import pytest

from perceive.config import PerceiveConfig, load_config
from perceive.errors import ConfigError


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
    p.write_text("model: models/vpt\ndata: eval.json\ngraph: free_choice\nmax_new_tokens: 16\n")
    code, out = check_cli(p)
    assert code == 0, out
    assert "ok, checked as an eval config" in out
    p.write_text("model: models/vpt\ndata: eval.json\ngraph: region_then_answr\nmax_new_tokens: 16\n"
                 "action_options: {zoom: {size: -1}}\n")
    code, out = check_cli(p)
    assert code == 1
    assert "graph (line 3): no graph file region_then_answr" in out
    assert "action_options.zoom.size (line 5): action 'zoom': Input should be greater than or equal to 1" in out
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
    ev.write_text("model: models/vpt\ndata: eval.json\naction_options: {zoom: {size: huge}}\n")
    assert check_config_file(ev, registry=registry)[2] == [f"action_options.zoom.size (line 3): {same}"]


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
    g.write_text("name: g\nstart: ask\nnodes:\n  ask: {kind: generate, next: crop}\n"
                 "  crop: {kind: action, action: zoom, args: {box: [0, 0, 9, 9]}, encoder: dinov2_small, next: feat}\n"
                 "  feat: {kind: action, action: dino, args: {}, encoder: sam_vit_l, next: done}\n"
                 "  done: {kind: answer}\n")
    issues = check(g, registry)[1]
    assert [(i.code, i.node, i.line) for i in issues] == [("bad-encoder", "crop", 5), ("bad-encoder", "feat", 6)]
    assert issues[0].message == no_encoder and issues[1].message.startswith(layout)


def test_config_modules_stay_under_400_lines():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "perceive"
    for name in ("config.py", "config_check.py"):
        assert len((root / name).read_text().splitlines()) <= 400, name


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
    p.write_text(f"model: m\ndata: d.json\naction_timeout_s: {value}\n")
    with pytest.raises(ConfigError) as e:
        load_eval_config(p)
    assert "action_timeout_s (line 3): " in str(e.value)


def test_action_timeout_up_to_a_day_is_fine(tmp_path):
    from perceive.eval.runner import load_eval_config

    assert load_config(write(tmp_path, "runtime: {action_timeout_s: 86400}\n")).runtime.action_timeout_s == 86400
    assert load_config(write(tmp_path, "runtime: {action_timeout_s: null}\n")).runtime.action_timeout_s is None
    p = tmp_path / "eval.yaml"
    p.write_text("model: m\ndata: d.json\naction_timeout_s: 0.5\n")
    assert load_eval_config(p).action_timeout_s == 0.5
