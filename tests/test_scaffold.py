"""End to end: scaffold a plugin, pip-install it, see it listed and checked."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from perceive.errors import PerceiveError
from perceive.scaffold import new_plugin


def sh(*args, env=None, timeout=300):
    return subprocess.run(list(args), capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.slow
@pytest.mark.all_plugins  # pip-installs the scaffolded plugin: its processes must discover it
def test_scaffold_install_list_check(tmp_path):
    out = sh(sys.executable, "-m", "perceive", "plugins", "new", "quadrant", "--dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    pkg = tmp_path / "perceive-quadrant"
    assert (pkg / "pyproject.toml").exists() and (pkg / "src/perceive_quadrant/__init__.py").exists()
    assert (pkg / "tests/test_quadrant.py").exists()

    # pip-install into a folder that the child processes see as site-packages
    site = tmp_path / "site"
    inst = sh(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
              "--no-index", "--target", str(site), str(pkg))
    assert inst.returncode == 0, inst.stderr
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}

    listed = sh(sys.executable, "-m", "perceive", "plugins", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    q = next(a for a in data["actions"] if a["name"] == "quadrant")
    assert q["distribution"] == "perceive-quadrant" and q["start"] == "<|quadrant_start|>"
    assert q["inner"] == [f"<|quadrant_q{k}|>" for k in range(4)]

    check = sh(sys.executable, "-m", "perceive", "plugins", "check", "quadrant", env=env)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "0 failed" in check.stdout

    # the scaffold's own test passes too (it runs the same kit through pytest)
    own = sh(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(pkg / "tests"), env=env)
    assert own.returncode == 0, own.stdout + own.stderr


@pytest.mark.slow
def test_check_exits_nonzero_with_a_report(fake_site):
    """`perceive plugins check` on a failing action: exit 1 and a readable report."""
    from tests.conftest import make_dist

    code = '''
from perceive import Action, TriggerGrammar, hookimpl

class Lossy(Action):
    name = "lossy"
    grammar = TriggerGrammar(start="<|l_start|>", end="<|l_end|>")
    def run(self, call, context):
        context.root.putpixel((0, 0), 0 if context.root.mode != "RGB" else (0, 0, 0))
        return context.crop_root(context.frame.box())

@hookimpl
def perceive_register_actions():
    return [Lossy()]
'''
    make_dist(fake_site, "perceive-lossy", {"lossy_mod": code}, {"lossy": "lossy_mod"})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake_site), os.environ.get("PYTHONPATH", "")])}
    out = sh(sys.executable, "-m", "perceive", "plugins", "check", "lossy", "--quick", env=env)
    assert out.returncode == 1
    assert "[FAIL] run[astronaut]: the action mutated its input image" in out.stdout
    missing = sh(sys.executable, "-m", "perceive", "plugins", "check", "nosuch", env=env)
    assert missing.returncode == 2 and "no perception action named 'nosuch'" in missing.stdout
    assert missing.stdout.startswith("error: ") and "[red]" not in missing.stdout  # markup rendered, not printed


def test_scaffold_rejects_bad_names_and_existing_dirs(tmp_path):
    with pytest.raises(PerceiveError, match="not valid"):
        new_plugin("Bad-Name", tmp_path)
    new_plugin("ok", tmp_path)
    with pytest.raises(PerceiveError, match="already exists"):
        new_plugin("ok", tmp_path)


def test_scaffolded_readme_has_no_empty_or_placeholder_links(tmp_path):
    import re

    root = new_plugin("quadrant", tmp_path)
    readme = (root / "README.md").read_text()
    assert "]()" not in readme and "${" not in readme
    for target in re.findall(r"\]\(([^)]*)\)", readme):  # any link left must go somewhere real
        assert target.strip() and not re.fullmatch(r"https?://[^/]+/?", target.strip()), target
    assert "`quadrant` perception" in readme and "docs/how-to/write-a-plugin.md" in readme
    assert (Path(__file__).resolve().parents[1] / "docs/how-to/write-a-plugin.md").exists()


@pytest.mark.slow
@pytest.mark.all_plugins  # pip-installs the scaffolded plugin: its processes must discover it
def test_scaffold_a_features_plugin_install_check(tmp_path):
    """`--kind features`: an action, its encoder and its model branch; installed, all three are
    registered, the action's kit passes, and the package's own tests (both kits) pass."""
    out = sh(sys.executable, "-m", "perceive", "plugins", "new", "edge_map", "--dir", str(tmp_path), "--kind",
             "features")
    assert out.returncode == 0, out.stderr
    pkg = tmp_path / "perceive-edge-map"
    code = (pkg / "src/perceive_edge_map/__init__.py").read_text()
    assert "${" not in code and "perceive_register_branches" in code and "class EdgeMapBranch(BranchSpec)" in code
    assert "perceive.model" not in code and "perceive.testing" not in code  # the public API only
    site = tmp_path / "site"
    inst = sh(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
              "--no-index", "--target", str(site), str(pkg))
    assert inst.returncode == 0, inst.stderr
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}

    listed = sh(sys.executable, "-m", "perceive", "plugins", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    branch = next(b for b in data["branches"] if b["name"] == "edge_map")
    assert branch["distribution"] == "perceive-edge-map" and branch["placeholder"] == "<edge_map_image>"
    assert branch["tokens"] == ["<|edge_map_action_start|>", "<|edge_map_action|>", "<|edge_map_action_end|>",
                                "<|edge_map_image_pad|>"]
    assert any(e["name"] == "edge_map_patches" for e in data["encoders"])
    assert not data["problems"] and all(p["ok"] for p in data["plugins"])

    check = sh(sys.executable, "-m", "perceive", "plugins", "check", "edge_map", env=env)
    assert check.returncode == 0 and "0 failed" in check.stdout, check.stdout + check.stderr
    own = sh(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(pkg / "tests"), env=env)
    assert own.returncode == 0 and "3 passed" in own.stdout, own.stdout + own.stderr


def test_scaffold_rejects_an_unknown_kind(tmp_path):
    with pytest.raises(PerceiveError, match="unknown plugin kind 'lens'"):
        new_plugin("ok", tmp_path, kind="lens")
