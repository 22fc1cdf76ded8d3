"""The suite is hermetic: it loads only the plugins this repository ships, so a stray or broken
plugin installed in the venv cannot fail a test (tests/conftest.py: ``_hermetic_plugins``)."""

import importlib
import json
import os
import subprocess
import sys

import pytest

from perceive.plugins import Registry, get_registry, load_registry
from tests.conftest import ROOT, make_dist

REFERENCE = {"region_select", "zoom", "tiles", "dino", "sam", "native", "ocr"}
STRAY = {"stray_mod": "raise ImportError('a stray plugin left in the venv')\n"}


def install_stray(site):
    make_dist(site, "perceive-stray", STRAY, {"stray": "stray_mod"}, enable=False)
    importlib.invalidate_caches()


def test_a_stray_broken_plugin_does_not_reach_the_default_registries(fake_site, monkeypatch):
    install_stray(fake_site)
    everything = Registry()
    everything.load_entry_points()
    assert not everything.plugins["stray"].ok  # it is installed, and broken

    monkeypatch.setenv("PERCEIVE_STRICT_PLUGINS", "1")  # a broken plugin would raise
    for reg in (get_registry(), load_registry()):
        assert "stray" not in reg.plugins and not reg.broken and not reg.problems
        assert set(reg.actions) == REFERENCE
        assert {p.dist for p in reg.plugins.values()} == {"perceive"}


@pytest.mark.slow
def test_a_stray_broken_plugin_does_not_reach_the_processes_a_test_starts(fake_site):
    install_stray(fake_site)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake_site), os.environ.get("PYTHONPATH", "")]),
           "PERCEIVE_STRICT_PLUGINS": "1"}
    out = subprocess.run([sys.executable, "-m", "perceive", "plugins", "list", "--json"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    data = json.loads(out.stdout)
    assert {p["name"] for p in data["plugins"]} == REFERENCE and not data["problems"]


@pytest.mark.slow
def test_the_suites_registry_tests_pass_beside_a_stray_broken_plugin(fake_site):
    """Tests that assert no plugin is broken, run by pytest with the stray on its path."""
    install_stray(fake_site)
    env = {k: v for k, v in os.environ.items() if k != "PERCEIVE_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join([str(fake_site), os.environ.get("PYTHONPATH", "")])
    tests = ["tests/test_registry.py::test_reference_plugins_load_through_entry_points",
             "tests/test_registry.py::test_cli_list_json_shows_tokens"]
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=ROOT,
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and "2 passed" in out.stdout, out.stdout + out.stderr


def test_a_fake_distribution_a_test_installs_is_loaded(fake_site, registry):
    make_dist(fake_site, "perceive-good", {"good_mod": "from tests.plugins.good import *\n"},
              {"goodplug": "good_mod"})
    importlib.invalidate_caches()
    reg = load_registry()
    assert reg.actions["left_half"].dist == "perceive-good" and REFERENCE <= set(reg.actions)
    assert "left_half" not in registry.actions  # loaded before it was installed


@pytest.mark.all_plugins
def test_all_plugins_marker_loads_every_installed_plugin(fake_site):
    install_stray(fake_site)
    assert "PERCEIVE_PLUGINS" not in os.environ
    reg = load_registry()
    assert not reg.plugins["stray"].ok and REFERENCE <= set(reg.actions)
