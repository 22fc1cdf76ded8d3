"""Governance: every hook is documented with its exact signature and has a test."""

import inspect
import re
from pathlib import Path

from perceive import hookspecs

ROOT = Path(__file__).resolve().parents[1]
HOOKS = sorted(n for n in dir(hookspecs) if n.startswith("perceive_"))


def signature(name: str) -> str:
    return name + str(inspect.signature(getattr(hookspecs, name))).replace("'", "")


def test_there_are_hooks():
    assert {"perceive_register_actions", "perceive_register_encoders", "perceive_run_action"} <= set(HOOKS)


def test_every_hook_is_documented_with_its_exact_signature():
    doc = (ROOT / "docs/reference/hooks.md").read_text()
    headings = set(re.findall(r"^### `(.+)`$", doc, re.M))
    missing = [signature(h) for h in HOOKS if signature(h) not in headings]
    assert not missing, f"add these headings to docs/reference/hooks.md: {missing}"
    stale = [h for h in headings if h.split("(")[0] not in HOOKS]
    assert not stale, f"documented hooks that do not exist: {stale}"


def test_every_hook_has_a_test():
    tests = (ROOT / "tests/test_hooks.py").read_text()
    untested = [h for h in HOOKS if f"def test_hook_{h}(" not in tests]
    assert not untested, f"write test_hook_<name> in tests/test_hooks.py for: {untested}"


def test_every_hookspec_says_how_results_combine():
    for h in HOOKS:
        doc = inspect.getdoc(getattr(hookspecs, h)) or ""
        assert re.search(r"collected|firstresult|ignored", doc), f"{h}: say how results are combined"
