"""Discovery through entry points, the environment switches and load-time validation."""

import json
import os
import subprocess
import sys

import pytest

from perceive.errors import UnknownActionError
from perceive.plugins import load_registry
from tests.conftest import make_dist
from tests.plugins import broken, good

REFERENCE = {"region_select", "zoom", "dino", "sam", "native"}


def test_reference_plugins_load_through_entry_points(registry):
    assert REFERENCE <= set(registry.actions)
    for name in REFERENCE:
        r = registry.actions[name]
        assert r.dist == "perceive" and r.version and r.plugin == name
    assert {"dinov2_small", "dinov2_base", "dinov2_large", "dinov2_giant", "sam_vit_b", "sam_vit_l",
            "sam_vit_h", "native"} <= set(registry.encoders)
    assert not registry.broken, [p.errors for p in registry.broken]


def test_disable_autoload(monkeypatch):
    monkeypatch.setenv("PERCEIVE_DISABLE_PLUGIN_AUTOLOAD", "1")
    reg = load_registry([("good", good)])
    assert set(reg.actions) == {"left_half"}


def test_load_only_named_plugins(monkeypatch):
    monkeypatch.setenv("PERCEIVE_PLUGINS", "zoom, region_select,nonesuch")
    reg = load_registry()
    assert set(reg.actions) == {"zoom", "region_select"}
    assert any("nonesuch" in p for p in reg.problems)


def test_load_only_by_distribution_name(monkeypatch):
    monkeypatch.setenv("PERCEIVE_PLUGINS", "perceive")
    assert REFERENCE <= set(load_registry().actions)


def test_unknown_action_suggests_close_names(registry):
    with pytest.raises(UnknownActionError, match="did you mean 'region_select'"):
        registry.action("region_selec")


def test_good_plugin_object(registry):
    info = registry.register(good, "good")
    assert info.ok and info.actions == ["left_half"] and info.encoders == ["ones"]


@pytest.mark.parametrize(
    ("plugin", "message"),
    [
        (broken.DuplicateName(), "duplicate action name 'region_select': already provided by plugin 'region_select'"),
        (broken.StartClash(), "start token <|region_token_start|> which action 'region_select' already owns"),
        (broken.NotPydanticArgs(), "Args must be a pydantic BaseModel subclass"),
        (broken.NoRun(), "run(call, context) is not implemented"),
        (broken.NotAnAction(), "is not a perceive.Action instance"),
        (broken.NotAList(), "must return a list"),
        (broken.RegisterRaises(), "raised RuntimeError: boom while registering"),
        (broken.UnknownHook(), "unknown hook 'perceive_register_action'; did you mean 'perceive_register_actions'"),
        (broken.WrongHookArgs(), "banana"),
        (broken.BadEncoder(), "encoder name 'Bad Name'"),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, str) else "",
)
def test_broken_plugin_is_reported_and_isolated(registry, plugin, message):
    before = dict(registry.actions)
    info = registry.register(plugin, "bad")
    assert not info.ok
    assert any(message in e for e in info.errors), info.errors
    assert registry.actions == before  # contributed nothing
    assert "bad" not in [registry.pm.get_name(p) for p in registry.pm.get_plugins()]  # hooks gone
    assert registry.register(good, "good").ok  # and the next plugin still loads


def test_broken_plugin_hooks_never_run(registry):
    registry.register(broken.WrongHookArgs(), "bad")
    impls = registry.pm.hook.perceive_before_action.get_hookimpls()
    assert all(i.plugin_name != "bad" for i in impls)


def test_plugin_that_fails_to_import(fake_site):
    make_dist(fake_site, "perceive-crashy", {"crashy_mod": "raise ImportError('needs libfoo')\n"},
              {"crashy": "crashy_mod"})
    reg = load_registry()
    info = reg.plugins["crashy"]
    assert info.dist == "perceive-crashy" and info.version == "0.3"
    assert "failed to import 'crashy_mod': ImportError: needs libfoo" in info.errors[0]
    assert REFERENCE <= set(reg.actions)  # the others still load


def test_third_party_plugin_through_entry_points(fake_site):
    make_dist(fake_site, "perceive-good", {"good_mod": "from tests.plugins.good import *\n"},
              {"goodplug": "good_mod"})
    reg = load_registry()
    r = reg.actions["left_half"]
    assert (r.plugin, r.dist, r.version) == ("goodplug", "perceive-good", "0.3")


def run_cli(*args, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "perceive", *args], capture_output=True, text=True, env=env,
                          timeout=120)


@pytest.mark.slow
def test_cli_lists_every_good_plugin_beside_a_broken_one(fake_site):
    make_dist(fake_site, "perceive-crashy", {"crashy_mod": "raise ImportError('needs libfoo')\n"},
              {"crashy": "crashy_mod"})
    env = {"PYTHONPATH": os.pathsep.join([str(fake_site), os.environ.get("PYTHONPATH", "")])}
    out = run_cli("plugins", "list", "--json", env_extra=env)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert REFERENCE <= {a["name"] for a in data["actions"]}
    crashy = next(p for p in data["plugins"] if p["name"] == "crashy")
    assert not crashy["ok"] and "needs libfoo" in crashy["errors"][0]
    human = run_cli("plugins", "list", env_extra=env)
    assert human.returncode == 0 and "broken plugin 'crashy'" in human.stdout and "needs libfoo" in human.stdout


@pytest.mark.slow
def test_cli_list_json_shows_tokens():
    data = json.loads(run_cli("plugins", "list", "--json").stdout)
    acts = {a["name"]: a for a in data["actions"]}
    assert acts["region_select"]["start"] == "<|region_token_start|>"
    assert acts["region_select"]["end"] == "<|region_token_end|>"
    assert "<|x_0|>" in acts["region_select"]["inner"] and "<|y_7|>" in acts["region_select"]["inner"]
    assert acts["dino"]["start"] == "<|detection_action_start|>" and acts["dino"]["inner"] == ["<|detection_action|>"]
    assert acts["sam"]["start"] == "<|seg_action_start|>" and "sam_vit_l" in acts["sam"]["encoders"]
    assert acts["native"]["end"] == "<|clip_action_end|>" and acts["native"]["encoders"] == ["native"]
    assert acts["zoom"]["observation"] == "view" and acts["dino"]["observation"] == "features"


def test_strict_mode_raises_naming_plugin_and_distribution(fake_site, monkeypatch):
    from perceive.errors import PluginValidationError

    make_dist(fake_site, "perceive-crashy", {"crashy_mod": "raise ImportError('needs libfoo')\n"},
              {"crashy": "crashy_mod"})
    monkeypatch.setenv("PERCEIVE_STRICT_PLUGINS", "1")
    with pytest.raises(PluginValidationError) as e:
        load_registry()
    assert "plugin 'crashy' (distribution perceive-crashy)" in str(e.value) and "needs libfoo" in str(e.value)
