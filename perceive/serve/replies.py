"""A finished request as OpenAI's chat completion (plain, or streamed as SSE chunks), built from
the loop's events only (:mod:`perceive.loop.events`): the answer, the calls going back to the
client, the usage, and perceive's extension (``perceive``: finish reason, answer, trace,
warnings)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from perceive.loop import Finished, HopFinished, TokenDelta, ToolCallsPending
from perceive.serve.openai_schema import ChatRequest
from perceive.serve.problems import CLIENT_ERRORS, HTTPProblem
from perceive.trace import FinishReason

#: trace finish reasons as OpenAI's finish_reason
_OPENAI_FINISH = {FinishReason.MAX_NEW_TOKENS: "length", FinishReason.CONTEXT_FULL: "length",
                  FinishReason.TOOL_CALLS: "tool_calls"}

#: the hop fields a stream's ``perceive.hop`` event carries
_HOP_FIELDS = ("index", "action", "args", "box", "views", "node", "dispatch_ms", "error", "cached")


def check(done: Finished) -> None:
    """Raise the problem a finished sample's error is: the client's input (400), a passed deadline (504)."""
    t = done.trace
    if t.finish_reason is FinishReason.ERROR and (t.error or {}).get("code") in CLIENT_ERRORS:
        e = t.error
        raise HTTPProblem(400, e["message"] + (f" ({e['hint']})" if e.get("hint") else ""), code=e["code"],
                          counted=True)
    if t.finish_reason is FinishReason.DEADLINE:
        raise HTTPProblem(504, t.error["message"], type="timeout", code="deadline_exceeded", counted=True)


def message(req: ChatRequest, done: Finished, pending: ToolCallsPending | None) -> tuple[dict, str]:
    """The assistant message and OpenAI's finish reason."""
    content = done.answer if req.skip_special_tokens else done.raw
    msg: dict[str, Any] = {"role": "assistant", "content": content}
    if done.finish_reason is FinishReason.TOOL_CALLS and pending is not None:
        msg["content"] = (pending.text if req.skip_special_tokens else pending.raw) or None
        msg["tool_calls"] = [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                              "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
                              "perceive": {"action": c.action, "args": c.args, "target": c.target,
                                           "options": c.options, "boxes": c.boxes}} for c in pending.calls]
        msg["perceive"] = {"text": done.raw}
    return msg, _OPENAI_FINISH.get(done.finish_reason, "stop")


def extension(req: ChatRequest, done: Finished, warnings: list[str]) -> dict:
    """perceive's own part of the response: why it finished, the answer, the trace (when asked),
    warnings (the request's, and characters the tokenizer lost)."""
    ext: dict[str, Any] = {"finish_reason": str(done.finish_reason), "answer": done.answer}
    if req.perceive.trace:
        ext["trace"] = done.trace.to_dict()
    warnings = warnings + done.trace.warnings()
    if warnings:
        ext["warnings"] = warnings
    return ext


def usage(done: Finished) -> dict:
    t = done.trace
    prompt = t.prompt_tokens + sum(h.prefilled_tokens for h in t.hops)
    return {"prompt_tokens": prompt, "completion_tokens": t.generated_tokens,
            "total_tokens": prompt + t.generated_tokens}


def completion(req: ChatRequest, model: str, rid: str, done: Finished, pending: ToolCallsPending | None,
               warnings: list[str]) -> dict:
    check(done)
    msg, finish = message(req, done, pending)
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": msg, "finish_reason": finish, "logprobs": None}],
            "usage": usage(done), "perceive": extension(req, done, warnings)}


class Chunks:
    """The SSE chunks of one streamed completion, one event at a time."""

    def __init__(self, req: ChatRequest, model: str, rid: str, warnings: list[str]):
        self.req, self.model, self.rid, self.warnings = req, model, rid, warnings
        self.created = int(time.time())
        self.calls: ToolCallsPending | None = None

    def chunk(self, delta: dict | None, finish: str | None = None, **extra) -> str:
        body = {"id": self.rid, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
        return f"data: {json.dumps(body)}\n\n"

    def first(self) -> str:
        return self.chunk({"role": "assistant", "content": ""})

    def of(self, ev) -> list[str]:
        """The chunks of one loop event (none for events a client is not shown)."""
        if isinstance(ev, TokenDelta):
            return [self.chunk({"content": ev.text})] if ev.text else []
        if isinstance(ev, HopFinished):
            hop = {k: ev.hop.get(k) for k in _HOP_FIELDS}
            hop["dispatch_ms"] = round(hop["dispatch_ms"] or 0.0, 3)
            return [self.chunk(None, perceive={"event": "hop", "hop": hop})]
        if isinstance(ev, ToolCallsPending):
            self.calls = ev
            return []
        if isinstance(ev, Finished):
            try:
                check(ev)
            except HTTPProblem as p:
                return [p.sse()]
            msg, finish = message(self.req, ev, self.calls)
            delta = {k: v for k, v in msg.items() if k in ("tool_calls", "perceive")}
            if "tool_calls" in delta:
                delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(delta["tool_calls"])]
            return [self.chunk(delta, finish), self.chunk(None, usage=usage(ev),
                                                          perceive=extension(self.req, ev, self.warnings)),
                    "data: [DONE]\n\n"]
        return []
