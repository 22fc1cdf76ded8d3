"""docs/reference/errors.md lists every error type, finish reason, trace event, parse error kind
and failure stage a user can see; a new one without a row fails here."""

import importlib
import importlib.util
import pkgutil
import re
from pathlib import Path

import pytest

import perceive
from perceive.dispatch import FailureStage
from perceive.errors import ErrorCode, PerceiveError
from perceive.observations import Invariant
from perceive.protocol import ParseErrorKind
from perceive.trace import EventType, FinishReason

DOC = Path(__file__).resolve().parents[1] / "docs" / "reference" / "errors.md"


def sections() -> dict[str, str]:
    text = DOC.read_text()
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def first_cells(section: str) -> set[str]:
    """The code-quoted names in each table row's first cell (``a`` / ``b`` gives both; a module
    in parentheses is not a name)."""
    names = set()
    for line in sections()[section].splitlines():
        if line.startswith("| `"):
            cell = re.sub(r"\(.*?\)", "", line.split(" | ")[0])
            names |= set(re.findall(r"`([^`]+)`", cell))
    return names


def all_error_types() -> set[type]:
    for mod in pkgutil.walk_packages(perceive.__path__, "perceive."):
        # perceive.eval.lmms and perceive.mcp.server import only where their extras are installed
        if (mod.name == "perceive.eval.lmms" and importlib.util.find_spec("lmms_eval") is None) or (
                mod.name == "perceive.mcp.server" and importlib.util.find_spec("mcp") is None):
            continue
        if not mod.name.endswith("__main__") and ".templates" not in mod.name:
            importlib.import_module(mod.name)
    found, todo = set(), [PerceiveError]
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo += cls.__subclasses__()
    return {c for c in found if c.__module__.startswith("perceive")}


def test_every_error_type_has_a_row():
    rows = first_cells("Error types")
    missing = sorted(c.__name__ for c in all_error_types() if c.__name__ not in rows)
    assert not missing, f"add these to {DOC.name}: {missing}"
    for extra in ("GraphValidationError", "TrainingInterrupted", "SpanError"):
        assert extra in rows


def test_every_error_row_names_a_real_type():
    known = {c.__name__ for c in all_error_types()} | {"GraphValidationError", "TrainingInterrupted", "SpanError"}
    stale = sorted(first_cells("Error types") - known)
    assert not stale, f"{DOC.name} lists types that no longer exist: {stale}"


def test_every_error_code_is_documented_with_its_type():
    table = sections()["Error types"]
    for code in ErrorCode:
        assert f"| `{code.value}` |" in table, code


@pytest.mark.parametrize("section,enum", [("Finish reasons", FinishReason), ("Trace events", EventType),
                                          ("Parse error kinds", ParseErrorKind),
                                          ("Action failure stages", FailureStage),
                                          ("Observation invariants", Invariant)])
def test_every_enum_value_has_a_row_and_no_row_is_stale(section, enum):
    rows = first_cells(section)
    values = {m.value for m in enum}
    assert values - rows == set(), f"{section}: document {sorted(values - rows)}"
    assert rows - values == set(), f"{section}: no longer in the code: {sorted(rows - values)}"
