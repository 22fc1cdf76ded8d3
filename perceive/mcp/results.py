"""What a ``perceive mcp`` tool is and what a call gives back, independent of the MCP SDK (which
:mod:`perceive.mcp.server` translates them to): :class:`ToolSpec`, :class:`ToolResult` and its parts; and
the error result every failure of a call becomes."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from PIL import Image

from perceive.errors import ErrorCode, PerceiveError
from perceive.geometry import Box

#: where a hint starts in a message (``PerceiveError`` writes ``MESSAGE\n  -> HINT``)
HINT_MARK = "\n  -> "


@dataclass(frozen=True)
class ToolSpec:
    """One tool: its name (``^[a-z][a-z0-9_]*$``), what it does, and its JSON input schema (inlined: no
    ``$ref``; ``properties`` always present). ``read_only``: the tool changes nothing outside the server
    (every perceive tool: the images it keeps are the server's own memory). ``open_world``: it reaches
    beyond this machine (a graph tool whose model is served at ``remote.url``)."""

    name: str
    description: str
    input_schema: dict[str, Any]
    read_only: bool = True
    open_world: bool = False


@dataclass(frozen=True)
class ImagePart:
    """A view returned to the agent: the image (RGB), its id in the image store (``img1.v2``), and its box
    ``(x0, y0, x1, y1)`` in the original image's pixels (whole numbers for every crop perceive's own actions
    make; a plugin's resampled view may have fractional corners)."""

    image: Image.Image
    id: str
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass
class ToolResult:
    """A call's answer: content parts in order, ``structured`` (a JSON object: ids, boxes, the trace),
    ``is_error`` when the call failed (then one TextPart: ``MESSAGE`` and, on the next line, ``-> HINT``;
    ``structured`` is ``{"error": {"code", "message", "hint"?}}``, and a graph's trace when it ran)."""

    content: list[ImagePart | TextPart] = field(default_factory=list)
    structured: dict[str, Any] | None = None
    is_error: bool = False


def error_result(message: str, code: str, extra: dict[str, Any] | None = None, *,
                 hint: str | None = None) -> ToolResult:
    """The tool error for a failure: its text is ``MESSAGE`` and ``-> HINT`` on the next line (as the CLI
    prints it, less ``error:``), with its :class:`~perceive.errors.ErrorCode` value ``code``."""
    error = {"code": code, "message": message, **({"hint": hint} if hint else {})}
    text = message + (HINT_MARK + hint if hint else "")
    return ToolResult([TextPart(text)], {"error": error, **(extra or {})}, is_error=True)


def failure_of(exc: BaseException) -> ToolResult:
    """The tool error for ``exc``: a :class:`PerceiveError`'s message and hint; anything else is a bug in
    perceive or a plugin, said in one line as the CLI says it."""
    if isinstance(exc, PerceiveError):
        return error_result(exc.message, exc.code.value, hint=exc.hint)
    first = (str(exc).strip().splitlines() or [""])[0]
    what = type(exc).__name__ + (f": {first}" if first else "")
    return error_result(f"internal error (a bug in perceive or a plugin): {what}", ErrorCode.INTERNAL.value,
                        hint="the server goes on; report it with the call's arguments")


def number(v: float | Fraction) -> int | float:
    """A coordinate for JSON: an int when whole, else a float."""
    return int(v) if float(v).is_integer() else float(v)


def box_list(box: Box) -> list[int | float]:
    """``[x0, y0, x1, y1]`` of ``box``, JSON-ready."""
    return [number(v) for v in box.as_tuple()]


def box_text(box: Box | list) -> str:
    """``[240, 380, 310, 420]`` (fractions to 2 decimals), for text parts."""
    values = box_list(box) if isinstance(box, Box) else box
    return "[" + ", ".join(str(v) if isinstance(v, int) else f"{v:.2f}" for v in values) + "]"


__all__ = ["HINT_MARK", "ImagePart", "TextPart", "ToolResult", "ToolSpec", "box_list", "box_text", "error_result",
           "failure_of", "number"]
