"""The JSON input schemas of ``perceive mcp``'s tools, made from each action's ``Args`` and ``Options``
models. Every schema is inlined (no ``$ref``: Qwen-Agent keeps only ``type``, ``properties`` and
``required`` of a tool's schema, so a reference would dangle) and has ``properties``, even when empty.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from enum import Enum
from typing import Any

from pydantic_core import to_jsonable_python

from perceive.actions import Action

#: the arguments every action tool takes besides its action's own
IMAGE, COORDINATES, OPTIONS = "image", "coordinates", "options"
RESERVED = (IMAGE, COORDINATES, OPTIONS)
#: the field of an action's ``Args`` read in the chosen coordinate space
BOX = "box"


class CoordinateSpace(str, Enum):
    """How a tool call writes its ``box`` (the spaces perceive's tool-call protocols know)."""

    __str__ = str.__str__

    PIXELS = "pixels"  # pixels of the image the call names (a view's own pixels for a view)
    RELATIVE_1000 = "relative_1000"  # 0-1000 of that image's width and height (Qwen2.5-VL / Qwen3-VL grounding)
    RELATIVE_1 = "relative_1"  # 0-1 of its width and height (Mini-o3)

    @property
    def scale(self) -> int | None:
        """The value of a full side in this space (``perceive.protocols.boxes.read_box``'s ``scale``)."""
        return {CoordinateSpace.PIXELS: None, CoordinateSpace.RELATIVE_1000: 1000, CoordinateSpace.RELATIVE_1: 1}[self]


IMAGE_DOC = ("The image to look at: an id from register_image or from an earlier tool's result (img1, or a view "
             "of it such as img1.v2), or a data URL (data:image/png;base64,...) or a local file path the server "
             "allows, registered on the fly (the result gives its id).")
COORDINATES_DOC = ("How `box` is written: `pixels` (default) of the image `image` names (a view's own pixels), "
                   "`relative_1000` (0-1000 of its width and height) or `relative_1` (0-1).")
BOX_DOC = ("The region [x0, y0, x1, y1] (left, top, right, bottom; x0 < x1, y0 < y1) of the image `image` names, "
           "in the space `coordinates` says (default: its pixels). A box that leaves the image is clamped to it.")
#: descriptions of the grid-cell fields perceive's region actions share, for schemas that give none
FIELD_DOCS = {
    "xs": "Instead of `box`: the grid columns (0 to grid-1) of the cells to look at, with `ys`.",
    "ys": "Instead of `box`: the grid rows (0 to grid-1) of the cells to look at, with `xs`.",
    "grid": "Cells per side of the grid `xs` and `ys` index.",
    "margin": "Grid cells added around the cells named in `xs` and `ys`.",
}


def inline(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with every local ``{"$ref": "#/$defs/X"}`` replaced by ``X`` itself, and no ``$defs``
    (a copy; a recursive model's self-reference becomes an open object)."""
    defs = schema.get("$defs", {})

    def walk(node: Any, seen: tuple[str, ...]) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                name = ref.removeprefix("#/$defs/")
                if name in seen or name not in defs:
                    return {"type": "object"}
                rest = {k: walk(v, seen) for k, v in node.items() if k != "$ref"}
                return {**walk(defs[name], (*seen, name)), **rest}
            return {k: walk(v, seen) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [walk(v, seen) for v in node]
        return node

    return walk(copy.deepcopy(schema), ())


def _properties(model) -> tuple[dict[str, Any], list[str]]:
    """``(properties, required)`` of a pydantic model's inlined schema (none for ``None``)."""
    if model is None:
        return {}, []
    schema = inline(model.model_json_schema())
    return dict(schema.get("properties") or {}), list(schema.get("required") or [])


def takes_box(action: Action) -> bool:
    """Whether ``action``'s ``Args`` has a ``box`` that is 4 numbers (optionally None): the field read in the
    call's coordinate space. A ``box`` of another type is an ordinary argument."""
    prop = _properties(action.Args)[0].get(BOX)
    if prop is None:
        return False
    kinds = [p for p in prop.get("anyOf", [prop]) if p.get("type") != "null"]
    return len(kinds) == 1 and kinds[0].get("type") == "array" and kinds[0].get("maxItems") == 4 and all(
        i.get("type") in ("number", "integer") for i in kinds[0].get("prefixItems", [kinds[0].get("items", {})]))


def _described(name: str, prop: dict[str, Any], takes_box: bool) -> dict[str, Any]:
    if name == BOX and takes_box:  # one plain array type: some clients read neither anyOf nor prefixItems
        box = {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4, "description": BOX_DOC}
        return {**box, "default": prop["default"]} if "default" in prop else box
    if "description" not in prop and name in FIELD_DOCS:
        return {**prop, "description": FIELD_DOCS[name]}
    return prop


def action_schema(action: Action, takes_box: bool, agent_options: Mapping[str, Any]) -> dict[str, Any]:
    """The input schema of ``action``'s tool: ``image`` (required), ``coordinates`` (when its ``Args``
    has a ``box``), its ``Args`` fields, and ``options`` only when the run config lets an agent set some
    (``agent_options``: ``{field: the run config's value}``, each then optional with that value as its
    default; empty: no ``options`` property at all). ``takes_box``: whether ``Args`` has a list ``box``."""
    args, required = _properties(action.Args)
    props: dict[str, Any] = {IMAGE: {"type": "string", "description": IMAGE_DOC}}
    if takes_box:
        props[COORDINATES] = {"type": "string", "enum": [c.value for c in CoordinateSpace],
                              "default": CoordinateSpace.PIXELS.value, "description": COORDINATES_DOC}
    props.update({name: _described(name, prop, takes_box) for name, prop in args.items()})
    if agent_options:
        opts, _ = _properties(action.Options)
        open_props = {f: {**opts.get(f, {}), "default": to_jsonable_python(v)} for f, v in agent_options.items()}
        props[OPTIONS] = {"type": "object", "properties": open_props, "additionalProperties": False,
                          "description": f"{action.name} options this call may set (the server's run config allows "
                                         "these; each optional, its default the run config's)."}
    return {"type": "object", "properties": props, "required": [IMAGE, *required], "additionalProperties": False}


def register_schema() -> dict[str, Any]:
    """The input schema of ``register_image``: ``image``, a data URL, a path or MCP image content."""
    content = {"type": "object", "description": "MCP image content",
               "properties": {"type": {"type": "string", "enum": ["image"]}, "data": {"type": "string"},
                              "mimeType": {"type": "string"}},
               "required": ["type", "data"]}
    return {"type": "object", "additionalProperties": False, "required": [IMAGE], "properties": {
        IMAGE: {"anyOf": [{"type": "string"}, content],
                "description": "A data URL (data:image/png;base64,...), a local file path under the folder the "
                               "server allows, or MCP image content {type: image, data: BASE64, mimeType}."}}}


def graph_schema() -> dict[str, Any]:
    """The input schema of a graph tool: ``image`` and ``question``."""
    return {"type": "object", "additionalProperties": False, "required": [IMAGE, "question"], "properties": {
        IMAGE: {"type": "string", "description": IMAGE_DOC},
        "question": {"type": "string", "description": "The question about the image."}}}


__all__ = ["BOX", "COORDINATES", "IMAGE", "OPTIONS", "RESERVED", "CoordinateSpace", "action_schema", "graph_schema",
           "inline", "register_schema", "takes_box"]
