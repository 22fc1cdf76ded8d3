"""No function in perceive/ is over 100 lines: a longer one does several jobs (split it into
named steps). Templates (perceive/templates: scaffold sources with placeholders) are not Python."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "perceive"
LIMIT = 100


def long_functions(source: str, limit: int = LIMIT) -> list[tuple[str, int]]:
    return [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(ast.parse(source))
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.end_lineno - n.lineno + 1 > limit]


def test_no_function_is_over_100_lines():
    found = {str(p.relative_to(ROOT)): long for p in sorted(ROOT.rglob("*.py"))
             if "templates" not in p.parts and (long := long_functions(p.read_text()))}
    assert found == {}


def test_the_check_counts_a_long_function():
    body = "\n".join(f"    x{i} = {i}" for i in range(LIMIT))
    assert long_functions(f"def f():\n{body}\n") == [("f", LIMIT + 1)]
    assert long_functions(f"class C:\n    async def g(self):\n    {body}\n".replace("\n    x", "\n        x"))
