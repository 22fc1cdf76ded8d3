"""The README's action table lists every action perceive itself ships."""

import re
from pathlib import Path

from perceive.plugins import get_registry

ROOT = Path(__file__).resolve().parents[1]


def test_readme_action_table_lists_every_shipped_action():
    readme = (ROOT / "README.md").read_text()
    listed = set(re.findall(r"^\| `(\w+)` \|", readme, re.M))
    shipped = {name for name, a in get_registry().actions.items() if a.dist == "perceive"}
    assert "tiles" in shipped
    assert shipped <= listed, f"add to README.md's action table: {sorted(shipped - listed)}"
