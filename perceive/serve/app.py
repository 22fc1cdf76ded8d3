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
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from perceive.config.settings import MANY_SAMPLES_BATCH_SIZE, ServeConfig
from perceive.loop import Finished, ToolCallsPending
from perceive.serve import replies
from perceive.serve.metrics import Metrics
from perceive.serve.openai_schema import ChatRequest
from perceive.serve.problems import CLIENT_ERRORS, BodyLimit, HTTPProblem, problem_from
from perceive.serve.requests import Requests
from perceive.serve.scheduler import Draining, Job, QueueFull, Scheduler
from perceive.trace import FinishReason

_DEFAULTS = ServeConfig()  # the run config's serve: section holds the one set of defaults


@dataclass
class ServeSettings:
    """The app's settings, resolved from the run config (``perceive.cli.serve_cmd.serve_settings``)."""

    model_name: str = "perceive"
    max_batch: int = MANY_SAMPLES_BATCH_SIZE
    max_queue: int = _DEFAULTS.max_queue
    max_body_bytes: int = int(_DEFAULTS.max_body_mb * 1024 * 1024)
    #: the longest a request may take (its own ``deadline_s`` is capped to this)
    deadline_s: float = _DEFAULTS.deadline_s
    allow_local_images: Path | None = None


def _metrics_hooks(metrics: Metrics):
    """``(on_step, on_done)`` of the scheduler: what the metrics count."""

    def on_done(job: Job, done: Finished | None) -> None:
        metrics.latency.observe(time.monotonic() - job.t0)
        if done is None:  # it never ran: its client left first, or it could not start
            metrics.requests.labels("cancelled" if job.cancelled else "error").inc()
            return
        t = done.trace
        status = {FinishReason.CANCELLED: "cancelled", FinishReason.DEADLINE: "deadline",
                  FinishReason.ERROR: "error"}.get(t.finish_reason, "ok")
        if status == "error" and (t.error or {}).get("code") in CLIENT_ERRORS:
            status = "bad_request"  # the client's mistake (a conversation that cannot be replayed), a 400
        metrics.requests.labels(status).inc()
        for hop in t.hops:
            metrics.hops.labels(hop.action).inc()
        metrics.tokens.labels("prompt").inc(t.prompt_tokens + sum(h.prefilled_tokens for h in t.hops))
        metrics.tokens.labels("generated").inc(t.generated_tokens)

    def on_step(seconds: float, running: int) -> None:
        metrics.step.observe(seconds)

    return on_step, on_done


def _error_handlers(app: FastAPI, metrics: Metrics) -> None:
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


def _info_routes(app: FastAPI, loop, settings: ServeSettings, scheduler: Scheduler, metrics: Metrics,
                 tool_names: set[str]) -> None:
    actions = loop.registry.select(loop.options.actions)

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


def _submit(scheduler: Scheduler, job: Job) -> None:
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


async def _reply(req: ChatRequest, job: Job, rid: str, settings: ServeSettings, scheduler: Scheduler,
                 request: Request):
    """The plain (not streamed) response: waits for the job's ``Finished``; a client that went away
    cancels it."""
    pending: ToolCallsPending | None = None
    while True:
        try:
            item = await asyncio.wait_for(job.events.get(), 0.25)
        except TimeoutError:
            if await request.is_disconnected():
                scheduler.cancel(job)
                return JSONResponse({}, status_code=499)
            continue
        if isinstance(item, BaseException):
            raise problem_from(item, counted=True)
        if isinstance(item, ToolCallsPending):
            pending = item
        elif isinstance(item, Finished):
            return JSONResponse(replies.completion(req, settings.model_name, rid, item, pending, job.conv.warnings))


async def _stream(req: ChatRequest, job: Job, rid: str, settings: ServeSettings, scheduler: Scheduler):
    chunks = replies.Chunks(req, settings.model_name, rid, job.conv.warnings)
    try:
        yield chunks.first()
        while True:
            item = await job.events.get()
            if isinstance(item, BaseException):
                yield problem_from(item).sse()
                return
            for text in chunks.of(item):
                yield text
            if isinstance(item, Finished):
                return
    finally:
        if not job.finished:
            scheduler.cancel(job)  # the client went away mid-stream


def create_app(loop, settings: ServeSettings | None = None) -> FastAPI:
    """The app serving ``loop`` (a :class:`~perceive.loop.PerceptionLoop`): it reads the loop's
    events (through the scheduler), never a sample."""
    settings = settings or ServeSettings()
    metrics = Metrics()
    on_step, on_done = _metrics_hooks(metrics)
    scheduler = Scheduler(loop, settings.max_batch, settings.max_queue, on_step=on_step, on_done=on_done)
    requests = Requests(loop, settings)

    @asynccontextmanager
    async def lifespan(app):
        scheduler.start()
        yield
        # uvicorn stops taking connections and waits for the open ones (SIGTERM): then the drain
        await asyncio.to_thread(scheduler.stop)

    app = FastAPI(title="perceive", lifespan=lifespan)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.state.scheduler = scheduler
    app.state.metrics = metrics
    app.state.settings = settings
    _error_handlers(app, metrics)
    _info_routes(app, loop, settings, scheduler, metrics, requests.tool_names)

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, request: Request):
        # decoding images and checking the graph off the event loop: other connections keep moving
        job = await asyncio.to_thread(requests.job, req)
        job.aio, job.events = asyncio.get_running_loop(), asyncio.Queue()
        _submit(scheduler, job)
        rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if req.stream:
            return StreamingResponse(_stream(req, job, rid, settings, scheduler), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return await _reply(req, job, rid, settings, scheduler, request)

    return app
