"""Boxes in tool calls: a call's coordinates read exactly (fractions, not floats) in the frame of
the view it names, repaired or reported by the family's rules, and mapped onto a registered
action (:func:`crop_call`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

from pydantic import BaseModel

from perceive.actions import Action
from perceive.geometry import ROOT, Box, Frame
from perceive.protocols.calls import ParseErrorKind


@dataclass(frozen=True)
class Resolved:
    """A tool call mapped onto a registered action: ``args`` for ``action``, in the pixels of
    the view ``target`` (``box``, when the call names one; ``frame`` maps it to the root)."""

    action: str
    args: BaseModel
    target: str | None
    tool: str
    arguments: Mapping[str, Any]
    box: Box | None = None
    frame: Frame | None = None
    repairs: tuple[str, ...] = ()
    root_size: tuple[int, int] = (0, 0)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"tool": self.tool, "arguments": dict(self.arguments), "action": self.action,
                             "args": self.args.model_dump(mode="json"), "target": self.target or ROOT,
                             "repairs": list(self.repairs)}
        if self.box is not None and self.frame is not None:
            root = self.frame.to_root(self.box)
            crop = root.clip(*self.root_size)
            d["box"] = self.box.to_dict()
            d["box_root"] = root.to_dict()
            d["crop_root"] = Box(math.floor(crop.x0), math.floor(crop.y0), math.ceil(crop.x1),
                                 math.ceil(crop.y1)).to_dict()
        return d


# -- boxes --------------------------------------------------------------------------------------


class BoxProblem(Exception):
    """A box the protocol refuses (internal: becomes a ParseError)."""

    def __init__(self, kind: ParseErrorKind, message: str):
        self.kind = kind
        super().__init__(message)


def _exact(v: Any) -> Fraction:
    """A JSON number as an exact fraction: ``0.32`` is 8/25, not the nearest binary float."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise BoxProblem(ParseErrorKind.INVALID_ARGS, f"{v!r} is not a number")
    if isinstance(v, float) and not math.isfinite(v):
        raise BoxProblem(ParseErrorKind.INVALID_ARGS, f"{v!r} is not a finite number")
    return Fraction(v) if isinstance(v, int) else Fraction(repr(v))


def _num(f: Fraction) -> int | float:
    return int(f) if f.denominator == 1 else float(f)


#: what a family's tool does with a box that is too small (``min_size``), after clamping:
#:
#: * ``refuse``: a short side of ``min_size`` pixels or less is refused (DeepEyes' zoom tool as it
#:   was trained, ``visual_toolbox_v2``: 30);
#: * ``enlarge``: a side under ``min_size`` is enlarged around the box's centre to ``min_size`` on
#:   the short side, halves rounded up, corners floored/ceiled, the aspect check again, then clipped
#:   to the view (DeepEyes' later toolboxes, ``visual_toolbox_v5``/``v6``: 28);
#: * ``qwen_agent``: enlarged the same way, clamped, and kept only when both sides then exceed
#:   ``min_size`` (Qwen-Agent's zoom tool for Qwen3-VL: 32).
SmallBoxRule = Literal["refuse", "enlarge", "qwen_agent"]


def read_box(value: Any, frame: Frame, *, scale: int | tuple[int, int] | None, repair: bool,
             min_size: int | None = None,
             small_box: SmallBoxRule = "enlarge", max_aspect: float | None = None,
             aspect_inclusive: bool = True) -> tuple[Box, tuple[str, ...]]:
    """``[x0, y0, x1, y1]`` as written by the model -> a box in ``frame``'s pixels.

    ``scale``: ``None`` for absolute pixels of the view, else the value of a full side (1000 for
    Qwen3-VL, 1 for Mini-o3; ``(width, height)`` when the sides differ: the size the model saw the
    view at, for pixels of its resized input), converted exactly. ``repair``: clamp a box that leaves the view and
    enlarge one under ``min_size`` pixels by the family's ``small_box`` rule (:data:`SmallBoxRule`);
    otherwise such a box is refused (``refuse`` refuses it whatever ``repair`` says). A degenerate
    box (``x1 <= x0`` or ``y1 <= y0``) is always refused, and so is one whose aspect ratio exceeds
    ``max_aspect`` (or reaches it, with ``aspect_inclusive=False``).
    Returns the box and the repairs made; raises :class:`BoxProblem`."""
    if not isinstance(value, list | tuple) or len(value) != 4:
        raise BoxProblem(ParseErrorKind.INVALID_ARGS, f"bbox_2d must be a list of 4 numbers, got {value!r}")
    x0, y0, x1, y1 = (_exact(v) for v in value)
    W, H = Fraction(frame.width), Fraction(frame.height)
    if scale is not None:
        sx, sy = scale if isinstance(scale, tuple) else (scale, scale)
        x0, x1 = x0 * W / sx, x1 * W / sx
        y0, y1 = y0 * H / sy, y1 * H / sy
    if x1 <= x0 or y1 <= y0:
        raise BoxProblem(ParseErrorKind.BAD_BOX, f"degenerate box {list(value)}: needs x0 < x1 and y0 < y1")
    repairs: list[str] = []
    if x0 < 0 or y0 < 0 or x1 > W or y1 > H:
        if not repair:
            raise BoxProblem(ParseErrorKind.BAD_BOX, f"box {list(value)} leaves the "
                             f"{frame.width}x{frame.height} view {frame.id!r}")
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
        if x1 <= x0 or y1 <= y0:
            raise BoxProblem(ParseErrorKind.BAD_BOX, f"box {list(value)} lies outside the "
                             f"{frame.width}x{frame.height} view {frame.id!r}")
        repairs.append("clamped")

    def aspect_ok(a, b, c, d):
        w, h = c - a, d - b
        if max_aspect is None:
            return True
        if w <= 0 or h <= 0:
            return False
        r = max(w, h) / min(w, h)
        return r <= max_aspect if aspect_inclusive else r < max_aspect

    if not aspect_ok(x0, y0, x1, y1):
        raise BoxProblem(ParseErrorKind.BAD_BOX, f"box {list(value)}: aspect ratio over {max_aspect}")
    w, h = x1 - x0, y1 - y0
    if min_size is not None and small_box == "refuse":
        if min(w, h) <= min_size:
            raise BoxProblem(ParseErrorKind.BAD_BOX, f"box {list(value)} is {_num(w)}x{_num(h)} pixels: its short "
                             f"side must be over {min_size} px (refused, as DeepEyes' zoom tool refuses it)")
    elif min_size is not None and (w < min_size or h < min_size):
        if not repair:
            raise BoxProblem(ParseErrorKind.BAD_BOX, f"box {list(value)} is {_num(w)}x{_num(h)} pixels, "
                             f"under the {min_size} px minimum")
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        ratio = Fraction(min_size) / min(w, h)
        hw, hh = math.ceil(w * ratio / 2), math.ceil(h * ratio / 2)
        n = (math.floor(cx - hw), math.floor(cy - hh), math.ceil(cx + hw), math.ceil(cy + hh))
        if small_box == "qwen_agent":  # clamp, keep only if both sides now exceed the minimum
            n = (max(0, n[0]), max(0, n[1]), min(W, n[2]), min(H, n[3]))
            if n[2] - n[0] > min_size and n[3] - n[1] > min_size:
                x0, y0, x1, y1 = map(Fraction, n)
                repairs.append("enlarged")
        else:  # enlarge (DeepEyes v5/v6): the enlarged box must pass the aspect check; then it is clipped to the view
            if not aspect_ok(*n):
                raise BoxProblem(ParseErrorKind.BAD_BOX, f"box {list(value)}: enlarged box {n} has an "
                                 f"aspect ratio over {max_aspect}")
            x0, y0, x1, y1 = max(Fraction(n[0]), 0), max(Fraction(n[1]), 0), min(Fraction(n[2]), W), \
                min(Fraction(n[3]), H)
            repairs.append("enlarged")
    return Box(_num(x0), _num(y0), _num(x1), _num(y1), frame.id), tuple(repairs)


def view_at(views: Sequence[Frame], index: int, name: str) -> Frame:
    """The frame ``views[index]`` (0: the original image), or a ``unknown_view`` problem."""
    if not 0 <= index < len(views):
        shown = len(views) - 1 if views else 0
        raise BoxProblem(ParseErrorKind.UNKNOWN_VIEW, f"{name} names no image: the original and {shown} "
                         "view(s) have been shown")
    return views[index]


def crop_call(actions: Mapping[str, Action], action_name: str, tool: str, arguments: Mapping[str, Any],
              frame: Frame, box: Box, repairs: tuple[str, ...], views: Sequence[Frame]) -> Resolved:
    """``tool``'s box as a call of the crop action ``action_name`` on the view ``frame``."""
    action = actions.get(action_name)
    if action is None:
        raise BoxProblem(ParseErrorKind.UNKNOWN_TOOL, f"{tool} runs the action {action_name!r}, which is not "
                         "enabled")
    args = action.args_for_box(box)
    if args is None:
        raise BoxProblem(ParseErrorKind.INVALID_ARGS, f"action {action_name!r} takes no box (args_for_box)")
    return Resolved(action.name, args, frame.id, tool, dict(arguments), box, frame, repairs, views[0].size)
