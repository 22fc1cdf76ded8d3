"""``perceive plugins new``: a pip-installable plugin package with one working action."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from string import Template

from perceive.errors import PerceiveError

# template file -> path in the new package
FILES = {
    "pyproject.toml": "pyproject.toml",
    "README.md": "README.md",
    "package__init__.py": "src/${package}/__init__.py",
    "test_plugin.py": "tests/test_${name}.py",
}


def new_plugin(name: str, directory: str | Path) -> Path:
    """Write ``<directory>/perceive-<name>/`` and return its path.

    ``name`` is the action and entry-point name: lowercase letters, digits, underscores.
    """
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise PerceiveError(f"plugin name {name!r} is not valid",
                            hint="use lowercase letters, digits and underscores, e.g. 'quadrant'")
    values = {
        "name": name,
        "package": f"perceive_{name}",
        "dist": "perceive-" + name.replace("_", "-"),
        "start": f"<|{name}_start|>",
        "end": f"<|{name}_end|>",
    }
    root = Path(directory) / values["dist"]
    if root.exists() and any(root.iterdir()):
        raise PerceiveError(f"{root} already exists and is not empty",
                            hint="choose another --dir or remove it")
    templates = resources.files("perceive") / "templates" / "plugin"
    for src, dest in FILES.items():
        text = Template((templates / src).read_text()).substitute(values)
        out = root / Template(dest).substitute(values)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return root
