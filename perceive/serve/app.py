"""``perceive serve``: an OpenAI-compatible chat endpoint that runs perception.

Two modes, chosen per request:

* **server-side perception** (default): the server runs the hops; the response holds the answer,
  and the trace in ``perceive.trace`` (boxes in root pixels);
* **client-side tools**: the request lists tools the model calls (``image_zoom_in_tool``,
  ``region_select``, ...); the server returns ``tool_calls`` and the client runs them, then sends
  the results back (:mod:`perceive.serve.messages`).

Errors are OpenAI's error JSON with a 4xx (``invalid_request_error``), never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from perceive.errors import ErrorCode, PerceiveError, error_code
from perceive.loop.replay import preview_boxes
from perceive.loop.sample import Answer
from perceive.loop.unencodable import warnings as tokenizer_warnings
from perceive.serve.messages import read_conversation
from perceive.serve.metrics import Metrics
from perceive.serve.scheduler import Draining, Job, QueueFull, Scheduler
from perceive.serve.schema import ChatRequest
from perceive.trace import FinishReason

#: trace finish reasons as OpenAI's finish_reason
_OPENAI_FINISH = {FinishReason.MAX_NEW_TOKENS: "length", FinishReason.CONTEXT_FULL: "length",
                  FinishReason.TOOL_CALLS: "tool_calls"}


@dataclass
class ServeSettings:
    model_name: str = "perceive"
    max_batch: int = 8
    max_queue: int = 64
    max_body_bytes: int = 20 * 1024 * 1024
    #: the longest a request may take (its own ``deadline_s`` is capped to this)
    deadline_s: float = 600.0
    allow_local_images: Path | None = None


class HTTPProblem(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None, counted: bool = False):
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}
        self.counted = counted  # the metrics have it already (a request that reached the model thread)
        super().__init__(message)

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.type, "param": self.param,
                                       "code": self.code}}, status_code=self.status, headers=self.headers)


#: trace errors that are the client's mistake (a 400), not the server's, by their documented code
_CLIENT_ERRORS = (ErrorCode.INPUT_INVALID.value, ErrorCode.IMAGE_UNREADABLE.value)


def _problem_from(exc: BaseException, counted: bool = False) -> HTTPProblem:
    """A request's error as an OpenAI-style problem whose ``code`` is the documented
    :class:`~perceive.errors.ErrorCode` value: a ``PerceiveError`` is the client's (400), anything
    else a bug (500, code ``internal``)."""
    if not isinstance(exc, PerceiveError):
        return HTTPProblem(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error",
                           code=ErrorCode.INTERNAL.value, counted=counted)
    msg = exc.message if getattr(exc, "message", None) else str(exc)
    hint = getattr(exc, "hint", None)
    return HTTPProblem(400, msg + (f" ({hint})" if hint else ""), code=error_code(exc), counted=counted)


class _BodyLimit:
    """Refuse a body over ``limit`` bytes with 413, whether or not it declares its length."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_big = HTTPProblem(413, f"the request body is over the server's limit of {self.limit} bytes",
                              code="body_too_large")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await too_big.response()(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooBig
            return message

        try:
            await self.app(scope, counted, send)
        except _TooBig:
            await too_big.response()(scope, receive, send)


def _sse_error(p: HTTPProblem) -> str:
    """An error after the stream began: OpenAI's clients raise it from the ``error`` key."""
    return f"data: {json.dumps({'error': {'message': p.message, 'type': p.type, 'code': p.code}})}\n\n"


class _TooBig(Exception):
    pass


def _callable(loop) -> list:
    """The actions a client can run for the model: views and text (features go back into the
    model's own layers), and, for special-token calls, only those whose start token its tokenizer
    has (an installed plugin's span the model never learned is not a tool of it)."""
    tok = loop.tokenizer
    unk = getattr(tok, "unk_token_id", None)

    def known(token: str) -> bool:
        i = tok.convert_tokens_to_ids(token)
        return i is not None and i != unk

    return [a for a in loop.actions
            if a.grammar is not None and a.observation in ("view", "text") and known(a.grammar.start)]


def create_app(loop, settings: ServeSettings | None = None) -> FastAPI:
    """The app serving ``loop`` (a :class:`~perceive.loop.PerceptionLoop`)."""
    settings = settings or ServeSettings()
    metrics = Metrics()

    def on_done(job: Job, answer: Answer | None) -> None:
        metrics.latency.observe(time.monotonic() - job.t0)
        if answer is None:  # it never ran: its client left first, or it could not start
            metrics.requests.labels("cancelled" if job.cancelled else "error").inc()
            return
        t = answer.trace
        status = {FinishReason.CANCELLED: "cancelled", FinishReason.DEADLINE: "deadline",
                  FinishReason.ERROR: "error"}.get(t.finish_reason, "ok")
        if status == "error" and (t.error or {}).get("code") in _CLIENT_ERRORS:
            status = "bad_request"  # the client's mistake (a conversation that cannot be replayed), a 400
        metrics.requests.labels(status).inc()
        for hop in t.hops:
            metrics.hops.labels(hop.action).inc()
        metrics.tokens.labels("prompt").inc(t.prompt_tokens + sum(h.prefilled_tokens for h in t.hops))
        metrics.tokens.labels("generated").inc(t.generated_tokens)

    def on_step(seconds: float, running: int) -> None:
        metrics.step.observe(seconds)

    scheduler = Scheduler(loop, settings.max_batch, settings.max_queue, on_step=on_step, on_done=on_done)
    actions = loop.registry.select(loop.options.actions)
    tool_names = set(loop.protocol.tool_names(_callable(loop)))

    @asynccontextmanager
    async def lifespan(app):
        scheduler.start()
        yield
        # uvicorn stops taking connections and waits for the open ones (SIGTERM): then the drain
        await asyncio.to_thread(scheduler.stop)

    app = FastAPI(title="perceive", lifespan=lifespan)
    app.add_middleware(_BodyLimit, limit=settings.max_body_bytes)
    app.state.scheduler = scheduler
    app.state.metrics = metrics
    app.state.settings = settings

    @app.exception_handler(HTTPProblem)
    async def _problem(request, exc: HTTPProblem):
        if not exc.counted:
            metrics.requests.labels("rejected" if exc.status in (429, 503) else "bad_request").inc()
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        msg = first.get("msg", "invalid request")
        if first.get("type") == "extra_forbidden":
            msg, where = f"unknown field {where!r}: perceive's own options go in the 'perceive' object", ""
        elif first.get("type") == "json_invalid":
            msg = "the request body is not valid JSON"
        elif "content" in first.get("loc", ()):
            msg += ('; a message\'s content is text, or a list of parts: {"type": "text", "text": ...} and '
                    '{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}')
        metrics.requests.labels("bad_request").inc()
        return HTTPProblem(400, f"{where}: {msg}" if where else msg, param=where or None,
                           code=first.get("type")).response()

    @app.exception_handler(Exception)
    async def _crash(request, exc: Exception):  # a bug: say so, without a traceback
        metrics.requests.labels("error").inc()
        return HTTPProblem(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error").response()

    @app.get("/health")
    async def health():
        # 503 while draining: a load balancer's health check takes the replica out before it exits
        draining = scheduler.draining or scheduler.stopping
        return JSONResponse({"status": "draining" if draining else "ok", "running": scheduler.running,
                             "queued": scheduler.queued, "threads": scheduler.threads},
                            status_code=503 if draining else 200)

    @app.get("/metrics")
    async def metrics_endpoint():
        metrics.queue.set(scheduler.queued)
        metrics.running.set(scheduler.running)
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{
            "id": settings.model_name, "object": "model", "created": 0, "owned_by": "perceive",
            "perceive": {"protocol": loop.protocol.name, "protocol_options": loop.protocol.options.model_dump(),
                         "tools": sorted(tool_names), "actions": [a.name for a in actions],
                         # what a client running the actions itself must use (the model's trained options)
                         "action_options": {k: dict(v) for k, v in loop.options.action_options.items()}}}]}

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, request: Request):
        # decoding images and checking the graph off the event loop: other connections keep moving
        job = await asyncio.to_thread(_job, req)
        job.aio, job.events = asyncio.get_running_loop(), asyncio.Queue()
        try:
            scheduler.submit(job)
        except QueueFull as exc:
            raise HTTPProblem(429, f"the server is busy: {scheduler.queued} requests are waiting",
                              type="rate_limit_error", code="queue_full",
                              headers={"Retry-After": str(exc.retry_after)}) from None
        except Draining:  # another replica can take it at once: the load balancer routes it there
            raise HTTPProblem(503, "the server is shutting down and takes no new requests: send it again (to "
                              "another replica)", type="service_unavailable", code="draining",
                              headers={"Retry-After": "1"}) from None
        rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if req.stream:
            return StreamingResponse(_stream(req, job, rid), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        while True:
            try:
                kind, value = await asyncio.wait_for(job.events.get(), 0.25)
            except TimeoutError:
                if await request.is_disconnected():
                    scheduler.cancel(job)
                    return JSONResponse({}, status_code=499)
                continue
            if kind == "error":
                raise _problem_from(value, counted=True)
            if kind == "done":
                return _completion(req, job, value, rid)

    def _job(req: ChatRequest) -> Job:
        if req.model != settings.model_name:
            raise HTTPProblem(404, f"the model {req.model!r} does not exist; this server serves "
                              f"{settings.model_name!r} (GET /v1/models)", param="model", code="model_not_found")
        if req.unsupported():
            raise HTTPProblem(400, f"{', '.join(req.unsupported())}: not supported by perceive serve (it returns the "
                              "model's greedy text, its tool calls and its trace)", param=req.unsupported()[0],
                              code="unsupported")
        for t in req.tools or []:
            if t.function.name not in tool_names:
                raise HTTPProblem(400, f"tools: no tool named {t.function.name!r}; this model calls "
                                  f"{sorted(tool_names)} (protocol {loop.protocol.name})", param="tools",
                                  code="invalid_tools")
        if req.tool_choice not in (None, "auto", "none"):
            raise HTTPProblem(400, "tool_choice: only 'auto' and 'none' are supported (the model decides when "
                              "to look)", param="tool_choice")
        try:
            conv = read_conversation(req, loop.protocol, settings.allow_local_images)
        except PerceiveError as exc:
            raise _problem_from(exc) from None
        if req.temperature or (req.top_p is not None and req.top_p < 1):
            conv.warnings.append("temperature/top_p are not used: this server decodes greedily")
        if req.ignored():
            conv.warnings.append(f"{', '.join(req.ignored())}: not used (greedy decoding)")
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        own = set(loop.protocol.stop_strings(loop.actions))
        if set(stops) - own:
            conv.warnings.append(f"stop strings other than the calls' closing tags are not applied: "
                                 f"{sorted(set(stops) - own)}")
        o = req.perceive
        unknown = sorted(set(o.actions) - {a.name for a in loop.registry.select(None)})
        if unknown:
            raise HTTPProblem(400, f"perceive.actions: no action named {unknown}", param="perceive.actions")
        if o.graph is not None or o.params or o.max_hops is not None:
            _check_graph(o)
        deadline = min(o.deadline_s or settings.deadline_s, settings.deadline_s)
        client_tools = (frozenset(t.function.name for t in req.tools) if req.tools and req.tool_choice != "none"
                        else False)
        return Job(conv, client_tools=client_tools, max_new_tokens=req.max_completion_tokens or req.max_tokens,
                   graph=o.graph, params=o.params or None, max_hops=o.max_hops, action_options=o.actions or None,
                   deadline=time.monotonic() + deadline, stream=req.stream)

    def _check_graph(o) -> None:
        """Compile and check a request's own graph before it queues; the loop keeps the controller,
        so the sample reuses it (compiled once per graph, params and budget)."""
        from perceive.graph import GraphValidationError

        try:
            loop.controller_for(o.graph or "free_choice", o.params or None, o.max_hops)
        except (GraphValidationError, FileNotFoundError) as exc:
            raise HTTPProblem(400, f"perceive.graph: {exc}", param="perceive.graph", code="invalid_graph") from None
        except PerceiveError as exc:
            raise _problem_from(exc) from None

    def _message(req: ChatRequest, job: Job, answer: Answer) -> tuple[dict, str]:
        s, t = job.sample, answer.trace
        tok = loop.tokenizer
        raw = tok.decode([i for i in s.generated[s.answer_from:] if i not in loop.eos], skip_special_tokens=False)
        content = answer.text if req.skip_special_tokens else raw
        msg: dict[str, Any] = {"role": "assistant", "content": content}
        if t.finish_reason is FinishReason.TOOL_CALLS:
            tag = getattr(loop.protocol, "open_tag", "")
            before = content.split(tag)[0].strip() if tag else content
            msg["content"] = before or None
            calls, limits = [], s.limits or loop.limits
            for call in s.calls:
                name, arguments = loop.protocol.call_name_and_arguments(call)
                boxes = preview_boxes(loop.observer, s, call)
                calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                              "function": {"name": name, "arguments": json.dumps(arguments)},
                              "perceive": {"action": call.action, "args": call.args.model_dump(mode="json"),
                                           "target": call.target, "options": dict(limits.action_options.get(
                                               call.action, {})), "boxes": boxes}})
            msg["tool_calls"] = calls
            msg["perceive"] = {"text": raw}
        return msg, _OPENAI_FINISH.get(t.finish_reason, "stop")

    def _check(answer: Answer) -> None:
        t = answer.trace
        if t.finish_reason is FinishReason.ERROR and (t.error or {}).get("code") in _CLIENT_ERRORS:
            e = t.error
            raise HTTPProblem(400, e["message"] + (f" ({e['hint']})" if e.get("hint") else ""), code=e["code"],
                              counted=True)
        if t.finish_reason is FinishReason.DEADLINE:
            raise HTTPProblem(504, t.error["message"], type="timeout", code="deadline_exceeded", counted=True)

    def _extension(req: ChatRequest, job: Job, answer: Answer) -> dict:
        t = answer.trace
        ext: dict[str, Any] = {"finish_reason": str(t.finish_reason), "answer": answer.text}
        if req.perceive.trace:
            ext["trace"] = t.to_dict()
        warnings = job.conv.warnings + tokenizer_warnings(t.events)  # characters the tokenizer lost, too
        if warnings:
            ext["warnings"] = warnings
        return ext

    def _usage(answer: Answer) -> dict:
        t = answer.trace
        prompt = t.prompt_tokens + sum(h.prefilled_tokens for h in t.hops)
        return {"prompt_tokens": prompt, "completion_tokens": t.generated_tokens,
                "total_tokens": prompt + t.generated_tokens}

    def _completion(req: ChatRequest, job: Job, answer: Answer, rid: str) -> JSONResponse:
        _check(answer)
        msg, finish = _message(req, job, answer)
        return JSONResponse({"id": rid, "object": "chat.completion", "created": int(time.time()),
                             "model": settings.model_name,
                             "choices": [{"index": 0, "message": msg, "finish_reason": finish, "logprobs": None}],
                             "usage": _usage(answer), "perceive": _extension(req, job, answer)})

    async def _stream(req: ChatRequest, job: Job, rid: str):
        created = int(time.time())

        def chunk(delta: dict | None, finish: str | None = None, **extra) -> str:
            body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": settings.model_name,
                    "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}],
                    **extra}
            return f"data: {json.dumps(body)}\n\n"

        try:
            yield chunk({"role": "assistant", "content": ""})
            while True:
                kind, value = await job.events.get()
                if kind == "hop":
                    yield chunk(None, perceive={"event": "hop", "hop": value})
                elif kind == "delta":
                    yield chunk({"content": value})
                elif kind == "error":
                    yield _sse_error(_problem_from(value))
                    return
                elif kind == "done":
                    try:
                        _check(value)
                    except HTTPProblem as p:
                        yield _sse_error(p)
                        return
                    msg, finish = _message(req, job, value)
                    delta = {k: v for k, v in msg.items() if k in ("tool_calls", "perceive")}
                    if "tool_calls" in delta:
                        delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(delta["tool_calls"])]
                    yield chunk(delta, finish)
                    yield chunk(None, usage=_usage(value), perceive=_extension(req, job, value))
                    yield "data: [DONE]\n\n"
                    return
        finally:
            if job.sample is None or not job.sample.done:
                scheduler.cancel(job)  # the client went away mid-stream

    return app
