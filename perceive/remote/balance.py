"""Which endpoint a sample runs on, when ``remote.url`` lists several serving the same model.

A sample stays on one endpoint for all its turns: each turn resends the conversation so far, so
the endpoint that served the earlier turns holds its prefix in cache (vLLM's and SGLang's prefix
caching) and prefills only the new observation. A sample starts on the endpoint with the fewest
samples running, ties going to the first listed, so one endpoint gives the order a single
endpoint would. An endpoint that could not be reached gets no new sample while another can.
"""

from __future__ import annotations

import threading

from perceive.remote.endpoint import Endpoint


class Balancer:
    """Hands out the endpoints, thread-safe: :meth:`take` as a sample starts, :meth:`give` as it
    finishes."""

    def __init__(self, endpoints: list[Endpoint]):
        self.endpoints = list(endpoints)
        self.running = [0] * len(self.endpoints)  # samples running on each, by position
        self._lock = threading.Lock()

    def take(self) -> int:
        """The position of the endpoint a starting sample runs on, counted as running there. When
        none can be reached, the one with the fewest running (its samples fail with the reason)."""
        with self._lock:
            up = [k for k, e in enumerate(self.endpoints) if e.reachable] or list(range(len(self.endpoints)))
            k = min(up, key=lambda i: (self.running[i], i))
            self.running[k] += 1
            return k

    def give(self, k: int) -> None:
        """The sample on endpoint ``k`` finished."""
        with self._lock:
            self.running[k] -= 1
