"""The layering contracts (``[tool.importlinter]`` in pyproject.toml) hold, and they are not
vacuous: each catches an import that breaks it.

``lint-imports`` checks four contracts: perceive's layers (docs/explanation/architecture.md),
perceive never imports a plugin, nothing but perceive.testing imports perceive.testing, and the
plugins use perceive's public API only. ``make lint`` runs it too.
"""

import os
import pkgutil
import shutil
import subprocess
from pathlib import Path

import perceive
from tests.conftest import ROOT, VENV_BIN

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

LINT_IMPORTS = VENV_BIN / "lint-imports"

#: The modules of perceive a plugin may import: what ``perceive/__init__.py`` exports comes from
#: these, and the plugin guide and hooks reference document them.
PUBLIC_FOR_PLUGINS = {"actions", "branches", "conformance", "dispatch", "encoders", "errors", "geometry", "hookspecs",
                      "observations", "plugins", "protocol", "protocols", "reencode", "regions", "vocabulary"}


def lint_imports(cwd: Path, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)


def contracts() -> dict[str, dict]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["id"]: c for c in cfg["contracts"]}


def test_the_import_contracts_hold():
    out = lint_imports(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4 kept, 0 broken" in out.stdout, out.stdout


def test_every_module_is_public_or_internal_for_plugins():
    modules = {m.name for m in pkgutil.iter_modules(perceive.__path__)} - {"__main__"}
    internal = {m.removeprefix("perceive.") for m in contracts()["plugins-public-api"]["forbidden_modules"]}
    assert not PUBLIC_FOR_PLUGINS & internal
    listed = PUBLIC_FOR_PLUGINS | internal
    assert modules == listed, (f"new: {sorted(modules - listed)}; gone: {sorted(listed - modules)}: list each module "
                               "of perceive as public for plugins (here) or internal (pyproject.toml)")


def test_the_contracts_catch_violations(tmp_path):
    """A copy of the tree with one import that breaks each contract: all four are broken."""
    for d in ("perceive", "plugins"):
        shutil.copytree(ROOT / d, tmp_path / d, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    inject = {
        "perceive/control.py": "import perceive.loop",                       # a layer imports upwards
        "perceive/errors.py": "import perceive_zoom",                        # core imports a plugin
        "perceive/eval/metrics.py": "import perceive.testing",               # production imports testing
        "plugins/perceive_tiles/__init__.py": "import perceive.graph.spec",  # a plugin imports internals
    }
    for path, line in inject.items():
        with open(tmp_path / path, "a") as f:
            f.write(f"\n{line}  # injected\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(tmp_path / "plugins")])}
    out = lint_imports(tmp_path, env)
    assert out.returncode == 1 and "0 kept, 4 broken" in out.stdout, out.stdout + out.stderr
    for path in inject:
        module = path.removesuffix(".py").removesuffix("/__init__").replace("/", ".").removeprefix("plugins.")
        assert module in out.stdout, (module, out.stdout)
