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
import time
from collections.abc import Callable

import uvicorn

from perceive.netserve import ListeningServer

log = logging.getLogger("uvicorn.error")


class DrainingServer(ListeningServer):
    """``config``: uvicorn's; ``scheduler``: the app's :class:`~perceive.serve.scheduler.Scheduler`;
    ``drain_window_s``: the least time the listener stays open after SIGTERM; ``on_started(port)``:
    called once listening, with the port really bound (``--port 0`` picks one). Run it on a socket
    from :func:`perceive.netserve.listen`, bound before the model loads."""

    def __init__(self, config: uvicorn.Config, scheduler, drain_window_s: float = 5.0,
                 on_started: Callable[[int | None], None] | None = None):
        super().__init__(config, on_started)
        self.scheduler = scheduler
        self.drain_window_s = drain_window_s
        self.drain_until: float | None = None  # time.monotonic(); None: not draining
        self.forced = False  # a second signal: stopped before the drain ended

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
