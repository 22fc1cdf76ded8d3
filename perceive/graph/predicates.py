"""``when`` predicates: ``FIELD OP VALUE``, nothing else (no code is evaluated)."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Any

FIELDS = ("hops", "generated_tokens", "answered", "last_action", "visits")
OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq,
       "!=": operator.ne}
_RE = re.compile(r"\s*(\w+)\s*(<=|>=|==|!=|<|>)\s*(.+?)\s*$")


def parse_predicate(text: str) -> Callable[[dict[str, Any]], bool]:
    m = _RE.fullmatch(text)
    if not m or m.group(1) not in FIELDS:
        raise ValueError(f"predicate {text!r} must be `FIELD OP VALUE` with FIELD in {', '.join(FIELDS)} "
                         f"and OP in {' '.join(OPS)}")
    field, op, raw = m.groups()
    value: Any = raw.strip("'\"")
    if re.fullmatch(r"-?\d+", raw):
        value = int(raw)
    elif raw in ("true", "false", "True", "False"):
        value = raw.lower() == "true"
    fn = OPS[op]
    return lambda state: fn(state.get(field), value)
