"""The import contracts (``[tool.importlinter]`` in pyproject.toml) hold, and they are not
vacuous: each catches an import that breaks it.

``lint-imports`` checks six contracts, imports under ``TYPE_CHECKING`` and inside functions
included: perceive's layers (docs/explanation/architecture.md), no import cycle in any package of
perceive, the plugin API depends on nothing internal, perceive never imports a plugin, nothing but
perceive.testing imports perceive.testing, and the plugins use perceive's public API only.
``make lint`` runs it too.
"""

import os
import pkgutil
import re
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

#: The modules of perceive a plugin may import, the plugin API: what ``perceive/__init__.py``
#: exports comes from these, and the plugin guide and hooks reference document them.
PUBLIC_FOR_PLUGINS = {"actions", "branches", "conformance", "dispatch", "encoders", "errors", "geometry", "hookspecs",
                      "observations", "plugins", "protocol", "protocols", "reencode", "regions", "rewards",
                      "vocabulary"}
#: Internal modules the plugin API stands on (a plugin does not import them itself): RGB images,
#: the strict pydantic base, and the deprecated aliases' helper.
UNDER_THE_PLUGIN_API = {"images", "strict", "deprecation"}

#: One import that breaks each contract and no other: contract id -> (the file it is appended to,
#: the lines, what the contract's report names).
INJECTED = {
    # a type-only import up the layers (perceive.eval is far above perceive.defaults)
    "layers": ("perceive/defaults.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import perceive.eval",
               "perceive.defaults"),
    # a lazy import that closes a cycle (perceive.graph.executor imports compiled)
    "no-cycles": ("perceive/graph/compiled.py", "def _injected():\n    import perceive.graph.executor",
                  "No cycles are allowed in perceive.graph."),
    # a type-only import of an internal module into the plugin API (one below it in the layers)
    "plugin-api": ("perceive/observations.py",
                   "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from perceive.trace import Trace",
                   "perceive.observations is not allowed to import perceive.trace"),
    # core imports a plugin; production imports testing; a plugin imports internals
    "core-without-plugins": ("perceive/__main__.py", "import perceive_zoom", "perceive.__main__"),
    "testing-is-for-tests": ("perceive/cli/__init__.py", "import perceive.testing", "perceive.cli"),
    "plugins-public-api": ("plugins/perceive_tiles/__init__.py", "import perceive.graph.spec", "perceive_tiles"),
}


def lint_imports(cwd: Path, env=None) -> subprocess.CompletedProcess:
    # wide enough that no contract's name wraps in the report
    env = {**(env or os.environ), "COLUMNS": "1000"}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)


def contracts() -> dict[str, dict]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["id"]: c for c in cfg["contracts"]}


def broken_sections(stdout: str) -> dict[str, str]:
    """Contract id -> its section of the report's "Broken contracts" (only the broken ones)."""
    report = stdout.partition("Broken contracts")[2]
    starts = sorted((report.find(f"{c['name']}\n-"), cid) for cid, c in contracts().items())
    starts = [(at, cid) for at, cid in starts if at >= 0]
    ends = [at for at, _ in starts[1:]] + [len(report)]
    return {cid: report[at:end] for (at, cid), end in zip(starts, ends, strict=True)}


def test_the_import_contracts_hold():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert cfg["exclude_type_checking_imports"] is False  # a type a module names is a dependency too
    out = lint_imports(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(contracts())} kept, 0 broken" in out.stdout, out.stdout


def test_every_contract_is_shown_to_catch_a_violation():
    assert set(INJECTED) == set(contracts())


def test_the_layers_state_the_real_structure():
    """Siblings in a tier are independent (``|``), never ``:`` (may import each other): where one
    module imports another, they are in different tiers."""
    layers = contracts()["layers"]["layers"]
    assert not [tier for tier in layers if ":" in tier], layers


def test_the_architecture_picture_draws_the_layers():
    """docs/explanation/architecture.md's layer picture has each tier on a line of its own, top
    to bottom as the contract lists them, with every module of it."""
    doc = (ROOT / "docs/explanation/architecture.md").read_text()
    picture = doc.partition("## Layers")[2].split("```")[1].splitlines()
    names = [set(re.findall(r"(?:perceive)?\.(\w+)", line.split("  ")[0])) for line in picture]
    rows = []
    for tier in contracts()["layers"]["layers"]:
        modules = {m.strip() for m in tier.split("|")}
        drawn = [i for i, line in enumerate(names) if line == modules]
        assert drawn, f"draw the tier {tier!r} on a line of the picture"
        rows.append(drawn[0])
    assert rows == sorted(rows), "draw the tiers top to bottom in the contract's order"


def test_every_package_of_perceive_is_acyclic():
    cycles = contracts()["no-cycles"]
    assert cycles["type"] == "acyclic_siblings" and cycles["ancestors"] == ["perceive"]
    assert not cycles.get("skip_descendants") and not cycles.get("ignore_imports")
    deepest = max(len(p.relative_to(ROOT / "perceive").parts) for p in (ROOT / "perceive").rglob("*.py"))
    assert cycles["depth"] >= deepest, "raise the contract's depth to reach every package"


def test_every_module_is_public_or_internal_for_plugins():
    modules = {m.name for m in pkgutil.iter_modules(perceive.__path__)} - {"__main__"}
    internal = {m.removeprefix("perceive.") for m in contracts()["plugins-public-api"]["forbidden_modules"]}
    assert not PUBLIC_FOR_PLUGINS & internal
    listed = PUBLIC_FOR_PLUGINS | internal
    assert modules == listed, (f"new: {sorted(modules - listed)}; gone: {sorted(listed - modules)}: list each module "
                               "of perceive as public for plugins (here) or internal (pyproject.toml)")


def test_the_plugin_api_contract_covers_the_public_modules_and_forbids_the_rest():
    api = contracts()["plugin-api"]
    sources = {m.removeprefix("perceive.") for m in api["source_modules"]}
    forbidden = {m.removeprefix("perceive.") for m in api["forbidden_modules"]}
    assert sources == PUBLIC_FOR_PLUGINS
    assert not api.get("allow_indirect_imports", False)  # not through a module in between either
    internal = {m.removeprefix("perceive.") for m in contracts()["plugins-public-api"]["forbidden_modules"]}
    assert forbidden == internal - UNDER_THE_PLUGIN_API, (
        "every module internal for plugins is forbidden to the plugin API, but for what it stands on "
        f"({sorted(UNDER_THE_PLUGIN_API)}): {sorted(forbidden ^ (internal - UNDER_THE_PLUGIN_API))}")


def test_the_contracts_catch_violations(tmp_path):
    """A copy of the tree with one import that breaks each contract: all are broken, and each
    contract's report names the import meant for it."""
    for d in ("perceive", "plugins"):
        shutil.copytree(ROOT / d, tmp_path / d, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    for path, lines, _ in INJECTED.values():
        with open(tmp_path / path, "a") as f:
            f.write(f"\n\n{lines}  # injected\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(tmp_path / "plugins")])}
    out = lint_imports(tmp_path, env)
    assert out.returncode == 1 and f"0 kept, {len(INJECTED)} broken" in out.stdout, out.stdout + out.stderr
    sections = broken_sections(out.stdout)
    assert set(sections) == set(INJECTED), out.stdout
    for cid, (_, _, named) in INJECTED.items():
        assert named in sections[cid], (cid, sections[cid])
