"""What every protocol's reader yields: a :class:`PerceptionCall` (a closed, well-formed call with
typed arguments) or a :class:`ParseError` *value* (the loop records it in the trace; nothing a
model writes raises). The VPT stream parser (:mod:`perceive.protocols.vpt_stream`) and the text
tool-call readers (:mod:`perceive.protocols.base`) all report with these types and kinds.

Malformed input and what it yields:

==================  ==========================================================================
kind                when
==================  ==========================================================================
missing_x/missing_y a region span without any x (or y) cell token
out_of_range        a grid token whose index is >= the grid size, e.g. ``<|x_8|>`` on 8x8
unexpected_token    ordinary text or a token the action does not allow inside its span
mixed_families      a token of another action's grammar inside a span
nested_start        a start token while a span is open (the open span is dropped and the new
                    one starts)
stray_end           an end token with no open span
unclosed            generation ended inside a span
invalid_args        the action's parser rejected the span for another reason; for a tool call:
                    missing or ill-typed arguments
invalid_json        a tool call whose body is not valid JSON (text protocols)
unknown_tool        a tool call naming no declared tool
bad_box             a degenerate box, or (without repair) one outside its view or too small
unknown_view        a tool call naming a view that was never shown (``img_idx``, ``source``)
==================  ==========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from pydantic import BaseModel

from perceive.actions import ActionCall
from perceive.geometry import ROOT


class ParseErrorKind(str, Enum):
    MISSING_X = "missing_x"
    MISSING_Y = "missing_y"
    OUT_OF_RANGE = "out_of_range"
    UNEXPECTED_TOKEN = "unexpected_token"
    MIXED_FAMILIES = "mixed_families"
    NESTED_START = "nested_start"
    STRAY_END = "stray_end"
    UNCLOSED = "unclosed"
    INVALID_ARGS = "invalid_args"
    INVALID_JSON = "invalid_json"
    UNKNOWN_TOOL = "unknown_tool"
    BAD_BOX = "bad_box"
    UNKNOWN_VIEW = "unknown_view"

@dataclass(frozen=True)
class ParseError:
    """A malformed perception span, as a value. ``position`` is the stream index where it was
    detected; ``tokens`` the span read so far (start token included)."""

    kind: ParseErrorKind
    message: str
    action: str | None = None
    tokens: tuple[str, ...] = ()
    position: int = -1

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "message": self.message,
            "action": self.action,
            "tokens": list(self.tokens),
            "position": self.position,
        }

@dataclass(frozen=True)
class PerceptionCall:
    """A closed, well-formed span. ``start``/``end`` are stream indices of its first and last
    token (inclusive). ``target``: the view the call itself names (tool-call protocols whose
    calls carry their frame); ``None`` when the loop's ``target`` option decides (VPT spans)."""

    action: str
    args: BaseModel
    tokens: tuple[str, ...]
    token_ids: tuple[int, ...]
    start: int
    end: int
    target: str | None = None

    def to_call(self, target: str = ROOT) -> ActionCall:
        return ActionCall(self.action, self.args, self.target or target, self.tokens, self.token_ids)

Event = PerceptionCall | ParseError


__all__ = ["Event", "ParseError", "ParseErrorKind", "PerceptionCall"]
