"""``perceive plugins new``: a pip-installable plugin package with one working action.

Two kinds: ``view`` (an action that shows a crop as a new view) and ``features`` (a re-encode
action with its encoder and its model branch: tokens, a small encoder module, a projector, the
dataset placeholder, and a test that runs the action's and the branch's conformance kits).
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from string import Template

from perceive.errors import PerceiveError

# template file -> path in the new package, per kind
FILES = {
    "pyproject.toml": "pyproject.toml",
    "README.md": "README.md",
    "package__init__.py": "src/${package}/__init__.py",
    "test_plugin.py": "tests/test_${name}.py",
}
KINDS = {
    "view": {src: (src, dest) for src, dest in FILES.items()},
    "features": {"pyproject.toml": ("pyproject.toml", "pyproject.toml"),
                 **{src: (f"features/{src}", dest) for src, dest in FILES.items() if src != "pyproject.toml"}},
}


def new_plugin(name: str, directory: str | Path, kind: str = "view") -> Path:
    """Write ``<directory>/perceive-<name>/`` and return its path.

    ``name`` is the action, entry-point (and, for ``kind="features"``, branch) name: lowercase
    letters, digits, underscores.
    """
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise PerceiveError(f"plugin name {name!r} is not valid",
                            hint="use lowercase letters, digits and underscores, e.g. 'quadrant'")
    if kind not in KINDS:
        raise PerceiveError(f"unknown plugin kind {kind!r}", hint=f"use one of {', '.join(KINDS)}")
    values = {
        "name": name,
        "Name": "".join(p.capitalize() for p in name.split("_")),
        "package": f"perceive_{name}",
        "dist": "perceive-" + name.replace("_", "-"),
        "start": f"<|{name}_start|>",
        "end": f"<|{name}_end|>",
    }
    if kind == "features":
        values.update(start=f"<|{name}_action_start|>", action=f"<|{name}_action|>", end=f"<|{name}_action_end|>",
                      pad=f"<|{name}_image_pad|>", encoder=f"{name}_patches", placeholder=f"<{name}_image>",
                      dataset_key=f"{name}_images", size="64", patch="16")
    root = Path(directory) / values["dist"]
    if root.exists() and any(root.iterdir()):
        raise PerceiveError(f"{root} already exists and is not empty",
                            hint="choose another --dir or remove it")
    templates = resources.files("perceive") / "templates" / "plugin"
    for src, dest in KINDS[kind].values():
        text = Template((templates / src).read_text()).substitute(values)
        out = root / Template(dest).substitute(values)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return root
