"""The HTTP server of ``perceive serve``: uvicorn, draining on SIGTERM, reporting the port it bound.

A load balancer must see a replica leave before its socket closes: requests it routes to a
closed listener fail with "connection refused" (in Kubernetes, endpoints are removed while the
pod is already stopping). So on SIGTERM the listener stays open: ``/health`` answers 503
``draining`` (the health check takes the replica out), new chat requests get 503 with
``Retry-After`` (the client or the balancer sends them elsewhere), the requests running and
queued finish; once they have and the drain window has passed, the server closes and the
process exits 0. Ctrl-C (SIGINT) drains the same way without the window: no balancer watches a
terminal. A second signal stops at once, whatever is unfinished.
"""

from __future__ import annotations

import logging
import signal
import socket
import time
from collections.abc import Callable

import uvicorn

log = logging.getLogger("uvicorn.error")


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (``port`` 0: a free one) for :class:`DrainingServer`,
    bound before the model loads so that a port in use fails at once. Raises ``OSError``."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    # a port left in TIME_WAIT by the last run is free to take again; one another server listens on is not
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class DrainingServer(uvicorn.Server):
    """``config``: uvicorn's; ``scheduler``: the app's :class:`~perceive.serve.scheduler.Scheduler`;
    ``drain_window_s``: the least time the listener stays open after SIGTERM; ``on_started(port)``:
    called once listening, with the port really bound (``--port 0`` picks one)."""

    def __init__(self, config: uvicorn.Config, scheduler, drain_window_s: float = 5.0,
                 on_started: Callable[[int], None] | None = None):
        super().__init__(config)
        self.scheduler = scheduler
        self.drain_window_s = drain_window_s
        self.on_started = on_started
        self.drain_until: float | None = None  # time.monotonic(); None: not draining
        self.forced = False  # a second signal: stopped before the drain ended

    @property
    def port(self) -> int | None:
        """The TCP port the server listens on, once started."""
        for server in getattr(self, "servers", []):
            for sock in server.sockets or ():
                name = sock.getsockname()
                if isinstance(name, tuple):
                    return name[1]
        return None

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started and self.on_started is not None:
            self.on_started(self.port)

    def handle_exit(self, sig, frame) -> None:
        # uvicorn's own handler closes the listener at once, and raises the signal again after its
        # shutdown, so the process would die by it instead of exiting 0
        if self.drain_until is None:
            window = self.drain_window_s if sig == signal.SIGTERM else 0.0
            self.drain_until = time.monotonic() + window
            self.scheduler.drain()  # a flag: safe in a signal handler
            log.info("draining: /health answers 503, new requests are refused, %d running and %d queued finish "
                     "(window %.1f s); a second signal stops at once", self.scheduler.running,
                     self.scheduler.queued, window)
        else:
            self.forced = not self.scheduler.idle
            self.should_exit = self.force_exit = True

    async def on_tick(self, counter: int) -> bool:
        if (self.drain_until is not None and not self.should_exit and time.monotonic() >= self.drain_until
                and self.scheduler.idle):
            self.should_exit = True  # uvicorn now closes the listener and waits for the open responses
        return await super().on_tick(counter)
