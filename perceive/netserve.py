"""The HTTP listening both ``perceive serve`` and ``perceive mcp --http`` share: a socket bound before the slow
start (a port in use fails at once), and a uvicorn server that reports the port it really bound.

Importable without FastAPI (``perceive.serve``'s package needs it; ``perceive mcp`` must not).
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import uvicorn


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (``port`` 0: a free one; a ``host`` with ``:``: IPv6), to hand to
    :meth:`ListeningServer.run` as ``sockets=[sock]``. Raises ``OSError`` (the port in use, no such address)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    # a port left in TIME_WAIT by the last run is free to take again; one another server listens on is not
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class ListeningServer(uvicorn.Server):
    """uvicorn's server that calls ``on_started(port)`` once listening, with the port really bound (``--port 0``
    picks one). Subclasses choose their own ``handle_exit``: uvicorn's raises the signal again after shutdown,
    so the process would die by it instead of exiting 0."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[int | None], None] | None = None):
        super().__init__(config)
        self.on_started = on_started

    @property
    def port(self) -> int | None:
        """The TCP port the server listens on, once started (None before)."""
        for server in getattr(self, "servers", []):
            for sock in server.sockets or ():
                name = sock.getsockname()
                if isinstance(name, tuple):  # (host, port) or IPv6's (host, port, flow, scope)
                    return name[1]
        return None

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started and self.on_started is not None:
            self.on_started(self.port)
