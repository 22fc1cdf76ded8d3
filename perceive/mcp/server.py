"""The MCP side of ``perceive mcp``: a :class:`~perceive.mcp.toolbox.Toolbox` served with the official SDK's
low-level ``Server`` (the one 2.x API that takes explicit input schemas), over stdio or streamable HTTP.

This module only translates. The SDK checks no arguments and turns an exception in a handler into a
protocol error plus a traceback on stderr, so every call goes through :meth:`Toolbox.call` (which answers a
caller's mistake or a plugin's fault as a tool error) and, as a last resort, a catch here that answers
anything else as a tool error too: the server outlives any one call.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import mcp.types as types
import uvicorn
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

from perceive.mcp.results import ImagePart, TextPart, ToolResult, ToolSpec, failure_of
from perceive.mcp.toolbox import Toolbox
from perceive.netserve import ListeningServer

if TYPE_CHECKING:
    import socket

    from PIL import Image
    from starlette.applications import Starlette

log = logging.getLogger("perceive.mcp")

#: the URL path of the streamable HTTP endpoint
HTTP_PATH = "/mcp"
#: after SIGTERM or Ctrl-C, the longest the calls running may take to finish
GRACE_S = 10

INSTRUCTIONS = (
    "perceive's perception actions (crop, zoom, tiles, OCR, installed plugins) and perception graphs as tools. "
    "Name an image by id, or give it as a data URL or a local path the server allows: register_image returns "
    "an id (img1) for later calls. Every view a tool returns is kept under a new id (img1.v1) with its box "
    "(x0, y0, x1, y1) in the original image's pixels, so a crop of a crop names img1.v1. A box you pass is in "
    "the pixels of the image you name, or 0-1000 / 0-1 of it with `coordinates`.")


def tool_of(spec: ToolSpec) -> types.Tool:
    """The SDK's tool for ``spec``: its annotations say whether it only reads, and whether it reaches
    beyond this machine (only a graph tool whose model is served elsewhere does)."""
    return types.Tool(name=spec.name, description=spec.description, input_schema=spec.input_schema,
                      annotations=types.ToolAnnotations(read_only_hint=spec.read_only,
                                                        open_world_hint=spec.open_world))


def png_base64(image: Image.Image) -> str:
    """``image`` as base64 PNG: lossless, so the agent gets the view's exact pixels (lmms-eval labels every
    image it forwards as PNG)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def result_of(result: ToolResult) -> types.CallToolResult:
    """``result`` as the SDK's: each :class:`ImagePart` an ``image/png`` image content, each
    :class:`TextPart` a text content, in order; ``structured`` as structured content (no tool declares an
    output schema, so a client checks none)."""
    content: list[types.ImageContent | types.TextContent] = []
    for part in result.content:
        if isinstance(part, ImagePart):
            content.append(types.ImageContent(data=png_base64(part.image), mime_type="image/png"))
        elif isinstance(part, TextPart):
            content.append(types.TextContent(text=part.text))
        else:
            raise TypeError(f"a tool result holds a {type(part).__name__}, neither ImagePart nor TextPart")
    structured = result.structured
    if structured is not None:
        json.dumps(structured)  # fails here, answered as this call's error, not later on the wire
    return types.CallToolResult(content=content, structured_content=structured, is_error=result.is_error)


def internal_failure(name: str, exc: BaseException) -> types.CallToolResult:
    """The tool error for an exception nothing else caught (a bug in perceive or a plugin): one line, as the
    CLI reports one, also logged as one line on stderr (never a traceback)."""
    result = failure_of(exc)
    log.error("tool %s failed: %s", name, result.structured["error"]["message"])
    return result_of(result)


def _answer(toolbox: Toolbox, name: str, arguments: dict[str, Any] | None) -> types.CallToolResult:
    """Run one call in a worker thread: the toolbox's blocking call and the PNG encoding."""
    try:
        return result_of(toolbox.call(name, arguments))
    except (Exception, SystemExit) as exc:  # a plugin may call sys.exit: still one call's failure
        return internal_failure(name, exc)


def build_server(toolbox: Toolbox) -> Server:
    """An MCP server over ``toolbox``: its tools (fixed for the process) and their calls. Each call runs in a
    worker thread, so the event loop keeps answering pings, other calls and cancellations meanwhile; a
    cancelled call stops waiting at once (its action still ends by its own deadline)."""
    from perceive import __version__

    tools = [tool_of(spec) for spec in toolbox.tools()]
    # One model runs one graph call at a time. Its waiting calls queue here, in the event loop, not as worker
    # threads blocked on the model's lock: 40 of those would take anyio's whole pool and hang the action tools.
    graph_turn = anyio.CapacityLimiter(1)

    async def list_tools(ctx, params) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools)

    async def call_tool(ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
        graph = toolbox.is_graph(params.name)
        try:
            # a graph call cancelled while queued never starts; once started it holds its turn to the end
            # (abandoning it would let the next one start beside it); an action call is abandoned at once
            return await anyio.to_thread.run_sync(_answer, toolbox, params.name, params.arguments,
                                                  abandon_on_cancel=not graph, limiter=graph_turn if graph else None)
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:  # the worker thread could not even start
            return internal_failure(params.name, exc)

    return Server("perceive", version=__version__, instructions=INSTRUCTIONS, on_list_tools=list_tools,
                  on_call_tool=call_tool)


@contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """File descriptor 1 points at stderr meanwhile (for this process, its threads and children): what
    a plugin or a library prints while loading cannot reach the stdio wire."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def serve_stdio(build: Callable[[], Toolbox]) -> None:
    """Serve over this process's stdin and stdout until stdin closes (the client quits).

    ``build`` makes the toolbox (reads the config, loads the plugins) with stdout pointed at stderr, and
    before the wire opens: a failure then ends the process at once with its error on stderr (once serving,
    a thread waits on stdin, and only the client's closing it ends the process). While serving, the SDK
    points file descriptor 1 at stderr too."""
    with stdout_to_stderr():
        server = build_server(build())

    async def main() -> None:
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())

    anyio.run(main)


def http_app(server: Server, host: str, max_body_mb: float) -> Starlette:
    """The streamable HTTP app of ``server`` at :data:`HTTP_PATH`: a new one for every start (its session
    manager runs once). Stateless: the images a call keeps are the process's, not a session's, and no
    standing event stream holds a shutdown up. Bound to a loopback ``host``, the SDK refuses requests whose
    ``Host`` header names another (DNS rebinding: 421); bodies over ``max_body_mb`` get 413."""
    return server.streamable_http_app(streamable_http_path=HTTP_PATH, host=host, stateless_http=True,
                                      max_request_body_size=int(max_body_mb * 1024 * 1024))


class HttpServer(ListeningServer):
    """uvicorn that exits 0 on SIGTERM or Ctrl-C: the first signal closes the listener and lets the requests
    running finish; a second stops at once. ``on_started(port)``: called once listening, with the port
    really bound."""

    def handle_exit(self, sig: int, frame) -> None:
        # not uvicorn's: it records the signal to raise again after shutdown
        self.force_exit = self.should_exit
        self.should_exit = True


def serve_http(toolbox: Toolbox, sock: socket.socket, host: str, max_body_mb: float,
               on_started: Callable[[int | None], None] | None = None) -> None:
    """Serve ``toolbox`` over streamable HTTP on the bound ``sock`` until SIGTERM or Ctrl-C."""
    app = http_app(build_server(toolbox), host, max_body_mb)
    server = HttpServer(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=GRACE_S), on_started)
    server.run(sockets=[sock])
