"""``hermes_json``: Hermes-style ``<tool_call>`` JSON, as Qwen2.5-VL / DeepEyes and Qwen3-VL call
their zoom tool::

    <tool_call>
    {"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [x0, y0, x1, y1], "label": "cat"}}
    </tool_call>

``coordinates: absolute`` (DeepEyes): pixels of the view as given; ``absolute_resized`` (stock
Qwen2.5-VL grounding): pixels of the view as the model's processor resized it (the frame's ``seen``
size), mapped back exactly; ``relative_1000`` (Qwen3-VL): 0-1000 of the view's width and height.
``img_idx`` names the view (0: the original image, k: the k-th view shown); without it, the
original. A box too small for the family's tool is refused or enlarged as that tool does
(``small_box``, by ``coordinates``: DeepEyes refuses a short side of 30 px or less). The tool is
mapped onto the crop action ``action`` (default ``region_select``) with the box in the named view's
pixels; the frame maps it to the original exactly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import Field

from perceive.actions import Action
from perceive.errors import did_you_mean
from perceive.geometry import Frame
from perceive.protocols.base import BoxProblem, Resolved, TextToolProtocol, crop_call, read_box, view_at
from perceive.protocols.boxes import SmallBoxRule
from perceive.protocols.calls import ParseErrorKind
from perceive.strict import FrozenStrictModel

TOOLS_HEADER = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
TOOLS_FOOTER = ("\n</tools>\n\nFor each function call, return a json object with function name and arguments "
                "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
                "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>")


#: each coordinate mode's small-box rule, and each rule's threshold (view pixels), as the family's tool has them
_SMALL_BOX_RULE: dict[str, SmallBoxRule] = {"absolute": "refuse", "absolute_resized": "enlarge",
                                            "relative_1000": "qwen_agent"}
_MIN_BOX: dict[str, int] = {"refuse": 30, "enlarge": 28, "qwen_agent": 32}


class HermesOptions(FrozenStrictModel):
    """Options of ``hermes_json``."""

    #: ``absolute`` pixels of the view (DeepEyes: the image as given), ``absolute_resized`` pixels
    #: of the view as the model's processor resized it (stock Qwen2.5-VL grounding), or
    #: ``relative_1000`` (Qwen3-VL)
    coordinates: Literal["absolute", "absolute_resized", "relative_1000"] = "absolute"
    #: clamp a box that leaves its view and enlarge a small one as the family does; False: report them
    repair: bool = True
    #: what a too-small box gets (:data:`~perceive.protocols.boxes.SmallBoxRule`, or ``none``); unset:
    #: by ``coordinates``: ``refuse`` for absolute (DeepEyes' zoom tool as trained), ``enlarge`` for
    #: absolute_resized (the 28 px a Qwen2.5-VL processor needs), ``qwen_agent`` for relative_1000
    small_box: Literal["refuse", "enlarge", "qwen_agent", "none"] | None = None
    #: the rule's threshold in view pixels (unset: refuse 30, enlarge 28, qwen_agent 32; 0: no minimum)
    min_box: int | None = Field(None, ge=0)
    #: the observation turn: ``deepeyes`` (``<tool_response>IMAGE</tool_response>``) or ``qwen3``
    #: (each image ``\n<tool_response>\nIMAGE\n</tool_response>``); unset: by ``coordinates``
    response: Literal["deepeyes", "qwen3"] | None = None
    #: text after the image(s) inside the response (DeepEyes puts its user prompt there)
    response_text: str = ""
    #: the registered crop action the zoom tool runs (it must take a box: ``args_for_box``)
    action: str = "region_select"
    tool_name: str = "image_zoom_in_tool"
    #: other enabled actions declared as tools by their own name (arguments: their ``Args``)
    tools: list[str] = Field(default_factory=list)
    #: write the ``# Tools`` block into the system turn
    declare: bool = True


class HermesJSON(TextToolProtocol):
    name = "hermes_json"
    description = ("Hermes-style <tool_call> JSON (Qwen2.5-VL / DeepEyes absolute pixels, Qwen3-VL relative "
                   "0-1000 via `coordinates`).")
    Options = HermesOptions
    open_tag = "<tool_call>"
    close_tag = "</tool_call>"

    @property
    def relative(self) -> bool:
        return self.options.coordinates == "relative_1000"

    @property
    def small_box(self) -> SmallBoxRule | None:
        """The small-box rule in force (None: no minimum)."""
        o = self.options
        rule = o.small_box or _SMALL_BOX_RULE[o.coordinates]
        return None if rule == "none" or o.min_box == 0 else rule

    @property
    def min_box(self) -> int | None:
        rule = self.small_box
        return None if rule is None else (self.options.min_box or _MIN_BOX[rule])

    @property
    def style(self) -> str:
        return self.options.response or ("qwen3" if self.relative else "deepeyes")

    # -- declaring ---------------------------------------------------------------------------

    def zoom_schema(self) -> dict[str, Any]:
        props: dict[str, Any] = {
            "bbox_2d": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4,
                        "description": "The bounding box of the region to zoom in, as [x1, y1, x2, y2], where "
                                       "(x1, y1) is the top-left corner and (x2, y2) is the bottom-right corner"
                                       + (" (relative coordinates, 0-1000)" if self.relative else
                                          " (pixels)")},
            "label": {"type": "string", "description": "The name or label of the object in the specified "
                                                       "bounding box"},
            "img_idx": {"type": "number", "description": "The index of the zoomed-in image (starting from 0)"},
        }
        return {"type": "function", "function": {
            "name": self.options.tool_name,
            "description": "Zoom in on a specific region of an image by cropping it based on a bounding box "
                           "(bbox) and an optional object label",
            "parameters": {"type": "object", "properties": props,
                           "required": ["bbox_2d", "label", "img_idx"] if self.relative else ["bbox_2d", "label"]}}}

    def tool_schemas(self, actions: Sequence[Action]) -> list[dict[str, Any]]:
        """The zoom tool, then each action named in ``tools`` (its ``Args`` JSON schema)."""
        by_name = {a.name: a for a in actions}
        out = [self.zoom_schema()]
        for name in self.options.tools:
            a = by_name.get(name)
            if a is not None:
                out.append({"type": "function", "function": {"name": a.name, "description": a.description,
                                                               "parameters": a.Args.model_json_schema()}})
        return out

    def tools_block(self, actions: Sequence[Action]) -> str:
        """The Qwen chat templates' ``# Tools ... <tools></tools>`` block."""
        lines = "".join("\n" + json.dumps(t, ensure_ascii=False) for t in self.tool_schemas(actions))
        return TOOLS_HEADER + lines + TOOLS_FOOTER

    def system_prompt(self, system: str | None, actions: Sequence[Action]) -> str | None:
        if not self.options.declare:
            return system
        return (f"{system}\n\n" if system else "") + self.tools_block(actions)

    def tool_names(self, actions: Sequence[Action]) -> list[str]:
        return [self.options.tool_name, *self.options.tools]

    # -- reading -----------------------------------------------------------------------------

    def parse_body(self, body: str) -> tuple[str, Mapping[str, Any]]:
        try:
            obj = json.loads(body.strip())
        except (ValueError, RecursionError) as exc:
            raise BoxProblem(ParseErrorKind.INVALID_JSON, f"the tool call is not JSON: {exc}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            raise BoxProblem(ParseErrorKind.INVALID_ARGS, 'a tool call is {"name": ..., "arguments": {...}}')
        args = obj.get("arguments", {})
        if isinstance(args, str):  # some models write the arguments as a JSON string
            try:
                args = json.loads(args)
            except (ValueError, RecursionError):
                pass
        if not isinstance(args, dict):
            raise BoxProblem(ParseErrorKind.INVALID_ARGS, f"arguments must be an object, got {args!r}")
        return obj["name"], args

    def resolve(self, tool: str, arguments: Mapping[str, Any], views: Sequence[Frame],
                actions: Mapping[str, Action]) -> Resolved:
        o = self.options
        if tool == o.tool_name:
            if "bbox_2d" not in arguments:
                raise BoxProblem(ParseErrorKind.INVALID_ARGS, f"{tool} needs bbox_2d")
            label = arguments.get("label")
            if label is not None and not isinstance(label, str):
                raise BoxProblem(ParseErrorKind.INVALID_ARGS, f"label must be a string, got {label!r}")
            idx = arguments.get("img_idx", 0)
            if isinstance(idx, float) and idx.is_integer():
                idx = int(idx)  # the schema says "number"
            if isinstance(idx, bool) or not isinstance(idx, int):
                raise BoxProblem(ParseErrorKind.INVALID_ARGS, f"img_idx must be an integer, got {idx!r}")
            frame = view_at(views, idx, f"img_idx {idx}")
            scale = 1000 if self.relative else None
            if o.coordinates == "absolute_resized":
                if frame.seen is None:
                    raise BoxProblem(ParseErrorKind.INVALID_ARGS, "coordinates: absolute_resized needs the size "
                                     f"the model saw view {frame.id!r} at (a local model's processor)")
                scale = frame.seen
            box, repairs = read_box(arguments["bbox_2d"], frame, scale=scale, repair=o.repair, min_size=self.min_box,
                                    small_box=self.small_box or "enlarge", max_aspect=None if self.relative else 100)
            return crop_call(actions, o.action, tool, arguments, frame, box, repairs, views)
        if tool in o.tools and tool in actions:
            args = actions[tool].Args.model_validate(dict(arguments))
            return Resolved(tool, args, None, tool, arguments)
        names = [o.tool_name, *o.tools]
        raise BoxProblem(ParseErrorKind.UNKNOWN_TOOL, f"no tool named {tool!r}; "
                         + (did_you_mean(tool, names) or f"the tools are {names}"))

    # -- observing ---------------------------------------------------------------------------

    def observation_text(self, layout, blocks: Sequence[str], index: int) -> str:
        extra = self.options.response_text
        if self.style == "qwen3":
            body = "\n".join(f"<tool_response>\n{b}{extra}\n</tool_response>" for b in blocks)
        else:
            body = "<tool_response>" + "".join(blocks) + extra + "</tool_response>"
        return layout.turn_open + body + layout.turn_close
