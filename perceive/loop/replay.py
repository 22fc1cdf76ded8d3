"""Earlier turns a client ran the tools of (``perceive serve``'s client-side tools): each turn's
text is read with the model's protocol, exactly as if the model had just written it, and each call
is shown with what the client returned. The frames of returned views are the action's own (the
action runs here for its geometry, a crop's cost), so later calls map to the original image
exactly as in a server-side run; the pixels are the client's."""

from __future__ import annotations

from fractions import Fraction
from typing import TYPE_CHECKING

import torch

from perceive.actions import ActionCall
from perceive.dispatch import dispatch
from perceive.errors import InputError, PerceiveError
from perceive.geometry import Frame
from perceive.images import as_rgb
from perceive.loop.unencodable import TextRole, note_unencodable
from perceive.observations import View
from perceive.protocols.calls import ParseError, PerceptionCall
from perceive.trace import EventType, FinishReason

if TYPE_CHECKING:
    from perceive.control import RunLimits
    from perceive.loop.observe import Observer
    from perceive.loop.sample import Sample, ToolResult, Turn


def _resized(frame: Frame, size: tuple[int, int]) -> Frame:
    """``frame`` showing the same region at ``size`` pixels (a client may send its crop resized)."""
    w, h = size
    if (w, h) == frame.size:
        return frame
    return Frame(frame.id, w, h, frame.ox, frame.oy, frame.sx * Fraction(frame.width, w),
                 frame.sy * Fraction(frame.height, h), frame.parent)


def replay(obs: Observer, s: Sample, turn: Turn,
           limits: RunLimits) -> tuple[list[int], list[tuple[torch.Tensor, torch.Tensor]]] | None:
    """``(ids, images)`` of ``turn`` and the observation turn of its call, to prefill after the
    prompt; None when the sample finished (a turn that is not one call, a result of the wrong kind).
    ``limits``: the sample's (its action options)."""
    try:
        if s.parser is None:
            raise InputError("dispatch is off: earlier tool calls cannot be replayed")
        ids = obs.tokenizer.encode(turn.text, add_special_tokens=False)
        calls, errors = [], []
        for t in ids:
            ev = s.parser.feed(t)
            if isinstance(ev, PerceptionCall):
                calls.append(ev)
            elif isinstance(ev, ParseError):
                errors.append(ev)
                s.event(EventType.PARSE_ERROR, **ev.to_dict())
        if turn.partial:  # the model's turn so far, to continue (continue_final_message)
            if calls:
                raise InputError("the assistant message to continue ends in a tool call",
                                 hint="answer the call with its result instead")
            return ids, []
        if errors and not calls:
            raise InputError(f"the tool call in an earlier assistant turn cannot be read: {errors[0].message}",
                             hint="send each assistant message back as the server returned it")
        if not calls:
            raise InputError(f"an earlier assistant turn holds no tool call ({turn.text[:200]!r}): one request is "
                             "one question about one image",
                             hint="to ask another question, start a new request with the image and the question")
        if len(calls) != 1:
            raise InputError(f"an earlier assistant turn holds {len(calls)} tool calls; the model makes one per turn",
                             hint="send each assistant message back as the server returned it, one call per turn")
        if len(turn.results) != 1:
            raise InputError(f"the tool call {calls[0].action!r} got {len(turn.results)} results; send one",
                             hint="answer each tool call with one tool message (or one user turn of images)")
        turn_ids, images = _observation(obs, s, calls[0], turn.results[0], ids[-1], limits)
    except PerceiveError as exc:
        s.fail(FinishReason.ERROR, exc)
        return None
    return ids + turn_ids, images


def _observation(obs: Observer, s: Sample, ev: PerceptionCall, result: ToolResult, closing: int, limits: RunLimits):
    call = ev.to_call()
    options = dict(limits.action_options.get(call.action, {}))
    kind = obs.registry.action(call.action).observation
    if kind == "view":
        if isinstance(result, str) or not result:
            raise InputError(f"{call.action!r} returns views: send its result as images, not text")
        got, hop = obs.run(s, call, options, ev.target, None)
        if got is None:
            raise InputError(f"the tool call {call.action!r} cannot be replayed: {s.trace.error}")
        if len(got) != len(result):
            raise InputError(f"{call.action!r} shows {len(got)} view(s) for this call, but {len(result)} "
                             "image(s) came back", hint="send back one image per view, in order")
        views = [View(as_rgb(img), _resized(v.frame, img.size), v.label) for v, img in zip(got, result, strict=True)]
        blocks, images = obs._view_blocks(s, views, hop)
        first = len(s.views) - len(blocks) + 1
    elif kind == "text":
        if not isinstance(result, str):
            raise InputError(f"{call.action!r} returns text: send its result as text, not images")
        hop = obs._hop(s, call, None)
        s.hops += 1
        hop.text.append({"kind": "text", "text": result, "from": "client"})
        blocks, images, first = [obs.plain(result)], [], len(s.views) + 1
    else:
        raise InputError(f"{call.action!r} returns encoder features: only view and text actions run client-side")
    turn = obs.observation_ids(blocks, first, [closing])[1:]
    if kind == "text":
        note_unencodable(s, obs.tokenizer, turn, [(TextRole.OBSERVATION, blocks[0])])
    hop.prefilled_tokens = len(turn)
    return turn, images


def preview_boxes(obs: Observer, s: Sample, ev: PerceptionCall, limits: RunLimits) -> list[dict] | None:
    """The root-pixel boxes the views of a call going back to the client will show (what it must
    crop), computed by running the action here without recording it; None for a call that shows
    no views, or one that fails (the client finds out when it runs it)."""
    call = ev.to_call()
    action = obs.registry.action(call.action)
    if action.observation != "view":
        return None
    options = dict(limits.action_options.get(call.action, {}))
    target = obs.target_of(s, ev.target)
    call = ActionCall(call.action, call.args, target, call.tokens, call.token_ids)
    res = dispatch(obs.registry.pm, action, call, obs._context(s, options, target),
                   timeout_s=obs.options.action_timeout_s)
    if not res.ok:
        return None
    return [v.box.to_dict() for v in res.observation]
