"""A running batch: samples join and leave one engine between steps (continuous batching).

``PerceptionLoop.run`` steps one batch until every sample is done; ``perceive serve`` keeps one
open and adds requests as they arrive, cancelling those whose client went away or whose deadline
passed. Both see exactly the same per-sample behaviour: a joining sample's cache row is padded
with masked keys by the engine, so it computes what it would alone.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING

from perceive.loop.engine import Engine
from perceive.loop.sample import Sample
from perceive.trace import FinishReason

if TYPE_CHECKING:
    from perceive.loop.session import PerceptionLoop


class Batch:
    """At most ``cap`` samples run on ``engine`` at once; the others wait in arrival order.
    Not thread-safe: one thread adds, cancels and steps."""

    def __init__(self, loop: PerceptionLoop, engine: Engine, cap: int | None = None):
        self.loop = loop
        self.engine = engine
        self.cap = cap or 1 << 30
        self.waiting: deque[Sample] = deque()
        self.running: list[Sample] = []

    def __len__(self) -> int:
        return len(self.waiting) + len(self.running)

    def add(self, s: Sample) -> None:
        if not s.done:
            self.waiting.append(s)

    def cancel(self, s: Sample, reason: FinishReason = FinishReason.CANCELLED, error: dict | None = None) -> None:
        """Finish ``s`` now (its client left, its deadline passed): its cache row is freed before
        the next step, and the batch runs on without it."""
        if s.done:
            return
        self.loop.finish(s, reason, error)
        if s in self.running:
            self.engine.close(s)
            self.running.remove(s)
        elif s in self.waiting:
            self.waiting.remove(s)

    def step(self) -> list[Sample]:
        """Admit waiting samples up to the cap, run one engine step, advance every running sample.
        Returns the samples that finished in this step."""
        loop, engine = self.loop, self.engine
        while self.waiting and len(self.running) < self.cap:
            s = self.waiting.popleft()
            s.t0 = time.perf_counter()  # a sample's time is counted from when it runs, not while it waits
            engine.open(s)
            engine.feed(s, s.pending)
            self.running.append(s)
        if not self.running:
            return []
        outs = engine.step()
        finished = []
        for s in self.running:
            out = outs[s]
            loop._fed(s, out.ms)
            loop._advance(s, out.hidden, out.logits)
            loop._check_context(s)
            if s.done:
                engine.close(s)
                finished.append(s)
            else:
                engine.feed(s, s.pending)
        self.running = [s for s in self.running if not s.done]
        return finished
