"""``perceive mcp``: perceive's perception actions and graphs as tools of any agent, over the Model Context
Protocol (docs/how-to/use-perceive-from-an-agent.md).

Over stdio (the default) the process's stdout is the JSON-RPC wire: everything perceive prints, errors
included, goes to stderr, and the config and the plugins load only once the SDK has taken stdout over.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, NoReturn

import typer

from perceive.cli.options import ActionTimeoutOpt, ConfigOpt, ModelOpt, SetOpt
from perceive.cli.output import console, fail, listen_or_fail, url_host
from perceive.cli.run_config import loop_flags

INSTALL_HINT = "pip install 'perceive[mcp]'"


def mcp_flags(host: str | None, port: int | None, allow_local_images: Path | None) -> list[tuple[tuple, Any, str]]:
    """The server's own flags as config overrides of the ``mcp:`` section (``None``: not given)."""
    return [(("mcp", "host"), host, "--host"), (("mcp", "port"), port, "--port"),
            (("mcp", "allow_local_images"), allow_local_images, "--allow-local-images")]


def mcp_config(config: Path | None, sets: list[str] | None, flags: list[tuple[tuple, Any, str]]):
    """The run config, as :func:`perceive.cli.run_config.run_config` builds it, but a model is optional (only
    the graph tools need one: without, they say so when called) and torch is not imported (an agent such as
    lmms-eval starts a server for every call; the graph tools set torch's threads when they load the model)."""
    from perceive.cli.run_config import check_image_folder, run_config

    cfg = run_config(config, sets, flags, model_required=False, threads=False)
    check_image_folder(cfg, "mcp", "agents")
    return cfg


def exit_now() -> NoReturn:
    """End the process with 0 now that serving is over. A call still running (a hung plugin, a graph) holds an
    anyio worker thread, which is no daemon: a normal exit would wait for it (20 s and more), and an agent that
    closed stdin or an operator's SIGTERM expects the server gone at once. Nothing is left to save."""
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def exposure_warning(host: str, allow_local_images: Path | None) -> str | None:
    """The warning for a server that reads local files for whoever reaches it on a network: ``host`` is not
    a loopback address and ``allow_local_images`` is set (None otherwise)."""
    import ipaddress

    if allow_local_images is None or host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host.strip("[]")).is_loopback:
            return None
    except ValueError:  # a host name: it may resolve to any interface
        pass
    return (f"warning: perceive mcp listens on {host} and serves the images under {allow_local_images} to every "
            "client that reaches it, with no authentication; the images and views it holds are shared by all its "
            "clients")


def _require_sdk() -> None:
    try:
        import mcp.server.lowlevel  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        missing = (exc.name or "mcp").split(".")[0]
        raise fail(f"perceive mcp needs the mcp extra ({missing} is missing): {INSTALL_HINT}", 1) from None


@contextmanager
def _console_on_stderr() -> Iterator[None]:
    """The CLI's console (stdout) writes to stderr meanwhile, errors included: stdio's stdout carries
    JSON-RPC only."""
    before = console.stderr
    console.stderr = True
    try:
        yield
    finally:
        console.stderr = before


def _toolbox(cfg):
    from perceive.mcp.toolbox import Toolbox

    return Toolbox(cfg)


def _serve_stdio(config: Path | None, sets: list[str] | None, flags: list[tuple[tuple, Any, str]]) -> None:
    import click

    from perceive.cli import debug_enabled, error_exit

    try:
        _require_sdk()
        from perceive.mcp.server import serve_stdio

        def build():
            toolbox = _toolbox(mcp_config(config, sets, flags))
            console.print(f"perceive mcp: {len(toolbox.tools())} tools over stdio", markup=False,
                          highlight=False, soft_wrap=True)
            return toolbox

        serve_stdio(build)
        console.print("perceive mcp: the client closed stdin; stopped", markup=False, highlight=False)
        exit_now()
    except (typer.Exit, typer.Abort, click.exceptions.Exit, click.ClickException):  # said already
        raise
    except Exception as exc:  # printed here, while the console still writes to stderr
        if debug_enabled():
            raise
        raise error_exit(exc) from None


def _serve_http(config: Path | None, sets: list[str] | None, flags: list[tuple[tuple, Any, str]]) -> None:
    _require_sdk()
    from perceive.mcp.server import HTTP_PATH, serve_http

    cfg = mcp_config(config, sets, flags)
    host, port = cfg.mcp.host, cfg.mcp.port
    warning = exposure_warning(host, cfg.mcp.allow_local_images)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    where = url_host(host)
    sock = listen_or_fail(host, port)  # before the plugins load: a port in use fails at once
    try:
        toolbox = _toolbox(cfg)
    except BaseException:
        sock.close()
        raise
    names = [t.name for t in toolbox.tools()]

    def started(bound: int | None) -> None:  # the port really bound: --port 0 picks one
        console.print(f"perceive mcp: {len(names)} tools ({', '.join(names)}) on http://{where}:{bound}{HTTP_PATH}",
                      markup=False, highlight=False, soft_wrap=True)

    serve_http(toolbox, sock, host, cfg.mcp.max_body_mb, started)
    console.print("stopped", markup=False)
    exit_now()


def mcp(
    config: ConfigOpt = None,
    model: ModelOpt = None,
    http: bool = typer.Option(False, "--http", help="Serve streamable HTTP at http://HOST:PORT/mcp instead of "
                                                    "stdio (the default, for an agent that starts the server)."),
    host: str | None = typer.Option(None, "--host", help="With --http: the address to listen on (mcp.host; default "
                                                         "127.0.0.1; 0.0.0.0: every interface, unprotected)."),
    port: int | None = typer.Option(None, "--port", min=0, max=65535,
                                    help="With --http: the port (mcp.port; default 8765; 0: any free one, the one "
                                         "bound is printed)."),
    allow_local_images: Path | None = typer.Option(None, "--allow-local-images", metavar="DIR",
                                                   help="Accept images given as paths of files under DIR "
                                                        "(mcp.allow_local_images; default: data URLs and ids "
                                                        "only)."),
    action_timeout: ActionTimeoutOpt = None,
    set_: SetOpt = None,
) -> None:
    """Serve perception actions (crop, zoom, tiles, OCR, every installed plugin's) and graphs as tools of
    any MCP agent: Claude Desktop, Qwen-Agent, lmms-eval's async_openai. Over stdio by default: the agent
    starts `perceive mcp` itself; --http serves many agents at http://127.0.0.1:8765/mcp. The run config
    (its actions, graphs and mcp: section) chooses what is served and with which options.

    Values come from, highest first: the flags, --set, --config, the defaults."""
    with nullcontext() if http else _console_on_stderr():
        if allow_local_images is not None and not allow_local_images.is_dir():
            raise fail(f"--allow-local-images {allow_local_images}: not a folder", 2)
        if not http and (host is not None or port is not None):
            raise fail("--host and --port are for --http; over stdio the agent starts the server and talks to "
                       "its stdin and stdout", 2)
        flags = [*loop_flags(model, None, None, None, False, action_timeout),
                 *mcp_flags(host, port, allow_local_images)]
        if http:
            _serve_http(config, set_, flags)
        else:
            _serve_stdio(config, set_, flags)
