"""One ``perceive mcp`` tool per perception action an agent can use (its observation a view or text): a
call's arguments read and checked (the MCP SDK checks none), its box read exactly in the coordinate space
named, and the action run through the registry's dispatch on the image or view named, as the perception
loop runs it (``perceive.loop.observe.Observer``): copies of the images, the image's own view-id counter,
the run config's options, ``runtime.action_timeout_s`` (a hung plugin is abandoned, then quarantined)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticUndefined

from perceive.actions import Action, ActionCall, ActionContext, validate_action_options
from perceive.dispatch import ActionFailure, dispatch
from perceive.errors import ActionInputError, did_you_mean
from perceive.geometry import ROOT
from perceive.mcp.images import ImageStore, StoredImage
from perceive.mcp.results import (
    HINT_MARK,
    ImagePart,
    TextPart,
    ToolResult,
    ToolSpec,
    box_list,
    box_text,
    error_result,
)
from perceive.mcp.schemas import BOX, COORDINATES, IMAGE, OPTIONS, CoordinateSpace, action_schema, takes_box
from perceive.observations import Text, View
from perceive.protocols.boxes import BoxProblem, read_box

#: the observations an agent can use: views are images, text is text (features feed a model's projector)
SHOWABLE = ("view", "text")


def describe(action: Action, takes_box: bool) -> str:
    """The tool's description: the action's own, then how to name images and write boxes."""
    out = ("Returns each new view as an image with a new id (img1.v1, usable as `image` in the next call) and its "
           "box in the original image's pixels." if action.observation == "view" else
           "Returns the text read, with the boxes it was read from in the original image's pixels.")
    space = (" `box` is in the pixels of the image `image` names unless `coordinates` says relative_1000 or "
             "relative_1." if takes_box else "")
    own = (action.description or f"The {action.name} perception action.").strip()
    return f"{own}\n\nRuns on the image `image` names (an id, a data URL or an allowed path).{space} {out}"


def _bad_args(tool: str, exc: ValidationError) -> ActionInputError:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(arguments)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] != "missing" and err["loc"]:
            msg += f" (got {err['input']!r})"
        lines.append(f"  {where}: {msg}")
    return ActionInputError("\n".join([f"{tool}: {len(lines)} invalid argument(s)", *lines]),
                            hint="the tool's input schema (tools/list) describes each argument")


class ActionTool:
    """The tool of one registered ``action``: its :attr:`spec`, and :meth:`call`."""

    def __init__(self, action: Action, registry, store: ImageStore, *, options: Mapping[str, Any],
                 agent_options: Sequence[str] = (), timeout_s: float | None, local_root: Path | None,
                 context: Callable[[], dict[str, Any]]):
        """``options``: the run config's ``actions.<name>.options``; ``agent_options``: the fields of them a
        call may set (``mcp.agent_options.<name>``; none: the tool takes no ``options``); ``context``: the
        rest of each call's ``ActionContext`` (``encoders``, ``device``), made when a call first needs it."""
        self.action, self.registry, self.store = action, registry, store
        self.options, self.timeout_s, self.local_root, self.context = dict(options), timeout_s, local_root, context
        self.agent_options = tuple(agent_options)
        # the run config's options, checked once: a call that sets none uses them as they are
        self.base_options = validate_action_options(action, self.options, f"actions.{self.name}.options")
        self.takes_box = takes_box(action)
        self.spec = ToolSpec(action.name, describe(action, self.takes_box),
                             action_schema(action, self.takes_box, self._agent_defaults()))
        self.accepted = list(self.spec.input_schema["properties"])

    def _agent_defaults(self) -> dict[str, Any]:
        """``{field: its value for a call that does not set it}`` for each field an agent may set: the run
        config's, else the ``Options`` model's default (None where there is neither)."""
        given = self.base_options
        fields = getattr(self.action.Options, "model_fields", {})
        out = {}
        for f in self.agent_options:
            default = fields[f].get_default(call_default_factory=True) if f in fields else None
            out[f] = given.get(f, None if default is PydanticUndefined else default)
        return out

    @property
    def name(self) -> str:
        return self.action.name

    # -- reading a call ----------------------------------------------------------------------------

    def _check_keys(self, args: Mapping[str, Any]) -> None:
        unknown = [k for k in args if k not in self.accepted]
        if OPTIONS in unknown:
            raise ActionInputError(f"{self.name}: this server lets a call set none of {self.name}'s options "
                                   "(they are its run config's)",
                                   hint="leave `options` out; the server's operator can open some to calls with "
                                        f"mcp.agent_options.{self.name}")
        if unknown:
            raise ActionInputError(f"{self.name}: unknown argument(s) {', '.join(map(repr, unknown))}",
                                   hint=did_you_mean(str(unknown[0]), self.accepted)
                                   or f"{self.name} takes {', '.join(self.accepted)}")
        if IMAGE not in args:
            raise ActionInputError(f"{self.name}: `image` is missing",
                                   hint="give an image id (register_image returns one), a data URL or an allowed "
                                        "path")

    def _space(self, value: Any) -> CoordinateSpace:
        try:
            return CoordinateSpace(value)
        except ValueError:
            raise ActionInputError(f"{self.name}: coordinates {value!r} is not a coordinate space",
                                   hint=f"use one of {', '.join(c.value for c in CoordinateSpace)}") from None

    def _box(self, value: Any, target: StoredImage, space: CoordinateSpace) -> tuple[tuple, tuple[str, ...]]:
        """``value`` (``[x0, y0, x1, y1]`` in ``space`` of ``target``) in ``target``'s pixels, exactly; a box
        leaving the image is clamped to it, a degenerate one or one wholly outside refused."""
        w, h = target.frame.size
        full = (w, h) if space.scale is None else (space.scale, space.scale)
        hint = (f"{target.id} is {w}x{h} px: in {space.value}, a box inside it lies within [0, 0, {full[0]}, "
                f"{full[1]}], with x0 < x1 and y0 < y1")
        numeric = isinstance(value, list | tuple) and len(value) == 4 and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        if not numeric:
            raise ActionInputError(f"{self.name}: box must be [x0, y0, x1, y1], 4 numbers; got {value!r}", hint=hint)
        try:  # the frame under its public id: read_box names it in its messages
            box, repairs = read_box(list(value), dataclasses.replace(target.frame, id=target.id), scale=space.scale,
                                    repair=True)
        except BoxProblem as exc:
            raise ActionInputError(f"{self.name}: {exc}", hint=hint) from None
        return box.as_tuple(), repairs

    def _read(self, arguments: Mapping[str, Any]):
        """``(target, registered now, Args, options, repairs)`` for a call's ``arguments``."""
        args = dict(arguments)
        self._check_keys(args)
        ref = args.pop(IMAGE)
        if not isinstance(ref, str):
            raise ActionInputError(f"{self.name}: `image` must be a string (an id, a data URL or a path), not "
                                   f"{type(ref).__name__}", hint="register_image takes MCP image content and gives "
                                                                 "an id to pass here")
        written = args.pop(COORDINATES, None)  # null, as `options`: the default
        space = self._space(CoordinateSpace.PIXELS.value if written is None else written)
        overrides = args.pop(OPTIONS, None)
        overrides = {} if overrides is None else overrides
        if not isinstance(overrides, Mapping):
            raise ActionInputError(f"{self.name}: `options` must be an object of option names and values",
                                   hint=f"e.g. {{}}; the tool's schema lists {self.name}'s options")
        closed = [k for k in overrides if k not in self.agent_options]
        if closed:
            raise ActionInputError(f"{self.name}: a call may not set the option(s) {', '.join(map(repr, closed))}",
                                   hint=f"it may set {', '.join(self.agent_options)} (mcp.agent_options."
                                        f"{self.name}); the run config sets the others")
        target, registered = self.store.resolve(ref, self.local_root)
        repairs: tuple[str, ...] = ()
        if self.takes_box and args.get(BOX) is not None:
            args[BOX], repairs = self._box(args[BOX], target, space)
        try:
            parsed = self.action.Args.model_validate(args)
        except ValidationError as exc:
            raise _bad_args(self.name, exc) from None
        options = validate_action_options(self.action, {**self.options, **overrides}, f"{self.name}'s options") \
            if overrides else dict(self.base_options)
        return target, registered, parsed, options, repairs

    # -- running it --------------------------------------------------------------------------------

    def call(self, arguments: Mapping[str, Any]) -> ToolResult:
        """Run the action as ``arguments`` say. Raises :class:`~perceive.errors.PerceiveError` for a call it
        cannot run (the caller's mistake); a failure of the action is returned as the tool error."""
        target, registered, args, options, repairs = self._read(arguments)
        # copies, as the loop's Observer makes them: a plugin that paints on its input changes no stored image
        root = target.root.copy()
        image = root if target.frame.id == ROOT else target.image.copy()
        context = ActionContext(image=image, frame=target.frame, root=root, options=options, _ids=target.ids,
                                **self.context())
        result = dispatch(self.registry.pm, self.action, ActionCall(self.name, args, target.frame.id), context,
                          timeout_s=self.timeout_s)
        if not result.ok:
            return self._failed(result.failure, target)
        head = [f"registered the image as {target.group} ({target.root.width}x{target.root.height} px)"] \
            if registered else []
        head += ["the box was clamped to the image"] if "clamped" in repairs else []
        common = {"image": target.id, "registered": target.group if registered else None, "repairs": list(repairs)}
        if self.action.observation == "view":
            return self._views(target, result.observation, head, common)
        return self._texts(target, result.observation, head, common)

    def _failed(self, failure: ActionFailure, target: StoredImage) -> ToolResult:
        # a failure keeps its error's text whole ("MESSAGE\n  -> HINT")
        message, _, hint = failure.message.partition(HINT_MARK)
        message = message if failure.timed_out else f"{self.name} failed on {target.id}: {message}"
        return error_result(message, failure.code, {"stage": failure.stage.value, "action": self.name},
                            hint=hint or None)

    def _views(self, target: StoredImage, views: tuple[View, ...], head: list[str], common: dict) -> ToolResult:
        ids = self.store.add_views(target.group, views)
        items = [{"id": i, "box": box_list(v.box), "size": list(v.image.size), "parent": target.public(v.frame.parent),
                  "label": v.label} for i, v in zip(ids, views, strict=True)]
        lines = [*head, f"{self.name} on {target.id}: {len(views)} new view(s); boxes [x0, y0, x1, y1] in "
                        f"{target.group}'s pixels:"]
        lines += [f"  {it['id']}: box {box_text(it['box'])}, {it['size'][0]}x{it['size'][1]} px" for it in items]
        parts: list[ImagePart | TextPart] = [ImagePart(v.image, i, tuple(it["box"]))
                                             for i, v, it in zip(ids, views, items, strict=True)]
        return ToolResult([*parts, TextPart("\n".join(lines))], {**common, "views": items})

    def _texts(self, target: StoredImage, texts: tuple[Text, ...], head: list[str], common: dict) -> ToolResult:
        boxes = [{"box": box_list(b), "text": t} for obs in texts for b, t in obs.boxes]
        regions = [box_list(obs.box) for obs in texts]
        text = "\n".join(obs.text for obs in texts)
        lines = [*head, f"{self.name} on {target.id}, region{'s' if len(regions) > 1 else ''} "
                        f"{', '.join(map(box_text, regions))} of {target.group}'s pixels:", text or "(no text)"]
        if boxes:
            lines += ["boxes [x0, y0, x1, y1] in the original's pixels:"]
            lines += [f"  {box_text(b['box'])} {b['text']}" for b in boxes]
        return ToolResult([TextPart("\n".join(lines))],
                          {**common, "views": [], "text": text, "boxes": boxes, "regions": regions})


__all__ = ["SHOWABLE", "ActionTool", "describe"]
